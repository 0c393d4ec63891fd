"""Analytic cost (multiply-adds) of an early-exit forward pass.

Per layer, for a span that is still running with m real word pieces of which
n are active: K/V projections for all m pieces (2 d^2 each: exited pieces
still serve as keys and values), Q and attention output for the n active
pieces (2 d^2), the feed-forward block (2 d d_ff), attention scores and the
weighted sum (2 n m d), and the off-ramp on each active word (d C for a
plain off-ramp; EncoderShape.offramp_macs gives each layer's when they
differ: context off-ramps, model/offramp.py).

Family differences (EncoderShape): ELECTRA projects its embeddings
(e -> d: e d per piece, once, whether words exit or not); ModernBERT's
feed-forward block is gated (3 d d_ff per piece; its local layers' scores
are counted as global ones, exact for spans of at most local_attention / 2
pieces); DeBERTa scores each piece against its relative positions (R d per
computed piece; the projections of the position embeddings, once per layer
and batch, are not counted). Families on the masked path (packed=False)
compute every real piece of a running span at every layer: exits save
only where whole spans have finished. Embedding lookups (word, position,
token type) are no multiply-adds, so DistilBERT's missing token types
change nothing.

On an int8 encoder the linear layers' share (K/V, Q, attention output,
feed-forward) runs in int8 and the rest (attention, off-ramps) in float32:
spans_int8_cost gives the first part, so that the two are reported apart
(int8 is for BERT-structured layers on the packed path).
"""
from dataclasses import dataclass
from typing import Sequence, Tuple, Union

import numpy


@dataclass(frozen=True)
class EncoderShape:
    """The sizes that set the cost of one encoder layer.

    embedding_projection: e, the input width of an embedding projection
        (ELECTRA), 0 without one.
    gated_feed_forward: a gated (GLU) feed-forward block (ModernBERT).
    relative_positions: R, relative-position scores per computed piece and
        layer (DeBERTa: relative embeddings x position attention types).
    packed: exited pieces are skipped (False: the masked path).
    offramp_macs: multiply-adds of one word's logits at each layer's
        off-ramp ([L]); empty: d C at every layer (plain off-ramps).
    """

    n_layers: int
    hidden_size: int
    intermediate_size: int
    n_classes: int
    embedding_projection: int = 0
    gated_feed_forward: bool = False
    relative_positions: int = 0
    packed: bool = True
    #: "float32", "bfloat16" or "int8" (the linear layers' precision; int8
    #: multiply-adds are counted apart)
    precision: str = "float32"
    offramp_macs: Tuple[int, ...] = ()

    def offramp_costs(self) -> numpy.ndarray:
        """[L] float: multiply-adds of one word's off-ramp at each layer."""
        if not self.offramp_macs:
            return numpy.full(self.n_layers, float(self.hidden_size * self.n_classes))
        if len(self.offramp_macs) != self.n_layers:
            raise ValueError(
                f"offramp_macs has {len(self.offramp_macs)} entries for {self.n_layers} layers"
            )
        return numpy.asarray(self.offramp_macs, dtype="float64")

    def per_piece(self, total: Union[numpy.ndarray, float]) -> Union[numpy.ndarray, float]:
        """Multiply-adds per computed piece and layer in a span of `total`
        real pieces (K/V excluded: they are paid for every piece)."""
        d, d_ff = self.hidden_size, self.intermediate_size
        ffn = (3 if self.gated_feed_forward else 2) * d * d_ff
        return 2 * d * d + ffn + 2 * total * d + self.relative_positions * d


def span_cost(
    shape: EncoderShape,
    word_pieces: Sequence[int],
    n_other_pieces: int,
    exit_layers: Sequence[int],
) -> Tuple[float, float]:
    """Multiply-adds of one span with and without early exit.

    word_pieces: [W] word pieces owned by each word of the span.
    n_other_pieces: pieces that belong to no word ([CLS], [SEP], unaligned).
    exit_layers: [W] 1-based exit layer of each word.
    Returns (cost with early exit, cost at full depth).
    """
    pieces = numpy.asarray(word_pieces, dtype="float64")
    exits = numpy.asarray(exit_layers, dtype="int64")
    d = shape.hidden_size
    n_layers = shape.n_layers
    ramps = shape.offramp_costs()
    total = float(pieces.sum()) + n_other_pieces
    per_active_piece = shape.per_piece(total)
    embedding = total * shape.embedding_projection * d
    full = embedding + n_layers * (total * 2 * d * d + total * per_active_piece) + len(pieces) * ramps.sum()
    if len(pieces) == 0:
        return 0.0, 0.0
    layers = numpy.arange(1, n_layers + 1)
    # active[l, w]: word w still computed at layer l
    active = exits[None, :] >= layers[:, None]
    running = active.any(axis=1)
    active_pieces = (active * pieces[None, :]).sum(axis=1) + n_other_pieces * running
    if not shape.packed:
        active_pieces = total * running
    active_words = active.sum(axis=1)
    cost = embedding + (
        running * total * 2 * d * d
        + active_pieces * per_active_piece
        + active_words * ramps
    ).sum()
    return float(cost), float(full)


def spans_cost(
    shape: EncoderShape,
    word_pieces: numpy.ndarray,
    word_offsets: numpy.ndarray,
    n_other_pieces: numpy.ndarray,
    exit_layers: numpy.ndarray,
) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """span_cost for many spans at once, in closed form (no loop over layers).

    word_pieces: [W] pieces owned by each word, the words of all spans in order.
    word_offsets: [S + 1] where each span's words start in that order.
    n_other_pieces: [S] pieces of each span that belong to no word.
    exit_layers: [W] 1-based exit layer of each word.
    Returns ([S] cost with early exit, [S] cost at full depth).

    Summed over layers, a span runs max(exit) layers, a word's pieces are
    active exit-layer times and the other pieces run with the span, so the
    per-layer sums of span_cost collapse to products.
    """
    pieces = numpy.asarray(word_pieces, dtype="float64")
    exits = numpy.asarray(exit_layers, dtype="float64")
    offsets = numpy.asarray(word_offsets, dtype="int64")
    other = numpy.asarray(n_other_pieces, dtype="float64")
    n_spans = len(offsets) - 1
    d = shape.hidden_size
    # ramp_upto[k]: one word's off-ramp cost over layers 1..k
    ramp_upto = numpy.concatenate([[0.0], numpy.cumsum(shape.offramp_costs())])
    n_words = numpy.diff(offsets).astype("float64")
    span_of_word = numpy.repeat(numpy.arange(n_spans), numpy.diff(offsets))
    total = numpy.bincount(span_of_word, weights=pieces, minlength=n_spans) + other
    per_active_piece = shape.per_piece(total)
    embedding = total * shape.embedding_projection * d
    full = embedding + shape.n_layers * (total * 2 * d * d + total * per_active_piece) + n_words * ramp_upto[-1]
    layers_run = numpy.zeros(n_spans)
    numpy.maximum.at(layers_run, span_of_word, exits)
    piece_layers = numpy.bincount(span_of_word, weights=pieces * exits, minlength=n_spans)
    word_ramps = numpy.bincount(
        span_of_word, weights=ramp_upto[numpy.asarray(exit_layers, dtype="int64")], minlength=n_spans
    )
    computed_pieces = piece_layers + other * layers_run if shape.packed else total * layers_run
    cost = embedding + (
        layers_run * total * 2 * d * d
        + computed_pieces * per_active_piece
        + word_ramps
    )
    empty = n_words == 0
    cost[empty] = 0.0
    full[empty] = 0.0
    return cost, full


def spans_int8_cost(
    shape: EncoderShape,
    word_pieces: numpy.ndarray,
    word_offsets: numpy.ndarray,
    n_other_pieces: numpy.ndarray,
    exit_layers: numpy.ndarray,
) -> numpy.ndarray:
    """The linear layers' share of spans_cost's cost with early exit
    (multiply-adds that run in int8 on an int8 encoder; same arguments).
    Returns [S]."""
    pieces = numpy.asarray(word_pieces, dtype="float64")
    exits = numpy.asarray(exit_layers, dtype="float64")
    offsets = numpy.asarray(word_offsets, dtype="int64")
    other = numpy.asarray(n_other_pieces, dtype="float64")
    n_spans = len(offsets) - 1
    d, d_ff = shape.hidden_size, shape.intermediate_size
    span_of_word = numpy.repeat(numpy.arange(n_spans), numpy.diff(offsets))
    total = numpy.bincount(span_of_word, weights=pieces, minlength=n_spans) + other
    layers_run = numpy.zeros(n_spans)
    numpy.maximum.at(layers_run, span_of_word, exits)
    piece_layers = numpy.bincount(span_of_word, weights=pieces * exits, minlength=n_spans)
    cost = layers_run * total * 2 * d * d + (piece_layers + other * layers_run) * (2 * d * d + 2 * d * d_ff)
    cost[numpy.diff(offsets) == 0] = 0.0
    return cost
