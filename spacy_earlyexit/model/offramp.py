"""The off-ramps: per layer, a classifier from a word's state to its labels.

The plain off-ramp (OffRamp) is dropout + linear on the word's own state
(its first piece), as in the paper. A context off-ramp (ContextOffRamp) reads
the states of the c words either side of it too (in the same span; zeros
where there is none) and may put a hidden layer before the output: the
lowest layers have seen little context, and a wider head lifts their
accuracy, which is where early exit gains most. OffRampHeads says which
layers get which.
"""
from dataclasses import dataclass
from typing import List, Tuple, Union

import torch
from torch import nn


@dataclass(frozen=True)
class OffRampHeads:
    """Which off-ramps are context off-ramps, and their shape.

    context_layers: the lowest N layers get a ContextOffRamp (0: none: every
        off-ramp is plain; "all": every layer).
    context: c >= 0, words either side whose states the head reads.
    hidden: width of the head's hidden layer (GELU); 0: linear head.
    """

    context_layers: Union[int, str] = 0
    context: int = 1
    hidden: int = 0

    def __post_init__(self) -> None:
        names = ("context", "hidden") if self.context_layers == "all" else ("context_layers", "context", "hidden")
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                allowed = ' or "all"' if name == "context_layers" else ""
                raise ValueError(f"offramp {name} must be an integer >= 0{allowed}; got {value!r}")
        if self.context_layers and not self.context and not self.hidden:
            raise ValueError(
                "offramp_context_layers > 0 needs offramp_context > 0 or offramp_hidden > 0 "
                "(with neither, the context off-ramp is the plain one)"
            )

    def is_context(self, layer_index: int) -> bool:
        """Whether the off-ramp of layer `layer_index` (0-based) is a context off-ramp."""
        return self.context_layers == "all" or layer_index < int(self.context_layers)

    def check(self, n_layers: int) -> None:
        """Refuse more context layers than the encoder has."""
        if self.context_layers != "all" and int(self.context_layers) > n_layers:
            raise ValueError(
                f"offramp_context_layers is {self.context_layers}, but the encoder has {n_layers} "
                'layers (use "all" for every layer)'
            )

    def build(self, n_layers: int, hidden_size: int, n_classes: int, dropout: float) -> nn.ModuleList:
        """One off-ramp per layer (refusing more context layers than layers)."""
        self.check(n_layers)
        ramps: List[nn.Module] = []
        for index in range(n_layers):
            if self.is_context(index):
                ramps.append(ContextOffRamp(hidden_size, n_classes, dropout, self.context, self.hidden))
            else:
                ramps.append(OffRamp(hidden_size, n_classes, dropout))
        return nn.ModuleList(ramps)

    def to_dict(self) -> dict:
        return {"context_layers": self.context_layers, "context": self.context, "hidden": self.hidden}


class OffRamp(nn.Module):
    """Dropout + linear from a layer's hidden state to the label set."""

    context = 0

    def __init__(self, hidden_size: int, n_classes: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden_size, n_classes)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [N, d] -> logits [N, C]"""
        return self.linear(self.dropout(hidden))

    @property
    def macs_per_word(self) -> int:
        """Multiply-adds of one word's logits."""
        return self.linear.in_features * self.linear.out_features


class ContextOffRamp(nn.Module):
    """An off-ramp that reads a window of words: the word's state and those of
    the `context` words either side, concatenated ([N, (2c + 1) d]; a
    missing neighbour is a zero state), then dropout, an optional hidden
    layer (`hidden` units, GELU, dropout) and the output layer (`linear`)."""

    def __init__(self, hidden_size: int, n_classes: int, dropout: float, context: int, hidden: int) -> None:
        super().__init__()
        self.context = int(context)
        self.width = (2 * self.context + 1) * hidden_size
        self.dropout = nn.Dropout(dropout)
        self.hidden_layer = nn.Linear(self.width, hidden) if hidden else None
        self.linear = nn.Linear(hidden or self.width, n_classes)

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        """window: [N, 2c + 1, d] (the word at position c) -> logits [N, C]"""
        features = self.dropout(window.reshape(window.shape[0], self.width))
        if self.hidden_layer is not None:
            features = self.dropout(nn.functional.gelu(self.hidden_layer(features)))
        return self.linear(features)

    @property
    def macs_per_word(self) -> int:
        """Multiply-adds of one word's logits."""
        first = 0 if self.hidden_layer is None else self.hidden_layer.in_features * self.hidden_layer.out_features
        return first + self.linear.in_features * self.linear.out_features


def offramp_macs(ramps: nn.ModuleList) -> Tuple[int, ...]:
    """[L] multiply-adds of one word's logits at each off-ramp."""
    costs = []
    for ramp in ramps:
        if not isinstance(ramp, (OffRamp, ContextOffRamp)):
            raise TypeError(f"not an off-ramp: {type(ramp).__name__}")
        costs.append(ramp.macs_per_word)
    return tuple(costs)
