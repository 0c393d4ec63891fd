"""int8 linear layers (model/quantization.py) against references written here:
the integer product computed in float64 from the int8 values and scales
defined in the docstring, row independence, and the early-exit mechanics
(threshold 0 = off, threshold 1 = layer 1, batch invariance) of an int8
encoder."""
import numpy
import pytest
import torch
from torch import nn

from spacy_earlyexit.model import EncoderBatch, EncoderShape, ExitSettings, spans_cost
from spacy_earlyexit.model.cost_model import span_cost, spans_int8_cost
from spacy_earlyexit.model.quantization import (
    INT8_LINEAR_PATHS, Int8Linear, precision_of, quantize_layers, quantize_weight,
)

from helpers.encoders import N_LAYERS, build_batch, make_encoder, random_bert, random_spans


def reference_int8(linear: nn.Linear, x: torch.Tensor) -> numpy.ndarray:
    """Per output channel w_q = round(w / s_w), s_w = max|w| / 127; per row
    x_q = round(x / s_x), s_x = max|x| / 127; y = (x_q . w_q) s_x s_w + b,
    in float64."""
    w = linear.weight.detach().double().numpy()
    s_w = numpy.abs(w).max(axis=1) / 127.0
    w_q = numpy.clip(numpy.round(w / s_w[:, None]), -127, 127)
    xs = x.double().numpy()
    s_x = numpy.abs(xs).max(axis=1, keepdims=True) / 127.0
    x_q = numpy.round(xs / s_x)
    return (x_q @ w_q.T) * s_x * s_w[None, :] + linear.bias.detach().double().numpy()


@pytest.mark.parametrize("rows", [1, 3, 300, 600])
def test_int8_linear_matches_the_reference(rows):
    torch.manual_seed(rows)
    linear = nn.Linear(37, 53)
    x = torch.randn(rows, 37) * 3
    got = Int8Linear.from_linear(linear)(x).double().numpy()
    want = reference_int8(linear, x)
    # float32 rounding of the scaled product only (the integer part is exact)
    assert numpy.allclose(got, want, rtol=1e-5, atol=1e-5)
    float_out = linear(x).detach().double().numpy()
    assert numpy.abs(got - float_out).max() < 0.05 * numpy.abs(float_out).max()


def test_int8_rows_do_not_depend_on_their_neighbours():
    torch.manual_seed(0)
    module = Int8Linear.from_linear(nn.Linear(32, 64))
    x = torch.randn(700, 32)
    x[5] *= 1000  # an outlier row would set a per-tensor scale
    together = module(x)
    alone = torch.cat([module(x[i:i + 1]) for i in range(700)])
    assert torch.equal(together, alone)
    assert module(x[:0]).shape == (0, 64)
    assert module(x.view(7, 100, 32)).shape == (7, 100, 64)


def test_quantize_weight_round_trip():
    torch.manual_seed(1)
    weight = torch.randn(16, 8)
    values, scale = quantize_weight(weight)
    assert values.dtype == torch.int8 and scale.dtype == torch.float32
    assert int(values.abs().max()) == 127
    assert torch.allclose(values.float() * scale[:, None], weight, atol=float(scale.max()) / 2 + 1e-6)


def int8_encoder():
    encoder = make_encoder(random_bert())
    assert quantize_layers(encoder.layers) == N_LAYERS * len(INT8_LINEAR_PATHS)
    return encoder.eval()


def test_quantize_layers_replaces_the_six_linear_layers():
    encoder = make_encoder(random_bert())
    assert precision_of(encoder.layers) == "float32"
    quantize_layers(encoder.layers)
    assert precision_of(encoder.layers) == "int8"
    assert quantize_layers(encoder.layers) == 0  # idempotent
    names = [name for name in encoder.state_dict() if name.endswith("weight_int8")]
    assert len(names) == N_LAYERS * 6
    assert all(isinstance(ramp.linear, nn.Linear) for ramp in encoder.offramps)  # off-ramps stay float32


def test_int8_threshold_zero_is_mode_off_and_one_exits_at_layer_1():
    encoder = int8_encoder()
    batch = build_batch(random_spans(seed=4, n_spans=12), seed=4)
    with torch.no_grad():
        off = encoder(batch, ExitSettings(exit_mode="off"))
        zero = encoder(batch, ExitSettings(exit_mode="token", threshold=0.0))
        one = encoder(batch, ExitSettings(exit_mode="token", threshold=1.0))
        sentence_one = encoder(batch, ExitSettings(exit_mode="sentence", threshold=1.0))
    assert torch.equal(off.labels, zero.labels) and torch.equal(off.exit_layer, zero.exit_layer)
    assert bool((off.exit_layer == N_LAYERS).all())
    assert bool((one.exit_layer == 1).all()) and bool((sentence_one.exit_layer == 1).all())


def sub_batch(batch: EncoderBatch, rows: range) -> EncoderBatch:
    """The spans `rows` (consecutive) of `batch` as a batch of their own."""
    words = ((batch.word_span >= rows.start) & (batch.word_span < rows.stop)).nonzero().squeeze(1)
    first = int(words[0]) if words.numel() else 0
    length = int(batch.lengths[rows.start:rows.stop].max())
    piece_word = batch.piece_word[rows.start:rows.stop, :length]
    return EncoderBatch(
        input_ids=batch.input_ids[rows.start:rows.stop, :length],
        lengths=batch.lengths[rows.start:rows.stop],
        word_span=batch.word_span[words] - rows.start,
        word_slot=batch.word_slot[words],
        word_piece=batch.word_piece[words],
        piece_word=torch.where(piece_word >= 0, piece_word - first, piece_word),
    )


@pytest.mark.parametrize("settings", [
    ExitSettings(exit_mode="off"),
    ExitSettings(exit_mode="token", threshold=0.6, window=1),
    ExitSettings(exit_mode="sentence", threshold=0.8),
])
def test_int8_batch_invariance(settings):
    """Each span alone, in one batch, and in several batches through the
    layers together (forward_batches): the same labels and exit layers."""
    encoder = int8_encoder()
    spans = random_spans(seed=9, n_spans=10)
    with torch.no_grad():
        batch = build_batch(spans, seed=2)
        together = encoder(batch, settings)
        alone = [encoder(sub_batch(batch, range(i, i + 1)), settings) for i in range(len(spans))]
        batches = encoder.forward_batches(
            [sub_batch(batch, range(0, 4)), sub_batch(batch, range(4, len(spans)))], settings
        )
    assert torch.equal(together.labels, torch.cat([out.labels for out in alone]))
    assert torch.equal(together.exit_layer, torch.cat([out.exit_layer for out in alone]))
    assert torch.equal(together.labels, torch.cat([out.labels for out in batches]))
    assert torch.equal(together.exit_layer, torch.cat([out.exit_layer for out in batches]))


def test_int8_masked_fallback_agrees_with_the_packed_path():
    encoder = int8_encoder()
    batch = build_batch(random_spans(seed=5, n_spans=8), seed=5)
    settings = ExitSettings(exit_mode="token", threshold=0.7)
    with torch.no_grad():
        packed = encoder(batch, settings)
        encoder.packed = False
        masked = encoder(batch, settings)
    assert (packed.labels == masked.labels).float().mean() >= 0.95
    assert (packed.exit_layer == masked.exit_layer).float().mean() >= 0.95


def test_int8_cost_is_the_linear_layers_share():
    """spans_int8_cost against span_cost of the same spans with the
    attention and off-ramp terms taken out by hand."""
    shape = EncoderShape(n_layers=4, hidden_size=8, intermediate_size=16, n_classes=3, precision="int8")
    pieces, offsets, other, exits = [1, 2, 1, 3, 1], [0, 3, 5], [2, 3], [1, 4, 2, 3, 3]
    got = spans_int8_cost(shape, numpy.array(pieces), numpy.array(offsets), numpy.array(other), numpy.array(exits))
    d, d_ff = 8, 16
    for span in range(2):
        words = slice(offsets[span], offsets[span + 1])
        total = sum(pieces[words]) + other[span]
        layers_run = max(exits[words])
        active_pieces = sum(p * e for p, e in zip(pieces[words], exits[words])) + other[span] * layers_run
        want = layers_run * total * 2 * d * d + active_pieces * (2 * d * d + 2 * d * d_ff)
        assert got[span] == pytest.approx(want)
        cost, _ = span_cost(shape, pieces[words], other[span], exits[words])
        assert got[span] < cost
    all_cost, _ = spans_cost(shape, numpy.array(pieces), numpy.array(offsets), numpy.array(other), numpy.array(exits))
    assert (got < all_cost).all()
