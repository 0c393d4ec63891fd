"""Colours of the exit-layer view: a sequential scale from early (light) to
late (dark) layers, and a readable text colour on any background.

Pure functions of numbers and hex strings; nothing here knows spaCy.
"""
from typing import List, Sequence, Tuple

RGB = Tuple[float, float, float]

#: ColorBrewer's 9-class YlGnBu ramp, light to dark (colorbrewer2.org)
SEQUENTIAL_RAMP: Tuple[str, ...] = (
    "#ffffd9", "#edf8b1", "#c7e9b4", "#7fcdbb", "#41b6c4",
    "#1d91c0", "#225ea8", "#253494", "#081d58",
)
#: where layer 1 and the last layer sit on the ramp: the lightest end is
#: nearly white, which would not show a token on a white page
RAMP_START, RAMP_END = 0.12, 0.92
#: black, not a softer grey: on the mid blues only black or white keeps a contrast of 4.5 (WCAG AA)
DARK_TEXT, LIGHT_TEXT = "#000000", "#ffffff"


def hex_to_rgb(colour: str) -> RGB:
    """"#7fcdbb" (or "#7cb") -> (r, g, b) in [0, 1]."""
    digits = colour.lstrip("#")
    if len(digits) == 3:
        digits = "".join(c * 2 for c in digits)
    if len(digits) != 6:
        raise ValueError(f"expected a colour #rrggbb or #rgb; got {colour!r}")
    return tuple(int(digits[i:i + 2], 16) / 255 for i in (0, 2, 4))  # type: ignore[return-value]


def rgb_to_hex(rgb: RGB) -> str:
    return "#" + "".join(f"{round(min(max(c, 0.0), 1.0) * 255):02x}" for c in rgb)


def ramp_colour(position: float, ramp: Sequence[str] = SEQUENTIAL_RAMP) -> str:
    """The colour at `position` in [0, 1] along `ramp` (linear in sRGB between
    neighbouring anchors)."""
    position = min(max(position, 0.0), 1.0) * (len(ramp) - 1)
    low = min(int(position), len(ramp) - 2)
    fraction = position - low
    a, b = hex_to_rgb(ramp[low]), hex_to_rgb(ramp[low + 1])
    return rgb_to_hex(tuple(x + (y - x) * fraction for x, y in zip(a, b)))  # type: ignore[arg-type]


def layer_colours(n_layers: int) -> List[str]:
    """One background colour per layer 1..n_layers, light (early) to dark
    (late); a single layer gets the middle of the scale."""
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1; got {n_layers}")
    if n_layers == 1:
        return [ramp_colour((RAMP_START + RAMP_END) / 2)]
    step = (RAMP_END - RAMP_START) / (n_layers - 1)
    return [ramp_colour(RAMP_START + step * layer) for layer in range(n_layers)]


def relative_luminance(colour: str) -> float:
    """WCAG 2 relative luminance of a colour, 0 (black) to 1 (white)."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in hex_to_rgb(colour)]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast_ratio(first: str, second: str) -> float:
    """WCAG 2 contrast ratio of two colours, 1 to 21."""
    light, dark = sorted((relative_luminance(first), relative_luminance(second)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def text_colour(background: str) -> str:
    """Dark or white text, whichever contrasts more with `background`."""
    if contrast_ratio(background, DARK_TEXT) >= contrast_ratio(background, LIGHT_TEXT):
        return DARK_TEXT
    return LIGHT_TEXT
