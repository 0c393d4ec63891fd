"""span_cost against multiply-adds counted by hand.

Per layer, while a span runs: K and V projections of every real piece (also
of exited ones: they still serve as keys and values), then for each active
piece the Q projection, the attention output projection, the feed-forward
block, the attention scores and the weighted sum over all real pieces, and
the off-ramp of each active word.
"""
import itertools
from typing import List, Sequence, Tuple

import numpy
import pytest

from spacy_earlyexit.model import EncoderShape, span_cost, spans_cost

# L = 3 layers, d = 4, d_ff = 8, C = 2 classes
SHAPE = EncoderShape(n_layers=3, hidden_size=4, intermediate_size=8, n_classes=2)
# a span of two words (1 and 2 pieces) plus [CLS] and [SEP]: m = 5 pieces
WORD_PIECES = [1, 2]
OTHER = 2
# one layer with every piece active, counted by hand:
#   K, V:          5 pieces * 2 * 4*4            = 160
#   per piece:     Q 16 + O 16 + FFN 2*4*8 (64) + scores 5*4 (20) + sum 5*4 (20) = 136
#   active pieces: 5 * 136                        = 680
#   off-ramps:     2 words * 4*2                  = 16
FULL_LAYER = 160 + 680 + 16  # 856
FULL = 3 * FULL_LAYER  # 2568


def test_full_depth_cost_by_hand() -> None:
    cost, full = span_cost(SHAPE, WORD_PIECES, OTHER, [3, 3])
    assert full == FULL == 2568
    assert cost == full  # speed-up 1


def test_all_exit_at_first_layer() -> None:
    cost, full = span_cost(SHAPE, WORD_PIECES, OTHER, [1, 1])
    assert cost == FULL_LAYER  # the span stops after layer 1: nothing more runs
    assert full / cost == pytest.approx(3.0)


def test_exited_word_still_costs_keys_and_values() -> None:
    # word 0 (1 piece) exits at layer 1, word 1 (2 pieces) runs to layer 3.
    # layers 2 and 3: K/V of all 5 pieces (160), 4 active pieces (4 * 136 =
    # 544), one off-ramp (8): 712 each
    cost, full = span_cost(SHAPE, WORD_PIECES, OTHER, [1, 3])
    assert cost == FULL_LAYER + 2 * (160 + 4 * 136 + 8) == 2280
    # leaving out the exited piece's K/V would give 2280 - 2 * 32
    assert full == FULL


def test_span_stops_when_its_last_word_exits() -> None:
    # word 1 exits at 1, word 0 at 2: layer 2 has K/V 160, 3 active pieces
    # (word 0, [CLS], [SEP]) 3 * 136 = 408, one off-ramp 8; layer 3 nothing
    cost, _ = span_cost(SHAPE, WORD_PIECES, OTHER, [2, 1])
    assert cost == FULL_LAYER + 160 + 408 + 8 == 1432


def test_offramp_cost_is_counted() -> None:
    wider = EncoderShape(n_layers=3, hidden_size=4, intermediate_size=8, n_classes=3)
    # exits [1, 3]: 4 word-layers computed an off-ramp, each d = 4 more per class
    assert span_cost(wider, WORD_PIECES, OTHER, [1, 3])[0] == 2280 + 4 * 4
    # full depth: 6 word-layers
    assert span_cost(wider, WORD_PIECES, OTHER, [3, 3])[1] == FULL + 6 * 4


def test_bert_base_sized_speedup() -> None:
    """BERT-base proportions: all words exiting at layer 1 of 12 is a 12x
    speed-up; with one word of ten kept to the top, exited pieces' K/V and
    the shared pieces cost more than the active words alone would suggest."""
    shape = EncoderShape(n_layers=12, hidden_size=768, intermediate_size=3072, n_classes=9)
    pieces = [1] * 10
    cost, full = span_cost(shape, pieces, 2, [1] * 10)
    assert full / cost == pytest.approx(12.0)
    cost, full = span_cost(shape, pieces, 2, [1] * 9 + [12])
    # by hand: per layer, K/V 12 * 2 d^2, per active piece 2 d^2 + 2 d d_ff +
    # 2 * 12 * d, off-ramp d * C per active word
    d, d_ff = 768, 3072
    per_piece = 2 * d * d + 2 * d * d_ff + 2 * 12 * d
    layer_full = 12 * 2 * d * d + 12 * per_piece + 10 * d * 9
    layer_one_word = 12 * 2 * d * d + 3 * per_piece + 1 * d * 9
    assert cost == layer_full + 11 * layer_one_word
    assert full == 12 * layer_full
    assert 2.0 < full / cost < 2.5


def count_by_enumeration(
    shape: EncoderShape, word_pieces: Sequence[int], n_other: int, exit_layers: Sequence[int]
) -> Tuple[int, int]:
    """Walk every layer, piece and operation; count multiply-adds."""
    d, d_ff, n_classes = shape.hidden_size, shape.intermediate_size, shape.n_classes
    ffn_matrices = 3 if shape.gated_feed_forward else 2  # GLU: gate and input
    # pieces: (owner word or None)
    pieces: List = [None] * n_other + [w for w, n in enumerate(word_pieces) for _ in range(n)]

    def run(exits: Sequence[int]) -> int:
        total = 0
        for _ in pieces:  # embedding projection (ELECTRA)
            total += shape.embedding_projection * d
        for layer in range(1, shape.n_layers + 1):
            active_words = [w for w in range(len(word_pieces)) if exits[w] >= layer]
            if not active_words:
                continue
            for _ in pieces:  # keys and values of every piece
                total += d * d + d * d
            for owner in pieces:
                if shape.packed and owner is not None and owner not in active_words:
                    continue
                total += d * d  # query
                for _ in pieces:
                    total += d  # score against each key
                    total += d  # weighted value
                total += shape.relative_positions * d  # scores against relative positions
                total += d * d  # attention output projection
                total += (ffn_matrices - 1) * d * d_ff + d_ff * d  # feed-forward
            for _ in active_words:
                total += d * n_classes  # off-ramp
        return total

    return run(exit_layers), run([shape.n_layers] * len(word_pieces))


def random_family_fields(rng: numpy.random.Generator) -> dict:
    """The family fields of EncoderShape (ELECTRA, ModernBERT, DeBERTa, masked
    path), each set at random."""
    return {
        "embedding_projection": int(rng.choice([0, 3])),
        "gated_feed_forward": bool(rng.integers(0, 2)),
        "relative_positions": int(rng.choice([0, 6])),
        "packed": bool(rng.integers(0, 2)),
    }


@pytest.mark.parametrize("seed", range(12))
def test_random_spans_match_enumeration(seed: int) -> None:
    rng = numpy.random.default_rng(seed)
    shape = EncoderShape(
        n_layers=int(rng.integers(1, 6)),
        hidden_size=int(rng.integers(2, 9)),
        intermediate_size=int(rng.integers(2, 17)),
        n_classes=int(rng.integers(1, 6)),
        **(random_family_fields(rng) if seed >= 6 else {}),
    )
    for _ in range(10):
        n_words = int(rng.integers(1, 7))
        word_pieces = [int(n) for n in rng.integers(1, 4, size=n_words)]
        n_other = int(rng.integers(0, 4))
        exits = [int(e) for e in rng.integers(1, shape.n_layers + 1, size=n_words)]
        cost, full = span_cost(shape, word_pieces, n_other, exits)
        assert (cost, full) == count_by_enumeration(shape, word_pieces, n_other, exits)
        assert cost <= full


def test_cost_never_rises_when_a_word_exits_earlier() -> None:
    for exits in itertools.product(range(1, 4), repeat=3):
        cost, _ = span_cost(SHAPE, [1, 2, 1], OTHER, exits)
        for w in range(3):
            if exits[w] > 1:
                earlier = list(exits)
                earlier[w] -= 1
                assert span_cost(SHAPE, [1, 2, 1], OTHER, earlier)[0] < cost


@pytest.mark.parametrize("seed", range(8))
def test_batched_closed_form_equals_per_span_enumeration(seed: int) -> None:
    """spans_cost (closed form over many spans) against span_cost per span,
    including spans without words."""
    rng = numpy.random.default_rng(100 + seed)
    shape = EncoderShape(
        n_layers=int(rng.integers(1, 7)),
        hidden_size=int(rng.integers(2, 9)),
        intermediate_size=int(rng.integers(2, 17)),
        n_classes=int(rng.integers(1, 6)),
        **(random_family_fields(rng) if seed >= 4 else {}),
    )
    n_spans = 12
    words_per_span = rng.integers(0, 6, size=n_spans)
    offsets = numpy.concatenate([[0], numpy.cumsum(words_per_span)])
    pieces = rng.integers(1, 4, size=int(offsets[-1]))
    other = rng.integers(0, 4, size=n_spans)
    exits = rng.integers(1, shape.n_layers + 1, size=int(offsets[-1]))
    cost, full = spans_cost(shape, pieces, offsets, other, exits)
    for s in range(n_spans):
        start, end = offsets[s], offsets[s + 1]
        expected = span_cost(shape, pieces[start:end].tolist(), int(other[s]), exits[start:end].tolist())
        assert cost[s] == pytest.approx(expected[0], rel=1e-12)
        assert full[s] == pytest.approx(expected[1], rel=1e-12)
