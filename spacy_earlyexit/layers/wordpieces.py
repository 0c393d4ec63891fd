"""From spaCy docs to word-piece tensors, and from word outputs back to tokens.

Spans come from a spacy-transformers span getter; each span is tokenized on
its own (with [CLS]/[SEP]) by the fast tokenizer's Rust backend. A span whose
word pieces exceed the encoder's maximum length is split in two, recursively,
so that no token is ever truncated away. A token that appears in several
(overlapping) spans takes its output from the span in which it sits farthest
from an edge.

Pieces are aligned to tokens by character offsets with the rule of
spacy-transformers' `get_span2wp_from_offset_mapping` (a token covers its
characters and the one after it; a later token overrides), computed for the
whole batch at once in flat arrays instead of span by span: a piece is owned
by the first token it overlaps, and a token that owns no piece (whitespace,
characters the tokenizer drops, a piece already owned by its neighbour) is
no word of the encoder. `tests/test_wordpieces.py` checks this against
spacy-transformers' function on every span.
"""
from dataclasses import dataclass
from itertools import chain
from typing import Callable, Dict, List, Sequence, Tuple

import numpy
import torch
from spacy.attrs import IDX, LENGTH
from spacy.tokens import Doc, Span

from ..model import EncoderBatch

SpanGetter = Callable[[List[Doc]], List[List[Span]]]


def _segment_positions(counts: numpy.ndarray) -> numpy.ndarray:
    """[sum(counts)] position of each element within its segment:
    counts [3, 2] -> [0, 1, 2, 0, 1]."""
    counts = numpy.asarray(counts, dtype="int64")
    starts = numpy.cumsum(counts) - counts
    return numpy.arange(int(counts.sum()), dtype="int64") - numpy.repeat(starts, counts)


def _offsets(counts: numpy.ndarray) -> numpy.ndarray:
    """[n + 1] segment boundaries of segments of the given sizes."""
    offsets = numpy.zeros(len(counts) + 1, dtype="int64")
    numpy.cumsum(counts, out=offsets[1:])
    return offsets


@dataclass
class SpanPieces:
    """One tokenized span, as lists (for inspection; see DocPieces.span).

    doc_index: which doc of the batch it comes from; start, end: token offsets
    in the doc. input_ids: [T] piece ids including special pieces.
    word_tokens: [W] doc token index of each word; word_piece: [W] its
    representative piece; piece_word: [T] owning word slot or -1;
    word_n_pieces: [W] pieces owned by each word.
    """

    doc_index: int
    start: int
    end: int
    input_ids: List[int]
    word_tokens: List[int]
    word_piece: List[int]
    piece_word: List[int]
    word_n_pieces: List[int]


@dataclass
class DocPieces:
    """A batch of docs as tokenized spans, in flat arrays.

    S spans (each with at least one word), P pieces, W words; the pieces and
    words of span s are piece_offsets[s]:piece_offsets[s + 1] and
    word_offsets[s]:word_offsets[s + 1].

    span_doc, span_start, span_end: [S] int, the doc of each span and its
        token offsets in the doc.
    piece_offsets: [S + 1]; input_ids: [P] piece ids, special pieces included.
    piece_word: [P] the slot (within its span) of the word owning each piece,
        or -1 ([CLS], [SEP], pieces no token owns).
    word_offsets: [S + 1]; word_token: [W] doc token index of each word;
    word_piece: [W] position (within its span) of the word's first piece;
    word_n_pieces: [W] pieces owned by each word.
    token_sources: [N, 2] int over the N tokens of all docs, one doc after
        another: (span, word slot) giving each token's output, or (-1, -1)
        for a token with no word piece of its own.
    token_offsets: [D + 1] where each doc's tokens start in token_sources.
    """

    span_doc: numpy.ndarray
    span_start: numpy.ndarray
    span_end: numpy.ndarray
    piece_offsets: numpy.ndarray
    input_ids: numpy.ndarray
    piece_word: numpy.ndarray
    word_offsets: numpy.ndarray
    word_token: numpy.ndarray
    word_piece: numpy.ndarray
    word_n_pieces: numpy.ndarray
    token_sources: numpy.ndarray
    token_offsets: numpy.ndarray

    @property
    def n_spans(self) -> int:
        return len(self.span_doc)

    @property
    def n_words(self) -> int:
        return len(self.word_token)

    @property
    def token_source(self) -> List[numpy.ndarray]:
        """token_sources split by doc: per doc, [n_tokens, 2]."""
        return numpy.split(self.token_sources, self.token_offsets[1:-1]) if len(self.token_offsets) > 1 else []

    @property
    def span_lengths(self) -> numpy.ndarray:
        """[S] pieces of each span (special pieces included)."""
        return numpy.diff(self.piece_offsets)

    def span(self, index: int) -> SpanPieces:
        """Span `index` as lists."""
        pieces = slice(self.piece_offsets[index], self.piece_offsets[index + 1])
        words = slice(self.word_offsets[index], self.word_offsets[index + 1])
        return SpanPieces(
            doc_index=int(self.span_doc[index]),
            start=int(self.span_start[index]),
            end=int(self.span_end[index]),
            input_ids=self.input_ids[pieces].tolist(),
            word_tokens=self.word_token[words].tolist(),
            word_piece=self.word_piece[words].tolist(),
            piece_word=self.piece_word[pieces].tolist(),
            word_n_pieces=self.word_n_pieces[words].tolist(),
        )

    def words_of(self, span_indices: Sequence[int]) -> numpy.ndarray:
        """[W'] indices of the words of the given spans, in that order."""
        spans = numpy.asarray(span_indices, dtype="int64")
        counts = self.word_offsets[spans + 1] - self.word_offsets[spans]
        return numpy.repeat(self.word_offsets[spans], counts) + _segment_positions(counts)

    def encoder_batch(self, span_indices: Sequence[int], pad_id: int) -> EncoderBatch:
        """Pad the chosen spans into one EncoderBatch (tensors on the CPU)."""
        spans = numpy.asarray(span_indices, dtype="int64")
        lengths = self.piece_offsets[spans + 1] - self.piece_offsets[spans]
        n_rows, length = len(spans), int(lengths.max())
        rows = numpy.repeat(numpy.arange(n_rows), lengths)
        columns = _segment_positions(lengths)
        source = numpy.repeat(self.piece_offsets[spans], lengths) + columns
        n_words = self.word_offsets[spans + 1] - self.word_offsets[spans]
        words = self.words_of(spans)
        first_word = numpy.cumsum(n_words) - n_words  # of each row, in the batch
        owners = self.piece_word[source]
        input_ids = numpy.full((n_rows, length), pad_id, dtype="int64")
        input_ids[rows, columns] = self.input_ids[source]
        piece_word = numpy.full((n_rows, length), -1, dtype="int64")
        piece_word[rows, columns] = numpy.where(owners >= 0, owners + first_word[rows], -1)
        return EncoderBatch(
            input_ids=torch.from_numpy(input_ids),
            lengths=torch.from_numpy(lengths),
            word_span=torch.from_numpy(numpy.repeat(numpy.arange(n_rows), n_words)),
            word_slot=torch.from_numpy(_segment_positions(n_words)),
            word_piece=torch.from_numpy(self.word_piece[words]),
            piece_word=torch.from_numpy(piece_word),
        )


def max_pieces_of(tokenizer, config) -> int:
    """The longest piece sequence the encoder accepts (special pieces included)."""
    limits = [int(getattr(config, "max_position_embeddings", 512))]
    # RoBERTa-style position ids start after the padding index
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limits[0] -= int(getattr(config, "pad_token_id", 1)) + 1
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < 100_000:
        limits.append(model_max)
    return min(limits)


def encode_texts(tokenizer, texts: List[str]) -> Tuple[List[List[int]], List[List[Tuple[int, int]]]]:
    """Piece ids and character offsets of each text, special pieces added.

    Calls the Rust backend directly when it neither truncates nor pads (what
    `tokenizer(texts, return_offsets_mapping=True)` would set up, without its
    per-text conversion to Python dicts); otherwise goes through the
    tokenizer's own call.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.truncation is None and backend.padding is None:
        encodings = backend.encode_batch(texts, add_special_tokens=True)
        return [e.ids for e in encodings], [e.offsets for e in encodings]
    encoded = tokenizer(
        texts,
        add_special_tokens=True,
        return_offsets_mapping=True,
        return_attention_mask=False,
        return_token_type_ids=False,
    )
    return encoded["input_ids"], encoded["offset_mapping"]


def tokenize_docs(
    docs: Sequence[Doc], get_spans: SpanGetter, tokenizer, max_pieces: int
) -> DocPieces:
    """Tokenize the spans of `docs` and align them to spaCy tokens."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"{type(tokenizer).__name__} is not a fast (Rust) tokenizer; spacy-earlyexit "
            "needs character offsets to align word pieces with spaCy tokens"
        )
    pending: List[Tuple[int, Span]] = []
    for doc_index, (doc, spans) in enumerate(zip(docs, get_spans(list(docs)))):
        pending.extend((doc_index, span) for span in spans if len(span))
    texts: Dict[int, str] = {}  # Doc.text joins the tokens: once per doc
    for doc_index, _ in pending:
        if doc_index not in texts:
            texts[doc_index] = docs[doc_index].text
    kept: List[Tuple[int, Span]] = []
    kept_ids: List[List[int]] = []
    kept_offsets: List[List[Tuple[int, int]]] = []
    while pending:
        all_ids, all_offsets = encode_texts(
            tokenizer, [texts[d][span.start_char : span.end_char] for d, span in pending]
        )
        too_long: List[Tuple[int, Span]] = []
        for (doc_index, span), ids, offsets in zip(pending, all_ids, all_offsets):
            if len(ids) > max_pieces and len(span) > 1:
                middle = len(span) // 2
                too_long.append((doc_index, span[:middle]))
                too_long.append((doc_index, span[middle:]))
                continue
            if len(ids) > max_pieces:  # one token longer than the encoder: keep its start
                ids = list(ids[: max_pieces - 1]) + [ids[-1]]
                offsets = list(offsets[: max_pieces - 1]) + [(0, 0)]
            kept.append((doc_index, span))
            kept_ids.append(ids)
            kept_offsets.append(offsets)
        pending = too_long
    return _align(docs, kept, kept_ids, kept_offsets)


def _align(
    docs: Sequence[Doc],
    spans: List[Tuple[int, Span]],
    ids: List[List[int]],
    offsets: List[List[Tuple[int, int]]],
) -> DocPieces:
    """Align the pieces of every span to its tokens, all spans at once.

    The characters of all span texts are laid end to end, each span's text
    followed by one extra position (a token covers its characters and the one
    after it, as in spacy-transformers); the token of a character is the last
    token starting at or before it, if it reaches that far.
    """
    n_spans = len(spans)
    span_doc = numpy.asarray([d for d, _ in spans], dtype="int64")
    span_start = numpy.asarray([s.start for _, s in spans], dtype="int64")
    span_end = numpy.asarray([s.end for _, s in spans], dtype="int64")
    n_pieces = numpy.asarray([len(i) for i in ids], dtype="int64")
    input_ids = numpy.fromiter(chain.from_iterable(ids), dtype="int64", count=int(n_pieces.sum()))
    piece_chars = numpy.fromiter(
        chain.from_iterable(chain.from_iterable(offsets)), dtype="int64", count=2 * int(n_pieces.sum())
    ).reshape(-1, 2)
    # tokens of every span, end to end: character start and length
    tables: Dict[int, numpy.ndarray] = {}
    for doc_index in numpy.unique(span_doc).tolist():
        tables[doc_index] = docs[doc_index].to_array([IDX, LENGTH]).astype("int64", copy=False)
    n_tokens = span_end - span_start
    token_chars = (
        numpy.concatenate([tables[d][s:e] for d, s, e in zip(span_doc.tolist(), span_start.tolist(), span_end.tolist())])
        if n_spans else numpy.zeros((0, 2), dtype="int64")
    )
    token_span = numpy.repeat(numpy.arange(n_spans), n_tokens)
    token_offsets = _offsets(n_tokens)
    span_char = token_chars[token_offsets[:-1], 0] if n_spans else numpy.zeros(0, dtype="int64")
    last = token_offsets[1:] - 1
    text_length = token_chars[last, 0] + token_chars[last, 1] - span_char if n_spans else span_char
    char_base = _offsets(text_length + 1)[:-1]  # where each span's characters start, end to end
    token_first = char_base[token_span] + token_chars[:, 0] - span_char[token_span]
    token_last = token_first + token_chars[:, 1]  # inclusive: the character after the token

    # the characters of each piece, clipped to its span's positions
    piece_span = numpy.repeat(numpy.arange(n_spans), n_pieces)
    low = numpy.maximum(piece_chars[:, 0], 0)
    high = numpy.minimum(piece_chars[:, 1], text_length[piece_span] + 1)
    n_chars = numpy.maximum(high - low, 0)
    chars = numpy.repeat(char_base[piece_span] + low, n_chars) + _segment_positions(n_chars)
    char_token = numpy.searchsorted(token_first, chars, side="right") - 1
    reaches = token_last[numpy.maximum(char_token, 0)] >= chars
    none = len(token_first)  # larger than every token index
    char_token = numpy.where((char_token >= 0) & reaches, char_token, none)
    # a piece belongs to the first token it overlaps
    piece_owner = numpy.full(len(input_ids), none, dtype="int64")
    with_chars = n_chars > 0
    if bool(with_chars.any()):
        starts = (numpy.cumsum(n_chars) - n_chars)[with_chars]
        piece_owner[with_chars] = numpy.minimum.reduceat(char_token, starts)
    owned = piece_owner < none

    # words: tokens that own at least one piece; their first piece represents them
    owner_tokens, first_piece, owned_counts = numpy.unique(
        piece_owner[owned], return_index=True, return_counts=True
    )
    piece_index = numpy.flatnonzero(owned)
    is_word = numpy.zeros(len(token_first), dtype=bool)
    is_word[owner_tokens] = True
    word_of_token = numpy.cumsum(is_word) - 1
    word_span = token_span[owner_tokens]
    words_per_span = numpy.bincount(word_span, minlength=n_spans)
    word_offsets = _offsets(words_per_span)
    piece_offsets = _offsets(n_pieces)
    word_token = span_start[word_span] + (owner_tokens - token_offsets[word_span])
    word_piece = piece_index[first_piece] - piece_offsets[word_span]
    piece_word = numpy.full(len(input_ids), -1, dtype="int64")
    piece_word[owned] = word_of_token[piece_owner[owned]] - word_offsets[piece_span[owned]]

    # spans without any word are left out
    keep = words_per_span > 0
    if not bool(keep.all()):
        keep_piece = keep[piece_span]
        input_ids, piece_word = input_ids[keep_piece], piece_word[keep_piece]
        piece_offsets = _offsets(n_pieces[keep])
        word_offsets = _offsets(words_per_span[keep])
        span_doc, span_start, span_end = span_doc[keep], span_start[keep], span_end[keep]
        word_span = numpy.cumsum(keep)[word_span] - 1
    pieces = DocPieces(
        span_doc=span_doc,
        span_start=span_start,
        span_end=span_end,
        piece_offsets=piece_offsets,
        input_ids=input_ids,
        piece_word=piece_word,
        word_offsets=word_offsets,
        word_token=word_token,
        word_piece=word_piece,
        word_n_pieces=owned_counts.astype("int64"),
        token_sources=numpy.zeros((0, 2), dtype="int64"),
        token_offsets=_offsets(numpy.asarray([len(doc) for doc in docs], dtype="int64")),
    )
    pieces.token_sources = _token_sources(pieces, word_span)
    return pieces


def _token_sources(pieces: DocPieces, word_span: numpy.ndarray) -> numpy.ndarray:
    """For each token of all docs (pieces.token_offsets), the (span, slot)
    where it has the most context: the span in which it is farthest from an
    edge, the first such span on ties. Returns [N, 2].

    word_span: [W] the span of each word.
    """
    doc_offsets = pieces.token_offsets
    sources = numpy.full((int(doc_offsets[-1]), 2), -1, dtype="int64")
    if pieces.n_words:
        tokens = pieces.word_token
        room = numpy.minimum(tokens - pieces.span_start[word_span], pieces.span_end[word_span] - 1 - tokens)
        key = doc_offsets[pieces.span_doc[word_span]] + tokens
        order = numpy.lexsort((word_span, -room, key))  # by token, most room first, then first span
        first = numpy.ones(len(order), dtype=bool)
        first[1:] = key[order][1:] != key[order][:-1]
        chosen = order[first]
        sources[key[chosen], 0] = word_span[chosen]
        sources[key[chosen], 1] = chosen - pieces.word_offsets[word_span[chosen]]
    return sources


def lender_index(has_value: numpy.ndarray) -> numpy.ndarray:
    """For tokens without an output of their own, the nearest preceding token
    that has one (else the nearest following one).

    has_value: [n_tokens] bool. Returns [n_tokens] int: the token each token
    takes its output from (itself where it has one; -1 if no token has one).
    """
    return lender_index_segments(numpy.asarray(has_value, dtype=bool), [len(has_value)])


def lender_index_segments(has_value: numpy.ndarray, lengths: numpy.ndarray) -> numpy.ndarray:
    """lender_index for many docs at once, never lending across a doc.

    has_value: [N] bool, the tokens of D docs one after another; lengths: [D]
    tokens per doc (sum N). Returns [N] int: per token, the position within
    its own doc of the token it takes its output from, or -1.
    """
    n = len(has_value)
    lengths = numpy.asarray(lengths, dtype="int64")
    if n == 0:
        return numpy.zeros(0, dtype="int64")
    ends = numpy.cumsum(lengths)
    starts = ends - lengths
    doc_of = numpy.repeat(numpy.arange(len(lengths)), lengths)
    start, end = starts[doc_of], ends[doc_of]
    positions = numpy.arange(n)
    previous = numpy.maximum.accumulate(numpy.where(has_value, positions, -1))
    following = numpy.minimum.accumulate(numpy.where(has_value, positions, n)[::-1])[::-1]
    chosen = numpy.where(previous >= start, previous, numpy.where(following < end, following, -1))
    return numpy.where(chosen >= 0, chosen - start, -1)
