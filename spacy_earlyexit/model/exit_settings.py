"""Run-time early-exit settings: which exit rule, its threshold and window,
and how deep the encoder may run (max_layer).

These settings are the speed/accuracy dial. They are plain data, validated on
construction, and know nothing of spaCy.
"""
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Dict, Optional, Tuple

EXIT_MODES: Tuple[str, ...] = ("off", "sentence", "token")
SENTENCE_SCORES: Tuple[str, ...] = ("max", "mean")


@dataclass(frozen=True)
class ExitSettings:
    """How tokens and sentences leave the encoder early.

    exit_mode: "off" (full depth), "sentence" (SENTEE: a whole sentence exits
        when its score is below the threshold) or "token" (TOKEE: a token exits
        when the maximum uncertainty in its window is below the threshold).
    threshold: normalised entropy in [0, 1]. A score below it exits; 1.0 means
        every token exits at the first layer, 0.0 means nothing exits early.
    window: half-width k >= 0 of the token window [i-k, i+k] (token mode).
    window_includes_exited: whether tokens that already exited still count in
        their neighbours' windows with their frozen uncertainty. With a
        constant threshold this never changes a decision (an exited token's
        uncertainty was already below the threshold); it matters only with
        `threshold_multipliers`.
    threshold_multipliers: optional per-layer factors, one per encoder layer:
        the threshold at layer l is min(1, threshold * threshold_multipliers[l]).
        None means the same threshold at every layer.
    sentence_score: how a sentence's token uncertainties are pooled in
        sentence mode: "max" or "mean".
    entity_exit: token mode for entities (exit_policy.EntityTokenExit): the
        tokens predicted inside an entity, with `entity_margin` neighbours
        on either side, exit together or not at all (when the largest window
        uncertainty among them is below the threshold). Needs a task whose
        classes mark entities (ner).
    entity_margin: neighbours on each side of a predicted entity that wait
        for it (>= 0).
    entity_threshold_scale: in (0, 1]: tokens predicted inside an entity
        need an uncertainty below threshold x this (1: the same threshold).
    max_layer: the depth cap: at most this many layers (1-based) run; the
        words still active after layer max_layer exit there with that
        off-ramp's prediction, and the layers above are not computed. None:
        every layer. Works with every exit_mode ("off" + max_layer is the
        network cut after layer max_layer). Must not exceed the encoder's
        depth (checked where the rule is built: exit_policy.exit_rule).
        Training (plain or self-sampling) ignores it: every off-ramp is
        trained.
    """

    exit_mode: str = "off"
    threshold: float = 0.1
    window: int = 0
    window_includes_exited: bool = False
    threshold_multipliers: Optional[Tuple[float, ...]] = None
    sentence_score: str = "max"
    entity_exit: bool = False
    entity_margin: int = 1
    entity_threshold_scale: float = 1.0
    max_layer: Optional[int] = None

    def __post_init__(self) -> None:
        if self.exit_mode not in EXIT_MODES:
            raise ValueError(
                f"exit_mode must be one of {', '.join(EXIT_MODES)}; got {self.exit_mode!r}"
            )
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)):
            raise ValueError(f"threshold must be a number in [0, 1]; got {self.threshold!r}")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError(f"threshold must be in [0, 1]; got {self.threshold!r}")
        object.__setattr__(self, "threshold", float(self.threshold))
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 0:
            raise ValueError(f"window must be an integer >= 0; got {self.window!r}")
        if not isinstance(self.window_includes_exited, bool):
            raise ValueError(
                f"window_includes_exited must be true or false; got {self.window_includes_exited!r}"
            )
        if self.sentence_score not in SENTENCE_SCORES:
            raise ValueError(
                f"sentence_score must be one of {', '.join(SENTENCE_SCORES)}; "
                f"got {self.sentence_score!r}"
            )
        if not isinstance(self.entity_exit, bool):
            raise ValueError(f"entity_exit must be true or false; got {self.entity_exit!r}")
        if isinstance(self.entity_margin, bool) or not isinstance(self.entity_margin, int) or self.entity_margin < 0:
            raise ValueError(f"entity_margin must be an integer >= 0; got {self.entity_margin!r}")
        scale = self.entity_threshold_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0.0 < scale <= 1.0:
            raise ValueError(f"entity_threshold_scale must be in (0, 1]; got {scale!r}")
        object.__setattr__(self, "entity_threshold_scale", float(scale))
        if self.max_layer is not None and (
            isinstance(self.max_layer, bool) or not isinstance(self.max_layer, int) or self.max_layer < 1
        ):
            raise ValueError(
                f"max_layer must be an integer >= 1 (or None: every layer); got {self.max_layer!r}"
            )
        if self.threshold_multipliers is not None:
            multipliers = tuple(self.threshold_multipliers)
            if not multipliers or any(
                isinstance(m, bool) or not isinstance(m, (int, float))
                or not math.isfinite(m) or m < 0
                for m in multipliers
            ):
                raise ValueError(
                    "threshold_multipliers must be a non-empty list of finite numbers >= 0 "
                    f"(one per encoder layer); got {self.threshold_multipliers!r}"
                )
            object.__setattr__(self, "threshold_multipliers", tuple(float(m) for m in multipliers))

    def updated(self, **changes: Any) -> "ExitSettings":
        """A validated copy with some settings changed; unknown names raise."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(
                f"unknown exit setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        if changes.get("threshold_multipliers") is not None:
            changes["threshold_multipliers"] = tuple(changes["threshold_multipliers"])
        return replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        """A JSON/msgpack-friendly dict (lists, not tuples)."""
        data = asdict(self)
        if data["threshold_multipliers"] is not None:
            data["threshold_multipliers"] = list(data["threshold_multipliers"])
        return data

    def describe(self) -> str:
        """The mode and the settings that differ from the defaults, e.g.
        "exit_mode=token threshold=0.2 window=1"."""
        default = type(self)()
        changed = [
            f"{f.name}={getattr(self, f.name)}" for f in fields(self)
            if f.name != "exit_mode" and getattr(self, f.name) != getattr(default, f.name)
        ]
        return " ".join([f"exit_mode={self.exit_mode}", *changed])

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ExitSettings":
        return cls().updated(**data)


EXIT_SETTING_NAMES: Tuple[str, ...] = tuple(f.name for f in fields(ExitSettings))
