"""The paired bootstrap of a sweep row's loss: per-document counts that give
spaCy's own scores back exactly, resamples that are paired and reproducible,
and intervals that cover a known difference."""
import random
import warnings
from typing import List, Optional

import numpy
import pytest
import spacy
from spacy.scorer import PRFScore, Scorer, get_ner_prf
from spacy.tokens import Doc, DocBin, Span
from spacy.training import Example

from spacy_earlyexit.tuning.bootstrap import (
    loss_summary, paired_losses, resample_weights, resampled_scores, upper_bound,
)
from spacy_earlyexit.tuning.doc_counts import document_counts, fscore

NLP = spacy.blank("en")
WORDS = "Alice lives in Paris and Bob visited London with Carol".split()
TAGS = ["NN", "VB", "IN", "DT", "JJ"]
POS = ["NOUN", "VERB", "ADP", "DET", "ADJ"]


def random_entities(doc: Doc, rng: random.Random) -> List[Span]:
    spans, i = [], 0
    while i < len(doc):
        if rng.random() < 0.3:
            length = rng.randint(1, 2)
            spans.append(Span(doc, i, min(i + length, len(doc)), label=rng.choice(["PER", "LOC"])))
            i += length + 1
        else:
            i += 1
    return spans


def ner_examples(n: int, seed: int) -> List[Example]:
    """Random gold and predicted entities; some gold docs without entity
    annotation, some with tokens of unknown entity status."""
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        words = rng.sample(WORDS, rng.randint(1, len(WORDS)))
        gold, pred = Doc(NLP.vocab, words=words), Doc(NLP.vocab, words=words)
        pred.set_ents(random_entities(pred, rng), default="outside")
        if i % 7 != 3:  # every 7th gold doc has no entity annotation at all
            missing = [len(words) - 1] if i % 5 == 0 else []  # and some a token of unknown status
            gold.set_ents(random_entities(gold, rng), default="outside")
            if missing:
                ents = [e for e in gold.ents if e.end - 1 not in missing]
                gold.set_ents(ents, missing=[Span(gold, m, m + 1) for m in missing], default="outside")
        examples.append(Example(pred, gold))
    return examples


def tagged_doc(words: List[str], values: List[str], attr: str, spaces: Optional[List[bool]] = None) -> Doc:
    """A doc with `attr` ("tag", "pos") set per token; "" leaves it unset."""
    doc = Doc(NLP.vocab, words=words, spaces=spaces)
    for token, value in zip(doc, values):
        if value:
            setattr(token, f"{attr}_", value)
    return doc


def attr_examples(n: int, seed: int, attr: str) -> List[Example]:
    """Random gold and predicted tags (some gold values missing) and, in some
    docs, a predicted tokenization that differs from the gold one."""
    rng = random.Random(seed)
    values = TAGS if attr == "tag" else POS
    examples = []
    for i in range(n):
        words = rng.sample(WORDS, rng.randint(2, len(WORDS)))
        merged = i % 4 == 0  # the predicted doc joins the first two words
        gold_spaces = [not (merged and k == 0) for k in range(len(words))]
        gold = tagged_doc(words, [rng.choice(values + [""]) for _ in words], attr, gold_spaces)
        pred_words = [words[0] + words[1]] + words[2:] if merged else words
        pred = tagged_doc(pred_words, [rng.choice(values) for _ in pred_words], attr)
        examples.append(Example(pred, gold))
    return examples


def test_document_counts_give_spacys_scores_back_exactly():
    """Summed per-document counts, scored with PRFScore's arithmetic, equal
    spaCy's own scorers on the whole set, to the last bit."""
    ner = ner_examples(60, 1)
    assert fscore(document_counts(ner, "ents_f").sum(0)) == get_ner_prf(ner)["ents_f"]
    for attr in ("tag", "pos"):
        examples = attr_examples(60, 2, attr)
        expected = Scorer.score_token_attr(examples, attr)[f"{attr}_acc"]
        assert fscore(document_counts(examples, f"{attr}_acc").sum(0)) == expected
        assert fscore(document_counts(examples, "token_f").sum(0)) == Scorer.score_tokenization(examples)["token_f"]
    with pytest.raises(ValueError, match="no per-document counts for the score 'las'"):
        document_counts(ner, "las")


def reference_resample_scores(examples: List[Example], n_docs: int, resamples: int, seed: int) -> List[float]:
    """The same resamples drawn independently (the same generator, seed and
    draw order) and scored by spaCy's scorer on the drawn examples."""
    drawn = numpy.random.default_rng(seed).integers(0, n_docs, size=(resamples, n_docs))
    return [get_ner_prf([examples[i] for i in row])["ents_f"] for row in drawn]


def test_resampled_scores_are_spacys_scores_of_the_drawn_docs():
    examples = ner_examples(25, 3)
    weights = resample_weights(25, 20, seed=7)
    assert weights.shape == (20, 25) and (weights.sum(1) == 25).all()
    scores = resampled_scores(document_counts(examples, "ents_f"), weights)
    assert scores.tolist() == pytest.approx(reference_resample_scores(examples, 25, 20, seed=7), abs=1e-12)


def test_the_identity_resample_reproduces_the_full_score():
    examples = ner_examples(30, 4)
    identity = numpy.ones((1, 30), dtype="int64")
    assert resampled_scores(document_counts(examples, "ents_f"), identity)[0] == get_ner_prf(examples)["ents_f"]


def test_the_bootstrap_is_paired_and_reproducible():
    """Both sides see the same documents in every resample: a setting equal
    to "off" loses exactly 0 everywhere, and one that differs in a single
    document loses something only in the resamples that draw it, by the
    amount that document makes on that resample (checked with PRFScore)."""
    rng = numpy.random.default_rng(0)
    off = rng.integers(5, 20, size=(40, 3))
    assert (paired_losses(off, off, resample_weights(40, 200, 1)) == 0).all()
    setting = off.copy()
    setting[3] = [off[3, 0] - 2, off[3, 1] + 2, off[3, 2] + 2]  # two fewer right in doc 3
    weights = resample_weights(40, 200, 1)
    losses = paired_losses(off, setting, weights)
    for b in (0, 1, 50, 199):
        totals_off, totals_setting = PRFScore(), PRFScore()
        for doc, times in enumerate(weights[b]):
            for _ in range(times):
                totals_off += PRFScore(tp=int(off[doc, 0]), fp=int(off[doc, 1]), fn=int(off[doc, 2]))
                totals_setting += PRFScore(tp=int(setting[doc, 0]), fp=int(setting[doc, 1]), fn=int(setting[doc, 2]))
        assert losses[b] == pytest.approx(totals_off.fscore - totals_setting.fscore, abs=1e-12)
    assert ((losses == 0) == (weights[:, 3] == 0)).all()
    first = loss_summary(off, setting, resample_weights(40, 200, 5), seed=5)
    again = loss_summary(off, setting, resample_weights(40, 200, 5), seed=5)
    other = loss_summary(off, setting, resample_weights(40, 200, 6), seed=6)
    assert first == again and first != other
    assert (first["resamples"], first["seed"], first["interval"]) == (200, 5, 0.9)
    assert first["low"] <= first["upper"]["0.9"] <= first["high"]
    assert upper_bound(first, 0.9) == first["upper"]["0.9"] and upper_bound(None, 0.9) is None
    with pytest.raises(ValueError, match="not 0.42"):
        upper_bound(first, 0.42)


def accuracy_counts(correct: numpy.ndarray, totals: numpy.ndarray) -> numpy.ndarray:
    """Token accuracy as (tp, fp, fn): a wrong token is one of each."""
    return numpy.stack([correct, totals - correct, totals - correct], axis=1)


def test_the_interval_covers_a_known_difference():
    """Documents drawn from a population where "off" gets each token right
    with probability 0.95 and the setting with 0.93 (true loss 0.02): the
    90% central interval covers 0.02 in about 90% of the samples, and the
    one-sided 90% upper bound lies above it in about 90%."""
    rng = numpy.random.default_rng(11)
    covered = above = 0
    samples = 200
    for sample in range(samples):
        totals = rng.integers(10, 40, size=60)
        off_right = rng.binomial(totals, 0.95)
        # the setting errs where "off" does and on some more tokens: a paired design
        extra = rng.binomial(off_right, 0.02 / 0.95)
        summary = loss_summary(accuracy_counts(off_right, totals), accuracy_counts(off_right - extra, totals),
                               resample_weights(60, 300, sample), seed=sample)
        covered += summary["low"] <= 0.02 <= summary["high"]
        above += summary["upper"]["0.9"] >= 0.02
    assert 0.8 * samples <= covered <= 0.97 * samples, covered
    assert 0.8 * samples <= above <= 0.97 * samples, above
    # a loss that is the same in every document: a point interval
    totals = numpy.full(30, 10)
    exact = loss_summary(accuracy_counts(totals, totals), accuracy_counts(totals - 1, totals),
                         resample_weights(30, 100, 0), seed=0)
    assert exact["low"] == pytest.approx(0.1) and exact["high"] == pytest.approx(0.1)


def test_run_sweep_records_paired_intervals(tiny_bert, tmp_path):
    """On a tiny NER pipeline: every row has a loss record whose point is
    "off"'s score minus its own, "off" loses exactly nothing, the same seed
    gives the same intervals, and the per-repetition speed-up ratios are
    recorded with their range."""
    from helpers.tiny_bert import NER_DATA, train_tiny_pipeline
    from spacy_earlyexit.tuning.sweep import markdown_table, run_sweep

    nlp = train_tiny_pipeline(tiny_bert, "ner", 3)
    gold = [Example.from_dict(nlp.make_doc(text), {"entities": ents}).reference for text, ents in NER_DATA]
    dev = tmp_path / "dev.spacy"
    DocBin(docs=gold * 2).to_disk(dev)
    grid = [{"exit_mode": "off"}, {"exit_mode": "token", "threshold": 0.5, "window": 0}]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # counts that miss the score would warn
        result = run_sweep({"m": nlp}, dev, grid, repetitions=2, batch_size=4, progress=False,
                           bootstrap=50, seed=3)
    assert result["bootstrap"]["resamples"] == 50 and result["bootstrap"]["seed"] == 3
    off, token = result["rows"]
    assert off["loss"]["point"] == 0 and off["loss"]["high"] == 0 and off["loss"]["upper"]["0.9"] == 0
    assert token["loss"]["point"] == pytest.approx(off["score"] - token["score"], abs=1e-12)
    assert (token["loss"]["resamples"], token["loss"]["seed"]) == (50, 3)
    assert len(token["wall_speedup_ratios"]) == 2
    assert token["wall_speedup_range"] == [min(token["wall_speedup_ratios"]), max(token["wall_speedup_ratios"])]
    again = run_sweep({"m": nlp}, dev, grid, repetitions=1, batch_size=4, progress=False, bootstrap=50, seed=3)
    assert again["rows"][1]["loss"] == token["loss"]
    table = markdown_table(result)
    assert "loss 5%-95%" in table.splitlines()[0] and "loss ≤ (90%)" in table.splitlines()[0]
    none = run_sweep({"m": nlp}, dev, grid, repetitions=1, batch_size=4, progress=False, bootstrap=0)
    assert none["bootstrap"] is None and "loss" not in none["rows"][1]
    assert "loss 5%-95%" not in markdown_table(none)
