"""Load-test examples/serve.py on 127.0.0.1 and check every response.

    python examples/load_test.py PIPELINE [--requests 2000] [--clients 8] [--texts corpus.jsonl]
                                 [--no-batching] [--server-threads 1]

Starts the server in a subprocess on a free local port, sends `--requests`
requests from `--clients` threads (keep-alive connections), each 1-8 texts
with one of several exit settings (mixed thresholds and modes), and compares
every response with the reference: the same request annotated alone, one
request at a time, in this process. Reports wrong responses (0 required:
exit status 1 otherwise), latency p50/p90/p99 and throughput.
"""
import argparse
import http.client
import json
import os
import random
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


def make_requests(n_requests: int, texts_path: Optional[str], seed: int = 0) -> List[Dict[str, Any]]:
    rng = random.Random(seed)
    pool = load_texts(texts_path, 2000, seed)
    return [{"texts": [rng.choice(pool) for _ in range(rng.randint(1, 8))], **rng.choice(SETTINGS)}
            for _ in range(n_requests)]


def start_server(pipeline: str, extra: List[str]) -> Tuple[subprocess.Popen, int]:
    """serve.py in a subprocess on a free port of 127.0.0.1, with the spacy_earlyexit this process imports."""
    import spacy_earlyexit

    package_root = str(Path(spacy_earlyexit.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    process = subprocess.Popen([sys.executable, str(HERE / "serve.py"), pipeline, "--port", "0", *extra],
                               stdout=subprocess.PIPE, text=True, env=env)
    line = process.stdout.readline()
    if not line.startswith("listening on"):
        process.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return process, int(line.rsplit(":", 1)[1])


def percentile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def run_clients(port: int, requests: List[Dict[str, Any]], clients: int) -> Tuple[List[Any], List[float], float]:
    """Responses (by request index), latencies in seconds, wall seconds."""
    responses: List[Any] = [None] * len(requests)
    latencies: List[float] = [0.0] * len(requests)
    next_index = iter(range(len(requests)))
    lock = threading.Lock()

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                index = next(next_index, None)
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
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--texts", default=None, help=".jsonl or .spacy to draw texts from (default: random words)")
    parser.add_argument("--no-batching", action="store_true", help="the server calls nlp.pipe concurrently")
    parser.add_argument("--server-threads", type=int, default=1, help="the server's torch threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import spacy
    import torch

    sys.path.insert(0, str(HERE))
    from serve import annotate_texts, request_settings

    torch.set_num_threads(1)
    requests = make_requests(args.requests, args.texts, args.seed)
    nlp = spacy.load(args.pipeline)
    start = time.perf_counter()
    expected = [annotate_texts(nlp, request["texts"], request_settings(request)) for request in requests]
    reference_s = time.perf_counter() - start

    server, port = start_server(args.pipeline, ["--threads", str(args.server_threads)]
                                + (["--no-batching"] if args.no_batching else []))
    try:
        run_clients(port, requests[:50], args.clients)  # warm-up
        responses, latencies, wall = run_clients(port, requests, args.clients)
    finally:
        server.terminate()
        server.wait(timeout=30)
    wrong = [i for i, response in enumerate(responses)
             if response is None or response[0] != 200 or response[1]["docs"] != expected[i]]
    n_docs = sum(len(request["texts"]) for request in requests)
    ms = [latency * 1000 for latency in latencies]
    print(json.dumps({
        "pipeline": args.pipeline, "batching": not args.no_batching, "requests": len(requests),
        "clients": args.clients, "docs": n_docs, "wrong": len(wrong),
        "wrong_examples": [{"request": requests[i], "status": responses[i] and responses[i][0]} for i in wrong[:3]],
        "latency_ms": {"p50": round(percentile(ms, 50), 1), "p90": round(percentile(ms, 90), 1),
                       "p99": round(percentile(ms, 99), 1), "mean": round(statistics.mean(ms), 1)},
        "requests_per_s": round(len(requests) / wall, 1), "docs_per_s": round(n_docs / wall, 1),
        "reference_one_at_a_time_docs_per_s": round(n_docs / reference_s, 1),
    }, indent=1))
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
