"""Chinese segmentation and NER on character docs with a SentencePiece
tokenizer whose multi-character pieces cross gold word and entity
boundaries (tests/helpers/tiny_sentencepiece.py): with piece_split "tokens"
the gold words and entities come back after training on them; with "none"
(first piece, the rest copy it) every character is still labelled, a piece is
never cut and an entity never split by the copy."""
from typing import List

import pytest
import spacy
from spacy.language import Language
from spacy.tokens import Doc
from spacy.training import Example

import spacy_earlyexit.pipeline.architectures  # noqa: F401 (v3 before the entry points are reinstalled)
from helpers.tiny_bert import PLAIN_OFFRAMPS, train_until_perfect as train
from helpers.tiny_sentencepiece import SP_NER_DATA, SP_SEGMENT_DATA, write_tiny_sentencepiece_bert

ZH = spacy.blank("zh")


@pytest.fixture(scope="module")
def sp_bert(tmp_path_factory):
    return write_tiny_sentencepiece_bert(tmp_path_factory.mktemp("sp_bert"))


def make_nlp(bert, task: str, piece_split: str, **v3_settings) -> Language:
    """A blank zh pipeline (one token per character) with the tagger on `bert`;
    v3_settings: more model settings (e.g. context off-ramps)."""
    nlp = spacy.blank("zh")
    model = {
        **PLAIN_OFFRAMPS,
        "@architectures": "spacy_earlyexit.EarlyExitTransformer.v1", "name": str(bert),
        "encoder_learn_rate_scale": 1.0, "offramp_dropout": 0.0, "piece_split": piece_split,
        "get_spans": {"@span_getters": "spacy-transformers.strided_spans.v1", "window": 128, "stride": 96},
        **v3_settings,
    }
    nlp.add_pipe("earlyexit_tagger", config={"task": task, "model": model})
    return nlp


def segment_examples(nlp: Language) -> List[Example]:
    examples = []
    for line in SP_SEGMENT_DATA:
        words = line.split("|")
        reference = Doc(nlp.vocab, words=words, spaces=[False] * len(words))
        examples.append(Example(nlp.make_doc(reference.text), reference))
    return examples


def ner_examples(nlp: Language) -> List[Example]:
    return [Example.from_dict(nlp.make_doc(text), {"entities": ents}) for text, ents in SP_NER_DATA]


@pytest.fixture(scope="module")
def segmenter(sp_bert) -> Language:
    nlp = make_nlp(sp_bert, "segment", "tokens")
    nlp.scores = train(nlp, segment_examples(nlp), "token_f")
    return nlp


def test_segmentation_round_trip_across_pieces(segmenter):
    """Gold words in, the same words out, also where a piece ("在上", "海工",
    "的首") crosses a word boundary."""
    assert segmenter.scores["token_f"] == 1.0
    for line in SP_SEGMENT_DATA:
        text = line.replace("|", "")
        doc = segmenter(text)
        assert doc.text == text
        assert [t.text for t in doc] == line.split("|")


def test_word_exit_layer_is_the_max_of_its_characters(segmenter):
    tagger = segmenter.get_pipe("earlyexit_tagger")
    texts = [line.replace("|", "") for line in SP_SEGMENT_DATA]
    setting = {"exit_mode": "token", "threshold": 0.3}
    outputs = tagger._predict(tagger.exit_settings.updated(**setting), [ZH.make_doc(t) for t in texts])
    docs = list(segmenter.pipe(texts, component_cfg={"earlyexit_tagger": setting}))
    for doc, exits in zip(docs, outputs.exit_layers):
        by_offset = {t.idx: int(e) for t, e in zip(ZH.make_doc(doc.text), exits)}
        for token in doc:
            assert token._.exit_layer == max(by_offset[i] for i in range(token.idx, token.idx + len(token)))


def test_first_piece_cannot_cut_a_piece(sp_bert):
    """piece_split "none": the characters after a piece's first copy it, so
    "在上" stays inside one word whatever the off-ramps say; the text and
    every character survive."""
    nlp = make_nlp(sp_bert, "segment", "none")
    train(nlp, segment_examples(nlp), "token_f", max_steps=50)
    doc = nlp("我在上海工作")
    assert doc.text == "我在上海工作"
    starts = {t.idx for t in doc}
    assert 2 not in starts and 4 not in starts  # inside "在上" and "海工"


@pytest.fixture(scope="module")
def ner_tokens(sp_bert) -> Language:
    nlp = make_nlp(sp_bert, "ner", "tokens")
    nlp.scores = train(nlp, ner_examples(nlp), "ents_f")
    return nlp


def test_ner_entities_start_and_end_inside_pieces(ner_tokens):
    """上海 starts inside the piece "在上" and ends inside "海工"."""
    assert ner_tokens.scores["ents_f"] == 1.0
    for text, ents in SP_NER_DATA:
        doc = ner_tokens(text)
        assert doc.text == text
        assert [(e.start_char, e.end_char, e.label_) for e in doc.ents] == [tuple(e) for e in ents]
        assert all(t.ent_iob_ in ("B", "I", "O") for t in doc)


def test_ner_first_piece_labels_every_character_and_never_splits(sp_bert):
    """piece_split "none": a piece's class is spread over its characters as
    one entity piece (B-X I-X ... L-X); every character gets an IOB value and
    no entity edge falls inside a piece."""
    nlp = make_nlp(sp_bert, "ner", "none")
    train(nlp, ner_examples(nlp), "ents_f", max_steps=100)
    tagger = nlp.get_pipe("earlyexit_tagger")
    for text, _ in SP_NER_DATA:
        doc = nlp(text)
        assert doc.text == text
        assert all(t.ent_iob_ in ("B", "I", "O") for t in doc)
        own = tagger.model.predict([ZH.make_doc(text)]).has_output[0]
        for ent in doc.ents:  # edges on piece edges: the entity starts at an own piece,
            assert own[ent.start]  # and the character after it (if any) has its own piece
            assert ent.end == len(doc) or own[ent.end] or doc[ent.end].is_space
    # the forced case: a piece classed U-LOC gives one entity over both characters
    doc = ZH.make_doc("我在上海工作")
    outputs = tagger.model.predict([doc])
    classes = tagger.classes
    outputs.labels[0][:] = classes.index("O")
    outputs.labels[0][1] = classes.index("U-LOC")  # "在上" (owned by 在)
    outputs.labels[0][2] = classes.index("U-LOC")  # 上 copies it
    tagger.set_annotations([doc], outputs)
    assert [(e.text, e.label_) for e in doc.ents] == [("在上", "LOC")]


CONTEXT_OFFRAMPS = {"offramp_context_layers": "all", "offramp_context": 1, "offramp_hidden": 16}


@pytest.mark.parametrize("task,key", [("segment", "token_f"), ("ner", "ents_f")])
def test_context_offramps_on_split_pieces(sp_bert, task, key):
    """Context off-ramps (the zh configs' heads) read a character's
    neighbours, which piece_split "tokens" gives pieces of their own: the
    gold words and entities come back, and under token exit nlp.pipe gives
    what one doc at a time gives."""
    nlp = make_nlp(sp_bert, task, "tokens", **CONTEXT_OFFRAMPS)
    examples = segment_examples(nlp) if task == "segment" else ner_examples(nlp)
    assert train(nlp, examples, key)[key] == 1.0
    tagger = nlp.get_pipe("earlyexit_tagger")
    assert type(tagger.model.shims[0].encoder.offramps[0]).__name__ == "ContextOffRamp"
    texts = [example.reference.text for example in examples]
    for doc, example in zip(nlp.pipe(texts), examples):
        assert doc.text == example.reference.text
        if task == "segment":
            assert [t.text for t in doc] == [t.text for t in example.reference]
        else:
            assert [(e.start_char, e.end_char, e.label_) for e in doc.ents] == [
                (e.start_char, e.end_char, e.label_) for e in example.reference.ents
            ]

    def annotations(docs):
        return [[(t.text, t.ent_iob_, t.ent_type_, t._.exit_layer) for t in doc] for doc in docs]

    setting = {"exit_mode": "token", "threshold": 0.3, "window": 1}
    batched = annotations(nlp.pipe(texts, component_cfg={"earlyexit_tagger": setting}))
    singles = annotations(nlp(text, component_cfg={"earlyexit_tagger": setting}) for text in texts)
    assert batched == singles
    assert len({layer for doc in batched for (*_, layer) in doc}) > 1  # words leave at several layers
