"""Normalised entropy of an off-ramp's prediction."""
import math

import torch


def normalized_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H(softmax(logits)) / log(C), computed stably from log_softmax.

    logits: [N, C] float. Returns [N] in [0, 1]. A one-class task (C == 1) has
    no uncertainty: its entropy is defined as 0.
    """
    n_classes = logits.shape[-1]
    if n_classes <= 1:
        return logits.new_zeros(logits.shape[:-1])
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    # p * log p -> 0 as p -> 0; a log-probability of -inf (logits that differ
    # by more than the float range) would otherwise give 0 * -inf = nan
    plogp = (log_probs.exp() * log_probs).masked_fill(torch.isneginf(log_probs), 0.0)
    entropy = -plogp.sum(dim=-1)
    return (entropy / math.log(n_classes)).clamp_(0.0, 1.0)
