"""The exit rule, in one place: which tokens (TOKEE) or sentences (SENTEE)
leave the encoder after a layer.

Inference (EarlyExitEncoder) and self-sampling (simulated exits) both ask an
`ExitRule` the same question after each layer: given every word's latest
uncertainty, which of the still-active words exit now? The rules work on a
word grid [S, W]: S spans (sentences or windows) by W word slots, padded.
They are small immutable objects holding per-layer thresholds; nothing in
them changes during a call, so one rule can serve concurrent calls.

`exit_rule(settings, n_layers)` turns the run-time dial (ExitSettings) into a
rule; self-sampling builds `TokenExit` with per-span windows and thresholds.
"""
from dataclasses import dataclass
from typing import Sequence, Union

import torch
import torch.nn.functional as F

from .exit_settings import ExitSettings

#: a threshold for all spans, or one per span ([S, 1] float)
Threshold = Union[float, torch.Tensor]
#: a window half-width for all spans, or one per span ([S] long)
Window = Union[int, torch.Tensor]


def below_threshold(score: torch.Tensor, threshold: Threshold) -> torch.Tensor:
    """score < threshold, where a threshold >= 1 admits every score.

    The normalised entropy never exceeds 1, so a threshold of 1 means "always
    exit"; the explicit case keeps a perfectly uniform prediction (u == 1) from
    staying behind. threshold: a float, or a tensor broadcastable to score.
    """
    if isinstance(threshold, torch.Tensor):
        return (score < threshold) | (threshold >= 1.0)
    if threshold >= 1.0:
        return torch.ones_like(score, dtype=torch.bool)
    return score < threshold


def window_max(scores: torch.Tensor, window: Window) -> torch.Tensor:
    """Max of scores over [i - window, i + window] along the last axis.

    scores: [S, W] float, -inf where a slot must not count (padding, or a word
    excluded from windows). window: one half-width, or [S] long, one per span.
    Edges are padded with -inf so that they never win, as max_pool1d does.
    Returns [S, W].
    """
    if isinstance(window, torch.Tensor):
        pooled = torch.empty_like(scores)
        for value in window.unique().tolist():
            rows = window == value
            pooled[rows] = window_max(scores[rows], int(value))
        return pooled
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
    window: Window,
    threshold: Threshold,
) -> torch.Tensor:
    """TOKEE: active words whose window uncertainty is below the threshold.

    uncertainty: [S, W] float, each word's latest uncertainty (frozen value
        for exited words).
    active: [S, W] bool, words still in the encoder.
    counted: [S, W] bool, words that count in their neighbours' windows.
    window: half-width k, or [S] per span; threshold: float or [S, 1].
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


class ExitRule:
    """Which active words exit after a layer.

    needs_uncertainty: whether `exits` reads the uncertainty grid (the caller
    then keeps it up to date); never_exits: a shortcut for full depth.
    """

    needs_uncertainty: bool = True
    never_exits: bool = False

    def exits(
        self, layer_index: int, uncertainty: torch.Tensor, active: torch.Tensor, words: torch.Tensor
    ) -> torch.Tensor:
        """After layer `layer_index` (0-based): [S, W] bool, the words that exit.

        uncertainty: [S, W] float, every word's latest uncertainty (frozen for
        exited words); active: [S, W] bool, words still computed; words:
        [S, W] bool, real word slots.
        """
        raise NotImplementedError


class NoExit(ExitRule):
    """Full depth: nothing exits before the last layer."""

    needs_uncertainty = False
    never_exits = True

    def exits(self, layer_index, uncertainty, active, words):
        return torch.zeros_like(active)


@dataclass(frozen=True)
class ForcedExit(ExitRule):
    """Exit layers given in advance (self-sampling): exit_layer [S, W] long, 1-based."""

    exit_layer: torch.Tensor
    needs_uncertainty = False

    def exits(self, layer_index, uncertainty, active, words):
        return active & (self.exit_layer == layer_index + 1)


@dataclass(frozen=True)
class SentenceExit(ExitRule):
    """SENTEE: a span exits when its pooled uncertainty is below the layer's threshold."""

    thresholds: Sequence[float]
    pooling: str = "max"

    def exits(self, layer_index, uncertainty, active, words):
        return active & sentence_exits(uncertainty, active, self.thresholds[layer_index], self.pooling)[:, None]


@dataclass(frozen=True)
class TokenExit(ExitRule):
    """TOKEE: a word exits when the maximum uncertainty in its window
    [i - window, i + window] is below the layer's threshold.

    thresholds: one per layer, each a float or [S, 1] per span.
    window: half-width, or [S] long per span.
    window_includes_exited: exited words keep counting in their neighbours'
        windows with their frozen uncertainty (else only active words count).
    """

    thresholds: Sequence[Threshold]
    window: Window = 0
    window_includes_exited: bool = False

    def exits(self, layer_index, uncertainty, active, words):
        counted = words if self.window_includes_exited else active
        return token_exits(uncertainty, active, counted, self.window, self.thresholds[layer_index])


def layer_thresholds(settings: ExitSettings, n_layers: int) -> list:
    """The threshold used at each of the encoder's `n_layers` layers:
    min(1, threshold x multiplier[l]), or the threshold itself without
    multipliers. Raises ValueError when the multipliers do not give one per layer."""
    if settings.threshold_multipliers is None:
        return [settings.threshold] * n_layers
    if len(settings.threshold_multipliers) != n_layers:
        raise ValueError(
            f"threshold_multipliers has {len(settings.threshold_multipliers)} entries but "
            f"the encoder has {n_layers} layers"
        )
    return [min(1.0, settings.threshold * m) for m in settings.threshold_multipliers]


def exit_rule(settings: ExitSettings, n_layers: int) -> ExitRule:
    """The rule of the run-time dial for an encoder of `n_layers` layers."""
    thresholds = layer_thresholds(settings, n_layers)
    if settings.exit_mode == "off":
        return NoExit()
    if settings.exit_mode == "sentence":
        return SentenceExit(thresholds, settings.sentence_score)
    return TokenExit(thresholds, settings.window, settings.window_includes_exited)
