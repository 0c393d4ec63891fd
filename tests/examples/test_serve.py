"""examples/serve.py: concurrent requests with different exit settings, batched
by the micro-batcher, each answered as if it had been annotated alone."""
import http.client
import importlib.util
import json
import shutil
import sys
import threading
from pathlib import Path

import pytest

from helpers.tiny_bert import NER_DATA, train_tiny_pipeline

SERVE = Path(__file__).resolve().parents[2] / "examples" / "serve.py"


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
        results = [None] * len(requests)

        def client(index: int) -> None:
            results[index] = post(port, requests[index])

        clients = [threading.Thread(target=client, args=(i,)) for i in range(len(requests))]
        for client_thread in clients:
            client_thread.start()
        for client_thread in clients:
            client_thread.join(timeout=120)
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
