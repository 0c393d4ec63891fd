"""Context off-ramps (model/offramp.py) against a reference written here.

The reference runs the Hugging Face BERT layers on every piece, freezes the
pieces of exited words by hand, and computes each off-ramp in numpy (float64)
from the words of each word's window, found by (span, slot) in a dict:
nothing in it comes from batch_run.py or offramp.py's forward.
"""
import math
from typing import Dict, List, Tuple

import numpy
import pytest
import spacy
import torch

from spacy_earlyexit.model import (
    EarlyExitEncoder, EncoderShape, ExitSettings, normalized_entropy, span_cost, spans_cost,
)
from spacy_earlyexit.model.offramp import ContextOffRamp, OffRamp, OffRampHeads

from helpers.encoders import N_CLASSES, N_LAYERS, build_batch, random_bert, random_spans
from helpers.tiny_bert import PLAIN_OFFRAMPS, NER_DATA, train_tiny_pipeline

PIPE = "earlyexit_tagger"
HEADS = [OffRampHeads(2, 1, 16), OffRampHeads(3, 2, 0), OffRampHeads(1, 0, 8), OffRampHeads("all", 1, 0)]


def context_encoder(heads: OffRampHeads, seed: int = 0, packed: bool = True) -> EarlyExitEncoder:
    torch.manual_seed(seed)
    encoder = EarlyExitEncoder(random_bert(seed), N_CLASSES, offramp_dropout=0.0, offramp_heads=heads).eval()
    encoder.packed = packed
    with torch.no_grad():  # spread the uncertainties over [0, 1]
        for ramp in encoder.offramps:
            ramp.linear.weight.mul_(3.0)
    return encoder


def np_gelu(x: numpy.ndarray) -> numpy.ndarray:
    erf = numpy.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def np_offramp(ramp: torch.nn.Module, window_states: List[numpy.ndarray]) -> numpy.ndarray:
    """One word's logits [C] from its window's states (each [d], float64)."""
    def weights(linear):
        return linear.weight.detach().numpy().astype("float64"), linear.bias.detach().numpy().astype("float64")

    x = numpy.concatenate(window_states)
    hidden_layer = getattr(ramp, "hidden_layer", None)
    if hidden_layer is not None:
        w, b = weights(hidden_layer)
        x = np_gelu(w @ x + b)
    w, b = weights(ramp.linear)
    return w @ x + b


def reference(encoder: EarlyExitEncoder, batch, forced: numpy.ndarray) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """(every layer's logits [L, W, C], NaN where a word had exited; the exit
    logits [W, C]) with word w computed up to layer forced[w] (1-based)."""
    bert = encoder.transformer
    word_span = batch.word_span.numpy()
    word_slot = batch.word_slot.numpy()
    word_piece = batch.word_piece.numpy()
    piece_word = batch.piece_word.numpy()
    at: Dict[Tuple[int, int], int] = {(int(s), int(k)): w for w, (s, k) in enumerate(zip(word_span, word_slot))}
    real = batch.real_mask()
    mask = (1.0 - real[:, None, None, :].float()) * torch.finfo(torch.float32).min
    n_words = batch.n_words
    layer_logits = numpy.full((encoder.n_layers, n_words, N_CLASSES), numpy.nan)
    with torch.no_grad():
        hidden = bert.embeddings(input_ids=batch.input_ids)
        for index, layer in enumerate(bert.encoder.layer):
            active_word = forced >= index + 1
            running = numpy.array([active_word[word_span == s].any() for s in range(batch.n_spans)])
            owner_active = numpy.where(piece_word >= 0, active_word[numpy.maximum(piece_word, 0)], True)
            piece_active = owner_active & running[:, None] & real.numpy()
            updated = layer(hidden, attention_mask=mask)[0]
            hidden = torch.where(torch.from_numpy(piece_active)[..., None], updated, hidden)
            states = hidden.numpy().astype("float64")
            ramp = encoder.offramps[index]
            c = ramp.context if isinstance(ramp, ContextOffRamp) else 0
            for w in numpy.flatnonzero(active_word):
                s, k = int(word_span[w]), int(word_slot[w])
                if not isinstance(ramp, ContextOffRamp):
                    layer_logits[index, w] = np_offramp(ramp, [states[s, word_piece[w]]])
                    continue
                window = []
                for offset in range(-c, c + 1):
                    other = at.get((s, k + offset))
                    window.append(numpy.zeros(encoder.hidden_size) if other is None else states[s, word_piece[other]])
                layer_logits[index, w] = np_offramp(ramp, window)
    exit_logits = layer_logits[forced - 1, numpy.arange(n_words)]
    return layer_logits, exit_logits


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("heads", HEADS, ids=str)
def test_full_depth_logits_match_reference(heads, packed):
    encoder = context_encoder(heads, packed=packed)
    batch = build_batch(random_spans(5, 6))
    with torch.no_grad():
        out = encoder(batch, return_layer_logits=True)
    expected, _ = reference(encoder, batch, numpy.full(batch.n_words, N_LAYERS))
    numpy.testing.assert_allclose(out.layer_logits.numpy(), expected, atol=1e-4)
    n_context = N_LAYERS if heads.context_layers == "all" else heads.context_layers
    assert all(isinstance(r, ContextOffRamp) for r in encoder.offramps[:n_context])
    assert all(isinstance(r, OffRamp) for r in encoder.offramps[n_context:])


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("heads", HEADS[:2], ids=str)
def test_exited_neighbours_are_read_with_the_state_they_exited_with(heads, packed):
    """Forced exits: a word's window holds neighbours that left earlier; their
    frozen states (not recomputed ones, not zeros) feed the context off-ramp."""
    encoder = context_encoder(heads, seed=2, packed=packed)
    batch = build_batch(random_spans(7, 8), seed=1)
    rng = numpy.random.default_rng(0)
    forced = rng.integers(1, N_LAYERS + 1, batch.n_words)
    with torch.no_grad():
        out = encoder(batch, forced_exit_layer=torch.from_numpy(forced), return_layer_logits=True)
    expected_layers, expected_exit = reference(encoder, batch, forced)
    assert out.exit_layer.tolist() == forced.tolist()
    numpy.testing.assert_allclose(out.exit_logits.numpy(), expected_exit, atol=1e-4)
    active = ~numpy.isnan(expected_layers[..., 0])
    assert out.layer_active.numpy().tolist() == active.tolist()
    numpy.testing.assert_allclose(out.layer_logits.numpy()[active], expected_layers[active], atol=1e-4)


def clear_threshold(encoder: EarlyExitEncoder, batch) -> float:
    """A threshold between two layer-1 uncertainties near their median, far
    from both (so that float rounding cannot flip an exit)."""
    with torch.no_grad():
        first = normalized_entropy(encoder(batch, return_layer_logits=True).layer_logits[0]).sort().values
    middle = first[len(first) // 4: 3 * len(first) // 4 + 1]
    gap = int((middle[1:] - middle[:-1]).argmax())
    return float(middle[gap] + middle[gap + 1]) / 2


@pytest.mark.parametrize("heads", HEADS[:2], ids=str)
def test_token_exit_packed_equals_masked_and_matches_reference(heads):
    """TOKEE with context off-ramps: both paths give the same exits, and every
    word's exit logits are the reference's for those exit layers."""
    spans = random_spans(11, 10)
    packed, masked = context_encoder(heads, packed=True), context_encoder(heads, packed=False)
    batch = build_batch(spans, seed=4)
    settings = ExitSettings(exit_mode="token", threshold=clear_threshold(packed, batch), window=0)
    with torch.no_grad():
        together = packed(batch, settings)
        other_path = masked(batch, settings)
    assert 1 < together.exit_layer.float().mean() < N_LAYERS  # exits happen, not all at once
    assert other_path.exit_layer.tolist() == together.exit_layer.tolist()
    torch.testing.assert_close(other_path.exit_logits, together.exit_logits, atol=1e-4, rtol=1e-4)
    _, expected_exit = reference(packed, batch, together.exit_layer.numpy())
    numpy.testing.assert_allclose(together.exit_logits.numpy(), expected_exit, atol=1e-4)


def test_gradients_reach_every_context_offramp():
    encoder = context_encoder(OffRampHeads(2, 1, 16))
    encoder.train()
    batch = build_batch(random_spans(3, 4))
    out = encoder(batch, return_layer_logits=True)
    out.layer_logits.square().sum().backward()
    for index in range(2):
        ramp = encoder.offramps[index]
        assert ramp.hidden_layer.weight.grad is not None and ramp.hidden_layer.weight.grad.abs().sum() > 0
        # the neighbours' blocks of the input weight get gradients too
        d = encoder.hidden_size
        assert ramp.hidden_layer.weight.grad[:, :d].abs().sum() > 0
        assert ramp.hidden_layer.weight.grad[:, 2 * d:].abs().sum() > 0


@pytest.mark.parametrize(
    "heads, message",
    [
        (dict(context_layers=-1), "context_layers must be an integer >= 0"),
        (dict(context_layers=2, context=0, hidden=0), "needs offramp_context > 0 or offramp_hidden > 0"),
        (dict(context_layers=1, hidden=1.5), "hidden must be an integer >= 0"),
        (dict(context_layers="some"), 'context_layers must be an integer >= 0 or "all"'),
    ],
)
def test_bad_head_settings_are_refused(heads, message):
    with pytest.raises(ValueError, match=message):
        OffRampHeads(**heads)


def test_more_context_layers_than_layers_is_refused():
    with pytest.raises(ValueError, match="offramp_context_layers is 5, but the encoder has 4 layers"):
        EarlyExitEncoder(random_bert(), N_CLASSES, offramp_heads=OffRampHeads(5, 1, 0))


# --------------------------------------------------------------------------
# cost model
# --------------------------------------------------------------------------
def test_cost_model_counts_each_layers_offramp():
    d, n_classes = 8, 3
    macs = (3 * d * 16 + 16 * n_classes, 5 * d * n_classes, d * n_classes, d * n_classes)
    plain = EncoderShape(n_layers=4, hidden_size=d, intermediate_size=16, n_classes=n_classes)
    wide = EncoderShape(n_layers=4, hidden_size=d, intermediate_size=16, n_classes=n_classes, offramp_macs=macs)
    assert plain.offramp_costs().tolist() == [d * n_classes] * 4
    pieces, exits = [1, 2, 1, 3], [1, 4, 2, 3]
    cost_plain, full_plain = span_cost(plain, pieces, 2, exits)
    cost_wide, full_wide = span_cost(wide, pieces, 2, exits)
    extra = [m - d * n_classes for m in macs]
    # by hand: a word pays layer l's off-ramp at every layer it is computed at
    assert cost_wide - cost_plain == pytest.approx(sum(sum(extra[:e]) for e in exits))
    assert full_wide - full_plain == pytest.approx(len(pieces) * sum(extra))
    # the closed form agrees with the layer loop
    costs, fulls = spans_cost(
        wide, numpy.array(pieces + [2, 1]), numpy.array([0, 4, 6]), numpy.array([2, 1]), numpy.array(exits + [2, 2])
    )
    assert costs[0] == pytest.approx(cost_wide) and fulls[0] == pytest.approx(full_wide)
    assert costs[1] == pytest.approx(span_cost(wide, [2, 1], 1, [2, 2])[0])
    with pytest.raises(ValueError, match="offramp_macs has 2 entries for 4 layers"):
        EncoderShape(n_layers=4, hidden_size=d, intermediate_size=16, n_classes=3, offramp_macs=(1, 2)).offramp_costs()


def test_encoder_shape_gives_the_heads_cost():
    encoder = context_encoder(OffRampHeads(2, 1, 16))
    d = encoder.hidden_size
    assert encoder.shape.offramp_macs == (3 * d * 16 + 16 * N_CLASSES,) * 2 + (d * N_CLASSES,) * (N_LAYERS - 2)


# --------------------------------------------------------------------------
# pipeline: config, training, serialization
# --------------------------------------------------------------------------
CONTEXT_CONFIG = {"offramp_context_layers": 2, "offramp_context": 1, "offramp_hidden": 16}
SPANS = {"@span_getters": "spacy-transformers.strided_spans.v1", "window": 128, "stride": 96}


def v3(bert, **settings) -> dict:
    return {**PLAIN_OFFRAMPS, "@architectures": "spacy_earlyexit.EarlyExitTransformer.v1", "name": str(bert), "get_spans": SPANS, **settings}


@pytest.fixture(scope="module")
def context_nlp(tiny_bert):
    model = v3(tiny_bert, **CONTEXT_CONFIG)
    return train_tiny_pipeline(tiny_bert, "ner", 40, model=model)


def test_pipeline_builds_trains_and_round_trips_context_offramps(context_nlp, tiny_bert):
    encoder = context_nlp.get_pipe(PIPE).model.shims[0].encoder
    assert [type(r).__name__ for r in encoder.offramps[:3]] == ["ContextOffRamp", "ContextOffRamp", "OffRamp"]
    texts = [text for text, _ in NER_DATA]
    tagger = context_nlp.get_pipe(PIPE)
    tagger.configure_exit(exit_mode="token", threshold=0.7, window=0)
    try:
        before = [[(t.ent_iob_, t.ent_type_, t._.exit_layer) for t in doc] for doc in context_nlp.pipe(texts)]
        singles = [[(t.ent_iob_, t.ent_type_, t._.exit_layer) for t in context_nlp(text)] for text in texts]
        assert before == singles
        exit_layers = {layer for doc in before for (_, _, layer) in doc}
        assert len(exit_layers) > 1, exit_layers  # the setting makes words leave at several layers
        # the saved weights decide: a pipeline whose config says plain off-ramps
        # still loads context off-ramps from the bytes
        plain = spacy.blank("en")
        plain.add_pipe(PIPE, config={"task": "ner", "model": {**PLAIN_OFFRAMPS, "name": str(tiny_bert)}})
        plain.from_bytes(context_nlp.to_bytes())
        loaded = plain.get_pipe(PIPE)
        assert isinstance(loaded.model.shims[0].encoder.offramps[1], ContextOffRamp)
        loaded.configure_exit(exit_mode="token", threshold=0.7, window=0)
        after = [[(t.ent_iob_, t.ent_type_, t._.exit_layer) for t in doc] for doc in plain.pipe(texts)]
        assert after == before
    finally:
        tagger.configure_exit(exit_mode="off")


def test_bad_context_setting_in_the_config_names_it(tiny_bert):
    nlp = spacy.blank("en")
    model = v3(tiny_bert, offramp_context_layers=2, offramp_context=0, offramp_hidden=0)
    with pytest.raises(ValueError, match="offramp_context_layers > 0 needs"):
        nlp.add_pipe(PIPE, config={"task": "ner", "model": model})
