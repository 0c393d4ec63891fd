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
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
    return (entropy / math.log(n_classes)).clamp_(0.0, 1.0)
