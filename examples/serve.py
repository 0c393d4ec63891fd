"""Serve an early-exit pipeline over HTTP, with micro-batching (stdlib only).

    python examples/serve.py PIPELINE [--host 127.0.0.1] [--port 8080] [--threads 1] [--workers 1] \
        [--precision auto]

POST /annotate  {"texts": ["...", ...], "threshold": 0.2, "exit_mode": "token", "window": 1}
    -> {"docs": [{"text", "tokens": [{"text", "start", "end", <label attrs>, "exit_layer"}],
                  "ents": [[start_char, end_char, label]], "early_exit": {...}}]}
    The exit settings are optional (default: the pipeline's saved ones) and
    apply to this request only; a bad value is a 400 naming the setting.
GET /health     -> {"ok": true, "pid": <the answering process>}

How it runs: `ThreadingHTTPServer` gives every connection a thread that only
parses JSON, waits and writes JSON. One `MicroBatcher` thread owns the
pipeline: it takes the first waiting request and every request already
queued, then waits up to `--wait-ms` (default 5) for more, but only while it
holds fewer requests than there are open connections (a keep-alive client
has one request at a time, so once every connection has sent one, waiting
gains nothing), up to `--max-batch-docs` docs. It groups them by their exit
settings and runs one nlp.pipe call per group, with that group's settings as
nlp.pipe's component_cfg, inside `nlp.memory_zone()` (the response records
are plain Python values built inside the zone). Requests with different
settings are never in the same call, and only this thread calls the model,
so no setting can leak from one request to another, whatever the pipeline
does with per-call settings. Batching concurrent requests pads less and pays
the per-call overhead once.

Responses go out in one send with TCP_NODELAY: the standard library's
default (headers and body in two sends, Nagle on) makes every response wait
for the client's delayed ACK, about 40 ms, which capped 8 clients at ~150
requests/s however fast the model was (benchmarks/serving/README.md).

Cores: `--workers N` (default 1) forks N server processes after the
pipeline is loaded (they share its weights' memory until written to; on
Linux and macOS); all accept on the one listening socket, and each has its
own micro-batcher thread and one torch thread. Use one worker per core
rather than more torch threads: on small batches torch's OpenMP threads
mostly wait (and spin). `--threads` (default 1) is the torch intra-op
thread count of a single worker.
Memory stays flat on glibc's malloc as it is; jemalloc, preloaded, holds a
little less resident (docs/production.md).

`--precision` (default: as saved) loads the early-exit components in
"auto" (this CPU's fast precision), "float32", "bfloat16" or "int8"
(spacy_earlyexit.load); the first line printed says which runs.

`--no-batching` calls nlp.pipe from every request thread directly
(concurrently): for comparison in examples/load_test.py only.
"""
import argparse
import json
import os
import queue
import signal
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy
import torch
from spacy.language import Language
from spacy.tokens import Doc

import spacy_earlyexit
from spacy_earlyexit.corpus.job import batch_memory_zone, component_cfg, label_attrs, tagger_names
from spacy_earlyexit.model import ExitSettings

#: the exit settings a request may give
REQUEST_SETTINGS = ("exit_mode", "threshold", "window")
MAX_TEXTS_PER_REQUEST = 1024


def request_settings(body: Dict[str, Any]) -> Tuple[Tuple[str, Any], ...]:
    """The request's exit settings as a sorted, hashable tuple (ValueError
    naming a bad setting)."""
    settings = {name: body[name] for name in REQUEST_SETTINGS if body.get(name) is not None}
    ExitSettings().updated(**settings)
    return tuple(sorted(settings.items()))


def response_record(doc: Doc, attrs: Sequence[str]) -> Dict[str, Any]:
    """What spacy_earlyexit.corpus.formats.doc_record(doc, attrs, {}) gives,
    faster: the exit layers are decoded once per doc (doc._.exit_layers),
    not once per token."""
    label_names = [(attr, f"{attr}_") for attr in attrs]
    tokens = []
    for token, exit_layer in zip(doc, doc._.exit_layers):
        start = token.idx
        item: Dict[str, Any] = {"text": token.text, "start": start, "end": start + len(token)}
        for attr, name in label_names:
            item[attr] = getattr(token, name)
        item["exit_layer"] = exit_layer
        tokens.append(item)
    summary = doc._.early_exit
    return {
        "text": doc.text,
        "meta": {},
        "tokens": tokens,
        "ents": [[ent.start_char, ent.end_char, ent.label_] for ent in doc.ents],
        "early_exit": ({key: value.item() if isinstance(value, numpy.generic) else value
                        for key, value in summary.items()} if summary else None),
    }


def annotate_texts(nlp: Language, texts: Sequence[str], settings: Tuple[Tuple[str, Any], ...],
                   batch_size: int = 256) -> List[Dict[str, Any]]:
    """The response records of `texts`, annotated in one nlp.pipe call with `settings`."""
    cfg = component_cfg(tagger_names(nlp), dict(settings))
    attrs = label_attrs(nlp)
    return [response_record(doc, attrs) for doc in nlp.pipe(texts, batch_size=batch_size, component_cfg=cfg)]


@dataclass
class Request:
    texts: List[str]
    settings: Tuple[Tuple[str, Any], ...]
    result: "Future[List[Dict[str, Any]]]" = field(default_factory=Future)


class MicroBatcher:
    """One thread that runs the pipeline on groups of requests (see the module docstring).

    wait_ms: how long to collect further requests after the first one.
    max_batch_docs: most docs collected for one round (a request is never split).
    """

    def __init__(self, nlp: Language, wait_ms: float = 5.0, max_batch_docs: int = 512) -> None:
        self.nlp = nlp
        self.wait_s = wait_ms / 1000
        self.max_batch_docs = max_batch_docs
        self.queue: "queue.Queue[Optional[Request]]" = queue.Queue()
        self.connections = 0  # open client connections (see _collect)
        self._lock = threading.Lock()
        self.rounds = 0  # nlp.pipe calls so far
        self.thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self.thread.start()

    def submit(self, texts: List[str], settings: Tuple[Tuple[str, Any], ...]) -> "Future[List[Dict[str, Any]]]":
        request = Request(texts, settings)
        self.queue.put(request)
        return request.result

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()

    def connection_opened(self) -> None:
        with self._lock:
            self.connections += 1

    def connection_closed(self) -> None:
        with self._lock:
            self.connections -= 1

    def _collect(self, first: Request) -> Tuple[List[Request], bool]:
        """`first` and the requests already waiting; then, while fewer requests
        are collected than there are open connections (each has at most one
        request at a time), the ones that arrive within wait_s. And whether to stop."""
        requests, n_docs = [first], len(first.texts)
        deadline = time.monotonic() + self.wait_s
        while n_docs < self.max_batch_docs:
            timeout = deadline - time.monotonic()
            try:
                if timeout > 0 and len(requests) < self.connections:
                    request = self.queue.get(timeout=timeout)
                else:
                    request = self.queue.get_nowait()
            except queue.Empty:
                break
            if request is None:
                return requests, True
            requests.append(request)
            n_docs += len(request.texts)
        return requests, False

    def _run(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            requests, stop = self._collect(first)
            groups: Dict[Tuple[Tuple[str, Any], ...], List[Request]] = {}
            for request in requests:
                groups.setdefault(request.settings, []).append(request)
            for settings, group in groups.items():
                try:
                    # the records are plain Python values, built inside the zone:
                    # the round's strings and lexemes are freed when it closes
                    with batch_memory_zone(self.nlp):
                        records = annotate_texts(self.nlp, [text for request in group for text in request.texts],
                                                 settings)
                    self.rounds += 1
                except Exception as error:  # noqa: BLE001 (reported to each request of the group)
                    for request in group:
                        request.result.set_exception(error)
                    continue
                start = 0
                for request in group:
                    request.result.set_result(records[start:start + len(request.texts)])
                    start += len(request.texts)
            if stop:
                return


def make_handler(nlp: Language, batcher: Optional[MicroBatcher]) -> type:
    """The request handler class: through `batcher`, or (None) nlp.pipe in the request's thread."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: clients reuse their connection
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # no line per request
            pass

        def setup(self) -> None:
            super().setup()
            if batcher is not None:
                batcher.connection_opened()

        def finish(self) -> None:
            if batcher is not None:
                batcher.connection_closed()
            super().finish()

        def _reply(self, status: int, body: Dict[str, Any]) -> None:
            data = json.dumps(body, ensure_ascii=False).encode("utf8")
            self.log_request(status, len(data))
            # the status line, headers and body in one send (with TCP_NODELAY:
            # a second small send would wait for the client's delayed ACK, ~40 ms)
            head = (f"{self.protocol_version} {status} {HTTPStatus(status).phrase}\r\n"
                    f"Server: {self.version_string()}\r\nDate: {self.date_time_string()}\r\n"
                    "Content-Type: application/json; charset=utf-8\r\n"
                    f"Content-Length: {len(data)}\r\n\r\n")
            self.wfile.write(head.encode("latin-1") + data)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._reply(200, {"ok": True, "pid": os.getpid()})
            else:
                self._reply(404, {"error": f"no such path: {self.path}"})

        def do_POST(self) -> None:
            if self.path != "/annotate":
                self._reply(404, {"error": f"no such path: {self.path}"})
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"null")
                if not isinstance(body, dict):
                    raise ValueError("the body must be a JSON object")
                texts = body.get("texts")
                if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
                    raise ValueError('"texts" must be a list of strings')
                if len(texts) > MAX_TEXTS_PER_REQUEST:
                    raise ValueError(f"at most {MAX_TEXTS_PER_REQUEST} texts per request")
                settings = request_settings(body)
            except ValueError as error:
                self._reply(400, {"error": str(error)})
                return
            try:
                if batcher is None:
                    docs = annotate_texts(nlp, texts, settings)
                else:
                    docs = batcher.submit(texts, settings).result()
            except Exception as error:  # noqa: BLE001
                self._reply(500, {"error": f"{type(error).__name__}: {error}"})
                return
            self._reply(200, {"docs": docs})

    return Handler


class Server(ThreadingHTTPServer):
    """ThreadingHTTPServer with a listen backlog for bursts of connections
    (socketserver's default of 5 resets the rest of a burst of clients)."""

    request_queue_size = 256


def make_server(nlp: Language, host: str = "127.0.0.1", port: int = 8080, batching: bool = True,
                wait_ms: float = 5.0, max_batch_docs: int = 512) -> Tuple[ThreadingHTTPServer, Optional[MicroBatcher]]:
    """An HTTP server for `nlp` (not yet serving: call serve_forever) and its batcher.
    port 0: any free port (server.server_address has it)."""
    batcher = MicroBatcher(nlp, wait_ms, max_batch_docs) if batching else None
    server = Server((host, port), make_handler(nlp, batcher))
    server.daemon_threads = True
    return server, batcher


def serve_workers(nlp: Language, server: ThreadingHTTPServer, n_workers: int, *, batching: bool = True,
                  wait_ms: float = 5.0, max_batch_docs: int = 512) -> None:
    """Fork `n_workers` processes that serve `server`'s listening socket,
    each with its own micro-batcher (threads do not survive a fork, so the
    server must have none yet: make_server(..., batching=False)); wait for
    them, and stop them all when this process gets SIGTERM or SIGINT or one
    of them exits."""
    children: List[int] = []
    for _ in range(n_workers):
        pid = os.fork()
        if pid == 0:  # a worker: serve until terminated
            code = 0
            try:
                batcher = MicroBatcher(nlp, wait_ms, max_batch_docs) if batching else None
                server.RequestHandlerClass = make_handler(nlp, batcher)
                server.serve_forever()
            except KeyboardInterrupt:
                pass
            except BaseException:  # noqa: BLE001 (reported, then the worker ends)
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        children.append(pid)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        os.wait()  # returns when a worker exits (it should not)
    except KeyboardInterrupt:
        pass
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0: any free port (printed)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads of a single worker's model thread")
    parser.add_argument("--workers", type=int, default=1,
                        help="server processes forked after loading, one torch thread each (one per core)")
    parser.add_argument("--wait-ms", type=float, default=5.0, help="how long to collect requests into a batch")
    parser.add_argument("--max-batch-docs", type=int, default=512)
    parser.add_argument("--precision", default=None, choices=["auto", "float32", "bfloat16", "int8"],
                        help="what the encoder runs in (default: as the pipeline's config says)")
    parser.add_argument("--no-batching", action="store_true",
                        help="nlp.pipe in every request thread, concurrently (for comparison only)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.workers > 1 and args.threads > 1:
        parser.error("--threads is for a single worker: with --workers each worker runs one torch thread")
    if args.workers > 1 and not hasattr(os, "fork"):
        parser.error("--workers needs os.fork (Linux, macOS); run one server per core behind a load balancer")
    torch.set_num_threads(args.threads)
    nlp = spacy_earlyexit.load(args.pipeline, precision=args.precision)
    precisions = {name: getattr(nlp.get_pipe(name), "precision", None) for name in nlp.pipe_names}
    forked = args.workers > 1
    server, batcher = make_server(nlp, args.host, args.port, not args.no_batching and not forked, args.wait_ms,
                                  args.max_batch_docs)
    host, port = server.server_address[:2]
    running = ", ".join(f"{name}: {value}" for name, value in precisions.items() if value)
    print(f"listening on http://{host}:{port} ({running or 'no early-exit component'})", flush=True)
    try:
        if forked:
            serve_workers(nlp, server, args.workers, batching=not args.no_batching, wait_ms=args.wait_ms,
                          max_batch_docs=args.max_batch_docs)
        else:
            server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if batcher is not None:
            batcher.close()


if __name__ == "__main__":
    sys.exit(main())
