"""Comma-separated command-line values."""
from typing import List


def floats(text: str) -> List[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def ints(text: str) -> List[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def words(text: str) -> List[str]:
    return [v.strip() for v in text.split(",") if v.strip()]
