"""Self-sampling fine-tuning: simulate token-level exit, then train on it.

Training at full depth teaches every layer with neighbours that are fully
computed; at inference a token's neighbours may be frozen copies. Here each
span draws a window and a threshold, token-level exit is simulated on the
current model's per-layer uncertainties, and the returned exit layers are then
used by EarlyExitEncoder.forward(forced_exit_layer=...), the same halt-and-copy
path as inference.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from .encoder import EarlyExitEncoder, EncoderBatch
from .exit_policy import window_max
from .uncertainty import normalized_entropy


@dataclass
class SelfSampling:
    """Ranges the per-span exit settings are drawn from (bounds inclusive).

    window_range: (min, max) half-width k.
    threshold_range: (min, max) threshold.
    full_depth_share: share of spans kept at full depth (threshold 0).
    aggressive_share: share of spans given the most aggressive setting
        (largest threshold, smallest window): the "sandwich" of the reference.
    window_includes_exited: as in ExitSettings.

    Draws use torch's global generator (spaCy's training seeds it).
    """

    window_range: Tuple[int, int] = (0, 2)
    threshold_range: Tuple[float, float] = (0.0, 0.5)
    full_depth_share: float = 0.1
    aggressive_share: float = 0.1
    window_includes_exited: bool = False

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
        self.window_range = (low_w, high_w)
        self.threshold_range = (low_t, high_t)


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
) -> torch.Tensor:
    """TOKEE on precomputed per-layer uncertainties, each span with its own setting.

    uncertainty: [L, S, W] float; words: [S, W] bool (real word slots);
    windows: [S] long; thresholds: [S] float.
    Returns [S, W] long: 1-based exit layer (L for words that never exit).
    """
    n_layers = uncertainty.shape[0]
    exit_layer = torch.full(words.shape, n_layers, dtype=torch.long)
    active = words.clone()
    threshold_col = thresholds[:, None]
    for layer_index in range(n_layers - 1):
        counted = words if window_includes_exited else active
        scores = uncertainty[layer_index].masked_fill(~counted, float("-inf"))
        window_scores = torch.empty_like(scores)
        for window in windows.unique().tolist():
            rows = windows == window
            window_scores[rows] = window_max(scores[rows], int(window))
        exiting = active & ((window_scores < threshold_col) | (threshold_col >= 1.0))
        exit_layer[exiting] = layer_index + 1
        active &= ~exiting
    return exit_layer


def sample_exit_layers(
    encoder: EarlyExitEncoder,
    batch: EncoderBatch,
    sampling: SelfSampling,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Draw settings, run the current model at full depth without gradients
    (dropout off) and simulate token-level exit. Returns [W] long exit layers."""
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            out = encoder(batch, return_layer_logits=True)
    finally:
        encoder.train(was_training)
    n_layers = out.layer_logits.shape[0]
    n_slots = int(batch.word_slot.max()) + 1 if batch.n_words else 0
    grid = torch.zeros(n_layers, batch.n_spans, n_slots)
    grid[:, batch.word_span.cpu(), batch.word_slot.cpu()] = torch.stack(
        [normalized_entropy(logits) for logits in out.layer_logits]
    ).cpu()
    words = torch.zeros(batch.n_spans, n_slots, dtype=torch.bool)
    words[batch.word_span.cpu(), batch.word_slot.cpu()] = True
    windows, thresholds = draw_span_settings(batch.n_spans, sampling, generator)
    exits = simulate_token_exits(grid, words, windows, thresholds, sampling.window_includes_exited)
    return exits[batch.word_span.cpu(), batch.word_slot.cpu()].to(batch.input_ids.device)
