"""From word outputs back to spaCy tokens.

A token with a word piece of its own takes its word's output; a token
without one (whitespace, characters the tokenizer drops, a piece owned by
its neighbour) borrows the output of its nearest neighbour that has one
(the preceding one first), never across docs.
"""
from typing import List, Tuple

import numpy

from ..model import EncoderShape, spans_cost
from ..model.cost_model import spans_int8_cost
from .data_classes import DocPieces, TokenOutputs


def lender_index(has_value: numpy.ndarray) -> numpy.ndarray:
    """For tokens without an output of their own, the nearest preceding token
    that has one (else the nearest following one).

    has_value: [n_tokens] bool. Returns [n_tokens] int: the token each token
    takes its output from (itself where it has one; -1 if no token has one).
    """
    return lender_index_segments(numpy.asarray(has_value, dtype=bool), numpy.asarray([len(has_value)]))


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


def to_tokens(
    n_docs: int, doc_pieces: DocPieces, word_label: numpy.ndarray, word_exit: numpy.ndarray, shape: EncoderShape
) -> Tuple[TokenOutputs, List[numpy.ndarray]]:
    """Map word results to tokens; tokens without a piece borrow a neighbour's.

    word_label, word_exit: [W] per word of doc_pieces; shape: the encoder's,
    for the cost model. Returns the outputs and, per doc, [n_tokens] the word
    of each token (-1: none of its own).

    Vectorised over all tokens of the batch (one split per doc at the end).
    """
    word_offsets = doc_pieces.word_offsets
    word_pieces = doc_pieces.word_n_pieces
    word_span = numpy.repeat(numpy.arange(doc_pieces.n_spans), numpy.diff(word_offsets))
    owned = numpy.bincount(word_span, weights=word_pieces, minlength=doc_pieces.n_spans)
    other = doc_pieces.span_lengths - owned.astype("int64")
    span_doc = doc_pieces.span_doc
    span_costs, span_full = spans_cost(shape, word_pieces, word_offsets, other, word_exit)
    doc_cost = numpy.bincount(span_doc, weights=span_costs, minlength=n_docs)
    doc_full = numpy.bincount(span_doc, weights=span_full, minlength=n_docs)
    costs: List[Tuple[float, ...]] = [(float(c), float(f)) for c, f in zip(doc_cost, doc_full)]
    if shape.precision == "int8":
        span_int8 = spans_int8_cost(shape, word_pieces, word_offsets, other, word_exit)
        doc_int8 = numpy.bincount(span_doc, weights=span_int8, minlength=n_docs)
        costs = [cost + (float(i),) for cost, i in zip(costs, doc_int8)]
    lengths = numpy.diff(doc_pieces.token_offsets)
    source = doc_pieces.token_sources
    own = source[:, 0] >= 0
    word = numpy.where(own, word_offsets[numpy.maximum(source[:, 0], 0)] + source[:, 1], -1)
    lenders = lender_index_segments(own, lengths)  # position within the doc, or -1
    starts = numpy.cumsum(lengths) - lengths
    lender_flat = numpy.where(lenders >= 0, lenders + numpy.repeat(starts, lengths), -1)
    lent_word = numpy.where(lender_flat >= 0, word[numpy.maximum(lender_flat, 0)], -1)
    if len(word_label):
        labels = numpy.where(lent_word >= 0, word_label[numpy.maximum(lent_word, 0)], -1)
        exits = numpy.where(lent_word >= 0, word_exit[numpy.maximum(lent_word, 0)], 0)
    else:
        labels = numpy.full(len(word), -1, dtype="int64")
        exits = numpy.zeros(len(word), dtype="int64")
    cuts = numpy.cumsum(lengths)[:-1]
    outputs = TokenOutputs(
        labels=numpy.split(labels, cuts) if n_docs else [],
        exit_layers=numpy.split(exits, cuts) if n_docs else [],
        has_output=numpy.split(own, cuts) if n_docs else [],
        costs=costs,
        lenders=numpy.split(lenders, cuts) if n_docs else [],
    )
    return outputs, (numpy.split(word, cuts) if n_docs else [])


def borrowed(word_values: numpy.ndarray, token_word: numpy.ndarray, missing: int) -> numpy.ndarray:
    """Per-token values from per-word values (last axis), tokens without a
    word taking their nearest neighbour's (see lender_index).

    word_values: [..., W]; token_word: [n_tokens] word index or -1.
    Returns [..., n_tokens], `missing` where the doc has no word at all.
    """
    lender = lender_index(token_word >= 0)
    word = numpy.where(lender >= 0, token_word[numpy.maximum(lender, 0)], -1)
    if word_values.shape[-1] == 0:
        return numpy.full(word_values.shape[:-1] + word.shape, missing, dtype="int64")
    values = word_values[..., numpy.maximum(word, 0)]
    return numpy.where(word >= 0, values, missing)
