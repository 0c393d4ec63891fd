"""Interrupted annotate runs (spacy_earlyexit/corpus/resume.py): killed CLI
runs (SIGKILL, SIGTERM) leave nothing under OUTPUT and resume to an output
byte-equal to an uninterrupted run's; mismatched input, pipeline or settings
are refused; the Ray engine survives a killed actor and never writes a short
output."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List

import pytest

from helpers.tiny_bert import NER_DATA, corpus_words, train_tiny_pipeline
from spacy_earlyexit.cli import main
from spacy_earlyexit.corpus import resume
from spacy_earlyexit.corpus.annotate import annotate
from spacy_earlyexit.corpus.resume import AnnotateInterrupted, ResumableJsonlWriter, ResumeError, partial_paths

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 180


@pytest.fixture(scope="module")
def folder(tiny_bert, tmp_path_factory) -> Path:
    """A NER pipeline with token exit saved (a mix of exit layers)."""
    root = tmp_path_factory.mktemp("resume")
    bert = root / "bert"
    shutil.copytree(tiny_bert, bert)
    nlp = train_tiny_pipeline(bert, "ner", 100)
    nlp.get_pipe("earlyexit_tagger").configure_exit(exit_mode="token", threshold=0.5, window=1)
    nlp.to_disk(root / "pipeline")
    shutil.rmtree(bert)
    return root / "pipeline"


def corpus(n_docs: int, seed: int = 0) -> List[str]:
    rng = random.Random(seed)
    words = corpus_words() + ["Ünïcödé", "😀", "Paris"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 20))) for _ in range(n_docs)]
    for i in range(0, n_docs, 97):
        texts[i] = NER_DATA[i // 97 % len(NER_DATA)][0]
    return texts


def write_jsonl(path: Path, texts: List[str]) -> Path:
    with open(path, "w", encoding="utf8") as stream:
        for i, text in enumerate(texts):
            stream.write(json.dumps({"id": i, "text": text}, ensure_ascii=False) + "\n")
            if i % 50 == 7:
                stream.write("\n")  # blank lines are skipped (and counted in line numbers)
    return path


@pytest.fixture(scope="module")
def reference(folder, tmp_path_factory):
    """(input of 800 docs, its uninterrupted output's bytes)."""
    root = tmp_path_factory.mktemp("reference")
    source = write_jsonl(root / "in.jsonl", corpus(800))
    annotate(folder, source, root / "out.jsonl", batch_size=8, progress=False)
    return source, (root / "out.jsonl").read_bytes()


def cli(folder: Path, source: Path, output: Path, *extra: str) -> List[str]:
    return [sys.executable, "-m", "spacy_earlyexit", "annotate", str(folder), str(source), str(output),
            "--batch-size", "8", "--threads", "1", "--no-progress", "--allocator", "system",
            "--checkpoint-seconds", "0", *extra]


def cli_env() -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.pop("LD_PRELOAD", None)
    return env


def state_docs(output: Path) -> int:
    try:
        return json.loads(partial_paths(output)[1].read_text())["docs"]
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.parametrize("signal_number,kill_after", [(signal.SIGKILL, 137), (signal.SIGTERM, 251)])
def test_killed_cli_run_resumes_to_the_uninterrupted_output(folder, reference, tmp_path, signal_number, kill_after):
    source, expected = reference
    output = tmp_path / "out.jsonl"
    partial, state = partial_paths(output)
    process = subprocess.Popen(cli(folder, source, output), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=cli_env())
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while state_docs(output) < kill_after and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert process.poll() is None, "the run ended before the kill: " + process.stderr.read()
        process.send_signal(signal_number)
        _, stderr = process.communicate(timeout=TIMEOUT_S)
    finally:
        process.kill()
    assert not output.exists(), "nothing under the final name"
    written = state_docs(output)
    assert kill_after <= written < 800
    if signal_number == signal.SIGTERM:
        assert process.returncode == 143
        assert f"interrupted by SIGTERM after {written} docs" in stderr and "--resume" in stderr, stderr
    else:
        assert process.returncode == -signal.SIGKILL
        with open(partial, "ab") as stream:  # as if killed in the middle of a line
            stream.write('{"text": "half a rec'.encode("utf8"))
    resumed = subprocess.run(cli(folder, source, output, "--resume"), capture_output=True, text=True,
                             env=cli_env(), timeout=TIMEOUT_S)
    assert resumed.returncode == 0, resumed.stderr
    assert f"800 docs, {written} of them from the previous run" in resumed.stdout
    assert output.read_bytes() == expected
    assert not partial.exists() and not state.exists()


@pytest.fixture()
def interrupted_run(folder, reference, tmp_path, monkeypatch):
    """A partial output of ~100 docs, left by a KeyboardInterrupt."""
    source, _ = reference
    output = tmp_path / "out.jsonl"
    add = ResumableJsonlWriter.add_serialized

    def add_then_interrupt(self, *args):
        add(self, *args)
        if self.n_docs == 101:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(ResumableJsonlWriter, "add_serialized", add_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            annotate(folder, source, output, batch_size=8, checkpoint_seconds=0, progress=False)
    assert not output.exists() and state_docs(output) == 96  # the last checkpoint: 12 batches
    return source, output


def test_resume_in_process_and_partials_replaced(folder, reference, interrupted_run, tmp_path):
    source, expected = reference
    source, output = interrupted_run
    result = annotate(folder, source, output, batch_size=64, resume=True, progress=False)
    assert (result.n_docs, result.resumed_docs) == (800, 96)
    assert output.read_bytes() == expected  # another batch size after the resume: same bytes
    # a partial is replaced by a run without --resume
    other = tmp_path / "other.jsonl"
    partial, _ = partial_paths(other)
    partial.write_bytes(b"stale\n" * 1000)
    annotate(folder, source, other, batch_size=8, progress=False)
    assert other.read_bytes() == expected and not partial.exists()


def test_resume_with_nothing_to_resume_starts_over(folder, reference, tmp_path):
    source, expected = reference
    result = annotate(folder, source, tmp_path / "out.jsonl", batch_size=8, resume=True, progress=False)
    assert result.resumed_docs == 0 and (tmp_path / "out.jsonl").read_bytes() == expected


def test_resume_refuses_other_settings_pipeline_or_input(folder, interrupted_run, tmp_path):
    source, output = interrupted_run
    with pytest.raises(ResumeError, match=r"another exit settings \(\{\}, now \{'threshold': 0.2\}\)"):
        annotate(folder, source, output, exit_overrides={"threshold": 0.2}, resume=True, progress=False)
    with pytest.raises(ResumeError, match=r"another precision \(None, now 'float32'\)"):
        annotate(folder, source, output, precision="float32", resume=True, progress=False)
    other_pipeline = tmp_path / "pipeline"
    shutil.copytree(folder, other_pipeline)
    meta = json.loads((other_pipeline / "meta.json").read_text())
    (other_pipeline / "meta.json").write_text(json.dumps({**meta, "version": "9.9.9"}))
    with pytest.raises(ResumeError, match="another pipeline"):
        annotate(other_pipeline, source, output, resume=True, progress=False)
    changed = tmp_path / "changed.jsonl"
    lines = source.read_bytes().splitlines(keepends=True)
    changed.write_bytes(b"".join(lines[:5] + [lines[5].replace(b'"text": "', b'"text": "x')] + lines[6:]))
    with pytest.raises(ResumeError, match="differs from the input it was written from"):
        annotate(folder, changed, output, resume=True, progress=False)
    changed.write_bytes(b"".join(lines[:20]))
    with pytest.raises(ResumeError, match="the input is shorter"):
        annotate(folder, changed, output, resume=True, progress=False)
    with pytest.raises(SystemExit, match="error: cannot resume .*another exit settings"):
        main(["annotate", str(folder), str(source), str(output), "--resume", "--threshold", "0.3", "--no-progress"])
    with pytest.raises(SystemExit, match=r"error: .*out.spacy: --resume needs JSONL output"):
        main(["annotate", str(folder), str(source), str(tmp_path / "out.spacy"), "--resume", "--no-progress"])
    # none of these touched the partial: it still resumes, also from an input that grew since
    grown = tmp_path / "grown.jsonl"
    grown.write_bytes(source.read_bytes() + json.dumps({"id": "new", "text": "Alice in Berlin ."}).encode() + b"\n")
    annotate(folder, grown, output, batch_size=8, resume=True, progress=False)
    annotate(folder, grown, tmp_path / "whole.jsonl", batch_size=8, progress=False)
    assert output.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()


def test_broken_partials_and_a_second_writer_are_refused(folder, interrupted_run):
    source, output = interrupted_run
    partial, state = partial_paths(output)
    settings = resume.run_settings(folder, {})
    writer = ResumableJsonlWriter(output, source, (), settings, resume=True)
    try:
        with pytest.raises(ResumeError, match="another annotate run is writing"):
            ResumableJsonlWriter(output, source, (), settings, resume=True)
    finally:
        writer.close()
    with open(partial, "r+b") as stream:
        stream.truncate(100)
    with pytest.raises(ResumeError, match="holds 100 bytes, fewer than"):
        annotate(folder, source, output, resume=True, progress=False)
    state.unlink()
    with pytest.raises(ResumeError, match="no out.jsonl.partial.json next to it"):
        annotate(folder, source, output, resume=True, progress=False)


def test_sigterm_with_spacy_output_keeps_nothing(folder, reference, tmp_path, monkeypatch):
    source, _ = reference
    stop = resume.StopRequest()
    stop.signal = signal.SIGTERM

    class Stopped:
        def __enter__(self):
            return stop

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(sys.modules["spacy_earlyexit.corpus.annotate"], "stop_on_sigterm", Stopped)
    with pytest.raises(AnnotateInterrupted, match="after 1 docs; nothing kept"):
        annotate(folder, source, tmp_path / "out.spacy", progress=False)
    assert list(tmp_path.iterdir()) == []


# --- Ray ---------------------------------------------------------------------------------


def actor_pids() -> List[int]:
    """Processes of Ray Data actors running RayAnnotator (their process title)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"RayAnnotator" in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds actor processes in /proc")
def test_ray_survives_a_killed_actor_and_never_writes_short(folder, reference, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from spacy_earlyexit.corpus import ray_engine

    source, expected = reference
    output = tmp_path / "out.jsonl"
    killed: List[int] = []

    def kill_one_actor() -> None:  # once 200 docs are written, like the OOM killer would
        deadline = time.monotonic() + TIMEOUT_S
        while state_docs(output) < 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        pids = actor_pids()
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        killer = threading.Thread(target=kill_one_actor)
        killer.start()
        result = annotate(folder, source, output, engine="ray", workers=2, batch_size=8, checkpoint_seconds=0,
                          progress=False)
        killer.join()
        assert killed, "precondition: an actor was killed mid-run"
        assert result.n_docs == 800 and output.read_bytes() == expected
        # Ray returning fewer batches than were sent: stopped, partial kept, nothing under OUTPUT
        short = tmp_path / "short.jsonl"
        rows = ray_engine._annotated_rows
        monkeypatch.setattr(ray_engine, "_annotated_rows",
                            lambda *args: (row for i, row in enumerate(rows(*args)) if i < 50))
        with pytest.raises(AnnotateInterrupted, match=r"a short result from Ray \(400 of 800 docs\).*--resume"):
            annotate(folder, source, short, engine="ray", workers=2, batch_size=8, progress=False)
        assert not short.exists() and state_docs(short) == 400
        monkeypatch.setattr(ray_engine, "_annotated_rows", rows)
        result = annotate(folder, source, short, engine="ray", workers=2, batch_size=8, resume=True, progress=False)
        assert (result.n_docs, result.resumed_docs) == (800, 400) and short.read_bytes() == expected
    finally:
        ray.shutdown()
