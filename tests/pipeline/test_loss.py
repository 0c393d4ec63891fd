"""The training loss (pipeline/loss.py) against torch autograd: per-layer
cross-entropy, and distillation of the last layer's distribution into the
earlier off-ramps, computed here independently (torch's log_softmax,
kl_div and backward)."""
import numpy
import pytest
import torch
import torch.nn.functional as F

from spacy_earlyexit.pipeline.loss import early_exit_loss, layer_loss_weights


def torch_reference(logits, gold, active, weights, distillation, temperature):
    """The loss as its docstring states, with autograd for the gradient."""
    z = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    n_layers = z.shape[0]
    known = torch.tensor(gold >= 0)
    target = torch.tensor(numpy.maximum(gold, 0))
    act = torch.tensor(active)
    n_known = max(int(known.sum()), 1)
    total = z.new_zeros(())
    teacher = F.softmax(z[-1].detach() / temperature, dim=-1)
    for layer in range(n_layers):
        ce = F.cross_entropy(z[layer], target, reduction="none")
        mask = (act[layer] & known).double()
        if layer < n_layers - 1 and distillation:
            taught = (act[layer] & act[-1]).double()
            kl = F.kl_div(F.log_softmax(z[layer] / temperature, dim=-1), teacher, reduction="none").sum(-1)
            per_token = ce * (1 - distillation * taught) + distillation * taught * temperature**2 * kl
        else:
            per_token = ce
        total = total + weights[layer] * (per_token * mask).sum() / n_known
    total.backward()
    return float(total.detach()), z.grad.numpy()


@pytest.mark.parametrize("scheme", ["depth", "uniform", "last"])
@pytest.mark.parametrize("distillation, temperature", [(0.0, 1.0), (0.5, 1.0), (0.5, 2.0), (0.9, 3.0)])
def test_loss_and_gradient_match_autograd(scheme, distillation, temperature) -> None:
    rng = numpy.random.default_rng(0)
    n_layers, n_tokens, n_classes = 4, 11, 5
    logits = rng.normal(size=(n_layers, n_tokens, n_classes)).astype("float32") * 2
    gold = rng.integers(0, n_classes, n_tokens)
    gold[[2, 7]] = -1  # no gold class
    active = numpy.ones((n_layers, n_tokens), dtype=bool)
    active[2:, 3] = False  # exited after layer 2: no teacher
    active[1:, 5] = False
    weights = layer_loss_weights(scheme, n_layers)
    loss, grad = early_exit_loss(logits, gold, active, weights, distillation=distillation, temperature=temperature)
    expected_loss, expected_grad = torch_reference(logits, gold, active, weights, distillation, temperature)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    numpy.testing.assert_allclose(grad, expected_grad, atol=1e-6)


def test_distillation_never_teaches_the_last_layer() -> None:
    rng = numpy.random.default_rng(1)
    logits = rng.normal(size=(3, 6, 4)).astype("float32")
    gold = rng.integers(0, 4, 6)
    active = numpy.ones((3, 6), dtype=bool)
    weights = layer_loss_weights("uniform", 3)
    _, plain = early_exit_loss(logits, gold, active, weights)
    _, taught = early_exit_loss(logits, gold, active, weights, distillation=0.7, temperature=2.0)
    numpy.testing.assert_allclose(plain[-1], taught[-1], atol=1e-7)
    assert not numpy.allclose(plain[0], taught[0])


def test_student_equal_to_teacher_costs_only_cross_entropy() -> None:
    rng = numpy.random.default_rng(2)
    one = rng.normal(size=(1, 5, 3)).astype("float32")
    logits = numpy.repeat(one, 3, axis=0)
    gold = numpy.array([0, 1, 2, 1, 0])
    active = numpy.ones((3, 5), dtype=bool)
    weights = layer_loss_weights("uniform", 3)
    plain, _ = early_exit_loss(logits, gold, active, weights)
    mixed, _ = early_exit_loss(logits, gold, active, weights, distillation=0.5)
    # layers 1-2: half the CE (KL is 0), layer 3: the whole CE
    assert mixed == pytest.approx(plain * (2 * 0.5 + 1) / 3, rel=1e-5)


@pytest.mark.parametrize("distillation, temperature", [(1.0, 1.0), (-0.1, 1.0), (0.5, 0.0)])
def test_bad_distillation_settings_raise(distillation, temperature) -> None:
    logits = numpy.zeros((2, 1, 2), dtype="float32")
    with pytest.raises(ValueError, match="distillation"):
        early_exit_loss(logits, numpy.array([0]), numpy.ones((2, 1), bool), numpy.array([0.5, 0.5]),
                        distillation=distillation, temperature=temperature)
