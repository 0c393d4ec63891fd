"""piece_split: SentencePiece pieces cut at spaCy token boundaries, checked
against the tiny Unigram vocabulary's single characters (a reference that
does not use the splitter) and the alignment's own invariants."""
from pathlib import Path

import pytest
import spacy
from spacy_transformers.span_getters import configure_strided_spans

from helpers.tiny_sentencepiece import SP_SEGMENT_DATA, write_tiny_sentencepiece_bert
from spacy_earlyexit.layers.piece_split import check_piece_split, cut_points
from spacy_earlyexit.layers.wordpieces import tokenize_docs

ZH = spacy.blank("zh")
TEXTS = [line.replace("|", "") for line in SP_SEGMENT_DATA] + ["北京 在上海\n工作iPhone12", "", "  "]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(write_tiny_sentencepiece_bert(tmp_path_factory.mktemp("sp")))


def pieces_of(tokenizer, text: str, piece_split: str):
    doc = ZH.make_doc(text)
    pieces = tokenize_docs([doc], configure_strided_spans(128, 96), tokenizer, 64, piece_split)
    return doc, pieces


def test_natural_pieces_cross_character_tokens(tokenizer):
    """The premise: without splitting, "在上" and "海工" cover two characters
    each, so 上 and 工 have no piece of their own."""
    doc, pieces = pieces_of(tokenizer, "我在上海工作", "none")
    own = (pieces.token_source[0][:, 0] >= 0).tolist()
    assert own == [True, True, False, True, False, True]


@pytest.mark.parametrize("text", TEXTS)
def test_tokens_gives_every_character_its_own_piece(tokenizer, text):
    vocab = tokenizer.get_vocab()
    doc, pieces = pieces_of(tokenizer, text, "tokens")
    assert all(len(t.text) == 1 for t in doc if not t.is_space)
    if not pieces.n_spans:
        assert all(t.is_space for t in doc)
        return
    span = pieces.span(0)
    source = pieces.token_source[0]
    for token, (span_index, slot) in zip(doc, source):
        if token.is_space:  # may own an <unk> ("\n" is not in the tiny vocabulary)
            continue
        assert span_index == 0, token.text
        owned = [span.input_ids[p] for p, w in enumerate(span.piece_word) if w == slot]
        assert span.input_ids[span.word_piece[slot]] == owned[0]
        # the character's own piece ("▁" + itself, or itself with word-start
        # markers "▁" around it: a space's marker goes to the token before)
        strings = tokenizer.convert_ids_to_tokens(owned)
        assert [x for x in strings if x != "▁"] in ([token.text], ["▁" + token.text]), (token.text, strings)
        assert all(vocab[s] == i for s, i in zip(strings, owned))


def test_han_keeps_latin_pieces_and_none_changes_nothing(tokenizer):
    vocab = tokenizer.get_vocab()
    text = "我用iPhone12看新闻"
    _, han = pieces_of(tokenizer, text, "han")
    ids = han.span(0).input_ids
    assert vocab["iPhone"] in ids and vocab["12"] in ids  # not next to a Han character inside
    assert vocab["新闻"] not in ids and vocab["新"] in ids and vocab["闻"] in ids
    _, none = pieces_of(tokenizer, text, "none")
    encoded = tokenizer.backend_tokenizer.encode(text)
    assert none.span(0).input_ids == encoded.ids


def test_cut_points_and_settings():
    assert cut_points("在上海ab", [0, 1, 2, 3, 4], "tokens") == [1, 2, 3, 4]
    assert cut_points("在上海ab", [0, 1, 2, 3, 4], "han") == [1, 2, 3]
    with pytest.raises(ValueError, match="piece_split"):
        check_piece_split("characters")
