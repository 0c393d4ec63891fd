"""The exit rule: which tokens (TOKEE) or sentences (SENTEE) leave at a layer.

All functions work on a word grid [S, W]: S spans (sentences or windows) by
W word slots, padded. They are pure tensor functions with no state.
"""
import torch
import torch.nn.functional as F


def below_threshold(score: torch.Tensor, threshold: float) -> torch.Tensor:
    """score < threshold, where threshold >= 1 admits every score.

    The normalised entropy never exceeds 1, so a threshold of 1 means "always
    exit"; the explicit case keeps a perfectly uniform prediction (u == 1) from
    staying behind.
    """
    if threshold >= 1.0:
        return torch.ones_like(score, dtype=torch.bool)
    return score < threshold


def window_max(scores: torch.Tensor, window: int) -> torch.Tensor:
    """Max of scores over [i - window, i + window] along the last axis.

    scores: [S, W] float, -inf where a slot must not count (padding, or a word
    excluded from windows). Edges are padded with -inf so that they never win,
    as max_pool1d does. Returns [S, W].
    """
    if window == 0 or scores.shape[-1] == 0:
        return scores
    width = scores.shape[-1]
    # max_pool1d pads with -inf; keep padding <= kernel // 2 by clipping the
    # window to the grid width (a larger window covers the whole row anyway).
    half = min(window, width)
    pooled = F.max_pool1d(scores.unsqueeze(1), kernel_size=2 * half + 1, stride=1, padding=half)
    return pooled.squeeze(1)


def token_exits(
    uncertainty: torch.Tensor,
    active: torch.Tensor,
    counted: torch.Tensor,
    window: int,
    threshold: float,
) -> torch.Tensor:
    """TOKEE: active words whose window uncertainty is below the threshold.

    uncertainty: [S, W] float, each word's latest uncertainty (frozen value
        for exited words).
    active: [S, W] bool, words still in the encoder.
    counted: [S, W] bool, words that count in their neighbours' windows.
    Returns [S, W] bool: the words that exit now.
    """
    scores = uncertainty.masked_fill(~counted, float("-inf"))
    return active & below_threshold(window_max(scores, window), threshold)


def sentence_exits(
    uncertainty: torch.Tensor,
    words: torch.Tensor,
    threshold: float,
    pooling: str = "max",
) -> torch.Tensor:
    """SENTEE: spans whose pooled word uncertainty is below the threshold.

    uncertainty: [S, W] float; words: [S, W] bool, real word slots.
    Returns [S] bool; spans with no words never exit here.
    """
    n_words = words.sum(dim=1)
    if pooling == "max":
        score = uncertainty.masked_fill(~words, float("-inf")).max(dim=1).values
    elif pooling == "mean":
        score = uncertainty.masked_fill(~words, 0.0).sum(dim=1) / n_words.clamp(min=1)
    else:
        raise ValueError(f"sentence_score must be 'max' or 'mean'; got {pooling!r}")
    return (n_words > 0) & below_threshold(score, threshold)
