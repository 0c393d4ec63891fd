"""Load-test examples/serve.py on 127.0.0.1 and check every response.

    python examples/load_test.py PIPELINE [--requests 2000] [--clients 8] [--texts corpus.jsonl|.spacy]
                                 [--texts-per-request 1] [--mixed-settings] [--max-seconds 300]
                                 [--no-batching] [--server-threads 1] [--server-workers 1] [--wait-ms 5]
                                 [--precision auto]

Starts the server in a subprocess on a free local port, sends at most
`--requests` requests (and none after `--max-seconds`) from `--clients`
threads (keep-alive connections), each `--texts-per-request` texts ("1-8":
a random count in that range), with the pipeline's saved exit settings or,
with --mixed-settings, one of several per request (mixed thresholds and modes).

Every response is compared with the reference: the same texts through
nlp.pipe in this process (one call per exit setting, one torch thread), which
also gives the ratio of the server's words/s to nlp.pipe's. Reports wrong
responses (0 required: exit status 1 otherwise; in bfloat16, whose results
can differ slightly with the batch a doc runs in, a wrong response must only
differ in the labels or exit layers of some tokens, at most
BFLOAT16_TOKEN_TOLERANCE of all words; `differing_tokens` counts them), docs/s, words/s, latency
p50/p90/p99 and the server's memory after the warm-up and at the end: the
VmRSS of its main process and the PSS (proportional set size: shared pages
split between the processes that share them) of it and its workers.
"""
import argparse
import http.client
import json
import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
SETTINGS: List[Dict[str, Any]] = [
    {},
    {"exit_mode": "token", "threshold": 0.05},
    {"exit_mode": "token", "threshold": 0.2, "window": 1},
    {"exit_mode": "token", "threshold": 0.5},
    {"exit_mode": "token", "threshold": 1.0},
    {"exit_mode": "sentence", "threshold": 0.3},
    {"exit_mode": "off"},
]
FALLBACK_WORDS = ("Alice lives in Paris and Bob visited London yesterday while the weather is nice "
                  "in Berlin hello world test text").split()


def load_texts(path: Optional[str], n: int, seed: int) -> List[str]:
    rng = random.Random(seed)
    if path:
        if path.endswith(".spacy"):
            import spacy
            from spacy.tokens import DocBin

            texts = [doc.text for doc in DocBin().from_disk(path).get_docs(spacy.blank("xx").vocab)]
        else:
            texts = [json.loads(line)["text"] for line in open(path, encoding="utf8") if line.strip()]
        return [rng.choice(texts) for _ in range(n)]
    return [" ".join(rng.choice(FALLBACK_WORDS) for _ in range(rng.randint(1, 20))) for _ in range(n)]


def make_requests(n_requests: int, texts_path: Optional[str], seed: int = 0, texts_per_request: str = "1-8",
                  mixed_settings: bool = True) -> List[Dict[str, Any]]:
    """`n_requests` request bodies; texts_per_request: "N" or "LOW-HIGH"."""
    rng = random.Random(seed)
    low, _, high = texts_per_request.partition("-")
    low_n, high_n = int(low), int(high or low)
    pool = load_texts(texts_path, 2000, seed)
    return [{"texts": [rng.choice(pool) for _ in range(rng.randint(low_n, high_n))],
             **(rng.choice(SETTINGS) if mixed_settings else {})}
            for _ in range(n_requests)]


#: bfloat16: the share of words whose labels or exit layer may differ from
#: the reference (a doc's bfloat16 results depend slightly on its batch)
BFLOAT16_TOKEN_TOLERANCE = 0.001


def differing_tokens(got: List[Dict[str, Any]], expected: List[Dict[str, Any]]) -> Optional[int]:
    """How many tokens of one response differ from the reference in their
    labels or exit layer; None when the docs differ otherwise (texts, token
    boundaries, other fields)."""
    if len(got) != len(expected):
        return None
    count = 0
    for doc, reference in zip(got, expected):
        same_shape = set(doc) == set(reference) and doc["text"] == reference["text"]
        if not same_shape or len(doc["tokens"]) != len(reference["tokens"]):
            return None
        for token, want in zip(doc["tokens"], reference["tokens"]):
            if (token["text"], token["start"], token["end"]) != (want["text"], want["start"], want["end"]):
                return None
            count += token != want
    return count


def expected_responses(nlp: Any, requests: List[Dict[str, Any]]) -> Tuple[List[List[Dict[str, Any]]], float]:
    """Each request's expected docs, from one nlp.pipe call per exit setting
    over all the requests' texts (records by spacy_earlyexit.corpus.formats.doc_record,
    not by serve.py's code); and the seconds those calls took."""
    sys.path.insert(0, str(HERE))
    from serve import request_settings

    from spacy_earlyexit.corpus.formats import doc_record
    from spacy_earlyexit.corpus.job import component_cfg, label_attrs, tagger_names

    attrs = label_attrs(nlp)

    def annotate_texts(nlp: Any, texts: List[str], settings: Any) -> List[Dict[str, Any]]:
        cfg = component_cfg(tagger_names(nlp), dict(settings))
        return [doc_record(doc, attrs, {}) for doc in nlp.pipe(texts, batch_size=256, component_cfg=cfg)]

    groups: Dict[Any, List[int]] = {}
    for index, request in enumerate(requests):
        groups.setdefault(request_settings(request), []).append(index)
    expected: List[Any] = [None] * len(requests)
    seconds = 0.0
    for settings, indices in groups.items():
        start = time.perf_counter()
        records = annotate_texts(nlp, [text for i in indices for text in requests[i]["texts"]], settings)
        seconds += time.perf_counter() - start
        offset = 0
        for i in indices:
            expected[i] = records[offset:offset + len(requests[i]["texts"])]
            offset += len(requests[i]["texts"])
    return expected, seconds


def rss_mib(pid: int) -> Optional[float]:
    """VmRSS of process `pid` in MiB (None where /proc is not there)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """lscpu's model name ("unknown" without lscpu)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                "unknown")


def process_tree(pid: int) -> List[int]:
    """`pid` and its descendants (Linux /proc; [pid] elsewhere)."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        try:
            with open(f"/proc/{current}/task/{current}/children", encoding="ascii") as children:
                pending.extend(int(child) for child in children.read().split())
        except OSError:
            pass
    return found


def pss_mib(pid: int) -> Optional[float]:
    """PSS of process `pid` and its descendants in MiB (None where
    /proc/PID/smaps_rollup is not there)."""
    total = 0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/smaps_rollup", encoding="ascii") as rollup:
                total += next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
        except (OSError, StopIteration):
            return None
    return round(total / 1024, 1)


def start_server(pipeline: str, extra: List[str]) -> Tuple[subprocess.Popen, int]:
    """serve.py in a subprocess on a free port of 127.0.0.1, with the spacy_earlyexit this process imports."""
    import spacy_earlyexit

    package_root = str(Path(spacy_earlyexit.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    process = subprocess.Popen([sys.executable, str(HERE / "serve.py"), pipeline, "--port", "0", *extra],
                               stdout=subprocess.PIPE, text=True, env=env)
    line = process.stdout.readline()
    found = re.match(r"listening on http://[^\s]+:(\d+)", line)
    if found is None:
        process.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return process, int(found.group(1))


def percentile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def run_clients(port: int, requests: List[Dict[str, Any]], clients: int,
                max_seconds: float = float("inf")) -> Tuple[List[Any], List[float], float]:
    """Responses (by request index; None: not sent, after max_seconds), latencies in seconds, wall seconds."""
    deadline = time.perf_counter() + max_seconds
    responses: List[Any] = [None] * len(requests)
    latencies: List[float] = [0.0] * len(requests)
    next_index = iter(range(len(requests)))
    lock = threading.Lock()

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                index = next(next_index, None) if time.perf_counter() < deadline else None
            if index is None:
                break
            body = json.dumps(requests[index]).encode("utf8")
            start = time.perf_counter()
            connection.request("POST", "/annotate", body, {"Content-Type": "application/json"})
            reply = connection.getresponse()
            data = reply.read()
            latencies[index] = time.perf_counter() - start
            responses[index] = (reply.status, json.loads(data))
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return responses, latencies, time.perf_counter() - start


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline")
    parser.add_argument("--requests", type=int, default=2000, help="at most this many requests")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--texts", default=None, help=".jsonl or .spacy to draw texts from (default: random words)")
    parser.add_argument("--texts-per-request", default="1-8", help='"N" or "LOW-HIGH" (default 1-8)')
    parser.add_argument("--mixed-settings", action="store_true",
                        help="each request one of several exit settings (default: the pipeline's saved ones)")
    parser.add_argument("--max-seconds", type=float, default=300, help="no request is sent after this")
    parser.add_argument("--no-batching", action="store_true", help="the server calls nlp.pipe concurrently")
    parser.add_argument("--server-threads", type=int, default=1, help="the server's torch threads")
    parser.add_argument("--server-workers", type=int, default=1, help="the server's --workers (processes)")
    parser.add_argument("--wait-ms", type=float, default=None, help="the server's --wait-ms")
    parser.add_argument("--precision", default=None, choices=["auto", "float32", "bfloat16", "int8"],
                        help="load the pipeline in this precision, in the server and for the reference")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    import spacy_earlyexit

    torch.set_num_threads(1)
    requests = make_requests(args.requests, args.texts, args.seed, args.texts_per_request, args.mixed_settings)
    nlp = spacy_earlyexit.load(args.pipeline, precision=args.precision)
    expected_responses(nlp, requests[:20])  # warm-up
    expected, pipe_seconds = expected_responses(nlp, requests)

    extra = ["--threads", str(args.server_threads), "--workers", str(args.server_workers)]
    extra += ["--no-batching"] if args.no_batching else []
    extra += ["--precision", args.precision] if args.precision else []
    if args.wait_ms is not None:
        extra += ["--wait-ms", str(args.wait_ms)]
    server, port = start_server(args.pipeline, extra)
    try:
        run_clients(port, requests[:50], args.clients, args.max_seconds)  # warm-up
        rss_start, pss_start = rss_mib(server.pid), pss_mib(server.pid)
        responses, latencies, wall = run_clients(port, requests, args.clients, args.max_seconds)
        rss_end, pss_end = rss_mib(server.pid), pss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    sent = [i for i, response in enumerate(responses) if response is not None]
    wrong = [i for i in sent if responses[i][0] != 200 or responses[i][1]["docs"] != expected[i]]
    differing = [differing_tokens(responses[i][1]["docs"], expected[i]) if responses[i][0] == 200 else None
                 for i in wrong]
    n_docs = sum(len(requests[i]["texts"]) for i in sent)
    n_words = sum(len(doc["tokens"]) for i in sent for doc in expected[i])
    all_words = sum(len(doc["tokens"]) for docs in expected for doc in docs)
    ms = [latencies[i] * 1000 for i in sent] or [0.0]
    server_words_per_s = n_words / wall
    pipe_words_per_s = all_words / pipe_seconds
    precisions = {name: getattr(nlp.get_pipe(name), "precision", None) for name in nlp.pipe_names}
    print(json.dumps({
        "pipeline": args.pipeline, "batching": not args.no_batching, "clients": args.clients,
        "cpu": cpu_name(), "cores": os.cpu_count(),
        "texts_per_request": args.texts_per_request, "mixed_settings": args.mixed_settings,
        "requests": len(requests), "sent": len(sent), "docs": n_docs, "words": n_words, "wrong": len(wrong),
        "wrong_examples": [{"request": requests[i], "status": responses[i][0]} for i in wrong[:3]],
        "latency_ms": {"p50": round(percentile(ms, 50), 1), "p90": round(percentile(ms, 90), 1),
                       "p99": round(percentile(ms, 99), 1), "mean": round(statistics.mean(ms), 1)},
        "requests_per_s": round(len(sent) / wall, 1), "docs_per_s": round(n_docs / wall, 1),
        "words_per_s": round(server_words_per_s), "seconds": round(wall, 2),
        "nlp_pipe_words_per_s": round(pipe_words_per_s), "nlp_pipe_docs_per_s": round(
            sum(len(r["texts"]) for r in requests) / pipe_seconds, 1),
        "server_to_nlp_pipe": round(server_words_per_s / pipe_words_per_s, 2),
        "server_rss_mib": {"start": rss_start, "end": rss_end},
        "server_workers": args.server_workers, "server_pss_mib": {"start": pss_start, "end": pss_end},
        "precision": precisions,
        "differing_tokens": sum(n for n in differing if n is not None),
    }, indent=1))
    tolerated = (
        "bfloat16" in precisions.values() and None not in differing
        and sum(differing) <= BFLOAT16_TOKEN_TOLERANCE * n_words  # type: ignore[arg-type]
    )
    return 1 if wrong and not tolerated else 0


if __name__ == "__main__":
    sys.exit(main())
