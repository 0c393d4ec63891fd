"""The exit rule, in one place: which tokens (TOKEE) or sentences (SENTEE)
leave the encoder after a layer.

Inference (EarlyExitEncoder) and self-sampling (simulated exits) both ask an
`ExitRule` the same question after each layer: given every word's latest
uncertainty, which of the still-active words exit now? The rules work on a
word grid [S, W]: S spans (sentences or windows) by W word slots, padded.
They are small immutable objects holding per-layer thresholds; nothing in
them changes during a call, so one rule can serve concurrent calls.

`exit_rule(settings, n_layers)` turns the run-time dial (ExitSettings) into a
rule; self-sampling builds `TokenExit` (or `EntityTokenExit`) with per-span
windows and thresholds. `last_layer(settings, n_layers)` is the depth cap
(settings.max_layer): the layer after which every word still active exits;
the rules are not asked about it (nobody stays behind there).

`EntityTokenExit` is TOKEE for entities: the rule also reads, per word,
whether its latest prediction is a class inside an entity (the `entity`
grid; which classes those are is the task's business, given to the encoder
as a [C] bool vector), so that an entity's tokens leave together.
"""
from dataclasses import dataclass
from typing import Optional, Sequence, Union

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
    then keeps it up to date); needs_entity: whether it reads the entity grid;
    never_exits: a shortcut for full depth.
    """

    needs_uncertainty: bool = True
    needs_entity: bool = False
    never_exits: bool = False

    @property
    def reads_own_word_only(self) -> bool:
        """Whether a word's decision reads its own uncertainty and nothing
        else (no window, no entity, one threshold for all spans): then
        `word_exits` gives `exits` without the word grid."""
        return False

    def word_exits(self, layer_index: int, uncertainty: torch.Tensor) -> torch.Tensor:
        """For rules that read a word's own uncertainty only: uncertainty
        [A] float of the active words -> [A] bool, which of them exit (what
        `exits` gives at their grid slots)."""
        raise NotImplementedError

    def exits(
        self,
        layer_index: int,
        uncertainty: torch.Tensor,
        active: torch.Tensor,
        words: torch.Tensor,
        entity: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """After layer `layer_index` (0-based): [S, W] bool, the words that exit.

        uncertainty: [S, W] float, every word's latest uncertainty (frozen for
        exited words); active: [S, W] bool, words still computed; words:
        [S, W] bool, real word slots; entity: [S, W] bool, the word's latest
        prediction (frozen for exited words) is a class inside an entity
        (read only by rules with needs_entity).
        """
        raise NotImplementedError


class NoExit(ExitRule):
    """Full depth: nothing exits before the last layer."""

    needs_uncertainty = False
    never_exits = True

    def exits(self, layer_index, uncertainty, active, words, entity=None):
        return torch.zeros_like(active)


@dataclass(frozen=True)
class ForcedExit(ExitRule):
    """Exit layers given in advance (self-sampling): exit_layer [S, W] long, 1-based."""

    exit_layer: torch.Tensor
    needs_uncertainty = False

    def exits(self, layer_index, uncertainty, active, words, entity=None):
        return active & (self.exit_layer == layer_index + 1)


@dataclass(frozen=True)
class SentenceExit(ExitRule):
    """SENTEE: a span exits when its pooled uncertainty is below the layer's threshold."""

    thresholds: Sequence[float]
    pooling: str = "max"

    def exits(self, layer_index, uncertainty, active, words, entity=None):
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

    def exits(self, layer_index, uncertainty, active, words, entity=None):
        counted = words if self.window_includes_exited else active
        return token_exits(uncertainty, active, counted, self.window, self.thresholds[layer_index])

    @property
    def reads_own_word_only(self) -> bool:
        """Window 0 and float thresholds: an active word's window is itself
        (it counts in it whether or not exited words do)."""
        return (
            not isinstance(self.window, torch.Tensor) and self.window == 0
            and not any(isinstance(threshold, torch.Tensor) for threshold in self.thresholds)
        )

    def word_exits(self, layer_index: int, uncertainty: torch.Tensor) -> torch.Tensor:
        return below_threshold(uncertainty, self.thresholds[layer_index])


def entity_groups(entity: torch.Tensor, words: torch.Tensor, margin: int) -> torch.Tensor:
    """Group ids of the words that must exit together: each maximal run of
    words within `margin` slots of an entity word (the predicted entities
    with `margin` neighbours either side; runs that touch merge).

    entity, words: [S, W] bool. Returns [S, W] long: -1 for words in no
    group, else an id unique over the grid (row * W + run number).
    """
    n_spans, width = entity.shape
    near = window_max((entity & words).float(), margin) > 0 if width else entity
    grouped = near & words
    starts = grouped.clone()
    starts[:, 1:] &= ~grouped[:, :-1]
    run = starts.long().cumsum(dim=1)
    rows = torch.arange(n_spans, device=entity.device)[:, None] * (width + 1)
    return torch.where(grouped, rows + run, torch.full_like(run, -1))


def group_max(scores: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Each grouped word's score replaced by the max over its group.

    scores: [S, W] float; groups: [S, W] long (entity_groups). Returns [S, W].
    """
    grouped = groups >= 0
    if not bool(grouped.any()):
        return scores
    index = groups[grouped]
    pooled = torch.full((int(index.max()) + 1,), float("-inf"), dtype=scores.dtype, device=scores.device)
    pooled = pooled.scatter_reduce(0, index, scores[grouped], reduce="amax")
    result = scores.clone()
    result[grouped] = pooled[index]
    return result


def entity_token_exits(
    uncertainty: torch.Tensor,
    active: torch.Tensor,
    counted: torch.Tensor,
    words: torch.Tensor,
    entity: torch.Tensor,
    window: Window,
    threshold: Threshold,
    margin: int,
    entity_scale: float,
) -> torch.Tensor:
    """TOKEE for entities (see EntityTokenExit). Returns [S, W] bool.

    uncertainty, active, counted, window, threshold: as in token_exits;
    words: [S, W] bool, real word slots; entity: [S, W] bool, predicted
    class inside an entity; margin: neighbours joined with an entity on each
    side; entity_scale: in (0, 1], an entity word's uncertainty counts as
    uncertainty / entity_scale (a threshold x entity_scale for entities).
    """
    strict = uncertainty / entity_scale if entity_scale != 1.0 else uncertainty
    scores = torch.where(entity, strict, uncertainty).masked_fill(~counted, float("-inf"))
    scores = group_max(window_max(scores, window), entity_groups(entity, words, margin))
    return active & below_threshold(scores, threshold)


@dataclass(frozen=True)
class EntityTokenExit(TokenExit):
    """TOKEE that keeps entities whole (exit setting entity_exit).

    Words predicted inside an entity (a B-, I-, L- or U- class: the `entity`
    grid) form groups with their `margin` neighbours on either side (runs
    that touch merge): a group exits together, when the largest TOKEE window
    uncertainty of its words is below the layer's threshold, or not at all.
    So an entity never leaves in pieces, and the words at its boundaries
    wait until it has settled: a neighbour that leaves as O while the entity
    still grows would cut it. Words of no group follow plain TOKEE. An
    entity word's uncertainty counts divided by entity_scale (1: as other
    words; 0.5: entities need half the threshold). Threshold 0 exits
    nothing, threshold >= 1 everything at the first layer, as TOKEE.
    """

    margin: int = 1
    entity_scale: float = 1.0
    needs_entity = True

    @property
    def reads_own_word_only(self) -> bool:
        return False  # an entity's words decide together

    def exits(self, layer_index, uncertainty, active, words, entity=None):
        if entity is None:
            raise ValueError("the entity exit rule needs the entity grid (which words are predicted in an entity)")
        counted = words if self.window_includes_exited else active
        return entity_token_exits(
            uncertainty, active, counted, words, entity, self.window, self.thresholds[layer_index],
            self.margin, self.entity_scale,
        )


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


def last_layer(settings: ExitSettings, n_layers: int) -> int:
    """The last layer (1-based) a call with `settings` runs on an encoder of
    `n_layers` layers: settings.max_layer, or n_layers without a cap.
    Raises ValueError when max_layer exceeds the encoder's depth."""
    if settings.max_layer is None:
        return n_layers
    if settings.max_layer > n_layers:
        raise ValueError(f"max_layer is {settings.max_layer} but the encoder has {n_layers} layers")
    return settings.max_layer


def exit_rule(settings: ExitSettings, n_layers: int) -> ExitRule:
    """The rule of the run-time dial for an encoder of `n_layers` layers
    (which also checks the settings against that depth: one threshold
    multiplier per layer, max_layer <= n_layers; see last_layer for the
    depth cap itself)."""
    last_layer(settings, n_layers)
    thresholds = layer_thresholds(settings, n_layers)
    if settings.exit_mode == "off":
        return NoExit()
    if settings.exit_mode == "sentence":
        return SentenceExit(thresholds, settings.sentence_score)
    if settings.entity_exit:
        return EntityTokenExit(
            thresholds, settings.window, settings.window_includes_exited,
            settings.entity_margin, settings.entity_threshold_scale,
        )
    return TokenExit(thresholds, settings.window, settings.window_includes_exited)
