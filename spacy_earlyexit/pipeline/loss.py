"""The training loss of the earlyexit_tagger: a weighted sum over layers of
per-token cross-entropies, pure numpy (no spaCy, no torch)."""
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


def cross_entropy(logits: numpy.ndarray, target: numpy.ndarray) -> numpy.ndarray:
    """logits [L, N, C], target [N] int -> [L, N] cross-entropy per layer and token."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_norm = numpy.log(numpy.exp(shifted).sum(axis=-1))
    return log_norm - numpy.take_along_axis(shifted, target[None, :, None], axis=-1)[..., 0]


def early_exit_loss(
    layer_logits: numpy.ndarray,
    gold: numpy.ndarray,
    layer_active: numpy.ndarray,
    weights: numpy.ndarray,
    reference_layer_logits: Optional[numpy.ndarray] = None,
    flooding: float = 0.0,
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
    Returns (loss, d_layer_logits [L, N, C] float32).
    """
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
    loss = float((token_loss * scale).sum())
    d_logits = numpy.exp(log_probs)
    d_logits[:, numpy.arange(len(gold)), target] -= 1.0
    d_logits *= grad_scale[..., None]
    return loss, d_logits.astype("float32")
