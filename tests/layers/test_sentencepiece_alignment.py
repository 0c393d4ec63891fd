"""SentencePiece (XLM-R / multilingual-e5 style) tokenizers: a piece that
starts with the metaspace (`▁world`) has offsets covering the space before
its word. Every spaCy token must still get its own first piece, and the
component must label every token, record an exit layer and keep doc.text,
also when long docs are cut into overlapping spans. A tiny unigram
tokenizer is built in the test (helpers/sentencepiece_bert.py)."""
from typing import List

import pytest
import spacy
from spacy.tokens import Doc, DocBin
from spacy_transformers.span_getters import configure_strided_spans

from helpers.sentencepiece_bert import SPACING_TEXTS, write_sentencepiece_bert
from helpers.tiny_bert import PLAIN_OFFRAMPS, POS_DATA, train_on
from spacy_earlyexit.layers.wordpieces import tokenize_docs

N_LAYERS = 3
METASPACE = "\u2581"


@pytest.fixture(scope="module")
def sentencepiece_bert(tmp_path_factory):
    return write_sentencepiece_bert(tmp_path_factory.mktemp("sp_bert"), n_layers=N_LAYERS)


@pytest.fixture(scope="module")
def tokenizer(sentencepiece_bert):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(sentencepiece_bert), use_fast=True)


def spaced_docs() -> List[Doc]:
    nlp = spacy.blank("en")
    return [nlp.make_doc(text) for text in SPACING_TEXTS]


def first_piece_texts(docs: List[Doc], tokenizer, window: int, stride: int):
    """(token, text of the piece that represents it) for every token that is
    a word of its chosen span."""
    pieces = tokenize_docs(docs, configure_strided_spans(window, stride), tokenizer, 64)
    found = []
    for doc, sources in zip(docs, pieces.token_source):
        for token, (span_index, slot) in zip(doc, sources.tolist()):
            if span_index < 0:
                found.append((token, None))
                continue
            span = pieces.span(span_index)
            assert span.word_tokens[slot] == token.i
            piece_id = span.input_ids[span.word_piece[slot]]
            found.append((token, tokenizer.convert_ids_to_tokens(piece_id)))
    return found


def test_the_tokenizer_puts_the_space_into_the_next_piece(tokenizer):
    """The premise: `▁Paris` covers the space before `Paris`."""
    encoded = tokenizer("in Paris", return_offsets_mapping=True)
    pieces = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    assert pieces[2] == METASPACE + "Paris"
    assert tuple(encoded["offset_mapping"][2]) == (2, 8)


@pytest.mark.parametrize("window,stride", [(128, 96), (4, 3), (2, 1)])
def test_every_token_gets_its_own_first_piece(tokenizer, window, stride):
    """Every non-space token is a word, and the piece that represents it
    begins with the token's own first characters (after the metaspace), not
    with those of a neighbour; whitespace tokens own no piece."""
    docs = spaced_docs()
    found = first_piece_texts(docs, tokenizer, window, stride)
    assert found, "no tokens"
    for token, piece in found:
        if token.is_space:
            assert piece is None, (token.doc.text, token.i)
            continue
        assert piece is not None, (token.doc.text, token.text)
        assert token.text.startswith(piece.lstrip(METASPACE)), (token.text, piece)
        assert piece.lstrip(METASPACE), (token.text, piece)


def test_expected_pieces_by_hand(tokenizer):
    doc = spacy.blank("en").make_doc("  Alice lives in Paris .  ")
    found = dict((t.i, p) for t, p in first_piece_texts([doc], tokenizer, 128, 96))
    words = {t.i: t.text for t in doc if not t.is_space}
    assert {i: found[i] for i in words} == {i: METASPACE + text for i, text in words.items()}


def sentencepiece_pipeline(bert, get_spans):
    nlp = spacy.blank("en")
    model = {
        **PLAIN_OFFRAMPS,
        "@architectures": "spacy_earlyexit.EarlyExitTransformer.v1",
        "name": str(bert),
        "freeze_embeddings": True,
        "layer_lr_decay": 0.9,
        "get_spans": get_spans,
    }
    nlp.add_pipe("earlyexit_tagger", config={"task": "pos", "model": model})
    from spacy.training import Example

    examples = [Example.from_dict(nlp.make_doc(text), {"pos": gold}) for text, gold in POS_DATA]
    return train_on(nlp, examples, steps=3)


@pytest.fixture(scope="module", params=[(128, 96), (3, 2)], ids=["one-span", "strided"])
def pipeline(request, sentencepiece_bert):
    window, stride = request.param
    spans = {"@span_getters": "spacy-transformers.strided_spans.v1", "window": window, "stride": stride}
    return sentencepiece_pipeline(sentencepiece_bert, spans)


@pytest.mark.parametrize("mode", ["off", "sentence", "token"])
def test_every_token_gets_a_label_and_an_exit_layer(pipeline, mode):
    config = {"earlyexit_tagger": {"exit_mode": mode, "threshold": 0.5, "window": 1}}
    docs = list(pipeline.pipe(SPACING_TEXTS, batch_size=3, component_cfg=config))
    for text, doc in zip(SPACING_TEXTS, docs):
        assert doc.text == text
        layers = [t._.exit_layer for t in doc]
        assert all(isinstance(layer, int) and 1 <= layer <= N_LAYERS for layer in layers), layers
        assert all(t.pos_ for t in doc), [(t.text, t.pos_) for t in doc]
        assert all(t.pos_ == "SPACE" for t in doc if t.is_space)
        if mode == "off" and not all(t.is_space for t in doc):
            assert set(layers) == {N_LAYERS}, (text, layers)


def test_round_trip_keeps_the_tokenizer_and_the_results(pipeline, tmp_path):
    """Saved and loaded (the tokenizer travels as its files): same labels and
    exit layers, and DocBin with user data keeps the exit layers."""
    config = {"earlyexit_tagger": {"exit_mode": "token", "threshold": 0.5, "window": 1}}
    before = list(pipeline.pipe(SPACING_TEXTS, component_cfg=config))
    pipeline.to_disk(tmp_path / "nlp")
    loaded = spacy.load(tmp_path / "nlp")
    after = list(loaded.pipe(SPACING_TEXTS, component_cfg=config))
    assert [[(t.pos_, t._.exit_layer) for t in d] for d in before] == [
        [(t.pos_, t._.exit_layer) for t in d] for d in after
    ]
    tagger = loaded.get_pipe("earlyexit_tagger")
    assert type(tagger.model.shims[0].tokenizer).__name__ == "XLMRobertaTokenizerFast"
    restored = list(DocBin(docs=after, store_user_data=True).get_docs(loaded.vocab))
    assert [[t._.exit_layer for t in d] for d in restored] == [[t._.exit_layer for t in d] for d in after]
