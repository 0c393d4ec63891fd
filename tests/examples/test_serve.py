"""examples/serve.py: concurrent requests with different exit settings, batched
by the micro-batcher, each answered as if it had been annotated alone."""
import http.client
import importlib.util
import json
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers.tiny_bert import NER_DATA, train_tiny_pipeline

SERVE = Path(__file__).resolve().parents[2] / "examples" / "serve.py"
LOAD_TEST = SERVE.parent / "load_test.py"


@pytest.fixture(scope="module")
def serve():
    spec = importlib.util.spec_from_file_location("serve_example", SERVE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["serve_example"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def nlp(tiny_bert, tmp_path_factory):
    bert = tmp_path_factory.mktemp("serve") / "bert"
    shutil.copytree(tiny_bert, bert)
    return train_tiny_pipeline(bert, "ner", 100)


def post(port: int, body) -> tuple:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("POST", "/annotate", json.dumps(body), {"Content-Type": "application/json"})
    reply = connection.getresponse()
    result = reply.status, json.loads(reply.read())
    connection.close()
    return result


def post_concurrently(port: int, requests: list) -> list:
    """Every request from a thread of its own, all at once; the (status, body) of each."""
    results = [None] * len(requests)

    def client(index: int) -> None:
        results[index] = post(port, requests[index])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def test_concurrent_mixed_settings_get_their_own_results(serve, nlp):
    texts = [text for text, _ in NER_DATA] + ["hello world", "", "Ünïcödé Paris !"]
    settings = [{}, {"exit_mode": "token", "threshold": 1.0}, {"exit_mode": "off"},
                {"exit_mode": "token", "threshold": 0.5, "window": 1}, {"exit_mode": "sentence", "threshold": 0.3}]
    requests = [{"texts": texts[i % len(texts):] + texts[:i % 3], **settings[i % len(settings)]} for i in range(40)]
    # the reference: each request alone, one at a time
    expected = [serve.annotate_texts(nlp, r["texts"], serve.request_settings(r)) for r in requests]
    assert expected[1] != expected[2], "precondition: the settings give different results"
    server, batcher = serve.make_server(nlp, port=0, wait_ms=20)  # a long wait: requests get batched
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    rounds = []
    original = serve.annotate_texts

    def counting(nlp_, texts_, settings_, **kwargs):
        rounds.append(len(texts_))
        return original(nlp_, texts_, settings_, **kwargs)

    serve.annotate_texts = counting
    try:
        results = post_concurrently(port, requests)
        assert [status for status, _ in results] == [200] * len(requests)
        assert [body["docs"] for _, body in results] == expected
        assert len(rounds) < len(requests), "concurrent requests with the same settings share nlp.pipe calls"
        status, body = post(port, {"texts": ["Alice"], "threshold": 2.0})
        assert status == 400 and "threshold" in body["error"]
        assert post(port, {"texts": "Alice"}) == (400, {"error": '"texts" must be a list of strings'})
    finally:
        serve.annotate_texts = original
        server.shutdown()
        server.server_close()
        batcher.close()


def test_batcher_stops_waiting_once_every_connection_has_a_request(serve, nlp):
    """A long --wait-ms costs nothing when every open connection has a request waiting."""
    batcher = serve.MicroBatcher(nlp, wait_ms=60_000)
    try:
        batcher.connection_opened()
        batcher.connection_opened()
        start = time.monotonic()
        futures = [batcher.submit(["Alice lives in Paris"], ()), batcher.submit(["hello world"], ())]
        results = [future.result(timeout=30) for future in futures]
        assert time.monotonic() - start < 30
        assert results == [serve.annotate_texts(nlp, ["Alice lives in Paris"], ()),
                           serve.annotate_texts(nlp, ["hello world"], ())]
        assert batcher.rounds == 1, "the two requests share one nlp.pipe call"
    finally:
        batcher.connection_closed()
        batcher.connection_closed()
        batcher.close()


@pytest.fixture(scope="module")
def load_test():
    spec = importlib.util.spec_from_file_location("load_test_example", LOAD_TEST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_clients_sends_nothing_after_max_seconds(load_test):
    responses, latencies, _ = load_test.run_clients(1, [{"texts": ["a"]}] * 5, 2, max_seconds=0)
    assert responses == [None] * 5


def test_load_test_checks_every_response_and_reports_memory(load_test, tiny_bert, tmp_path, capsys):
    """The bounded load test against a served pipeline (a subprocess): every
    response equals nlp.pipe's, and it ends by itself with the server's RSS."""
    bert = tmp_path / "bert"
    shutil.copytree(tiny_bert, bert)
    pipeline = tmp_path / "pos"
    train_tiny_pipeline(bert, "pos", 0).to_disk(pipeline)
    status = load_test.main([str(pipeline), "--requests", "60", "--clients", "4", "--texts-per-request", "1-3",
                             "--mixed-settings", "--max-seconds", "120", "--precision", "float32"])
    report = json.loads(capsys.readouterr().out)
    assert status == 0 and report["wrong"] == 0
    assert report["precision"] == {"earlyexit_tagger": "float32"}
    assert report["sent"] == 60 and report["docs"] > 60
    assert report["latency_ms"]["p99"] >= report["latency_ms"]["p50"] > 0
    assert report["words_per_s"] > 0 and report["nlp_pipe_words_per_s"] > 0
    assert report["server_rss_mib"]["start"] > 0 and report["server_rss_mib"]["end"] > 0


def test_differing_tokens_counts_label_and_exit_changes_only(load_test):
    def doc(text, tokens):
        return {"text": text, "tokens": [dict(t) for t in tokens], "ents": [], "early_exit": {}}

    a = {"text": "a", "start": 0, "end": 1, "pos": "DET", "exit_layer": 1}
    b = {"text": "b", "start": 2, "end": 3, "pos": "NOUN", "exit_layer": 2}
    reference = [doc("a b", [a, b])]
    assert load_test.differing_tokens(reference, reference) == 0
    assert load_test.differing_tokens([doc("a b", [a, {**b, "exit_layer": 3}])], reference) == 1
    assert load_test.differing_tokens([doc("a b", [{**a, "pos": "X"}, {**b, "pos": "X"}])], reference) == 2
    assert load_test.differing_tokens([doc("a b", [a, {**b, "end": 2}])], reference) is None  # boundaries
    assert load_test.differing_tokens([doc("a c", [a, b])], reference) is None
    assert load_test.differing_tokens([], reference) is None


def test_response_record_is_doc_record(serve, nlp):
    """serve.py's faster records are spacy_earlyexit's doc_record (tokens, ents, exit layers, summary)."""
    from spacy_earlyexit.corpus.formats import doc_record
    from spacy_earlyexit.corpus.job import label_attrs

    attrs = label_attrs(nlp)
    texts = [text for text, _ in NER_DATA] + ["", "Ünïcödé Paris !"]
    for cfg in ({}, {"earlyexit_tagger": {"exit_mode": "token", "threshold": 0.5}}):
        for doc in nlp.pipe(texts, component_cfg=cfg):
            assert serve.response_record(doc, attrs) == doc_record(doc, attrs, {})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")
def test_workers_share_one_socket_and_answer_like_nlp_pipe(serve, load_test, nlp, tmp_path):
    """--workers 2: two forked server processes on one port, each with its
    own batcher; every response equals nlp.pipe's, and stopping the server
    stops its workers."""
    pipeline = tmp_path / "pipeline"
    nlp.to_disk(pipeline)
    texts = [text for text, _ in NER_DATA]
    requests = [{"texts": texts[i % len(texts):][:3] or ["hello"]} for i in range(24)]
    expected = [serve.annotate_texts(nlp, r["texts"], ()) for r in requests]
    server, port = load_test.start_server(str(pipeline), ["--workers", "2"])
    try:
        deadline = time.monotonic() + 60
        while len(load_test.process_tree(server.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        tree = load_test.process_tree(server.pid)
        assert len(tree) == 3, tree
        results = post_concurrently(port, requests)
        assert [status for status, _ in results] == [200] * len(requests)
        assert [body["docs"] for _, body in results] == expected
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/health")
        health = json.loads(connection.getresponse().read())
        connection.close()
        assert health["ok"] and health["pid"] in tree[1:], "a worker, not the parent, answers"
    finally:
        server.terminate()
        server.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in tree[1:]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(Path(f"/proc/{pid}").exists() for pid in tree[1:]), "the workers outlived the server"


@pytest.mark.parametrize("flags, message", [
    (["--workers", "0"], "--workers must be at least 1"),
    (["--workers", "2", "--threads", "2"], "--threads is for a single worker"),
])
def test_worker_options_are_checked_before_loading(serve, capsys, flags, message):
    with pytest.raises(SystemExit) as stopped:
        serve.main(["no-such-pipeline", *flags])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err
