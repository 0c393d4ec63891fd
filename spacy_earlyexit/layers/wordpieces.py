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
no word of the encoder. Whitespace characters belong to no token: a
SentencePiece piece that starts with the metaspace (`▁world`, offsets
covering the space before the word) is owned by its word, not by the token
before the space. The project's tests check this against spacy-transformers'
function on every span (with piece offsets trimmed of whitespace, as Hugging
Face's `trim_offsets` does for byte-level BPE). With piece_split "tokens" or
"han", pieces that cross a token boundary are first cut there and tokenized
again part by part (piece_split.py), so that every token owns its pieces.
"""
from bisect import bisect_right
from itertools import chain
from typing import Dict, List, Optional, Sequence, Tuple

import numpy
from spacy.attrs import IDX, LENGTH
from spacy.tokens import Doc, Span

from .data_classes import DocPieces, SpanGetter, segment_offsets, segment_positions
from .piece_split import PieceSplitter, check_piece_split, cut_points

#: code points that str.isspace() calls whitespace (all below U+3001)
WHITESPACE_CODE_POINTS = numpy.asarray([c for c in range(0x3001) if chr(c).isspace()], dtype="int64")
#: [0x3002] bool, indexed by code point: whitespace; the last entry (False)
#: stands for every code point above U+3000 (a table lookup, much cheaper
#: than numpy.isin against the code points)
IS_WHITESPACE = numpy.zeros(0x3002, dtype=bool)
IS_WHITESPACE[WHITESPACE_CODE_POINTS] = True


def whitespace_mask(texts: Sequence[str], separator_after_each: bool = True) -> numpy.ndarray:
    """[sum(len(text) + 1)] bool: which characters of `texts`, laid end to end
    with one extra (non-whitespace) position after each text, are whitespace."""
    joined = "\x00".join(texts) + ("\x00" if texts and separator_after_each else "")
    codes = numpy.frombuffer(joined.encode("utf-32-le"), dtype="<u4")
    return IS_WHITESPACE[numpy.minimum(codes, len(IS_WHITESPACE) - 1)]


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
    docs: Sequence[Doc], get_spans: SpanGetter, tokenizer, max_pieces: int, piece_split: str = "none"
) -> DocPieces:
    """Tokenize the spans of `docs` and align them to spaCy tokens.

    piece_split: "none" (the tokenizer's pieces), "tokens" or "han" (pieces
    that cross a spaCy token boundary are cut there; see piece_split.py).
    """
    check_piece_split(piece_split)
    splitter = PieceSplitter(tokenizer) if piece_split != "none" else None
    token_starts: Dict[int, numpy.ndarray] = {}
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
    kept_texts: List[str] = []
    kept_ids: List[List[int]] = []
    kept_offsets: List[List[Tuple[int, int]]] = []
    while pending:
        span_texts = [texts[d][span.start_char : span.end_char] for d, span in pending]
        all_ids, all_offsets = encode_texts(tokenizer, span_texts)
        too_long: List[Tuple[int, Span]] = []
        for (doc_index, span), span_text, ids, offsets in zip(pending, span_texts, all_ids, all_offsets):
            if splitter is not None:
                if doc_index not in token_starts:
                    token_starts[doc_index] = docs[doc_index].to_array(IDX).astype("int64", copy=False)
                starts = token_starts[doc_index][span.start : span.end] - span.start_char
                ids, offsets = splitter.split(
                    span_text, ids, offsets, cut_points(span_text, starts.tolist(), piece_split)
                )
            if len(ids) > max_pieces and len(span) > 1:
                middle = len(span) // 2
                too_long.append((doc_index, span[:middle]))
                too_long.append((doc_index, span[middle:]))
                continue
            if len(ids) > max_pieces:  # one token longer than the encoder: keep its start
                ids = list(ids[: max_pieces - 1]) + [ids[-1]]
                offsets = list(offsets[: max_pieces - 1]) + [(0, 0)]
            kept.append((doc_index, span))
            kept_texts.append(span_text)
            kept_ids.append(ids)
            kept_offsets.append(offsets)
        pending = too_long
    if len(kept) == 1:  # one doc, one span (a sentence through nlp()): no arrays to vectorize over
        one = _align_one_span(docs, kept[0], kept_texts[0], kept_ids[0], kept_offsets[0])
        if one is not None:
            return one
    return _align(docs, kept, kept_texts, kept_ids, kept_offsets)


def _align(
    docs: Sequence[Doc],
    spans: List[Tuple[int, Span]],
    span_texts: List[str],
    ids: List[List[int]],
    offsets: List[List[Tuple[int, int]]],
) -> DocPieces:
    """Align the pieces of every span to its tokens, all spans at once.

    The characters of all span texts are laid end to end, each span's text
    followed by one extra position (a token covers its characters and the one
    after it, as in spacy-transformers); the token of a character is the last
    token starting at or before it, if it reaches that far, and no token if
    the character is whitespace.
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
    token_offsets = segment_offsets(n_tokens)
    span_char = token_chars[token_offsets[:-1], 0] if n_spans else numpy.zeros(0, dtype="int64")
    last = token_offsets[1:] - 1
    text_length = token_chars[last, 0] + token_chars[last, 1] - span_char if n_spans else span_char
    char_base = segment_offsets(text_length + 1)[:-1]  # where each span's characters start, end to end
    token_first = char_base[token_span] + token_chars[:, 0] - span_char[token_span]
    token_last = token_first + token_chars[:, 1]  # inclusive: the character after the token

    # the characters of each piece, clipped to its span's positions
    piece_span = numpy.repeat(numpy.arange(n_spans), n_pieces)
    low = numpy.maximum(piece_chars[:, 0], 0)
    high = numpy.minimum(piece_chars[:, 1], text_length[piece_span] + 1)
    n_chars = numpy.maximum(high - low, 0)
    chars = numpy.repeat(char_base[piece_span] + low, n_chars) + segment_positions(n_chars)
    char_token = numpy.searchsorted(token_first, chars, side="right") - 1
    reaches = token_last[numpy.maximum(char_token, 0)] >= chars
    visible = ~whitespace_mask(span_texts)[chars] if len(chars) else numpy.zeros(0, dtype=bool)
    none = len(token_first)  # larger than every token index
    char_token = numpy.where((char_token >= 0) & reaches & visible, char_token, none)
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
    word_offsets = segment_offsets(words_per_span)
    piece_offsets = segment_offsets(n_pieces)
    word_token = span_start[word_span] + (owner_tokens - token_offsets[word_span])
    word_piece = piece_index[first_piece] - piece_offsets[word_span]
    piece_word = numpy.full(len(input_ids), -1, dtype="int64")
    piece_word[owned] = word_of_token[piece_owner[owned]] - word_offsets[piece_span[owned]]

    # spans without any word are left out
    keep = words_per_span > 0
    if not bool(keep.all()):
        keep_piece = keep[piece_span]
        input_ids, piece_word = input_ids[keep_piece], piece_word[keep_piece]
        piece_offsets = segment_offsets(n_pieces[keep])
        word_offsets = segment_offsets(words_per_span[keep])
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
        token_offsets=segment_offsets(numpy.asarray([len(doc) for doc in docs], dtype="int64")),
    )
    pieces.token_sources = _token_sources(pieces, word_span)
    return pieces


def _align_one_span(
    docs: Sequence[Doc], span: Tuple[int, Span], span_text: str, ids: List[int], offsets: List[Tuple[int, int]]
) -> Optional[DocPieces]:
    """_align for a batch of a single span, piece by piece in Python: the
    same rule and the same DocPieces, without the fixed cost of ~40 numpy
    calls on arrays of a few dozen elements. None when the span owns no
    piece (_align then leaves it out)."""
    doc_index, tokens = span
    first = [token.idx - tokens.start_char for token in tokens]  # each token's first character
    last = [start + len(token) for start, token in zip(first, tokens)]  # inclusive: the one after it
    text_length = last[-1] if last else 0
    owner_of_piece: List[int] = []
    for piece_start, piece_end in offsets:
        owner = -1
        # the first character of the piece that some token covers and that is
        # no whitespace (tokens start in order, so its token is the smallest)
        for char in range(max(piece_start, 0), min(piece_end, text_length + 1)):
            token = bisect_right(first, char) - 1
            if token >= 0 and last[token] >= char and not (char < len(span_text) and span_text[char].isspace()):
                owner = token
                break
        owner_of_piece.append(owner)
    slot_of_token: Dict[int, int] = {}
    for owner in sorted(set(owner_of_piece) - {-1}):
        slot_of_token[owner] = len(slot_of_token)
    if not slot_of_token:
        return None
    n_words = len(slot_of_token)
    word_piece = [-1] * n_words
    word_n_pieces = [0] * n_words
    piece_word = []
    for index, owner in enumerate(owner_of_piece):
        slot = slot_of_token.get(owner, -1)
        piece_word.append(slot)
        if slot >= 0:
            if word_piece[slot] < 0:
                word_piece[slot] = index
            word_n_pieces[slot] += 1
    word_token = [tokens.start + owner for owner in slot_of_token]
    n_doc_tokens = [len(doc) for doc in docs]
    token_offsets = segment_offsets(numpy.asarray(n_doc_tokens, dtype="int64"))
    token_sources = numpy.full((int(token_offsets[-1]), 2), -1, dtype="int64")
    at = int(token_offsets[doc_index]) + numpy.asarray(word_token, dtype="int64")
    token_sources[at, 0] = 0
    token_sources[at, 1] = numpy.arange(n_words)
    return DocPieces(
        span_doc=numpy.asarray([doc_index], dtype="int64"),
        span_start=numpy.asarray([tokens.start], dtype="int64"),
        span_end=numpy.asarray([tokens.end], dtype="int64"),
        piece_offsets=numpy.asarray([0, len(ids)], dtype="int64"),
        input_ids=numpy.asarray(ids, dtype="int64"),
        piece_word=numpy.asarray(piece_word, dtype="int64"),
        word_offsets=numpy.asarray([0, n_words], dtype="int64"),
        word_token=numpy.asarray(word_token, dtype="int64"),
        word_piece=numpy.asarray(word_piece, dtype="int64"),
        word_n_pieces=numpy.asarray(word_n_pieces, dtype="int64"),
        token_sources=token_sources,
        token_offsets=token_offsets,
    )


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
