"""Self-sampling fine-tuning: simulate token-level exit, then train on it.

Training at full depth teaches every layer with neighbours that are fully
computed; at inference a token's neighbours may be frozen copies. Here each
span draws a window and a threshold, token-level exit is simulated on the
current model's per-layer uncertainties, and the returned exit layers are then
used by EarlyExitEncoder.forward(forced_exit_layer=...), the same halt-and-copy
path as inference.

Two options of the reference code are available, both off by default:
simulating exits on the predictions of the model as it was when self-sampling
began (stage 1's, computed once per span and cached) instead of the current
model's, and loss flooding toward that model's per-token losses (the flooding
itself is applied by the loss, which gets the cached logits).
"""
import copy
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from .encoder import EarlyExitEncoder, EncoderBatch
from .exit_policy import EntityTokenExit, TokenExit
from .uncertainty import normalized_entropy


UNCERTAINTY_SOURCES: Tuple[str, ...] = ("current", "stage1")


@dataclass
class SelfSampling:
    """Ranges the per-span exit settings are drawn from (bounds inclusive).

    window_range: (min, max) half-width k.
    threshold_range: (min, max) threshold.
    full_depth_share: share of spans kept at full depth (threshold 0).
    aggressive_share: share of spans given the most aggressive setting
        (largest threshold, smallest window): the "sandwich" of the reference.
    window_includes_exited: as in ExitSettings.
    uncertainty_source: whose per-layer predictions the simulated exits use:
        "current" (the model being trained, recomputed at every step) or
        "stage1" (the model as it was when self-sampling began, i.e. the
        sourced stage-1 model; computed once per span and cached: cheaper,
        but stale).
    entity_exit, entity_margin: simulate the entity exit rule
        (exit_policy.EntityTokenExit, as the inference setting of the same
        names) instead of plain TOKEE; needs the task's entity classes.
    flooding: 0 (off) or a factor f > 0: each token's loss at each layer is
        flooded toward f times its loss under the stage-1 model (Ishida et
        al. 2020: below that level the gradient is reversed), which keeps the
        fine-tuned off-ramps from drifting far from stage 1.

    Draws use torch's global generator (spaCy's training seeds it).
    """

    window_range: Tuple[int, int] = (0, 2)
    threshold_range: Tuple[float, float] = (0.0, 0.5)
    full_depth_share: float = 0.1
    aggressive_share: float = 0.1
    window_includes_exited: bool = False
    uncertainty_source: str = "current"
    flooding: float = 0.0
    entity_exit: bool = False
    entity_margin: int = 1

    def __post_init__(self) -> None:
        low_w, high_w = (int(v) for v in self.window_range)
        low_t, high_t = (float(v) for v in self.threshold_range)
        if not 0 <= low_w <= high_w:
            raise ValueError(f"window_range must satisfy 0 <= min <= max; got {self.window_range}")
        if not 0.0 <= low_t <= high_t <= 1.0:
            raise ValueError(f"threshold_range must be within [0, 1], min <= max; got {self.threshold_range}")
        if not (0 <= self.full_depth_share <= 1 and 0 <= self.aggressive_share <= 1
                and self.full_depth_share + self.aggressive_share <= 1):
            raise ValueError("full_depth_share and aggressive_share must be in [0, 1] and sum to <= 1")
        if self.uncertainty_source not in UNCERTAINTY_SOURCES:
            raise ValueError(
                f"uncertainty_source must be one of {', '.join(UNCERTAINTY_SOURCES)}; "
                f"got {self.uncertainty_source!r}"
            )
        if isinstance(self.flooding, bool) or not float(self.flooding) >= 0.0:
            raise ValueError(f"flooding must be a number >= 0 (0: off); got {self.flooding!r}")
        if not isinstance(self.entity_exit, bool):
            raise ValueError(f"entity_exit must be true or false; got {self.entity_exit!r}")
        if isinstance(self.entity_margin, bool) or not int(self.entity_margin) >= 0:
            raise ValueError(f"entity_margin must be an integer >= 0; got {self.entity_margin!r}")
        self.entity_margin = int(self.entity_margin)
        self.window_range = (low_w, high_w)
        self.threshold_range = (low_t, high_t)
        self.flooding = float(self.flooding)

    @property
    def needs_reference(self) -> bool:
        """Whether the stage-1 model's predictions are needed."""
        return self.uncertainty_source == "stage1" or self.flooding > 0.0


def draw_span_settings(
    n_spans: int, sampling: SelfSampling, generator: Optional[torch.Generator] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-span (window [S] long, threshold [S] float) drawn from the ranges."""
    low_w, high_w = sampling.window_range
    low_t, high_t = sampling.threshold_range
    windows = torch.randint(low_w, high_w + 1, (n_spans,), generator=generator)
    thresholds = low_t + (high_t - low_t) * torch.rand(n_spans, generator=generator)
    kind = torch.rand(n_spans, generator=generator)
    full = kind < sampling.full_depth_share
    aggressive = (~full) & (kind < sampling.full_depth_share + sampling.aggressive_share)
    thresholds = torch.where(full, torch.zeros_like(thresholds), thresholds)
    thresholds = torch.where(aggressive, torch.full_like(thresholds, high_t), thresholds)
    windows = torch.where(aggressive, torch.full_like(windows, low_w), windows)
    return windows, thresholds


def simulate_token_exits(
    uncertainty: torch.Tensor,
    words: torch.Tensor,
    windows: torch.Tensor,
    thresholds: torch.Tensor,
    window_includes_exited: bool = False,
    entity: Optional[torch.Tensor] = None,
    entity_margin: int = 1,
) -> torch.Tensor:
    """TOKEE (the inference rule, exit_policy.TokenExit) on precomputed
    per-layer uncertainties, each span with its own window and threshold;
    with `entity` the entity rule (exit_policy.EntityTokenExit).

    uncertainty: [L, S, W] float; words: [S, W] bool (real word slots);
    windows: [S] long; thresholds: [S] float; entity: [L, S, W] bool, the
    word's prediction at each layer is inside an entity (exited words keep
    the one of their exit layer, as at inference).
    Returns [S, W] long: 1-based exit layer (L for words that never exit).
    """
    n_layers = uncertainty.shape[0]
    per_layer = [thresholds[:, None]] * n_layers
    rule: TokenExit = (
        TokenExit(per_layer, windows, window_includes_exited) if entity is None
        else EntityTokenExit(per_layer, windows, window_includes_exited, entity_margin)
    )
    exit_layer = torch.full(words.shape, n_layers, dtype=torch.long)
    active = words.clone()
    latest = None
    for layer_index in range(n_layers - 1):
        if entity is not None:
            latest = entity[layer_index] if latest is None else torch.where(active, entity[layer_index], latest)
        exiting = rule.exits(layer_index, uncertainty[layer_index], active, words, latest)
        exit_layer[exiting] = layer_index + 1
        active &= ~exiting
    return exit_layer


def full_depth_layer_logits(encoder: EarlyExitEncoder, batch: EncoderBatch) -> torch.Tensor:
    """Every off-ramp's logits at full depth, without gradients and with
    dropout off. Returns [L, W, C]."""
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            out = encoder(batch, return_layer_logits=True)
    finally:
        encoder.train(was_training)
    return out.layer_logits


def sample_exit_layers(
    encoder: EarlyExitEncoder,
    batch: EncoderBatch,
    sampling: SelfSampling,
    generator: Optional[torch.Generator] = None,
    layer_logits: Optional[torch.Tensor] = None,
    entity_classes: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Draw settings and simulate token-level exit on per-layer predictions:
    `layer_logits` [L, W, C] if given (e.g. cached stage-1 predictions), else
    the current model's at full depth (see full_depth_layer_logits).
    entity_classes: [C] bool, the classes inside an entity (needed when
    sampling.entity_exit). Returns [W] long exit layers (1-based)."""
    if layer_logits is None:
        layer_logits = full_depth_layer_logits(encoder, batch)
    n_layers = layer_logits.shape[0]
    n_slots = int(batch.word_slot.max()) + 1 if batch.n_words else 0
    spans, slots = batch.word_span.cpu(), batch.word_slot.cpu()
    grid = torch.zeros(n_layers, batch.n_spans, n_slots)
    grid[:, spans, slots] = torch.stack(
        [normalized_entropy(logits) for logits in layer_logits]
    ).cpu()
    words = torch.zeros(batch.n_spans, n_slots, dtype=torch.bool)
    words[spans, slots] = True
    entity = None
    if sampling.entity_exit:
        if entity_classes is None:
            raise ValueError("self-sampling with entity_exit needs an entity task (task 'ner')")
        entity = torch.zeros(n_layers, batch.n_spans, n_slots, dtype=torch.bool)
        entity[:, spans, slots] = entity_classes.cpu()[layer_logits.argmax(dim=-1).cpu()]
    windows, thresholds = draw_span_settings(batch.n_spans, sampling, generator)
    exits = simulate_token_exits(
        grid, words, windows, thresholds, sampling.window_includes_exited, entity, sampling.entity_margin
    )
    return exits[spans, slots].to(batch.input_ids.device)


class ReferencePredictions:
    """A frozen copy of the model as it was when self-sampling began, whose
    per-layer logits at full depth are computed once per span and cached.

    The cache key is a span's word pieces and word alignment; in eval mode a
    span's output does not depend on the other spans of its batch.
    """

    def __init__(self, encoder: EarlyExitEncoder) -> None:
        self.encoder = copy.deepcopy(encoder).eval()
        self.encoder.requires_grad_(False)
        self.n_layers, self.n_classes = encoder.n_layers, encoder.n_classes
        self._cache: Dict[bytes, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._cache)

    @staticmethod
    def _span_keys(batch: EncoderBatch):
        ids, lengths = batch.input_ids.cpu(), batch.lengths.cpu()
        spans, pieces = batch.word_span.cpu(), batch.word_piece.cpu()
        keys = []
        for row in range(batch.n_spans):
            key = ids[row, : int(lengths[row])].numpy().tobytes()
            keys.append(key + b"|" + pieces[spans == row].numpy().tobytes())
        return keys

    def layer_logits(self, batch: EncoderBatch) -> torch.Tensor:
        """[L, W, C] logits of the frozen model for the batch's words."""
        keys = self._span_keys(batch)
        spans, slots = batch.word_span.cpu(), batch.word_slot.cpu()
        if any(key not in self._cache for key in keys):
            computed = full_depth_layer_logits(self.encoder, batch).cpu()
            for row, key in enumerate(keys):
                if key not in self._cache:
                    words = (spans == row).nonzero().squeeze(1)
                    order = words[slots[words].argsort()]
                    self._cache[key] = computed[:, order].clone()
        result = torch.zeros(self.n_layers, batch.n_words, self.n_classes)
        for row, key in enumerate(keys):
            words = (spans == row).nonzero().squeeze(1)
            result[:, words] = self._cache[key][:, slots[words]]
        return result.to(batch.input_ids.device)
