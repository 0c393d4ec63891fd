"""nlp.pipe(..., n_process=2) after the parent has run the pipeline with torch's
default thread count (spacy_earlyexit/pipeline/process.py).

Without the fork handlers, forked workers hang forever in GNU OpenMP (libgomp's
pool does not survive fork) and each prints tokenizers' TOKENIZERS_PARALLELISM
warning. Every case runs in a fresh interpreter (this test process has set
torch to one thread in conftest.py, which hides the hang), with a timeout: a
hang fails the test instead of hanging the run.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.tiny_bert import NER_DATA, POS_DATA, train_tiny_pipeline

TIMEOUT_S = 120
REPO = Path(__file__).resolve().parents[2]

SCRIPT = r'''
import json, multiprocessing, os, sys
import spacy, torch

def annotations(docs):
    return [[(t.text, t.ent_iob_, t.ent_type_, t._.exit_layer) for t in doc] for doc in docs]

def main():
    folder, method, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if method != "default":
        multiprocessing.set_start_method(method)
    if threads:
        torch.set_num_threads(threads)
    parent_threads = torch.get_num_threads()
    texts = json.loads(sys.stdin.read())
    nlp = spacy.load(folder)
    single = annotations(nlp.pipe(texts, batch_size=4))  # the warm-up: libgomp's pool and rayon's exist now
    double = annotations(spacy.load(folder).pipe(texts, batch_size=4, n_process=2))
    print(json.dumps({
        "start_method": multiprocessing.get_start_method(), "threads": parent_threads,
        "threads_after": torch.get_num_threads(), "same": single == double,
        "layers": sorted({token[-1] for doc in single for token in doc}),
        "env_after": os.environ.get("TOKENIZERS_PARALLELISM"),
    }))

if __name__ == "__main__":
    main()
'''


@pytest.fixture(scope="module")
def saved_pipeline(tiny_bert, tmp_path_factory):
    """A NER pipeline (token exit, a mix of exit layers) saved to disk, and the script."""
    root = tmp_path_factory.mktemp("fork")
    bert = root / "bert"
    shutil.copytree(tiny_bert, bert)
    nlp = train_tiny_pipeline(bert, "ner", 100)
    nlp.get_pipe("earlyexit_tagger").configure_exit(exit_mode="token", threshold=0.5, window=1)
    nlp.to_disk(root / "pipeline")
    (root / "script.py").write_text(SCRIPT, encoding="utf8")
    return root / "pipeline", root / "script.py"


def texts():
    texts = [text for text, _ in NER_DATA + POS_DATA] + ["", "hello world", "Ünïcödé Paris !"]
    return texts + [f"{a} {b}" for a, b in zip(texts, reversed(texts))]


def run_script(script: Path, folder: Path, method: str, threads: int) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items()
           if key not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    # a session of its own: on a timeout the whole group goes, hung workers included
    process = subprocess.Popen([sys.executable, str(script), str(folder), method, str(threads)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env, start_new_session=True)
    try:
        stdout, stderr = process.communicate(json.dumps(texts()), timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
        pytest.fail(f"nlp.pipe(n_process=2) hung ({method}, threads {threads or 'default'}): "
                    f"no result in {TIMEOUT_S} s; stderr: {stderr}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.parametrize("method,threads", [
    ("default", 0),  # fork on Linux, torch's default thread count: the reported hang
    ("fork", 3),  # more threads than cores
    ("fork", 1),
    pytest.param("spawn", 0, marks=pytest.mark.slow),  # fresh interpreters: ~10 s of imports
    pytest.param("forkserver", 0, marks=pytest.mark.slow),
])
def test_workers_after_warm_up_finish_with_the_parents_results(saved_pipeline, method, threads):
    folder, script = saved_pipeline
    out = run_script(script, folder, method, threads)
    assert out.returncode == 0, out.stderr
    assert "TOKENIZERS_PARALLELISM" not in out.stderr, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    if method == "default":
        assert report["start_method"] == ("fork" if sys.platform == "linux" else report["start_method"])
        assert report["threads"] > 1 or (os.cpu_count() or 1) == 1, "precondition: torch's default > 1 thread"
    assert report["same"], "the workers' labels or exit layers differ from the parent's"
    assert len(report["layers"]) > 1, "precondition: a mix of exit layers"
    # the parent keeps its thread count and its tokenizers' parallelism
    assert report["threads_after"] == report["threads"]
    assert report["env_after"] is None
