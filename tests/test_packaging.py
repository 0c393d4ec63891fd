"""What setup.cfg packages: every folder of Python modules under
spacy_earlyexit is a regular package (`packages = find:` skips folders
without __init__.py, so a wheel would lack them)."""
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]


def test_every_module_folder_is_found_by_setuptools():
    folders = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for path in (ROOT / "spacy_earlyexit").rglob("*.py")
        if "__pycache__" not in path.parts
    }
    found = set(find_packages(str(ROOT), include=["spacy_earlyexit*"]))
    assert folders <= found, sorted(folders - found)
