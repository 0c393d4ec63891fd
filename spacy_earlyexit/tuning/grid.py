"""The settings of a sweep: exit mode x threshold x window x threshold
schedule x depth cap, and their short names ("token t=0.2 k=1 m=4 ≤L8")."""
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..model import EXIT_MODES

LaterFactor = Union[float, Tuple[float, ...]]


def parse_later_factors(text: str) -> List[LaterFactor]:
    """"1,4,4/16,2/4/8" -> [1.0, 4.0, (4.0, 16.0), (2.0, 4.0, 8.0)] (see build_grid)."""
    factors: List[LaterFactor] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            values = tuple(float(value) for value in item.split("/"))
        except ValueError:
            raise ValueError(
                f"later-layer factors are numbers f or pairs a/b (or longer sequences a/b/c); got {item!r}"
            ) from None
        factors.append(values if len(values) > 1 else values[0])
    return factors


def parse_max_layers(text: str) -> List[Optional[int]]:
    """"8,12,all" -> [8, 12, None] (the depth caps of a sweep: max_layer;
    "all" is no cap, every layer)."""
    caps: List[Optional[int]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item == "all":
            caps.append(None)
            continue
        try:
            cap = int(item)
        except ValueError:
            cap = 0
        if cap < 1:
            raise ValueError(f"max layers are 'all' (no cap) or integers >= 1; got {item!r}")
        caps.append(cap)
    return caps


def build_grid(
    modes: Sequence[str],
    thresholds: Sequence[float],
    windows: Sequence[int],
    later_factors: Sequence[LaterFactor] = (1.0,),
    n_layers: Optional[int] = None,
    entity_variants: Sequence[Optional[Tuple[int, float]]] = (None,),
    max_layers: Sequence[Optional[int]] = (None,),
) -> List[Dict[str, Any]]:
    """The settings of a sweep: "off" first (at full depth: the baseline),
    then "off" at each depth cap (the truncated network alone), then each
    mode x threshold (x window x entity variant, for token mode only) x
    later-layer factor x depth cap.

    entity_variants: None for plain TOKEE, (margin, scale) for the entity
        rule (entity_exit with entity_margin and entity_threshold_scale).
    max_layers: depth caps (the setting max_layer); None is no cap. Settings
        with a cap carry "max_layer", the others do not (so the default
        (None,) gives the grid without caps). Caps above n_layers (when
        given) raise ValueError.

    later_factors: a factor f other than 1 gives the schedule
        threshold_multipliers = [1, f, ..., f] (the threshold at layers 2 and
        up is f times the first layer's; a first off-ramp that is less
        reliable than the rest then exits only its surest tokens); a pair
        (a, b) gives [1, a, b, ..., b] (layer 2 at a times, layers 3 and up at
        b times the first layer's threshold, for encoders whose off-ramps
        from layer 3 on are as good as the last); a longer sequence
        (a, b, c, ...) gives the factors of layers 2, 3, 4, ... and repeats
        its last one (deep encoders, e.g. 12 layers: [1, 1, 2, 4, 8] raises
        the threshold over the first few layers). Needs n_layers, the
        encoder's depth (>= 1 + the sequence's length).
    """
    unknown = sorted(set(modes) - set(EXIT_MODES))
    if unknown:
        raise ValueError(f"unknown exit mode(s) {', '.join(unknown)}; known: {', '.join(EXIT_MODES)}")
    schedules: List[Optional[List[float]]] = []
    for factor in later_factors:
        values = [float(v) for v in (factor if isinstance(factor, tuple) else (factor,))]
        while len(values) > 1 and values[-1] == values[-2]:
            values.pop()  # a repeated last factor changes nothing
        if values == [1.0]:
            schedules.append(None)
            continue
        needed = 1 + len(values)
        if n_layers is None or n_layers < needed:
            raise ValueError(
                f"later-layer factor {schedule_label([1.0] + values)} needs the "
                f"encoder's number of layers (>= {needed})"
            )
        schedules.append([1.0] + values + [values[-1]] * (n_layers - needed))
    caps = list(dict.fromkeys(max_layers)) or [None]
    for cap in caps:
        if cap is not None and n_layers is not None and cap > n_layers:
            raise ValueError(f"max_layer {cap} is more than the encoder's {n_layers} layers")
    grid: List[Dict[str, Any]] = [{"exit_mode": "off"}]
    grid.extend({"exit_mode": "off", "max_layer": int(cap)} for cap in caps if cap is not None)
    for mode in modes:
        for threshold in thresholds:
            bases: List[Dict[str, Any]] = []
            if mode == "sentence":
                bases.append({"exit_mode": "sentence", "threshold": float(threshold)})
            elif mode == "token":
                bases.extend(
                    {"exit_mode": "token", "threshold": float(threshold), "window": int(window),
                     **entity_setting(variant)}
                    for window in windows for variant in entity_variants
                )
            for base in bases:
                for schedule in schedules:
                    scheduled = base if schedule is None else {**base, "threshold_multipliers": schedule}
                    grid.extend(scheduled if cap is None else {**scheduled, "max_layer": int(cap)} for cap in caps)
    return grid


def is_baseline(setting: Optional[Mapping[str, Any]]) -> bool:
    """Whether a sweep setting is exit mode "off" at full depth (no
    max_layer): the row speed-ups and score losses are measured against.
    None (a reference pipeline's row) is not."""
    return setting is not None and setting.get("exit_mode") == "off" and setting.get("max_layer") is None


def depth_label(setting: Mapping[str, Any]) -> str:
    """" ≤L8" for a setting with max_layer 8; "" without a depth cap."""
    cap = setting.get("max_layer")
    return f" ≤L{cap}" if cap is not None else ""


def entity_setting(variant: Optional[Tuple[int, float]]) -> Dict[str, Any]:
    """The exit settings of an entity variant: {} (plain TOKEE) or the
    entity rule with its margin and threshold scale."""
    if variant is None:
        return {}
    margin, scale = variant
    return {"entity_exit": True, "entity_margin": int(margin), "entity_threshold_scale": float(scale)}


def parse_entity_variants(margins: str, scales: str = "1") -> List[Optional[Tuple[int, float]]]:
    """"off,1,2" and "1,0.5" -> [None, (1, 1.0), (1, 0.5), (2, 1.0), (2, 0.5)]:
    "off" is plain TOKEE, a number the entity rule with that margin (each
    with every scale)."""
    variants: List[Optional[Tuple[int, float]]] = []
    scale_values = [float(v) for v in scales.split(",") if v.strip()] or [1.0]
    for item in (part.strip() for part in margins.split(",")):
        if not item:
            continue
        if item == "off":
            variants.append(None)
            continue
        try:
            margin = int(item)
        except ValueError:
            raise ValueError(f"entity margins are 'off' (plain TOKEE) or integers >= 0; got {item!r}") from None
        variants.extend((margin, scale) for scale in scale_values)
    return variants


def schedule_label(multipliers: Sequence[float]) -> str:
    """"4" for [1, 4, 4, ...], "4/16" for [1, 4, 16, 16, ...], "1/2/4" for
    [1, 1, 2, 4, 4, ...] (the factors from layer 2 on, the last repeated),
    else the list."""
    if multipliers and multipliers[0] == 1.0 and len(multipliers) >= 2:
        values = list(multipliers[1:])
        while len(values) > 1 and values[-1] == values[-2]:
            values.pop()
        return "/".join(f"{m:g}" for m in values)
    return ",".join(f"{m:g}" for m in multipliers)


def setting_name(setting: Mapping[str, Any]) -> str:
    """A short label such as "token t=0.2 k=1" (" m=4": threshold x4 after
    layer 1; " m=4/16": x4 at layer 2, x16 from layer 3 on).

    " ≤L8" at the end: at most 8 layers run (max_layer). A setting that
    leaves out a value (the pipeline's own is used) leaves it out of the
    label too."""
    mode = setting.get("exit_mode")
    if mode == "off":
        return "off" + depth_label(setting)
    name = mode if mode is not None else "current"
    if "threshold" in setting:
        name += f" t={setting['threshold']:g}"
    if mode == "token" and "window" in setting:
        name += f" k={setting['window']}"
    multipliers = setting.get("threshold_multipliers")
    if multipliers:
        name += f" m={schedule_label(multipliers)}"
    return name + entity_label(setting) + depth_label(setting)


def entity_label(setting: Mapping[str, Any]) -> str:
    """" E1" for the entity rule with margin 1, " E1 s=0.5" with a threshold
    scale; "" for plain TOKEE."""
    if not setting.get("entity_exit"):
        return ""
    label = f" E{setting.get('entity_margin', 1)}"
    scale = setting.get("entity_threshold_scale", 1.0)
    return label + (f" s={scale:g}" if scale != 1.0 else "")


def dial_series(rows: Sequence[Mapping[str, Any]]) -> Dict[str, List[Mapping[str, Any]]]:
    """Rows grouped into dial curves: one per exit mode (and window, in token
    mode, and depth cap), each starting at the "off" row of its depth cap
    and ordered by threshold. A capped "off" row that starts no curve is a
    curve of its own ("off ≤L8")."""
    off: Dict[Optional[int], List[Mapping[str, Any]]] = {}
    for row in rows:
        if row["setting"] is not None and row["setting"]["exit_mode"] == "off":
            off.setdefault(row["setting"].get("max_layer"), []).append(row)
    series: Dict[str, List[Mapping[str, Any]]] = {}
    for row in rows:
        setting = row["setting"]
        if setting is None or setting["exit_mode"] == "off":
            continue
        label = setting["exit_mode"]
        if setting["exit_mode"] == "token":
            label += f" k={setting['window']}" + entity_label(setting)
        label += depth_label(setting)
        multipliers = setting.get("threshold_multipliers")
        if multipliers:  # a threshold schedule is a curve of its own
            label = setting_name({**setting, "threshold": 0.0}).replace(" t=0", "")
        series.setdefault(label, list(off.get(setting.get("max_layer"), []))).append(row)
    started = {row["setting"].get("max_layer") for curve in series.values() for row in curve}
    for cap, members in off.items():
        if cap is not None and cap not in started:
            series["off" + depth_label(members[0]["setting"])] = list(members)
    for label, members in series.items():
        members.sort(key=lambda r: r["setting"].get("threshold", 0.0))
    return series
