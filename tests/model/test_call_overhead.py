"""The shortcuts that cut the per-call cost of one document, each against a
reference computed another way: the whitespace table against str.isspace,
the exit rule's per-word decision against its word-grid decision, the
encoder's eval check against the modules' own flags, inference-mode
predictions against a plain no-grad forward pass, and K and V of an int8
layer from one quantization against one each."""
import sys

import numpy
import pytest
import torch

from spacy_earlyexit.layers.wordpieces import whitespace_mask
from spacy_earlyexit.model import ExitSettings
from spacy_earlyexit.model import quantization
from spacy_earlyexit.model.exit_policy import EntityTokenExit, TokenExit, exit_rule
from spacy_earlyexit.model.quantization import INT8_BLOCK_ROWS, Int8Linear, same_input_products

from helpers.encoders import N_LAYERS, build_batch, make_encoder, random_bert, random_spans


def test_whitespace_mask_matches_isspace_on_every_code_point() -> None:
    text = "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF)
    expected = numpy.asarray([char.isspace() for char in text] + [False])
    assert numpy.array_equal(whitespace_mask([text]), expected)


def test_whitespace_mask_lays_texts_end_to_end() -> None:
    texts = ["a b", "", "\u3000\u2028x", " "]
    expected = [c.isspace() for c in "a b\x00\x00\u3000\u2028x\x00 \x00"]
    assert whitespace_mask(texts).tolist() == expected
    assert whitespace_mask(texts, separator_after_each=False).tolist() == expected[:-1]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("includes_exited", [False, True])
def test_own_word_decision_matches_the_grid(seed: int, includes_exited: bool) -> None:
    """TokenExit with window 0: word_exits on the active words' uncertainties
    gives what exits gives on the grid, at every layer's threshold (0 and
    >= 1 included)."""
    generator = torch.Generator().manual_seed(seed)
    n_spans, n_slots = 4, 9
    words = torch.rand(n_spans, n_slots, generator=generator) < 0.8
    active = words & (torch.rand(n_spans, n_slots, generator=generator) < 0.6)
    uncertainty = torch.rand(n_spans, n_slots, generator=generator)
    uncertainty[0, 0] = 1.0  # a uniform prediction
    rule = TokenExit([0.0, 0.3, 0.5, 1.0, 1.7], 0, includes_exited)
    assert rule.reads_own_word_only
    for layer_index in range(len(rule.thresholds)):
        on_grid = rule.exits(layer_index, uncertainty, active, words)
        assert not bool((on_grid & ~active).any())
        assert rule.word_exits(layer_index, uncertainty[active]).tolist() == on_grid[active].tolist()


def test_rules_that_read_more_than_the_word_use_the_grid() -> None:
    assert not TokenExit([0.3], 1).reads_own_word_only
    assert not TokenExit([torch.full((2, 1), 0.3)], 0).reads_own_word_only
    assert not TokenExit([0.3], torch.zeros(2, dtype=torch.long)).reads_own_word_only
    assert not EntityTokenExit([0.3], 0).reads_own_word_only
    assert not exit_rule(ExitSettings(exit_mode="sentence"), N_LAYERS).reads_own_word_only
    assert not exit_rule(ExitSettings(), N_LAYERS).reads_own_word_only
    assert exit_rule(ExitSettings(exit_mode="token", window=0), N_LAYERS).reads_own_word_only


@pytest.mark.parametrize("threshold", [0.0, 0.35, 0.5, 0.65, 1.0])
def test_encoder_own_word_path_matches_grid_path(threshold: float, monkeypatch) -> None:
    """The encoder's outputs with the per-word decision equal those with the
    word grid (the rule told to read the grid)."""
    encoder = make_encoder(random_bert())
    batch = build_batch(random_spans(3, n_spans=6), seed=3)
    settings = ExitSettings(exit_mode="token", threshold=threshold, threshold_multipliers=(1, 2, 4, 8))
    with torch.no_grad():
        fast = encoder(batch, settings)
        monkeypatch.setattr(TokenExit, "reads_own_word_only", property(lambda self: False))
        grid = encoder(batch, settings)
    assert torch.equal(fast.exit_layer, grid.exit_layer)
    assert torch.equal(fast.labels, grid.labels)
    assert torch.equal(fast.exit_logits, grid.exit_logits)


def test_ensure_eval_reaches_every_module(monkeypatch) -> None:
    encoder = make_encoder(random_bert())
    encoder.offramps[1].dropout.train()  # one module deep inside
    encoder.ensure_eval()
    assert not any(module.training for module in encoder.modules())
    calls = []
    monkeypatch.setattr(type(encoder), "eval", lambda self: calls.append(self) or self)
    encoder.ensure_eval()  # already everywhere in eval mode: nothing to write
    assert calls == []


def test_predictions_in_inference_mode_then_training_still_works() -> None:
    """Inference mode changes no output (the same forward pass under no_grad
    gives the same tensors), and a training step after it has gradients."""
    encoder = make_encoder(random_bert())
    batch = build_batch(random_spans(1, n_spans=4), seed=1)
    settings = ExitSettings(exit_mode="token", threshold=0.5)
    with torch.inference_mode():
        fast = encoder(batch, settings)
    with torch.no_grad():
        plain = encoder(batch, settings)
    assert torch.equal(fast.exit_layer, plain.exit_layer)
    assert torch.equal(fast.exit_logits, plain.exit_logits)
    encoder.train()
    out = encoder(batch, return_layer_logits=True)
    out.layer_logits.sum().backward()
    assert encoder.offramps[0].linear.weight.grad is not None


@pytest.mark.parametrize("rows", [1, 17, INT8_BLOCK_ROWS, INT8_BLOCK_ROWS + 44])
def test_key_and_value_from_one_quantization(rows, monkeypatch) -> None:
    torch.manual_seed(rows)
    modules = [Int8Linear.from_linear(torch.nn.Linear(24, 24)) for _ in range(2)]
    x = torch.randn(rows, 24) * 4
    quantized = []
    real_quantize = quantization.quantize_rows
    monkeypatch.setattr(quantization, "quantize_rows", lambda r: quantized.append(1) or real_quantize(r))
    with torch.inference_mode():
        separate = [module(x) for module in modules]
        quantized.clear()
        shared = same_input_products(modules, x)
    assert all(torch.equal(a, b) for a, b in zip(shared, separate))
    # one quantization for both while the rows fit one block; block by block, per module, above
    expected = 1 if rows <= INT8_BLOCK_ROWS else 2 * -(-rows // INT8_BLOCK_ROWS)
    assert len(quantized) == expected


def test_same_input_products_of_float_layers_are_their_calls() -> None:
    torch.manual_seed(0)
    modules = [torch.nn.Linear(8, 8), torch.nn.Linear(8, 4)]
    x = torch.randn(5, 8)
    with torch.no_grad():
        assert all(torch.equal(a, m(x)) for a, m in zip(same_input_products(modules, x), modules))
