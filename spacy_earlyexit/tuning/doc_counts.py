"""Per-document counts behind a task's headline score, for the bootstrap.

The headline scores of the built-in tasks (entity F, tag and POS accuracy,
token F of segmentation) are all spaCy `PRFScore.fscore` values of true
positive, false positive and false negative counts summed over the docs. So a
doc's (tp, fp, fn) is a sufficient statistic: the score of any multiset of
docs is `fscore` of their summed counts, computed exactly as spaCy's scorer
computes it on the full set. The counting below follows spaCy's
`get_ner_prf`, `Scorer.score_token_attr` and `Scorer.score_tokenization`
(spaCy 3.x) example by example; tests check that the summed counts give the
task's own score exactly.
"""
from typing import Callable, Dict, Optional, Sequence, Set, Tuple

import numpy
from spacy.scorer import MISSING_VALUES
from spacy.training import Example

Counts = Tuple[int, int, int]


def entity_counts(example: Example) -> Counts:
    """(tp, fp, fn) of predicted entities against gold ones, micro over the
    types (spaCy's get_ner_prf): a prediction over gold tokens without entity
    annotation counts neither way; a doc without entity annotation counts
    nothing."""
    if not example.reference.has_annotation("ENT_IOB"):
        return 0, 0, 0
    golds = {(ent.label_, ent.start, ent.end) for ent in example.reference.ents}
    align_x2y = example.alignment.x2y
    tp = fp = 0
    for pred_ent in example.predicted.ents:
        indices = align_x2y[pred_ent.start : pred_ent.end]
        if not len(indices):
            continue
        gold_span = example.reference[indices[0] : indices[-1] + 1]
        if not all(token.ent_iob != 0 for token in gold_span):
            continue
        key = (pred_ent.label_, int(indices[0]), int(indices[-1]) + 1)
        if key in golds:
            tp += 1
            golds.remove(key)
        else:
            fp += 1
    return tp, fp, len(golds)


def token_attr_counts(example: Example, attr: str) -> Counts:
    """(tp, fp, fn) of a token attribute ("tag", "pos") as spaCy's
    Scorer.score_token_attr counts them (its accuracy is their F)."""
    gold_tags: Set[Tuple[int, object]] = set()
    missing: Set[int] = set()
    for gold_i, token in enumerate(example.reference):
        value = getattr(token, attr)
        if value not in MISSING_VALUES:
            gold_tags.add((gold_i, value))
        else:
            missing.add(gold_i)
    pred_tags: Set[Tuple[int, object]] = set()
    align = example.alignment
    for token in example.predicted:
        if token.orth_.isspace():
            continue
        if align.x2y.lengths[token.i] == 1:
            gold_i = int(align.x2y[token.i][0])
            if gold_i not in missing:
                pred_tags.add((gold_i, getattr(token, attr)))
    return _set_counts(pred_tags, gold_tags)


def tokenization_counts(example: Example) -> Counts:
    """(tp, fp, fn) of predicted token character spans against gold ones
    (spaCy's Scorer.score_tokenization, whose token_f is their F); a gold doc
    with unknown spaces counts nothing."""
    gold_doc, pred_doc = example.reference, example.predicted
    if gold_doc.has_unknown_spaces:
        return 0, 0, 0
    gold = {(t.idx, t.idx + len(t)) for t in gold_doc if not t.orth_.isspace()}
    pred = {(t.idx, t.idx + len(t)) for t in pred_doc if not t.orth_.isspace()}
    return _set_counts(pred, gold)


def _set_counts(pred: Set, gold: Set) -> Counts:
    return len(pred & gold), len(pred - gold), len(gold - pred)


#: headline score key -> per-doc counter (the built-in tasks)
COUNTERS: Dict[str, Callable[[Example], Counts]] = {
    "ents_f": entity_counts,
    "tag_acc": lambda example: token_attr_counts(example, "tag"),
    "pos_acc": lambda example: token_attr_counts(example, "pos"),
    "token_f": tokenization_counts,
}


def counter_for(score_key: str) -> Optional[Callable[[Example], Counts]]:
    """The per-doc counter of a headline score key; None for a score this
    module cannot decompose (a task registered by another package)."""
    return COUNTERS.get(score_key)


def document_counts(examples: Sequence[Example], score_key: str) -> numpy.ndarray:
    """[D, 3] int64: (tp, fp, fn) of every example, in order. Raises
    ValueError for a score key without a counter."""
    counter = counter_for(score_key)
    if counter is None:
        raise ValueError(
            f"no per-document counts for the score {score_key!r} (known: {', '.join(sorted(COUNTERS))})"
        )
    return numpy.asarray([counter(example) for example in examples], dtype="int64").reshape(-1, 3)


def fscore(counts: numpy.ndarray) -> numpy.ndarray:
    """F of summed (tp, fp, fn) counts, [..., 3] -> [...], with spaCy's
    PRFScore arithmetic (the same 1e-100 guards, the same order of
    operations), so that it equals spaCy's score to the last bit."""
    counts = numpy.asarray(counts, dtype="float64")
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    precision = tp / (tp + fp + 1e-100)
    recall = tp / (tp + fn + 1e-100)
    return 2 * ((precision * recall) / (precision + recall + 1e-100))
