"""Bad and unusual input: empty and whitespace docs, very long docs and
tokens, unknown labels, unloadable models, use before initialize, existing
annotation, bad per-call settings. Each case is its own test."""
import json
from typing import Dict, List, Optional

import numpy
import pytest
import spacy
import torch
from spacy.language import Language
from spacy.tokens import Doc, Span
from spacy.training import Example
from spacy.util import fix_random_seed

from spacy_earlyexit.layers.early_exit_transformer import train_docs
from helpers.tiny_bert import PLAIN_OFFRAMPS, NER_DATA, POS_DATA, train_on


TAGGER = "earlyexit_tagger"


def make_nlp(bert, task: str = "ner", model: Optional[Dict] = None, **config) -> Language:
    nlp = spacy.blank("en")
    nlp.add_pipe(TAGGER, config={"task": task, "model": {**PLAIN_OFFRAMPS, "name": str(bert), **(model or {})}, **config})
    return nlp


def ner_examples(nlp: Language, data=NER_DATA) -> List[Example]:
    return [Example.from_dict(nlp.make_doc(text), {"entities": ents}) for text, ents in data]


def pos_examples(nlp: Language) -> List[Example]:
    return [Example.from_dict(nlp.make_doc(text), {"pos": tags}) for text, tags in POS_DATA]


def train(nlp: Language, examples: List[Example], steps: int) -> Language:
    return train_on(nlp, examples, steps)


@pytest.fixture(scope="module")
def n_layers(tiny_bert) -> int:
    return json.loads((tiny_bert / "config.json").read_text())["num_hidden_layers"]


@pytest.fixture(scope="module")
def ner_nlp(tiny_bert) -> Language:
    """Trained until it reproduces NER_DATA (checked in test_component.py)."""
    nlp = train(make_nlp(tiny_bert, "ner"), ner_examples(spacy.blank("en")), 250)
    for text, gold in NER_DATA:  # precondition for the tests that use the gold
        assert [(e.start_char, e.end_char, e.label_) for e in nlp(text).ents] == gold
    return nlp


@pytest.fixture(scope="module")
def pos_nlp(tiny_bert) -> Language:
    """Initialized, untrained: labels are arbitrary but must be assigned."""
    nlp = make_nlp(tiny_bert, "pos")
    fix_random_seed(0)
    nlp.initialize(lambda: pos_examples(nlp))
    return nlp


def ents_of(doc: Doc):
    return [(e.start, e.end, e.label_) for e in doc.ents]


# --- empty and whitespace docs ---------------------------------------------------


def test_empty_doc(ner_nlp):
    doc = ner_nlp("")
    assert len(doc) == 0
    assert doc.ents == ()
    assert doc._.exit_layers == []
    assert doc._.early_exit["exit_layer_mean"] == 0.0
    assert doc._.early_exit["flops"] == 0.0


def test_empty_doc_in_a_batch_changes_nothing_else(ner_nlp):
    alone = ner_nlp("Alice lives in Paris .")
    docs = list(ner_nlp.pipe(["", "Alice lives in Paris .", " ", ""]))
    assert [len(d) for d in docs] == [0, 5, 1, 0]
    assert ents_of(docs[1]) == ents_of(alone) == [(0, 1, "PER"), (3, 4, "LOC")]
    assert docs[1]._.exit_layers == alone._.exit_layers
    assert docs[1]._.early_exit == alone._.early_exit


def test_empty_examples_in_training_and_evaluation(ner_nlp):
    nlp = spacy.blank("en")
    empty = Example.from_dict(nlp.make_doc(""), {"entities": []})
    tagger = ner_nlp.get_pipe(TAGGER)
    assert tagger.update([empty]) == {TAGGER: 0.0}
    # empty docs add nothing to the loss: the batch's loss is the loss of its
    # non-empty examples alone (computed by get_loss, without an update)
    batch = ner_examples(nlp)[:2]
    torch.manual_seed(0)  # the same off-ramp dropout masks in every pass
    outputs, _ = train_docs(tagger.model, [eg.predicted for eg in [empty] + batch + [empty]])
    with_empty, _ = tagger.get_loss([empty] + batch + [empty], outputs)
    torch.manual_seed(0)
    outputs, _ = train_docs(tagger.model, [eg.predicted for eg in batch])
    alone, _ = tagger.get_loss(batch, outputs)
    assert with_empty == pytest.approx(alone, rel=1e-5) and alone > 0.0
    torch.manual_seed(0)
    losses = tagger.update([empty] + batch + [empty])
    assert losses[TAGGER] == pytest.approx(alone, rel=1e-4)
    scores = ner_nlp.evaluate([empty] + ner_examples(nlp))
    assert scores["ents_f"] is not None


def test_whitespace_only_doc_ner(ner_nlp, n_layers):
    doc = ner_nlp(Doc(ner_nlp.vocab, words=[" ", "\n\n", "\t", "  "], spaces=[False] * 4))
    assert doc.text == " \n\n\t  "
    assert doc.ents == ()
    assert [t.ent_iob_ for t in doc] == ["O"] * 4
    assert all(1 <= layer <= n_layers for layer in doc._.exit_layers)
    assert doc._.early_exit["flops"] == 0.0


def test_whitespace_only_doc_pos(pos_nlp, n_layers):
    doc = pos_nlp(Doc(pos_nlp.vocab, words=[" ", "\n", "  "], spaces=[False] * 3))
    assert [t.pos_ for t in doc] == ["SPACE"] * 3
    assert all(1 <= layer <= n_layers for layer in doc._.exit_layers)


def test_whitespace_tokens_between_words(ner_nlp, n_layers):
    """Extra spaces and newlines do not change the entities of the words."""
    doc = ner_nlp("Alice  lives \n in   Paris .")
    assert [t.text for t in doc if t.is_space] == [" ", "\n ", "  "]
    assert [(e.text, e.label_) for e in doc.ents] == [("Alice", "PER"), ("Paris", "LOC")]
    assert all(t.ent_iob_ == "O" for t in doc if t.is_space)
    assert doc._.exit_layers == [n_layers] * len(doc)


def test_tokens_the_tokenizer_drops_borrow_a_neighbour(ner_nlp, n_layers):
    """A zero-width space has no word piece: it gets a label and an exit layer."""
    doc = ner_nlp(Doc(ner_nlp.vocab, words=["Alice", "\u200b", "lives"]))
    assert all(t.ent_iob_ for t in doc)
    assert doc._.exit_layers == [n_layers] * 3
    doc = ner_nlp(Doc(ner_nlp.vocab, words=["\u200b", "\u200b"]))  # no piece at all
    assert [t.ent_iob_ for t in doc] == ["O", "O"]
    assert all(1 <= layer <= n_layers for layer in doc._.exit_layers)


# --- long input -----------------------------------------------------------------


def test_5000_token_doc_is_split_not_truncated(ner_nlp, n_layers):
    """max_position is 64 pieces: spans are strided and split. Every token gets
    a label and an exit layer, and the entities are those of the gold sentence
    (routing a span's output to the wrong tokens would shift them; the model,
    trained on short sentences, may miss a few in long context)."""
    sentence, gold = NER_DATA[0]  # "Alice lives in Paris ." PER, LOC
    text = " ".join([sentence] * 1000)
    doc = ner_nlp(text)
    assert len(doc) == 5000
    assert doc.text == text
    assert all(t.ent_iob_ in ("B", "I", "O") for t in doc)
    assert len(doc._.exit_layers) == 5000
    assert set(doc._.exit_layers) == {n_layers}
    expected = ["PER", "", "", "LOC", ""] * 1000
    agreement = sum(t.ent_type_ == gold for t, gold in zip(doc, expected)) / len(doc)
    assert agreement >= 0.98  # 1.0 with this seed; a shift by one token gives 0.2


def test_5000_token_doc_with_token_exit(ner_nlp, n_layers):
    text = " ".join([NER_DATA[1][0]] * 1000)
    doc = ner_nlp(text, component_cfg={TAGGER: {"exit_mode": "token", "threshold": 0.5, "window": 2}})
    assert doc.text == text
    assert all(t.ent_iob_ in ("B", "I", "O") for t in doc)
    assert all(1 <= layer <= n_layers for layer in doc._.exit_layers)
    assert 0 < doc._.early_exit["flops"] <= doc._.early_exit["flops_full"]


def test_5000_token_doc_pos(pos_nlp, n_layers):
    text = " ".join([POS_DATA[2][0]] * 1000)
    doc = pos_nlp(text)
    assert doc.text == text
    assert all(t.pos_ for t in doc)
    assert set(doc._.exit_layers) == {n_layers}


def test_a_token_longer_than_the_encoder(ner_nlp, n_layers):
    """One token of 98 word pieces (max 64): it keeps its start and a label.
    (BERT's tokenizer makes a word of over 100 characters one [UNK].)"""
    long_word = "ab" * 49
    assert len(ner_nlp.get_pipe(TAGGER).model.shims[0].tokenizer.tokenize(long_word)) == 98
    doc = ner_nlp(Doc(ner_nlp.vocab, words=["Alice", long_word, "Paris", "."]))
    assert all(t.ent_iob_ for t in doc)
    assert doc._.exit_layers == [n_layers] * 4
    assert doc[0].ent_type_ == "PER"


# --- labels -----------------------------------------------------------------------


def test_training_label_unknown_at_initialize(tiny_bert):
    nlp = make_nlp(tiny_bert, "ner")
    only_per = [(text, [e for e in ents if e[2] == "PER"]) for text, ents in NER_DATA]
    nlp.initialize(lambda: ner_examples(nlp, only_per))
    assert nlp.get_pipe(TAGGER).labels == ("PER",)
    with pytest.raises(ValueError, match=r"LOC.*not seen at initialize"):
        nlp.update(ner_examples(nlp))


def test_training_tag_unknown_at_initialize(tiny_bert):
    nlp = make_nlp(tiny_bert, "tag")
    examples = [Example.from_dict(nlp.make_doc(t), {"tags": tags}) for t, tags in POS_DATA[:2]]
    nlp.initialize(lambda: examples)
    unseen = Example.from_dict(nlp.make_doc("The weather"), {"tags": ["DET", "NOUN"]})
    with pytest.raises(ValueError, match="'DET'"):
        nlp.update([unseen])


def test_add_label_after_initialize_is_refused(pos_nlp):
    with pytest.raises(ValueError, match="INTJ"):
        pos_nlp.get_pipe(TAGGER).add_label("INTJ")


def test_initialize_without_labels(tiny_bert):
    nlp = make_nlp(tiny_bert, "ner")
    with pytest.raises(ValueError, match="no ner labels"):
        nlp.initialize(lambda: ner_examples(nlp, [("The weather is nice .", [])]))


def test_gold_tokenization_that_differs(ner_nlp):
    """Gold tokens that do not match the predicted ones are aligned, not a crash."""
    nlp = spacy.blank("en")
    predicted = Doc(nlp.vocab, words=["Alice", "lives", "in", "Paris."])
    reference = Doc(nlp.vocab, words=["Alice", "lives", "in", "Paris", "."])
    reference.ents = [Span(reference, 0, 1, "PER"), Span(reference, 3, 4, "LOC")]
    example = Example(predicted, reference)
    tagger = ner_nlp.get_pipe(TAGGER)
    # "Alice" aligns one-to-one; "Paris." covers two gold tokens: no gold class
    assert tagger.task.gold_classes(example) == ["U-PER", "O", "O", None]
    torch.manual_seed(0)
    outputs, _ = train_docs(tagger.model, [predicted])
    loss, d_logits = tagger.get_loss([example], outputs)
    assert numpy.isfinite(loss) and loss > 0.0
    assert (d_logits[:, 3] == 0).all() and (numpy.abs(d_logits[:, :3]).sum(-1) > 0).all()
    torch.manual_seed(0)
    assert tagger.update([example])[TAGGER] == pytest.approx(loss, rel=1e-4)


# --- the model cannot be loaded ---------------------------------------------------


@pytest.mark.parametrize("name", ["/nonexistent/folder/bert", "fake-org/no-such-bert-model"])
def test_model_that_cannot_be_loaded(name):
    nlp = spacy.blank("en")
    nlp.add_pipe(TAGGER, config={"task": "ner", "model": {**PLAIN_OFFRAMPS, "name": name}})
    with pytest.raises(ValueError) as error:
        nlp.initialize(lambda: ner_examples(nlp))
    message = str(error.value)
    assert repr(name) in message
    assert "offline" in message


def test_folder_without_a_model(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    nlp = spacy.blank("en")
    nlp.add_pipe(TAGGER, config={"task": "ner", "model": {**PLAIN_OFFRAMPS, "name": str(tmp_path)}})
    with pytest.raises(ValueError, match="could not load the transformer"):
        nlp.initialize(lambda: ner_examples(nlp))


def test_remote_code_is_refused(tiny_bert):
    nlp = make_nlp(tiny_bert, "ner", model={"transformer_config": {"trust_remote_code": True}})
    with pytest.raises(ValueError, match="remote code"):
        nlp.initialize(lambda: ner_examples(nlp))


# --- use before initialize --------------------------------------------------------


def test_predict_before_initialize(tiny_bert):
    nlp = make_nlp(tiny_bert, "ner")
    with pytest.raises(ValueError, match="not initialized"):
        nlp("Alice lives in Paris .")
    with pytest.raises(ValueError, match="not initialized"):
        list(nlp.pipe(["Alice lives in Paris ."]))
    with pytest.raises(ValueError, match="not initialized"):
        nlp.get_pipe(TAGGER).predict([nlp.make_doc("Alice")])


def test_update_before_initialize(tiny_bert):
    nlp = make_nlp(tiny_bert, "ner")
    with pytest.raises(ValueError, match="not initialized"):
        nlp.update(ner_examples(nlp))


# --- existing annotation ----------------------------------------------------------


def test_existing_entities_with_overwrite_false(ner_nlp):
    """Entities of a label the tagger does not know, set by an earlier step,
    survive; the tagger adds its own only where they do not overlap."""
    assert ner_nlp.get_pipe(TAGGER).cfg["overwrite"] is False
    texts = ["Alice lives in Paris .", "Bob visited London yesterday ."]
    docs = [ner_nlp.make_doc(text) for text in texts]
    docs[0].ents = [Span(docs[0], 0, 5, "SENTENCE")]  # covers everything
    docs[1].ents = [Span(docs[1], 1, 2, "ACTION"), Span(docs[1], 3, 4, "TIME")]
    docs = list(ner_nlp.pipe(docs))
    assert ents_of(docs[0]) == [(0, 5, "SENTENCE")]
    assert ents_of(docs[1]) == [(0, 1, "PER"), (1, 2, "ACTION"), (2, 3, "LOC"), (3, 4, "TIME")]


# --- per-call settings --------------------------------------------------------------


@pytest.mark.parametrize("use_pipe", [False, True], ids=["call", "pipe"])
def test_override_with_unknown_setting(ner_nlp, use_pipe):
    cfg = {TAGGER: {"treshold": 0.2}}
    with pytest.raises(ValueError, match="treshold"):
        if use_pipe:
            list(ner_nlp.pipe(["Alice lives in Paris ."], component_cfg=cfg))
        else:
            ner_nlp("Alice lives in Paris .", component_cfg=cfg)


@pytest.mark.parametrize("threshold", [1.5, -0.1, float("nan"), "0.2"])
@pytest.mark.parametrize("use_pipe", [False, True], ids=["call", "pipe"])
def test_override_with_out_of_range_threshold(ner_nlp, use_pipe, threshold):
    cfg = {TAGGER: {"exit_mode": "token", "threshold": threshold}}
    with pytest.raises(ValueError, match="threshold"):
        if use_pipe:
            list(ner_nlp.pipe(["Alice lives in Paris ."], component_cfg=cfg))
        else:
            ner_nlp("Alice lives in Paris .", component_cfg=cfg)


@pytest.mark.parametrize(
    "setting,value",
    [
        ("window", -1),
        ("window", 1.5),
        ("exit_mode", "fast"),
        ("sentence_score", "median"),
        ("window_includes_exited", "yes"),
        ("threshold_multipliers", [1.0, 2.0]),  # the encoder has 3 layers
        ("threshold_multipliers", [1.0, -1.0, 1.0]),
    ],
)
def test_override_with_bad_value_names_the_setting(ner_nlp, setting, value):
    with pytest.raises(ValueError, match=setting):
        ner_nlp("Alice lives in Paris .", component_cfg={TAGGER: {setting: value}})


def test_override_applies_to_one_call_only(ner_nlp, n_layers):
    tagger = ner_nlp.get_pipe(TAGGER)
    saved = tagger.exit_settings
    doc = ner_nlp("Alice lives in Paris .", component_cfg={TAGGER: {"exit_mode": "token", "threshold": 1.0}})
    assert doc._.exit_layers == [1] * 5
    assert tagger.exit_settings == saved
    assert ner_nlp("Alice lives in Paris .")._.exit_layers == [n_layers] * 5


def test_failed_configure_exit_changes_nothing(ner_nlp):
    tagger = ner_nlp.get_pipe(TAGGER)
    saved = tagger.exit_settings
    with pytest.raises(ValueError, match="threshold"):
        tagger.configure_exit(exit_mode="token", threshold=2.0)
    with pytest.raises(ValueError, match="threshold_multipliers"):
        tagger.configure_exit(threshold_multipliers=[1.0])
    with pytest.raises(ValueError, match="speed"):
        tagger.configure_exit(speed=3)
    assert tagger.exit_settings == saved


# --- saving before initialize, corrupt files -----------------------------------------


def test_save_before_initialize(tiny_bert, tmp_path):
    nlp = make_nlp(tiny_bert, "ner")
    with pytest.raises(ValueError, match="not initialized"):
        nlp.to_disk(tmp_path / "pipeline")


def test_corrupt_model_data(pos_nlp, tmp_path):
    shim = pos_nlp.get_pipe(TAGGER).model.shims[0]
    data = shim.to_bytes()
    with pytest.raises(ValueError, match="corrupt or truncated"):
        shim.__class__().from_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="saved by spacy-earlyexit"):
        shim.__class__().from_bytes(b"\x80")  # an empty msgpack map
    pos_nlp.to_disk(tmp_path / "pipeline")
    model_file = tmp_path / "pipeline" / TAGGER / "model"
    model_file.write_bytes(model_file.read_bytes()[:1000])
    with pytest.raises(ValueError):
        spacy.load(tmp_path / "pipeline")
