"""Skipping a test for something the machine lacks, never silently in CI.

Locally a test may skip when an optional tool or data set is missing (a
browser, jemalloc, Ray, ../shared/data); in CI (CI=true) `.ci/run` installs
all of them and ../shared lies beside the checkout, so a missing one fails
the test instead of letting it pass unseen.
"""
import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(available: bool, what: str) -> None:
    """Skip (locally) or fail (in CI) the calling test unless `available`."""
    if available:
        return
    if in_ci():
        pytest.fail(f"{what} is missing, but CI must have it (see .ci/run)")
    pytest.skip(f"{what} is missing")
