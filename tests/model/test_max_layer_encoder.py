"""The depth cap (ExitSettings.max_layer) at the torch level.

References written here: the Hugging Face forward pass of the first L layers
with off-ramp L applied by hand (mode off + max_layer L is that network),
and the same encoder's uncapped run (words that exit before L are not
affected by the cap; the others take layer L's prediction). Forward
pre-hooks on the layers above the cap check that they never run.
"""
import warnings

import numpy
import pytest
import torch

from spacy_earlyexit.model import EarlyExitEncoder, ExitSettings, span_cost, spans_cost
from spacy_earlyexit.model.exit_policy import exit_rule, last_layer

from helpers.encoders import N_CLASSES, N_LAYERS, build_batch, make_encoder, random_bert, random_spans

SPANS = [
    [1, 2, 1, 1, 3, 1, 1, 1, 2, 1, 1],
    [1, 1, 0, 2, 1],
    [3],
    [],
    [2, 1, 2, 1, 1, 1],
    [1, 1, 1, 2, 1, 1, 1, 1, 0, 1],
]


@pytest.fixture(scope="module")
def encoder() -> EarlyExitEncoder:
    return make_encoder(random_bert())


@pytest.fixture(scope="module")
def batch():
    return build_batch(SPANS, seed=3)


def run(encoder, batch, settings=None, **kwargs):
    with torch.no_grad():
        return encoder(batch, settings, **kwargs)


def by_hand(encoder, batch, layer: int) -> torch.Tensor:
    """Off-ramp `layer` (1-based) on the Hugging Face states after `layer`
    layers, every piece computed: [W, C] logits."""
    with torch.no_grad():
        states = encoder.transformer(
            batch.input_ids, attention_mask=batch.real_mask().long(), output_hidden_states=True
        ).hidden_states[layer]
        return encoder.offramps[layer - 1].linear(states[batch.word_span, batch.word_piece])


@pytest.mark.parametrize("cap", range(1, N_LAYERS + 1))
def test_off_with_max_layer_is_the_cut_network(encoder, batch, cap) -> None:
    """Mode off + max_layer L: every word exits at L with the labels of the
    full-depth run's off-ramp L, which is the HF network cut after L layers."""
    capped = run(encoder, batch, ExitSettings(exit_mode="off", max_layer=cap))
    full = run(encoder, batch, ExitSettings(exit_mode="off"), return_layer_logits=True)
    expected = by_hand(encoder, batch, cap)
    assert capped.exit_layer.tolist() == [cap] * batch.n_words
    assert capped.labels.tolist() == expected.argmax(-1).tolist() == full.layer_logits[cap - 1].argmax(-1).tolist()
    torch.testing.assert_close(capped.exit_logits, expected, atol=1e-5, rtol=1e-5)
    assert len(set(capped.labels.tolist())) > 1  # not a trivial labelling


def mixed_token_setting(encoder, batch, cap: int) -> ExitSettings:
    """A token-mode setting whose uncapped run exits words before `cap`, at
    `cap` and after it (checked)."""
    for threshold in (0.5, 0.55, 0.6, 0.65, 0.7, 0.45, 0.4):
        settings = ExitSettings(exit_mode="token", threshold=threshold, window=1)
        layers = set(run(encoder, batch, settings).exit_layer.tolist())
        if min(layers) < cap < max(layers):
            return settings
    raise AssertionError("no threshold gives exits on both sides of the cap")


@pytest.mark.parametrize("mode", ["token", "sentence"])
def test_early_exits_are_kept_and_the_rest_exit_at_max_layer(encoder, batch, mode) -> None:
    cap = N_LAYERS - 1
    settings = mixed_token_setting(encoder, batch, cap)
    if mode == "sentence":
        settings = ExitSettings(exit_mode="sentence", threshold=0.8)
    free = run(encoder, batch, settings, return_layer_logits=True)
    capped = run(encoder, batch, settings.updated(max_layer=cap))
    early = free.exit_layer < cap
    late = ~early
    assert early.any() and (free.exit_layer > cap).any()  # exits on both sides of the cap
    # words that left before the cap: as without it
    assert capped.exit_layer[early].tolist() == free.exit_layer[early].tolist()
    assert capped.labels[early].tolist() == free.labels[early].tolist()
    torch.testing.assert_close(capped.exit_logits[early], free.exit_logits[early])
    # the others exit at the cap with off-ramp `cap`'s prediction of the uncapped run
    assert capped.exit_layer[late].tolist() == [cap] * int(late.sum())
    at_cap = free.layer_logits[cap - 1][late]
    assert capped.labels[late].tolist() == at_cap.argmax(-1).tolist()
    torch.testing.assert_close(capped.exit_logits[late], at_cap, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "settings",
    [
        ExitSettings(exit_mode="off"),
        ExitSettings(exit_mode="token", threshold=0.55, window=1),
        ExitSettings(exit_mode="sentence", threshold=0.8),
    ],
)
def test_max_layer_equal_to_the_depth_is_no_cap(encoder, batch, settings) -> None:
    free = run(encoder, batch, settings, return_layer_logits=True, output_hidden_states=True)
    capped = run(encoder, batch, settings.updated(max_layer=N_LAYERS), return_layer_logits=True,
                 output_hidden_states=True)
    assert torch.equal(free.exit_layer, capped.exit_layer)
    assert torch.equal(free.labels, capped.labels)
    assert torch.equal(free.exit_logits, capped.exit_logits)
    assert torch.equal(free.layer_logits, capped.layer_logits)
    assert len(free.hidden_states) == len(capped.hidden_states) == N_LAYERS + 1


def forbid_layers(encoder: EarlyExitEncoder, first: int) -> list:
    """Forward pre-hooks raising in every module of the layers from index
    `first` (0-based) on. Returns the hook handles."""

    def refuse(module, inputs):
        raise AssertionError(f"a layer above the cap ran ({type(module).__name__})")

    return [
        module.register_forward_pre_hook(refuse)
        for layer in list(encoder.layers)[first:]
        for module in layer.modules()
    ]


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("cap", [1, 2])
def test_layers_above_max_layer_are_not_run(batch, packed, cap) -> None:
    transformer = random_bert()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoder = EarlyExitEncoder(transformer, N_CLASSES, offramp_dropout=0.0, packed=packed).eval()
    assert encoder.packed == packed
    handles = forbid_layers(encoder, cap)
    try:
        for settings in (ExitSettings(exit_mode="off"), ExitSettings(exit_mode="token", threshold=0.1, window=1)):
            out = run(encoder, batch, settings.updated(max_layer=cap), return_layer_logits=True,
                      output_hidden_states=True)
            assert out.exit_layer.max().item() == cap
            # only the layers run are filled
            assert len(out.hidden_states) == cap + 1
            assert out.layer_active[:cap].any(dim=1).all() and not out.layer_active[cap:].any()
            assert not out.layer_logits[cap:].any()
        # the hooks do fire when the layer above runs (the check is not vacuous)
        with pytest.raises(AssertionError, match="above the cap"):
            run(encoder, batch, ExitSettings(exit_mode="off", max_layer=cap + 1))
    finally:
        for handle in handles:
            handle.remove()


def test_batches_together_stop_at_max_layer(encoder) -> None:
    """forward_batches: several batches, each capped, equal each batch alone."""
    batches = [build_batch(random_spans(seed, n_spans=3 + seed), seed=seed) for seed in range(3)]
    settings = ExitSettings(exit_mode="token", threshold=0.55, window=1, max_layer=2)
    handles = forbid_layers(encoder, 2)
    try:
        with torch.no_grad():
            together = encoder.forward_batches(batches, settings)
            alone = [encoder(b, settings) for b in batches]
    finally:
        for handle in handles:
            handle.remove()
    for out, single in zip(together, alone):
        assert out.exit_layer.tolist() == single.exit_layer.tolist()
        assert out.labels.tolist() == single.labels.tolist()
        assert max(out.exit_layer.tolist()) <= 2


def test_forced_exits_ignore_max_layer(encoder, batch) -> None:
    """Self-sampling forces exit layers: max_layer does not cut them."""
    forced = torch.full((batch.n_words,), N_LAYERS, dtype=torch.long)
    forced[::3] = 1
    out = run(encoder, batch, ExitSettings(max_layer=1), forced_exit_layer=forced, return_layer_logits=True)
    assert out.exit_layer.tolist() == forced.tolist()
    assert out.layer_active[N_LAYERS - 1].sum().item() == int((forced == N_LAYERS).sum())


@pytest.mark.parametrize("bad", [0, -1, True, False, 2.5, "2", 2.0])
def test_max_layer_validation_names_the_setting(bad) -> None:
    with pytest.raises(ValueError, match="max_layer"):
        ExitSettings(max_layer=bad)
    with pytest.raises(ValueError, match="max_layer"):
        ExitSettings().updated(max_layer=bad)


def test_max_layer_above_the_depth_is_refused(encoder, batch) -> None:
    message = f"max_layer is {N_LAYERS + 1} but the encoder has {N_LAYERS} layers"
    for mode in ("off", "sentence", "token"):
        settings = ExitSettings(exit_mode=mode, max_layer=N_LAYERS + 1)
        with pytest.raises(ValueError, match=message):
            exit_rule(settings, N_LAYERS)
        with pytest.raises(ValueError, match=message):
            run(encoder, batch, settings)
    assert last_layer(ExitSettings(), N_LAYERS) == N_LAYERS
    assert last_layer(ExitSettings(max_layer=2), N_LAYERS) == 2


def test_max_layer_round_trips_through_dicts() -> None:
    settings = ExitSettings(exit_mode="token", threshold=0.2, max_layer=3)
    data = settings.to_dict()
    assert data["max_layer"] == 3
    assert ExitSettings.from_dict(data) == settings
    assert settings.updated(max_layer=None).max_layer is None
    # settings saved before max_layer existed
    old = {key: value for key, value in data.items() if key != "max_layer"}
    assert ExitSettings.from_dict(old).max_layer is None


def test_cost_of_the_cut_network(encoder, batch) -> None:
    """Mode off + max_layer L/2: half the layers' multiply-adds (exactly:
    BERT has no embedding projection), a 2x FLOPs speed-up."""
    out = run(encoder, batch, ExitSettings(exit_mode="off", max_layer=N_LAYERS // 2))
    exits = out.exit_layer.numpy()
    spans = batch.word_span.numpy()
    shape = encoder.shape
    total_cost = total_full = 0.0
    for span, items in enumerate(SPANS):
        if not any(items):
            continue
        pieces = [item for item in items if item]
        other = 2 + sum(1 for item in items if item == 0)
        cost, full = span_cost(shape, pieces, other, exits[spans == span])
        total_cost, total_full = total_cost + cost, total_full + full
    assert total_full / total_cost == pytest.approx(2.0)
    # the closed form agrees
    counts = [sum(1 for item in items if item) for items in SPANS]
    offsets = [0]
    for count in counts:
        offsets.append(offsets[-1] + count)
    pieces = [item for items in SPANS for item in items if item]
    other = [2 + sum(1 for item in items if item == 0) for items in SPANS]
    cost, full = spans_cost(shape, numpy.array(pieces), numpy.array(offsets), numpy.array(other), exits)
    assert full.sum() / cost.sum() == pytest.approx(2.0)
