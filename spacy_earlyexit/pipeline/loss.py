"""The training loss of the earlyexit_tagger: a weighted sum over layers of
per-token cross-entropies, optionally mixed with distillation of the last
layer's distribution into the earlier off-ramps; pure numpy (no spaCy, no
torch)."""
from typing import Optional, Tuple

import numpy

LOSS_WEIGHTS = ("depth", "uniform", "last")


def layer_loss_weights(scheme: str, n_layers: int) -> numpy.ndarray:
    """[L] weights of the per-layer losses, summing to 1: "depth" (w_l
    proportional to l), "uniform" or "last" (the final classifier only)."""
    if scheme == "depth":
        weights = numpy.arange(1, n_layers + 1, dtype="float32")
    elif scheme == "uniform":
        weights = numpy.ones(n_layers, dtype="float32")
    elif scheme == "last":
        weights = numpy.zeros(n_layers, dtype="float32")
        weights[-1] = 1.0
    else:
        raise ValueError(f"loss_weights must be one of {', '.join(LOSS_WEIGHTS)}; got {scheme!r}")
    return weights / weights.sum()


def check_distillation(distillation: float, temperature: float) -> None:
    """Raise ValueError unless 0 <= distillation < 1 and temperature > 0."""
    if isinstance(distillation, bool) or not 0.0 <= distillation < 1.0:
        raise ValueError(f"distillation must be in [0, 1); got {distillation!r}")
    if isinstance(temperature, bool) or not temperature > 0:
        raise ValueError(f"distillation_temperature must be > 0; got {temperature!r}")


def cross_entropy(logits: numpy.ndarray, target: numpy.ndarray) -> numpy.ndarray:
    """logits [L, N, C], target [N] int -> [L, N] cross-entropy per layer and token."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_norm = numpy.log(numpy.exp(shifted).sum(axis=-1))
    return log_norm - numpy.take_along_axis(shifted, target[None, :, None], axis=-1)[..., 0]


def softmax(logits: numpy.ndarray, temperature: float = 1.0) -> numpy.ndarray:
    """Softmax over the last axis of logits / temperature."""
    shifted = logits / temperature
    shifted = shifted - shifted.max(axis=-1, keepdims=True)
    exp = numpy.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def distillation_terms(
    layer_logits: numpy.ndarray, temperature: float
) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """Per layer and token, T^2 KL(p_last || p_l) with p = softmax(logits / T)
    and the last layer as the (constant) teacher, and its gradient with
    respect to layer l's logits, T (p_l - p_last).

    layer_logits: [L, N, C]. Returns ([L, N] loss, [L, N, C] gradient); the
    last layer's rows are zero (it is not distilled into itself).
    """
    teacher = softmax(layer_logits[-1], temperature)  # [N, C]
    student = softmax(layer_logits, temperature)  # [L, N, C]
    log_ratio = numpy.log(numpy.maximum(teacher, 1e-30))[None] - numpy.log(numpy.maximum(student, 1e-30))
    kl = (teacher[None] * log_ratio).sum(axis=-1) * temperature**2
    grad = temperature * (student - teacher[None])
    kl[-1] = 0.0
    grad[-1] = 0.0
    return kl, grad


def early_exit_loss(
    layer_logits: numpy.ndarray,
    gold: numpy.ndarray,
    layer_active: numpy.ndarray,
    weights: numpy.ndarray,
    reference_layer_logits: Optional[numpy.ndarray] = None,
    flooding: float = 0.0,
    distillation: float = 0.0,
    temperature: float = 1.0,
) -> Tuple[float, numpy.ndarray]:
    """The weighted sum over layers of the cross-entropy summed over the
    tokens with a gold class that were computed at that layer, divided by the
    number of tokens with a gold class (so a token's weight at a layer does
    not depend on how many others exited).

    layer_logits: [L, N, C]; gold: [N] class index, -1 where there is none
        (or the token has no output of its own); layer_active: [L, N] bool,
        the token was computed at that layer; weights: [L] (layer_loss_weights).
    reference_layer_logits, flooding: self-sampling's loss flooding, |loss -
        b| + b with b = flooding x the token's loss under the stage-1 model
        (the gradient is reversed below b); off when flooding is 0.
    distillation: a in [0, 1): at every layer but the last, a token's loss is
        (1 - a) x cross-entropy + a x T^2 KL(p_last || p_l), the last layer's
        distribution at temperature T (`temperature`) taught to the earlier
        off-ramps as a constant target (no gradient flows into the last
        layer through it); only for tokens computed at the last layer too.
        0: plain cross-entropy.
    Returns (loss, d_layer_logits [L, N, C] float32).
    """
    check_distillation(distillation, temperature)
    known = gold >= 0
    shifted = layer_logits - layer_logits.max(axis=-1, keepdims=True)
    log_probs = shifted - numpy.log(numpy.exp(shifted).sum(axis=-1, keepdims=True))
    target = numpy.maximum(gold, 0)
    picked = numpy.take_along_axis(log_probs, target[None, :, None], axis=-1)[..., 0]
    n_known = max(int(known.sum()), 1)
    scale = (weights[:, None] * (layer_active & known[None, :])) / n_known  # [L, N]
    token_loss = -picked  # [L, N]
    grad_scale = scale
    if flooding and reference_layer_logits is not None:
        level = flooding * cross_entropy(reference_layer_logits, target)
        grad_scale = scale * numpy.where(token_loss >= level, 1.0, -1.0)
        token_loss = numpy.abs(token_loss - level) + level
    d_logits = numpy.exp(log_probs)
    d_logits[:, numpy.arange(len(gold)), target] -= 1.0
    if not distillation or layer_logits.shape[0] < 2:
        loss = float((token_loss * scale).sum())
        d_logits *= grad_scale[..., None]
        return loss, d_logits.astype("float32")
    # layers below the last: (1 - a) CE + a KL, for tokens the teacher saw
    taught = numpy.zeros(layer_active.shape, dtype=bool)
    taught[:-1] = layer_active[:-1] & layer_active[-1][None, :]
    ce_share = numpy.where(taught, 1.0 - distillation, 1.0)  # [L, N]
    kl, d_kl = distillation_terms(layer_logits, temperature)
    kl_scale = scale * taught * distillation
    loss = float((token_loss * scale * ce_share).sum() + (kl * kl_scale).sum())
    d_logits *= (grad_scale * ce_share)[..., None]
    d_logits += d_kl * kl_scale[..., None]
    return loss, d_logits.astype("float32")
