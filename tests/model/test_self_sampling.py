"""Self-sampling fine-tuning, checked against references written here.

- simulate_token_exits against a loop-by-loop TOKEE with per-span settings;
- the forced-exit forward (the inference halt-and-copy path) against a masked
  reference that runs each Hugging Face BertLayer on every piece and keeps
  frozen pieces' states: frozen words' states at upper layers equal their
  exit-layer states, active words see the frozen copies as keys/values;
- a self-sampling step of the component: the loss at a layer counts only the
  tokens still active there (depth-weighted), checked against a torch
  autograd reference; gradient rows above a token's exit layer are zero;
- the stage-1 options: cached reference predictions and loss flooding.
"""
import math
from dataclasses import asdict
from typing import List

import numpy
import pytest
import spacy
import torch
from spacy.training import Example

from spacy_earlyexit.layers import early_exit_transformer
from spacy_earlyexit.layers.early_exit_transformer import train_docs
from spacy_earlyexit.model import EarlyExitEncoder, EncoderBatch
from spacy_earlyexit.model.self_sampling import (
    ReferencePredictions,
    SelfSampling,
    draw_span_settings,
    full_depth_layer_logits,
    sample_exit_layers,
    simulate_token_exits,
)

from helpers import encoders
from helpers.encoders import N_CLASSES, N_LAYERS, build_batch
from helpers.tiny_bert import PLAIN_OFFRAMPS, NER_DATA

torch.set_num_threads(1)  # a background job may hold the other core

PIPE = "earlyexit_tagger"


# --------------------------------------------------------------------------
# simulate_token_exits against a loop-by-loop reference
# --------------------------------------------------------------------------
def reference_exits(uncertainty, words, windows, thresholds, includes_exited) -> numpy.ndarray:
    """TOKEE by hand: word i of span s exits after layer l (1-based l + 1) when
    max u[l, s, j] over the span's words j within windows[s] of i (active
    ones only, unless includes_exited) is below thresholds[s]."""
    n_layers, n_spans, n_slots = uncertainty.shape
    exit_layer = numpy.full((n_spans, n_slots), n_layers)
    for s in range(n_spans):
        active = [bool(words[s, i]) for i in range(n_slots)]
        for layer in range(n_layers - 1):
            counted = [bool(words[s, j]) and (active[j] or includes_exited) for j in range(n_slots)]
            leaving = []
            for i in range(n_slots):
                if not active[i]:
                    continue
                lo, hi = max(0, i - int(windows[s])), min(n_slots - 1, i + int(windows[s]))
                score = max(float(uncertainty[layer, s, j]) for j in range(lo, hi + 1) if counted[j])
                if score < float(thresholds[s]) or float(thresholds[s]) >= 1.0:
                    leaving.append(i)
            for i in leaving:
                exit_layer[s, i] = layer + 1
                active[i] = False
    return exit_layer


@pytest.mark.parametrize("includes_exited", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_simulate_token_exits_matches_reference(seed: int, includes_exited: bool) -> None:
    generator = torch.Generator().manual_seed(seed)
    n_layers, n_spans, n_slots = 5, 6, 9
    uncertainty = torch.rand(n_layers, n_spans, n_slots, generator=generator)
    # uncertainty falls with depth, as in trained models, so that exits happen
    uncertainty *= torch.linspace(1.0, 0.2, n_layers)[:, None, None]
    lengths = torch.tensor([9, 1, 4, 7, 9, 3])
    words = torch.arange(n_slots)[None, :] < lengths[:, None]
    windows = torch.tensor([0, 1, 2, 0, 3, 1])
    thresholds = torch.tensor([0.3, 0.5, 0.45, 0.0, 0.6, 1.0])
    got = simulate_token_exits(uncertainty, words, windows, thresholds, includes_exited)
    expected = reference_exits(uncertainty.numpy(), words.numpy(), windows, thresholds, includes_exited)
    assert numpy.array_equal(got.numpy()[words.numpy()], expected[words.numpy()])
    # threshold 0: never early; threshold 1: every word at layer 1
    assert (got[3][words[3]] == n_layers).all()
    assert (got[5][words[5]] == 1).all()


def test_draw_span_settings_ranges_and_shares() -> None:
    sampling = SelfSampling(window_range=(1, 3), threshold_range=(0.1, 0.4), full_depth_share=0.2, aggressive_share=0.3)
    windows, thresholds = draw_span_settings(20000, sampling, torch.Generator().manual_seed(0))
    full = thresholds == 0.0
    aggressive = (thresholds == 0.4) & (windows == 1)
    assert ((windows >= 1) & (windows <= 3)).all()
    assert (full | ((thresholds >= 0.1) & (thresholds <= 0.4))).all()
    assert abs(full.float().mean().item() - 0.2) < 0.02
    assert abs(aggressive.float().mean().item() - 0.3) < 0.02
    assert set(windows[~full & ~aggressive].tolist()) == {1, 2, 3}


def test_self_sampling_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="uncertainty_source"):
        SelfSampling(uncertainty_source="cached")
    with pytest.raises(ValueError, match="flooding"):
        SelfSampling(flooding=-1.0)
    with pytest.raises(ValueError, match="threshold_range"):
        SelfSampling(threshold_range=(0.5, 0.2))
    assert SelfSampling(flooding=0.5).needs_reference
    assert not SelfSampling().needs_reference


# --------------------------------------------------------------------------
# the forced-exit forward against a masked halt-and-copy reference
# --------------------------------------------------------------------------
def make_encoder(seed: int = 0) -> EarlyExitEncoder:
    """A random encoder, off-ramps as initialised."""
    return encoders.make_encoder(encoders.random_bert(seed), seed=seed, sharpen=1.0)


SPANS = [[1, 2, 1, 1, 3, 1], [1, 0, 2, 1], [2], [1, 1, 1, 1, 1, 1, 1, 1]]


def reference_halt_and_copy(encoder: EarlyExitEncoder, batch: EncoderBatch, exits: torch.Tensor):
    """Per layer: every piece through the HF layer (all pieces as keys and
    values), then frozen pieces keep their previous state. A piece is active
    at layer l if its word's exit layer is >= l, or, for a piece of no word,
    while any word of its span is active. Returns L + 1 states [S, T, d] and
    per-layer logits [L, W, C] at each word's first piece."""
    transformer = encoder.transformer
    real = torch.arange(batch.input_ids.shape[1])[None, :] < batch.lengths[:, None]
    additive = torch.zeros(batch.n_spans, 1, 1, real.shape[1])
    additive[(~real)[:, None, None, :]] = torch.finfo(torch.float32).min
    states = [transformer.embeddings(input_ids=batch.input_ids)]
    logits = []
    for index, layer in enumerate(transformer.encoder.layer):
        depth = index + 1
        word_active = exits >= depth
        running = torch.zeros(batch.n_spans, dtype=torch.bool)
        running[batch.word_span[word_active]] = True
        owner = batch.piece_word
        piece_active = real & running[:, None] & ((owner < 0) | word_active[owner.clamp(min=0)])
        updated = layer(states[-1], attention_mask=additive)[0]
        states.append(torch.where(piece_active[..., None], updated, states[-1]))
        word_states = states[-1][batch.word_span, batch.word_piece]
        logits.append(encoder.offramps[index](word_states))
    return states, torch.stack(logits)


def test_forced_exits_freeze_and_copy_like_inference() -> None:
    encoder = make_encoder()
    batch = build_batch(SPANS)
    # exit layers 1..L spread over the words; span 2 (one word) exits at layer 1
    exits = torch.tensor([1 + (w * 3) % N_LAYERS for w in range(batch.n_words)])
    exits[batch.word_span == 2] = 1
    with torch.no_grad():
        out = encoder(batch, forced_exit_layer=exits, output_hidden_states=True, return_layer_logits=True)
        ref_states, ref_logits = reference_halt_and_copy(encoder, batch, exits)
    assert torch.equal(out.exit_layer, exits)
    real = torch.arange(batch.input_ids.shape[1])[None, :] < batch.lengths[:, None]
    for depth in range(1, N_LAYERS + 1):
        got, expected = out.hidden_states[depth], ref_states[depth]
        assert torch.allclose(got[real], expected[real], atol=1e-5), f"layer {depth}"
    # every piece of a word is frozen from its exit layer on: an exact copy
    for span, position in zip(*torch.nonzero(batch.piece_word >= 0, as_tuple=True)):
        exit_layer = int(exits[batch.piece_word[span, position]])
        for depth in range(exit_layer + 1, N_LAYERS + 1):
            assert torch.equal(out.hidden_states[depth][span, position], out.hidden_states[exit_layer][span, position])
    # logits only where the word was active; the label is its exit layer's argmax
    active = torch.arange(1, N_LAYERS + 1)[:, None] <= exits[None, :]
    assert torch.equal(out.layer_active, active)
    assert torch.allclose(out.layer_logits[active], ref_logits[active], atol=1e-5)
    assert (out.layer_logits[~active] == 0).all()
    assert torch.equal(out.labels, ref_logits[exits - 1, torch.arange(batch.n_words)].argmax(-1))


def test_sample_exit_layers_simulates_on_the_current_model() -> None:
    encoder = make_encoder(seed=1)
    with torch.no_grad():  # sharpen the off-ramps so that uncertainties spread
        for ramp in encoder.offramps:
            ramp.linear.weight.mul_(4.0)
    batch = build_batch(SPANS, seed=1)
    sampling = SelfSampling(window_range=(0, 2), threshold_range=(0.2, 0.9), full_depth_share=0.0, aggressive_share=0.0)
    exits = sample_exit_layers(encoder, batch, sampling, generator=torch.Generator().manual_seed(5))
    windows, thresholds = draw_span_settings(batch.n_spans, sampling, torch.Generator().manual_seed(5))
    # reference: HF layers at full depth, entropy by hand, the loop-by-loop rule
    all_active = torch.full((batch.n_words,), N_LAYERS)
    with torch.no_grad():
        _, logits = reference_halt_and_copy(encoder, batch, all_active)
    probs = torch.softmax(logits.double(), -1)
    entropy = -(probs * probs.log()).sum(-1) / math.log(N_CLASSES)
    n_slots = int(batch.word_slot.max()) + 1
    grid = numpy.zeros((N_LAYERS, batch.n_spans, n_slots))
    words = numpy.zeros((batch.n_spans, n_slots), dtype=bool)
    grid[:, batch.word_span, batch.word_slot] = entropy.numpy()
    words[batch.word_span, batch.word_slot] = True
    expected = reference_exits(grid, words, windows, thresholds, False)
    assert numpy.array_equal(exits.numpy(), expected[batch.word_span, batch.word_slot])
    assert len(set(exits.tolist())) > 1  # the check is not vacuous


# --------------------------------------------------------------------------
# a self-sampling step of the component
# --------------------------------------------------------------------------
def make_nlp(tiny_bert):
    torch.manual_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe(PIPE, config={"task": "ner", "model": {**PLAIN_OFFRAMPS, "name": str(tiny_bert), "offramp_dropout": 0.0}})
    nlp.initialize(lambda: examples(nlp))
    return nlp


def examples(nlp) -> List[Example]:
    return [Example.from_dict(nlp.make_doc(text), {"entities": ents}) for text, ents in NER_DATA]


def gold_classes(tagger, egs: List[Example]) -> numpy.ndarray:
    index = {name: i for i, name in enumerate(tagger.classes)}
    return numpy.asarray([index[v] for eg in egs for v in tagger.task.gold_classes(eg)])


def reference_loss(layer_logits, gold, active, flooding_level=None):
    """sum over layers l and tokens n active at l of w_l * CE, / n_tokens,
    w_l = l / sum(l); with flooding: |CE - b| + b. Returns (loss, gradient)."""
    logits = torch.tensor(layer_logits, dtype=torch.float64, requires_grad=True)
    n_layers, n_tokens = active.shape
    weights = torch.arange(1, n_layers + 1, dtype=torch.float64)
    weights = weights / weights.sum()
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), torch.tensor(gold).repeat(n_layers), reduction="none"
    ).reshape(n_layers, n_tokens)
    if flooding_level is not None:
        level = torch.tensor(flooding_level, dtype=torch.float64)
        ce = (ce - level).abs() + level
    loss = (weights[:, None] * ce * torch.tensor(active, dtype=torch.float64)).sum() / n_tokens
    loss.backward()
    return float(loss.detach()), logits.grad.numpy()


def test_self_sampling_step_freezes_tokens_and_masks_the_loss(tiny_bert, monkeypatch) -> None:
    nlp = make_nlp(tiny_bert)
    tagger = nlp.get_pipe(PIPE)
    encoder = tagger.model.shims[0].encoder
    n_layers = encoder.n_layers
    # every word of the tiny corpus is one piece, so words are tokens, in order
    egs = examples(nlp)
    n_tokens = sum(len(eg.predicted) for eg in egs)
    forced = torch.tensor([1 + (n * 2) % n_layers for n in range(n_tokens)])
    calls = []

    def fixed_exits(encoder_, batch, sampling, generator=None, layer_logits=None, entity_classes=None):
        calls.append(sampling)
        assert batch.n_words == n_tokens
        return forced.clone()

    recorded = {}
    original_forward = encoder.forward

    def recording_forward(batch, *args, **kwargs):
        kwargs["output_hidden_states"] = True
        out = original_forward(batch, *args, **kwargs)
        recorded.update(batch=batch, out=out, forced=kwargs.get("forced_exit_layer"))
        return out

    monkeypatch.setattr(early_exit_transformer, "sample_exit_layers", fixed_exits)
    monkeypatch.setattr(encoder, "forward", recording_forward)
    tagger.cfg["self_sampling"] = asdict(SelfSampling())
    outputs, backprop = train_docs(tagger.model, [eg.predicted for eg in egs], SelfSampling())
    assert len(calls) == 1 and torch.equal(recorded["forced"], forced)

    # frozen tokens' states at upper layers are their exit-layer states
    batch, out = recorded["batch"], recorded["out"]
    for span, position in zip(*torch.nonzero(batch.piece_word >= 0, as_tuple=True)):
        exit_layer = int(forced[batch.piece_word[span, position]])
        for depth in range(exit_layer + 1, n_layers + 1):
            assert torch.equal(out.hidden_states[depth][span, position], out.hidden_states[exit_layer][span, position])

    active = numpy.arange(1, n_layers + 1)[:, None] <= forced.numpy()[None, :]
    assert numpy.array_equal(outputs.layer_active, active)
    assert numpy.array_equal(numpy.concatenate(outputs.exit_layers), forced.numpy())

    loss, d_logits = tagger.get_loss(egs, outputs)
    expected_loss, expected_grad = reference_loss(outputs.layer_logits, gold_classes(tagger, egs), active)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert numpy.allclose(d_logits, expected_grad, atol=1e-6)
    assert (d_logits[~active] == 0).all()  # nothing above a token's exit layer
    assert (numpy.abs(d_logits[active]).sum(-1) > 0).all()

    # the gradient reaches the off-ramps of the layers where tokens were active
    backprop(d_logits)
    assert all(ramp.linear.weight.grad is not None for ramp in encoder.offramps)


def test_threshold_one_trains_only_the_first_layer(tiny_bert) -> None:
    nlp = make_nlp(tiny_bert)
    tagger = nlp.get_pipe(PIPE)
    sampling = SelfSampling(threshold_range=(1.0, 1.0), full_depth_share=0.0, aggressive_share=0.0)
    egs = examples(nlp)
    outputs, _ = train_docs(tagger.model, [eg.predicted for eg in egs], sampling)
    assert outputs.layer_active[0].all() and not outputs.layer_active[1:].any()
    loss, d_logits = tagger.get_loss(egs, outputs)
    expected_loss, _ = reference_loss(outputs.layer_logits, gold_classes(tagger, egs), outputs.layer_active)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert (d_logits[1:] == 0).all()


def test_update_with_self_sampling_changes_the_weights(tiny_bert) -> None:
    nlp = make_nlp(tiny_bert)
    tagger = nlp.get_pipe(PIPE)
    tagger.cfg["self_sampling"] = asdict(SelfSampling(threshold_range=(0.3, 0.9)))
    before = [p.detach().clone() for p in tagger.model.shims[0].encoder.parameters()]
    optimizer = nlp.resume_training()
    losses = nlp.update(examples(nlp), sgd=optimizer)
    after = list(tagger.model.shims[0].encoder.parameters())
    assert losses[PIPE] > 0
    assert any(not torch.equal(b, a) for b, a in zip(before, after))


# --------------------------------------------------------------------------
# options: cached stage-1 predictions, loss flooding
# --------------------------------------------------------------------------
def test_reference_predictions_are_frozen_and_cached_per_span() -> None:
    encoder = make_encoder(seed=2)
    batch = build_batch(SPANS, seed=2)
    with torch.no_grad():
        expected = full_depth_layer_logits(encoder, batch)
    reference = ReferencePredictions(encoder)
    assert torch.allclose(reference.layer_logits(batch), expected, atol=1e-6)
    assert len(reference) == batch.n_spans
    with torch.no_grad():  # training moves on; the reference must not
        for ramp in encoder.offramps:
            ramp.linear.weight.add_(1.0)
    # the same spans in another batch (other order, other padding) hit the cache
    reordered = build_batch([SPANS[2], SPANS[0]], seed=2)
    reordered.input_ids[0, : reordered.lengths[0]] = batch.input_ids[2, : batch.lengths[2]]
    reordered.input_ids[1, : reordered.lengths[1]] = batch.input_ids[0, : batch.lengths[0]]
    reference.encoder = None  # a recomputation would fail
    got = reference.layer_logits(reordered)
    span0, span2 = batch.word_span == 0, batch.word_span == 2
    assert torch.allclose(got[:, reordered.word_span == 0], expected[:, span2], atol=1e-6)
    assert torch.allclose(got[:, reordered.word_span == 1], expected[:, span0], atol=1e-6)


def test_stage1_source_and_flooding_in_a_step(tiny_bert) -> None:
    nlp = make_nlp(tiny_bert)
    tagger = nlp.get_pipe(PIPE)
    egs = examples(nlp)
    docs = [eg.predicted for eg in egs]
    sampling = SelfSampling(uncertainty_source="stage1", flooding=1.0, threshold_range=(0.3, 0.9))
    tagger.cfg["self_sampling"] = asdict(sampling)
    outputs, _ = train_docs(tagger.model, docs, sampling)
    reference = tagger.model.shims[0].self_sampling_reference
    assert outputs.reference_layer_logits is not None
    # at the first step the reference is the model itself: full-depth logits
    full_depth = outputs.reference_layer_logits
    active = outputs.layer_active
    assert numpy.allclose(outputs.layer_logits[:, active[-1]], full_depth[:, active[-1]], atol=1e-5)

    # flooding against a reference: |CE - b| + b with b the stage-1 CE
    gold = gold_classes(tagger, egs)
    level = torch.nn.functional.cross_entropy(
        torch.tensor(full_depth).reshape(-1, full_depth.shape[-1]).double(),
        torch.tensor(gold).repeat(full_depth.shape[0]), reduction="none",
    ).reshape(full_depth.shape[:2]).numpy()
    outputs.layer_logits = outputs.layer_logits + numpy.random.default_rng(0).normal(
        0, 1.0, outputs.layer_logits.shape
    ).astype("float32") * active[..., None]
    loss, d_logits = tagger.get_loss(egs, outputs)
    expected_loss, expected_grad = reference_loss(outputs.layer_logits, gold, active, flooding_level=level)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert numpy.allclose(d_logits, expected_grad, atol=1e-6)
    # some tokens are below their flood level: their gradient is reversed
    plain_loss, plain_grad = reference_loss(outputs.layer_logits, gold, active)
    reversed_rows = (numpy.sign(d_logits) == -numpy.sign(plain_grad)) & (plain_grad != 0)
    assert reversed_rows.any() and plain_loss != pytest.approx(expected_loss)

    # a second step reuses the frozen copy, even after the model changed
    with torch.no_grad():
        for ramp in tagger.model.shims[0].encoder.offramps:
            ramp.linear.weight.mul_(3.0)
    outputs2, _ = train_docs(tagger.model, docs, sampling)
    assert tagger.model.shims[0].self_sampling_reference is reference
    assert numpy.allclose(outputs2.reference_layer_logits, full_depth, atol=1e-6)
