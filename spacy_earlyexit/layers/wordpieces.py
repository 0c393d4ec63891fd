"""From spaCy docs to word-piece tensors, and from word outputs back to tokens.

Spans come from a spacy-transformers span getter; each span is tokenized on
its own (with [CLS]/[SEP]) and aligned to its spaCy tokens with
spacy-transformers' offset-mapping alignment. A span whose word pieces exceed
the encoder's maximum length is split in two, recursively, so that no token is
ever truncated away. A token that appears in several (overlapping) spans takes
its output from the span in which it sits farthest from an edge.
"""
from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple

import numpy
import torch
from spacy.tokens import Doc, Span
from spacy_transformers.align import get_span2wp_from_offset_mapping

from ..model import EncoderBatch

SpanGetter = Callable[[List[Doc]], List[List[Span]]]


@dataclass
class SpanPieces:
    """One tokenized span.

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
    """A batch of docs as tokenized spans, with each token's source.

    spans: every span with at least one word.
    token_source: per doc, [n_tokens, 2] int: (span index, word slot) giving
        each token's output, or (-1, -1) for a token with no word piece of
        its own (whitespace, characters the tokenizer drops).
    """

    spans: List[SpanPieces]
    token_source: List[numpy.ndarray]

    def encoder_batch(self, span_indices: Sequence[int], pad_id: int) -> EncoderBatch:
        """Pad the chosen spans into one EncoderBatch (tensors on the CPU)."""
        chosen = [self.spans[i] for i in span_indices]
        length = max(len(s.input_ids) for s in chosen)
        input_ids = numpy.full((len(chosen), length), pad_id, dtype="int64")
        piece_word = numpy.full((len(chosen), length), -1, dtype="int64")
        word_span, word_slot, word_piece = [], [], []
        offset = 0
        for row, span in enumerate(chosen):
            n = len(span.input_ids)
            input_ids[row, :n] = span.input_ids
            owners = numpy.asarray(span.piece_word, dtype="int64")
            piece_word[row, :n] = numpy.where(owners >= 0, owners + offset, -1)
            n_words = len(span.word_tokens)
            word_span.extend([row] * n_words)
            word_slot.extend(range(n_words))
            word_piece.extend(span.word_piece)
            offset += n_words
        return EncoderBatch(
            input_ids=torch.from_numpy(input_ids),
            lengths=torch.tensor([len(s.input_ids) for s in chosen], dtype=torch.long),
            word_span=torch.tensor(word_span, dtype=torch.long),
            word_slot=torch.tensor(word_slot, dtype=torch.long),
            word_piece=torch.tensor(word_piece, dtype=torch.long),
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
    pieces: List[SpanPieces] = []
    while pending:
        encoded = tokenizer(
            [span.text for _, span in pending],
            add_special_tokens=True,
            return_offsets_mapping=True,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        too_long: List[Tuple[int, Span]] = []
        for (doc_index, span), ids, offsets in zip(
            pending, encoded["input_ids"], encoded["offset_mapping"]
        ):
            if len(ids) > max_pieces and len(span) > 1:
                middle = len(span) // 2
                too_long.append((doc_index, span[:middle]))
                too_long.append((doc_index, span[middle:]))
                continue
            if len(ids) > max_pieces:  # one token longer than the encoder: keep its start
                ids = list(ids[: max_pieces - 1]) + [ids[-1]]
                offsets = list(offsets[: max_pieces - 1]) + [(0, 0)]
            aligned = _align_span(doc_index, span, ids, offsets)
            if aligned.word_tokens:
                pieces.append(aligned)
        pending = too_long
    return DocPieces(spans=pieces, token_source=_token_sources(docs, pieces))


def _align_span(doc_index: int, span: Span, ids: List[int], offsets) -> SpanPieces:
    """Give each token of `span` a representative piece it alone owns."""
    offset_array = numpy.asarray(offsets, dtype="int64").reshape(-1, 2)
    token_pieces = get_span2wp_from_offset_mapping(span, offset_array)
    piece_word = [-1] * len(ids)
    word_tokens: List[int] = []
    word_piece: List[int] = []
    word_n_pieces: List[int] = []
    start = span.start
    for relative_i, aligned in enumerate(token_pieces):
        if not aligned:
            continue  # whitespace, or characters the tokenizer drops
        free = [p for p in aligned if piece_word[p] < 0]
        if not free:
            continue  # its pieces already represent a neighbour
        if len(free) > 1:
            free.sort()
        slot = len(word_tokens)
        for p in free:
            piece_word[p] = slot
        word_tokens.append(start + relative_i)
        word_piece.append(free[0])
        word_n_pieces.append(len(free))
    return SpanPieces(
        doc_index=doc_index,
        start=start,
        end=span.end,
        input_ids=list(ids),
        word_tokens=word_tokens,
        word_piece=word_piece,
        piece_word=piece_word,
        word_n_pieces=word_n_pieces,
    )


def _token_sources(docs: Sequence[Doc], spans: List[SpanPieces]) -> List[numpy.ndarray]:
    """For each token, the (span, slot) where it has the most context."""
    sources = [numpy.full((len(doc), 2), -1, dtype="int64") for doc in docs]
    margins = [numpy.full((len(doc),), -1, dtype="int64") for doc in docs]
    for span_index, span in enumerate(spans):
        source, margin = sources[span.doc_index], margins[span.doc_index]
        tokens = numpy.asarray(span.word_tokens, dtype="int64")
        room = numpy.minimum(tokens - span.start, span.end - 1 - tokens)
        better = room > margin[tokens]  # a span holds each token once
        chosen = tokens[better]
        margin[chosen] = room[better]
        source[chosen, 0] = span_index
        source[chosen, 1] = numpy.flatnonzero(better)
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
