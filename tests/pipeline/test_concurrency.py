"""Concurrent calls on one shared pipeline (a web service's thread pool):
each call's exit settings stay its own, and results equal the same calls
made one after another. Run in this process (torch pinned to one thread by
conftest) and in a fresh process with torch's default thread count, as a
user's service would run."""
import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from helpers.tiny_bert import NER_DATA, train_tiny_pipeline

TAGGER = "earlyexit_tagger"
SETTINGS = [
    {"exit_mode": "off"},
    {"exit_mode": "token", "threshold": 1.0},
    {"exit_mode": "token", "threshold": 0.5, "window": 1},
    {"exit_mode": "sentence", "threshold": 0.9},
]


def texts(round_index: int, n: int = 40) -> List[str]:
    base = [text for text, _ in NER_DATA]
    return [f"{base[(round_index + i) % len(base)]} {'Paris ' * (i % 3)}".strip() for i in range(n)]


def results(docs) -> List[Tuple[Any, ...]]:
    return [(tuple(t._.exit_layer for t in d), tuple((e.start, e.end, e.label_) for e in d.ents)) for d in docs]


def run_calls(nlp, calls: List[Tuple[Dict[str, Any], List[str]]], threads: int) -> List[List[Tuple[Any, ...]]]:
    def one(call):
        setting, batch = call
        return results(nlp.pipe(batch, batch_size=8, component_cfg={TAGGER: dict(setting)}))

    if threads == 1:
        return [one(call) for call in calls]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(one, calls))


@pytest.fixture(scope="module")
def nlp(tiny_bert):
    return train_tiny_pipeline(tiny_bert, "ner", steps=15)


def calls_of(n_rounds: int, settings: List[Dict[str, Any]]):
    return [(settings[i % len(settings)], texts(i)) for i in range(n_rounds)]


@pytest.mark.parametrize("settings", [SETTINGS[:1], SETTINGS], ids=["same settings", "different settings"])
def test_concurrent_calls_equal_calls_one_after_another(nlp, settings) -> None:
    calls = calls_of(24, settings)
    sequential = run_calls(nlp, calls, threads=1)
    concurrent = run_calls(nlp, calls, threads=4)
    assert concurrent == sequential
    if len(settings) > 1:  # the settings really give different results
        assert len({tuple(r) for r in sequential[: len(settings)]}) > 1


def test_concurrent_calls_with_default_torch_threads(nlp, tmp_path) -> None:
    """The same in a fresh process with torch's default thread count, two
    threads alternating off and threshold 1.0 (the reported failure:
    requests got each other's exit layers)."""
    folder = tmp_path / "pipeline"
    nlp.to_disk(folder)
    script = tmp_path / "shared_pipeline_threads.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        import spacy, torch
        sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
        from test_concurrency import calls_of, run_calls, SETTINGS
        nlp = spacy.load({str(folder)!r})
        calls = calls_of(30, SETTINGS[:2])
        sequential = run_calls(nlp, calls, threads=1)
        concurrent = run_calls(nlp, calls, threads=2)
        wrong = sum(a != b for s, c in zip(sequential, concurrent) for a, b in zip(s, c))
        print(json.dumps({{"threads": torch.get_num_threads(), "wrong": wrong,
                          "docs": sum(len(c) for c in concurrent)}}))
    """))
    helpers = Path(__file__).resolve().parents[1]
    env_path = f"{helpers}:{Path(__file__).resolve().parent}"
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": env_path})
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["docs"] == 30 * 40
    assert report["wrong"] == 0, report
