"""Training-data problems give clear errors (or, where the data can be
legitimate, warnings) that name the cause: gold tokens that differ from the
predicted ones, labels seen only in the dev data, an empty training corpus,
examples without this task's annotation. Through nlp.initialize / update /
evaluate, and `spacy train` (in-process, the CLI's own function) where the
CLI adds a path of its own (a generator corpus, a dev set)."""
import warnings
from pathlib import Path
from typing import List, Optional

import numpy
import pytest
import spacy
from spacy.cli.train import train as spacy_train
from spacy.language import Language
from spacy.tokens import Doc, DocBin, Span
from spacy.training import Example
from spacy.util import fix_random_seed

from helpers.tiny_bert import PLAIN_OFFRAMPS, NER_DATA, POS_DATA


TAGGER = "earlyexit_tagger"
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "pos_joint.cfg"


def make_nlp(bert: Path, task: str) -> Language:
    nlp = spacy.blank("en")
    nlp.add_pipe(TAGGER, config={"task": task, "model": {**PLAIN_OFFRAMPS, "name": str(bert)}})
    return nlp


def pos_examples(nlp: Language, data=POS_DATA) -> List[Example]:
    return [Example.from_dict(nlp.make_doc(text), {"pos": tags}) for text, tags in data]


def ner_examples(nlp: Language, data=NER_DATA) -> List[Example]:
    return [Example.from_dict(nlp.make_doc(text), {"entities": ents}) for text, ents in data]


@pytest.fixture(scope="module")
def pos_nlp(tiny_bert) -> Language:
    nlp = make_nlp(tiny_bert, "pos")
    fix_random_seed(0)
    nlp.initialize(lambda: pos_examples(nlp))
    return nlp


def pos_doc(vocab, words: List[str], tags: List[Optional[str]]) -> Doc:
    doc = Doc(vocab, words=words)
    for token, tag in zip(doc, tags):
        if tag is not None:
            token.pos_ = tag
    return doc


# --- gold tokens that differ from the predicted ones --------------------------------------


def test_misaligned_gold_tokens_are_missing_not_wrong(pos_nlp):
    """The component trains on example.predicted's tokens. A predicted token
    that spans several gold tokens has no gold label (it is left out of the
    loss, not counted wrong); gold tokens split into several predicted ones
    give each piece the gold label."""
    tagger = pos_nlp.get_pipe(TAGGER)
    vocab = pos_nlp.vocab
    gold = pos_doc(vocab, ["Alice", "lives", "in", "Paris", "."], ["PROPN", "VERB", "ADP", "PROPN", "PUNCT"])
    merged = Doc(vocab, words=["Alice", "lives", "in", "Paris."])
    split = Doc(vocab, words=["Al", "ice", "lives", "in", "Paris", "."])
    assert tagger.task.gold_classes(Example(merged, gold)) == ["PROPN", "VERB", "ADP", None]
    expected = ["PROPN", "PROPN", "VERB", "ADP", "PROPN", "PUNCT"]
    assert tagger.task.gold_classes(Example(split, gold)) == expected

    # the loss and gradient equal those of the same tokens with that label missing
    outputs, _ = tagger.model.begin_update([merged])
    missing = pos_doc(vocab, ["Alice", "lives", "in", "Paris."], ["PROPN", "VERB", "ADP", None])
    loss, d_logits = tagger.get_loss([Example(merged, gold)], outputs)
    expected_loss, expected_d = tagger.get_loss([Example(merged, missing)], outputs)
    assert loss == pytest.approx(expected_loss, rel=1e-6)
    numpy.testing.assert_allclose(d_logits, expected_d, rtol=1e-6)
    assert not d_logits[:, 3].any() and d_logits[:, :3].any()


def test_misaligned_gold_entities(tiny_bert):
    nlp = make_nlp(tiny_bert, "ner")
    nlp.initialize(lambda: ner_examples(nlp))
    task = nlp.get_pipe(TAGGER).task
    gold = Doc(nlp.vocab, words=["Alice", "lives", "in", "Paris", "."])
    gold.ents = [Span(gold, 0, 1, "PER"), Span(gold, 3, 4, "LOC")]
    merged = Doc(nlp.vocab, words=["Alice", "lives", "in", "Paris."])
    assert task.gold_classes(Example(merged, gold)) == ["U-PER", "O", "O", None]
    split = Doc(nlp.vocab, words=["Al", "ice", "lives", "in", "Paris", "."])
    assert task.gold_classes(Example(split, gold)) == ["B-PER", "L-PER", "O", "O", "U-LOC", "O"]


def test_gold_text_that_differs_is_refused_by_name(pos_nlp):
    """Different texts cannot be aligned: spaCy's error says so and shows both."""
    vocab = pos_nlp.vocab
    gold = pos_doc(vocab, ["Alice", "lives", "in", "Paris", "."], ["PROPN", "VERB", "ADP", "PROPN", "PUNCT"])
    predicted = Doc(vocab, words=["Bob", "lives", "in", "Paris", "."])
    with pytest.raises(ValueError, match=r"(?s)align.*'Bob'.*'Alice'"):
        pos_nlp.update([Example(predicted, gold)])


# --- labels seen only in the dev data ---------------------------------------------------------


DEV_ONLY = {
    "pos": ("Oh wow , Alice !", ["INTJ", "INTJ", "PUNCT", "PROPN", "PUNCT"], "INTJ", "pos_acc"),
    "ner": ("Alice works at Acme .", [(0, 5, "PER"), (15, 19, "ORG")], "ORG", "ents_f"),
}


@pytest.mark.parametrize("task", ["pos", "ner"])
def test_dev_only_label_evaluates_with_a_warning(tiny_bert, task):
    text, annotation, label, key = DEV_ONLY[task]
    nlp = make_nlp(tiny_bert, task)
    train = pos_examples(nlp) if task == "pos" else ner_examples(nlp)
    nlp.initialize(lambda: train)
    assert label not in nlp.get_pipe(TAGGER).labels
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=TAGGER)  # known labels: no warning
        nlp.evaluate(train[:2])
    dev = [Example.from_dict(nlp.make_doc(text), {"pos" if task == "pos" else "entities": annotation})]
    with pytest.warns(UserWarning, match=f"not trained with: '{label}'"):
        scores = nlp.evaluate(dev)
    assert 0.0 <= scores[key] <= 1.0
    assert f"{key}_layer_3" in scores
    if task == "pos":  # the INTJ tokens count as errors: at most 3 of 5 right
        assert scores["pos_acc"] <= 3 / 5
    else:  # the ORG entity is missed: recall at most 1/2
        assert scores["ents_r"] <= 0.5


def write_docbin(path: Path, docs: List[Doc]) -> Path:
    DocBin(docs=docs).to_disk(path)
    return path


def test_spacy_train_with_a_dev_only_label_warns(tiny_bert, tmp_path):
    vocab = spacy.blank("en").vocab
    train = write_docbin(tmp_path / "train.spacy", [
        pos_doc(vocab, text.split(), tags) for text, tags in POS_DATA
    ])
    dev_text, dev_tags, _, _ = DEV_ONLY["pos"]
    dev = write_docbin(tmp_path / "dev.spacy", [pos_doc(vocab, dev_text.split(), dev_tags)])
    overrides = {
        "paths.train": str(train), "paths.dev": str(dev), "paths.backbone": str(tiny_bert),
        "training.max_steps": 2, "training.eval_frequency": 2, "training.max_epochs": 0,
    }
    with pytest.warns(UserWarning, match="evaluation data has pos label.*'INTJ'"):
        spacy_train(CONFIG, tmp_path / "output", overrides=overrides)
    assert (tmp_path / "output" / "model-last").is_dir()


# --- an empty training corpus -------------------------------------------------------------------


@pytest.mark.parametrize("task", ["pos", "ner"])
def test_initialize_with_no_examples(tiny_bert, task):
    nlp = make_nlp(tiny_bert, task)
    with pytest.raises(ValueError, match=f"^{TAGGER}: no training examples"):
        nlp.initialize(lambda: [])


def test_spacy_train_with_an_empty_corpus(tiny_bert, tmp_path):
    """spacy train hands over a generator: truthy even when the corpus is
    empty, so spaCy's own check lets it through."""
    empty = write_docbin(tmp_path / "empty.spacy", [])
    overrides = {"paths.train": str(empty), "paths.dev": str(empty), "paths.backbone": str(tiny_bert)}
    with pytest.raises(ValueError, match=f"^{TAGGER}: no training examples.*paths.train"):
        spacy_train(CONFIG, None, overrides=overrides)


# --- examples without this task's annotation ------------------------------------------------------


def test_pos_examples_without_pos(tiny_bert):
    nlp = make_nlp(tiny_bert, "pos")
    unannotated = [Example.from_dict(nlp.make_doc(text), {}) for text, _ in POS_DATA]
    with pytest.raises(ValueError, match=r"none of the 5 reference docs has Universal POS tags \(token.pos_"):
        nlp.initialize(lambda: unannotated)


def test_pos_examples_with_fine_grained_tags_only(tiny_bert):
    nlp = make_nlp(tiny_bert, "pos")
    tagged = [Example.from_dict(nlp.make_doc(text), {"tags": tags}) for text, tags in POS_DATA]
    with pytest.raises(ValueError, match=r"token\.pos_.*use task 'tag'"):
        nlp.initialize(lambda: tagged)


def test_tag_examples_without_tags(tiny_bert):
    nlp = make_nlp(tiny_bert, "tag")
    with pytest.raises(ValueError, match=r"token\.tag_"):
        nlp.initialize(lambda: pos_examples(nlp))


def test_ner_examples_without_entity_annotation(tiny_bert):
    nlp = make_nlp(tiny_bert, "ner")
    unannotated = [Example.from_dict(nlp.make_doc(text), {}) for text, _ in NER_DATA]
    with pytest.raises(ValueError, match=r"none of the 6 reference docs has entity annotation"):
        nlp.initialize(lambda: unannotated)
    # annotated, but not one entity: a different cause
    no_entities = [Example.from_dict(nlp.make_doc(text), {"entities": []}) for text, _ in NER_DATA]
    with pytest.raises(ValueError, match=r"carry entity annotation .*, but no label"):
        nlp.initialize(lambda: no_entities)


def test_training_batch_without_annotation_warns(pos_nlp):
    """A batch without gold labels teaches nothing: a warning (not an error:
    a corpus mixing docs annotated for different tasks can give one)."""
    unannotated = [Example.from_dict(pos_nlp.make_doc(text), {}) for text, _ in POS_DATA[:2]]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=TAGGER)
        losses = pos_nlp.update(pos_examples(pos_nlp)[:2])  # annotated: no warning
    assert losses[TAGGER] > 0.0
    with pytest.warns(UserWarning, match=r"no token of this training batch has a gold pos label.*token.pos_"):
        losses = pos_nlp.update(unannotated)
    assert losses[TAGGER] == 0.0
