"""Corpus annotation (spacy_earlyexit.corpus.annotate, `python -m spacy_earlyexit
annotate`): JSONL and .spacy in and out, exit-setting overrides, bad input,
and the Ray engine against nlp.pipe in one process."""
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy
import pytest
import spacy
from spacy.language import Language
from spacy.tokens import Doc, DocBin

from helpers.requirements import require
from helpers.tiny_bert import NER_DATA, corpus_words, train_tiny_pipeline
from spacy_earlyexit.corpus import memory
from spacy_earlyexit.cli import main
from spacy_earlyexit.corpus import AnnotateInputError, annotate

TAGGER = "earlyexit_tagger"
N_LAYERS = 3  # the tiny BERT's
# after 100 steps these give a mix of exit layers (checked in the fixture)
TOKEN_EXIT = {"exit_mode": "token", "threshold": 0.5, "window": 1}
TEXTS = [text for text, _ in NER_DATA] + ["hello world", "", "Alice  met \n Bob .", "Ünïcödé Paris !"]


def expected(nlp, texts: List[Any], overrides: Optional[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
    """The reference: what nlp.pipe in this process writes on each doc."""
    cfg = {TAGGER: overrides} if overrides else None
    return [
        {
            "text": doc.text,
            "tokens": [(t.text, t.idx, t.ent_iob_, t.ent_type_, t._.exit_layer) for t in doc],
            "ents": [(e.start_char, e.end_char, e.label_) for e in doc.ents],
            "early_exit": doc._.early_exit,
        }
        for doc in nlp.pipe(texts, component_cfg=cfg)
    ]


def from_jsonl(path: Path) -> List[Dict[str, Any]]:
    """The annotate output, in the reference's shape (plus meta)."""
    rows = []
    for line in path.read_text(encoding="utf8").splitlines():
        record = json.loads(line)
        for token in record["tokens"]:
            assert set(token) == {"text", "start", "end", "ent_iob", "ent_type", "exit_layer"}, token
            assert record["text"][token["start"]:token["end"]] == token["text"]
        rows.append({
            "text": record["text"],
            "tokens": [(t["text"], t["start"], t["ent_iob"], t["ent_type"], t["exit_layer"]) for t in record["tokens"]],
            "ents": [tuple(ent) for ent in record["ents"]],
            "early_exit": record["early_exit"],
            "meta": record["meta"],
        })
    return rows


def from_docbin(path: Path) -> List[Doc]:
    return list(DocBin().from_disk(path).get_docs(spacy.blank("en").vocab))


def doc_results(docs: List[Doc]) -> List[Dict[str, Any]]:
    return [
        {
            "text": doc.text,
            "tokens": [(t.text, t.idx, t.ent_iob_, t.ent_type_, t._.exit_layer) for t in doc],
            "ents": [(e.start_char, e.end_char, e.label_) for e in doc.ents],
            "early_exit": doc._.early_exit,
        }
        for doc in docs
    ]


def without_meta(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [{key: value for key, value in row.items() if key != "meta"} for row in rows]


def write_jsonl(path: Path, texts: List[str]) -> Path:
    lines = [json.dumps({"id": i, "text": text, "source": "test"}, ensure_ascii=False) for i, text in enumerate(texts)]
    lines.insert(2, "   ")  # a blank line is skipped
    path.write_text("\n".join(lines) + "\n", encoding="utf8")
    return path


def exit_layers(rows: List[Dict[str, Any]]) -> set:
    return {token[-1] for row in rows for token in row["tokens"]}


def train_ner(bert: Path, steps: int) -> Language:
    return train_tiny_pipeline(bert, "ner", steps)


@pytest.fixture(scope="module")
def pipeline(tiny_bert, tmp_path_factory):
    """A NER pipeline trained briefly from a copy of the tiny BERT, token exit
    saved (threshold 0.5, window 1), written to disk; the copy is then deleted.
    Returns (the pipeline loaded from disk, its folder)."""
    root = tmp_path_factory.mktemp("annotate")
    bert_copy = root / "bert_copy"
    shutil.copytree(tiny_bert, bert_copy)
    nlp = train_ner(bert_copy, 100)
    nlp.get_pipe(TAGGER).configure_exit(**TOKEN_EXIT)
    folder = root / "pipeline"
    nlp.to_disk(folder)
    shutil.rmtree(bert_copy)
    loaded = spacy.load(folder)
    reference = expected(loaded, TEXTS)
    assert any(row["ents"] for row in reference), "precondition: entities are predicted"
    assert len(exit_layers(reference)) > 1, "precondition: a mix of exit layers"
    return loaded, folder


# --- local engine ------------------------------------------------------------------------


def test_local_jsonl_equals_nlp_pipe(pipeline, tmp_path):
    nlp, folder = pipeline
    source = write_jsonl(tmp_path / "in.jsonl", TEXTS)
    result = annotate(folder, source, tmp_path / "out" / "annotated.jsonl", batch_size=3, progress=False)
    rows = from_jsonl(tmp_path / "out" / "annotated.jsonl")
    assert without_meta(rows) == expected(nlp, TEXTS)
    assert [row["meta"] for row in rows] == [{"id": i, "source": "test"} for i in range(len(TEXTS))]
    assert (result.n_docs, result.n_tokens) == (len(TEXTS), sum(len(nlp.make_doc(t)) for t in TEXTS))
    assert not list((tmp_path / "out").glob(".*partial")), "temporary file left behind"


def test_precision_loads_the_folder_in_it(pipeline, tmp_path, monkeypatch):
    from spacy_earlyexit.model import precision as precision_module
    from spacy_earlyexit.model.precision import CpuFeatures

    monkeypatch.setattr(precision_module, "cpu_features", lambda: CpuFeatures(amx=True, avx512_bf16=True, vnni=True))
    nlp, folder = pipeline
    source = write_jsonl(tmp_path / "in.jsonl", TEXTS)
    saved = annotate(folder, source, tmp_path / "saved.jsonl", progress=False)
    assert saved.precision == "float32"
    fast = annotate(folder, source, tmp_path / "fast.jsonl", precision="auto", progress=False)
    assert fast.precision == "bfloat16"  # auto on a CPU with AMX
    reference = spacy.load(folder, config={"components": {TAGGER: {"model": {"precision": "bfloat16"}}}})
    assert without_meta(from_jsonl(tmp_path / "fast.jsonl")) == expected(reference, TEXTS)
    with pytest.raises(ValueError, match="precision must be one of"):
        annotate(folder, source, tmp_path / "bad.jsonl", precision="float16", progress=False)
    with pytest.raises(ValueError, match="precision applies when the pipeline is loaded"):
        annotate(nlp, source, tmp_path / "bad.jsonl", precision="auto", progress=False)
    assert not (tmp_path / "bad.jsonl").exists()


def test_cli_precision_is_checked_and_reported(pipeline, tmp_path, capsys):
    _, folder = pipeline
    source = write_jsonl(tmp_path / "in.jsonl", TEXTS[:2])
    with pytest.raises(SystemExit, match="error: --precision must be one of float32, bfloat16, int8, auto; "
                                         "got 'float16'"):
        main(["annotate", str(folder), str(source), str(tmp_path / "out.jsonl"), "--precision", "float16"])
    assert not (tmp_path / "out.jsonl").exists()
    main(["annotate", str(folder), str(source), str(tmp_path / "out.jsonl"), "--precision", "float32",
          "--no-progress"])
    assert "precision: float32" in capsys.readouterr().out


def test_saved_settings_are_kept_without_overrides(pipeline, tmp_path):
    nlp, folder = pipeline
    assert nlp.get_pipe(TAGGER).exit_settings.exit_mode == "token"
    source = write_jsonl(tmp_path / "in.jsonl", TEXTS)
    annotate(nlp, source, tmp_path / "out.jsonl", progress=False)  # a loaded Language works too
    rows = without_meta(from_jsonl(tmp_path / "out.jsonl"))
    assert rows == expected(nlp, TEXTS)
    assert rows != expected(nlp, TEXTS, {"exit_mode": "off"})
    assert exit_layers(rows) != {N_LAYERS}


@pytest.mark.parametrize("overrides,layers", [({"threshold": 1.0}, {1}), ({"exit_mode": "off"}, {N_LAYERS})])
def test_overrides_apply_for_the_run_only(pipeline, tmp_path, overrides, layers):
    nlp, folder = pipeline
    source = write_jsonl(tmp_path / "in.jsonl", TEXTS)
    annotate(folder, source, tmp_path / "out.jsonl", exit_overrides=overrides, progress=False)
    rows = without_meta(from_jsonl(tmp_path / "out.jsonl"))
    assert exit_layers(rows) == layers
    assert rows == expected(nlp, TEXTS, overrides)
    assert nlp.get_pipe(TAGGER).exit_settings.exit_mode == "token"


def test_cli_local(pipeline, tmp_path, capsys):
    nlp, folder = pipeline
    source = write_jsonl(tmp_path / "in.jsonl", TEXTS)
    main(["annotate", str(folder), str(source), str(tmp_path / "out.jsonl"), "--exit-mode", "token",
          "--threshold", "1.0", "--window", "0", "--batch-size", "4", "--no-progress"])
    assert f"{len(TEXTS)} docs" in capsys.readouterr().out
    rows = without_meta(from_jsonl(tmp_path / "out.jsonl"))
    assert exit_layers(rows) == {1}
    assert rows == expected(nlp, TEXTS, {"threshold": 1.0, "window": 0})


def test_cli_max_layer(pipeline, tmp_path):
    """--max-layer caps the depth for the run; 'all' lifts a cap."""
    from spacy_earlyexit.cli.annotate import exit_overrides

    nlp, folder = pipeline
    source = write_jsonl(tmp_path / "in.jsonl", TEXTS)
    main(["annotate", str(folder), str(source), str(tmp_path / "out.jsonl"), "--exit-mode", "off",
          "--max-layer", "2", "--no-progress"])
    rows = without_meta(from_jsonl(tmp_path / "out.jsonl"))
    assert exit_layers(rows) == {2}
    assert rows == expected(nlp, TEXTS, {"exit_mode": "off", "max_layer": 2})
    assert exit_overrides(None, None, None, "all") == {"max_layer": None}
    with pytest.raises(SystemExit, match="error: --max-layer must be an integer >= 1 or 'all'; got '0'"):
        main(["annotate", str(folder), str(source), str(tmp_path / "out0.jsonl"), "--max-layer", "0"])


def test_docbin_in_and_out_keeps_exit_layers(pipeline, tmp_path):
    nlp, folder = pipeline
    # pre-tokenized input docs: the tokens are kept, user data carried through
    docs = [Doc(nlp.vocab, words=text.split()) for text in TEXTS if text.strip()]
    for i, doc in enumerate(docs):
        doc.user_data["meta"] = {"id": i}
    DocBin(store_user_data=True, docs=docs).to_disk(tmp_path / "in.spacy")
    annotate(folder, tmp_path / "in.spacy", tmp_path / "out.spacy", progress=False)
    restored = from_docbin(tmp_path / "out.spacy")
    inputs = [Doc(nlp.vocab, words=text.split()) for text in TEXTS if text.strip()]
    assert doc_results(restored) == expected(nlp, inputs)
    assert len(exit_layers(doc_results(restored))) > 1
    assert [doc.user_data["meta"] for doc in restored] == [{"id": i} for i in range(len(docs))]
    # .spacy in, JSONL out: the same annotation, meta from user_data
    annotate(folder, tmp_path / "in.spacy", tmp_path / "out.jsonl", progress=False)
    rows = from_jsonl(tmp_path / "out.jsonl")
    assert without_meta(rows) == expected(nlp, inputs)
    assert [row["meta"] for row in rows] == [{"id": i} for i in range(len(docs))]


def test_jsonl_in_docbin_out_keeps_meta(pipeline, tmp_path):
    nlp, folder = pipeline
    source = write_jsonl(tmp_path / "in.jsonl", TEXTS)
    annotate(folder, source, tmp_path / "out.spacy", progress=False)
    restored = from_docbin(tmp_path / "out.spacy")
    assert doc_results(restored) == expected(nlp, TEXTS)
    assert [doc.user_data["meta"] for doc in restored] == [{"id": i, "source": "test"} for i in range(len(TEXTS))]


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("content,message", [
    ('{"text": "Alice"}\n{"id": 3}\n', 'line 2: no "text" field'),
    ('{"text": "Alice"}\n\n{"text": "Bob"\n', "line 3: invalid JSON"),
    ('{"text": "Alice"}\n["Bob"]\n', "line 2: expected a JSON object"),
    ('{"text": 12}\n', 'line 1: "text" must be a string'),
])
def test_bad_jsonl_names_file_and_line(pipeline, tmp_path, content, message):
    _, folder = pipeline
    source = tmp_path / "bad.jsonl"
    source.write_text(content, encoding="utf8")
    output = tmp_path / "out.jsonl"
    with pytest.raises(AnnotateInputError, match=f"bad.jsonl, {message}"):
        annotate(folder, source, output, progress=False)
    assert not output.exists() and not list(tmp_path.glob(".*partial")), "no partial output"
    with pytest.raises(SystemExit, match=f"error: .*bad.jsonl, {message}"):
        main(["annotate", str(folder), str(source), str(output), "--no-progress"])


def test_bad_paths_and_settings(pipeline, tmp_path):
    _, folder = pipeline
    source = write_jsonl(tmp_path / "in.jsonl", TEXTS)
    with pytest.raises(AnnotateInputError, match="missing.jsonl: no such file"):
        annotate(folder, tmp_path / "missing.jsonl", tmp_path / "out.jsonl")
    with pytest.raises(AnnotateInputError, match=r"in.txt: unknown format '.txt'"):
        annotate(folder, tmp_path / "in.txt", tmp_path / "out.jsonl")
    with pytest.raises(AnnotateInputError, match=r"out.csv: unknown format"):
        annotate(folder, source, tmp_path / "out.csv")
    with pytest.raises(AnnotateInputError, match="would overwrite the input"):
        annotate(folder, source, source)
    with pytest.raises(AnnotateInputError, match="not a saved spaCy pipeline"):
        annotate(tmp_path, source, tmp_path / "out.jsonl")
    with pytest.raises(ValueError, match="threshold must be in"):
        annotate(folder, source, tmp_path / "out.jsonl", exit_overrides={"threshold": 2.0})
    with pytest.raises(ValueError, match="unknown exit setting"):
        annotate(folder, source, tmp_path / "out.jsonl", exit_overrides={"treshold": 0.2})
    with pytest.raises(ValueError, match="engine must be one of"):
        annotate(folder, source, tmp_path / "out.jsonl", engine="spark")
    with pytest.raises(SystemExit, match="error: .*missing.jsonl: no such file"):
        main(["annotate", str(folder), str(tmp_path / "missing.jsonl"), str(tmp_path / "out.jsonl")])
    (tmp_path / "broken.spacy").write_bytes(b"not a docbin")
    with pytest.raises(AnnotateInputError, match="broken.spacy: not a readable .spacy"):
        annotate(folder, tmp_path / "broken.spacy", tmp_path / "out.jsonl", progress=False)


def test_ray_engine_without_ray_says_how_to_install(pipeline, tmp_path, monkeypatch):
    _, folder = pipeline
    source = write_jsonl(tmp_path / "in.jsonl", TEXTS)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ImportError, match=r"pip install spacy-earlyexit\[ray\]"):
        annotate(folder, source, tmp_path / "out.jsonl", engine="ray")
    with pytest.raises(SystemExit, match=r"pip install spacy-earlyexit\[ray\]"):
        main(["annotate", str(folder), str(source), str(tmp_path / "out.jsonl"), "--engine", "ray"])


# --- Ray engine --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray with 2 CPUs for this module, shut down at the end."""
    require(importlib.util.find_spec("ray") is not None, "Ray (pip install 'spacy-earlyexit[ray]')")
    import ray
    import ray.data  # noqa: F401
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


def test_ray_annotator_in_process(pipeline, ray_cluster):
    """The actor's class without an actor: the pipeline's files through the
    object store, .spacy rows in, DocBin bytes out, an override applied."""
    from spacy_earlyexit.corpus.ray_engine import RayAnnotator, _pipeline_files

    nlp, folder = pipeline
    annotator = RayAnnotator(ray_cluster.put(_pipeline_files(folder)), {"threshold": 1.0}, "spacy", 1)
    docs = [nlp.make_doc(text) for text in TEXTS]
    docs[1].user_data["meta"] = {"id": 1}
    rows = {"index": numpy.arange(5, 5 + len(docs)), "doc": numpy.array([d.to_bytes() for d in docs], dtype=object)}
    output = annotator(rows)
    assert (int(output["index"][0]), int(output["n_docs"][0])) == (5, len(docs))
    restored = list(DocBin().from_bytes(output["payload"][0]).get_docs(spacy.blank("en").vocab))
    assert doc_results(restored) == expected(nlp, TEXTS, {"threshold": 1.0})
    assert restored[1].user_data["meta"] == {"id": 1}
    with pytest.raises(RuntimeError, match="not contiguous"):
        annotator({"index": numpy.array([0, 2]), "doc": rows["doc"][:2]})


def test_ray_annotator_loads_in_the_precision_asked_for(pipeline, ray_cluster, monkeypatch):
    from spacy_earlyexit.corpus.ray_engine import RayAnnotator, _pipeline_files
    from spacy_earlyexit.model import precision as precision_module
    from spacy_earlyexit.model.precision import CpuFeatures

    monkeypatch.setattr(precision_module, "cpu_features", lambda: CpuFeatures(amx=True, avx512_bf16=True, vnni=True))
    _, folder = pipeline
    for source in (str(folder), ray_cluster.put(_pipeline_files(folder))):
        annotator = RayAnnotator(source, {}, "spacy", 1, precision="auto")
        assert annotator.nlp.get_pipe(TAGGER).precision == "bfloat16"
    assert RayAnnotator(str(folder), {}, "spacy", 1).nlp.get_pipe(TAGGER).precision == "float32"


def test_ray_engine_equals_nlp_pipe_in_order(pipeline, ray_cluster, tmp_path):
    nlp, folder = pipeline
    rng = random.Random(0)
    words = corpus_words()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) for _ in range(300)]
    texts[::50] = [text for text, _ in NER_DATA]
    source = write_jsonl(tmp_path / "in.jsonl", texts)
    # batches of 8: many batches over both actors
    result = annotate(folder, source, tmp_path / "out.jsonl", engine="ray", workers=2, batch_size=8,
                      progress=False)
    rows = from_jsonl(tmp_path / "out.jsonl")
    assert [row["meta"]["id"] for row in rows] == list(range(len(texts)))
    assert without_meta(rows) == expected(nlp, texts)
    assert len(exit_layers(rows)) > 1 and any(row["ents"] for row in rows)
    assert (result.engine, result.n_docs, result.n_tokens) == ("ray", len(texts), sum(len(r["tokens"]) for r in rows))
    assert ray_cluster.is_initialized(), "a Ray started by the caller is left running"


JEMALLOC = memory.find_jemalloc()


def run_cli(args: List[str], env_extra: Optional[Dict[str, str]] = None) -> "subprocess.CompletedProcess":
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", memory.REEXEC_MARKER)}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "spacy_earlyexit", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_runs_on_jemalloc_when_asked_and_installed(pipeline, tmp_path):
    require(JEMALLOC is not None, "jemalloc (apt-get install libjemalloc2)")
    nlp, folder = pipeline
    source = write_jsonl(tmp_path / "in.jsonl", TEXTS)
    auto = run_cli(["annotate", str(folder), str(source), str(tmp_path / "auto.jsonl"), "--no-progress",
                    "--allocator", "auto"])
    assert auto.returncode == 0, auto.stderr
    assert "malloc: jemalloc" in auto.stdout
    system = run_cli(["annotate", str(folder), str(source), str(tmp_path / "system.jsonl"), "--no-progress"])
    assert system.returncode == 0, system.stderr
    assert "malloc: glibc" in system.stdout
    # the allocator changes nothing in the annotation
    assert from_jsonl(tmp_path / "auto.jsonl") == from_jsonl(tmp_path / "system.jsonl")
    assert without_meta(from_jsonl(tmp_path / "auto.jsonl")) == expected(nlp, TEXTS)


def test_cli_jemalloc_required_but_missing(pipeline, tmp_path, monkeypatch):
    _, folder = pipeline
    source = write_jsonl(tmp_path / "in.jsonl", TEXTS)
    monkeypatch.setattr(memory, "JEMALLOC_PATHS", (str(tmp_path / "no" / "libjemalloc.so.2"),))
    monkeypatch.setattr(memory, "allocator", lambda: "glibc")
    with pytest.raises(SystemExit, match="no jemalloc library was found.*apt-get install libjemalloc2"):
        main(["annotate", str(folder), str(source), str(tmp_path / "out.jsonl"), "--allocator", "jemalloc",
              "--no-progress"])
    assert not (tmp_path / "out.jsonl").exists()


def test_find_jemalloc_and_allocator(tmp_path):
    library = tmp_path / "libjemalloc.so.2"
    assert memory.find_jemalloc([str(library)]) is None
    library.write_bytes(b"")
    assert memory.find_jemalloc([str(tmp_path / "missing.so"), str(library)]) == str(library)
    assert memory.allocator() in ("glibc", "jemalloc", "other")


def test_preload_jemalloc_starts_again_once(tmp_path):
    require(JEMALLOC is not None, "jemalloc (apt-get install libjemalloc2)")
    script = tmp_path / "probe.py"
    script.write_text(
        "import os, sys\n"
        "from spacy_earlyexit.corpus import memory\n"
        "print('start', memory.allocator(), flush=True)\n"
        "memory.preload_jemalloc([sys.argv[0]])\n"
        "print('after', memory.allocator(), os.environ.get(memory.REEXEC_MARKER))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", memory.REEXEC_MARKER)}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    # the first process prints 'start glibc' and is replaced; the second starts on jemalloc and stays
    assert out.stdout.split("\n")[:3] == ["start glibc", "start jemalloc", "after jemalloc 1"]
