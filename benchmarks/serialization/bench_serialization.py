"""Doc.to_bytes / Doc.from_bytes per doc with exit layers stored per token
(the old storage: one user_data key per token) and per doc (one bytes entry,
pipeline/extensions.py), and optionally nlp.pipe(n_process=2) against one
process with a tiny random BERT pipeline.

    python benchmarks/serialization/bench_serialization.py --docs 2000 --repeats 7
    python benchmarks/serialization/bench_serialization.py --pipe --pipe-docs 2000

Variants alternate within each repetition (order reversed every other one),
in one process; the table gives the median over repetitions.
"""
import argparse
from contextlib import contextmanager, nullcontext
import json
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, ContextManager, Dict, Iterator, List, Sequence

import spacy
import srsly
import torch
from spacy.attrs import IDX
from spacy.tokens import Doc, DocBin

from spacy_earlyexit.pipeline import component as component_module
from spacy_earlyexit.pipeline.extensions import register_extensions, set_exit_layers

WORDS = "Alice Bob Carol lives visited met in Paris London Berlin the a is nice city weather yesterday and .".split()
SUMMARY = {"exit_layer_mean": 2.1, "flops": 1.0e6, "flops_full": 3.0e6, "flops_speedup": 3.0}


def set_exit_layers_per_token(doc: Doc, exit_layers: Sequence[int]) -> None:
    """The old storage: one user_data key per token, as spaCy's token
    extension with a default value writes it."""
    for char_offset, layer in zip(doc.to_array(IDX).tolist(), exit_layers):
        doc.user_data[("._.", "exit_layer", char_offset, None)] = layer


def make_docs(n_docs: int, n_tokens: int, seed: int = 0) -> List[Doc]:
    rng = random.Random(seed)
    vocab = spacy.blank("en").vocab
    return [Doc(vocab, words=[rng.choice(WORDS) for _ in range(n_tokens)]) for _ in range(n_docs)]


def annotated(docs: List[Doc], storage: str, seed: int = 0) -> List[Doc]:
    rng = random.Random(seed)
    out = []
    for doc in docs:
        doc = doc.copy()
        layers = [rng.randint(1, 12) for _ in doc]
        if storage == "per_token":
            set_exit_layers_per_token(doc, layers)
        elif storage == "per_doc":
            set_exit_layers(doc, layers)
        if storage != "none":  # "summary_only": early_exit, no exit layers
            doc.user_data[("._.", "early_exit", None, None)] = dict(SUMMARY)
        out.append(doc)
    return out


@contextmanager
def package_registries() -> Iterator[None]:
    """The package's default (pipeline/msgpack_speed.py): srsly's msgpack
    encoder and decoder registries read no entry points and answer get_all()
    from a table. The other rows run with srsly's own behaviour (main turns
    the per-call scans back on, which the package's table defers to)."""
    registries = (srsly.msgpack_encoders, srsly.msgpack_decoders)
    for registry in registries:
        registry.entry_points = False
    try:
        yield
    finally:
        for registry in registries:
            registry.entry_points = True


def time_per_doc_ms(function: Callable[[], object], n_docs: int) -> float:
    start = time.perf_counter()
    function()
    return (time.perf_counter() - start) * 1000 / n_docs


def bench_serialization(n_docs: int, n_tokens: int, repeats: int) -> Dict[str, Dict[str, float]]:
    base = make_docs(n_docs, n_tokens)
    vocab = base[0].vocab
    variants = {name: annotated(base, name) for name in ("none", "summary_only", "per_token", "per_doc")}
    blobs = {name: [doc.to_bytes() for doc in docs] for name, docs in variants.items()}
    runs = [(name, False) for name in variants] + [("per_token", True), ("per_doc", True)]
    label = {run: run[0] + (" +package registries" if run[1] else "") for run in runs}
    times: Dict[str, Dict[str, List[float]]] = {label[run]: {"to_bytes": [], "from_bytes": []} for run in runs}
    for repeat in range(repeats):
        for name, cached in (runs if repeat % 2 == 0 else list(reversed(runs))):
            docs, data = variants[name], blobs[name]
            context: ContextManager[None] = package_registries() if cached else nullcontext()
            with context:
                times[label[name, cached]]["to_bytes"].append(
                    time_per_doc_ms(lambda: [d.to_bytes() for d in docs], n_docs))
                times[label[name, cached]]["from_bytes"].append(
                    time_per_doc_ms(lambda: [Doc(vocab).from_bytes(b) for b in data], n_docs))
    return {
        label[name, cached]: {
            "to_bytes_ms": statistics.median(times[label[name, cached]]["to_bytes"]),
            "from_bytes_ms": statistics.median(times[label[name, cached]]["from_bytes"]),
            "bytes_per_doc": statistics.mean(len(b) for b in blobs[name]),
            "user_data_entries": statistics.mean(len(d.user_data) for d in variants[name]),
        }
        for name, cached in runs
    }


def bench_msgpack_call(repeats: int, calls: int = 2000) -> Dict[str, float]:
    """ms per srsly.msgpack_dumps({}) call with srsly's own per-call scans
    and with the package's registries (restored afterwards): the fixed cost
    Doc.to_bytes pays per serialized field."""
    registries = (srsly.msgpack_encoders, srsly.msgpack_decoders)
    saved = [registry.entry_points for registry in registries]
    times: Dict[str, List[float]] = {"srsly_own": [], "package_default": []}
    try:
        for _ in range(repeats):
            for name, scan in (("srsly_own", [True, True]), ("package_default", [False, False])):
                for registry, value in zip(registries, scan):
                    registry.entry_points = value
                times[name].append(time_per_doc_ms(lambda: [srsly.msgpack_dumps({}) for _ in range(calls)], calls))
    finally:
        for registry, value in zip(registries, saved):
            registry.entry_points = value
    return {name: statistics.median(t) for name, t in times.items()}


def bench_docbin(n_docs: int, n_tokens: int, repeats: int) -> Dict[str, float]:
    """ms per doc of DocBin(store_user_data=True): add every doc (one msgpack
    call each for its user_data) and to_bytes, with srsly's own lookups and
    with the package's (what `annotate` to .spacy and the Ray engine do)."""
    docs = annotated(make_docs(n_docs, n_tokens), "per_doc")
    times: Dict[str, List[float]] = {"srsly_own": [], "package_default": []}
    for repeat in range(repeats):
        order = [("srsly_own", True), ("package_default", False)]
        for name, scan in (order if repeat % 2 == 0 else order[::-1]):
            with package_registries() if not scan else nullcontext():
                def build() -> None:
                    docbin = DocBin(store_user_data=True)
                    for doc in docs:
                        docbin.add(doc)
                    docbin.to_bytes()
                times[name].append(time_per_doc_ms(build, n_docs))
    return {name: statistics.median(values) for name, values in times.items()}


def tiny_pipeline(folder: Path) -> spacy.language.Language:
    """A POS earlyexit_tagger on a random 3-layer BERT (hidden 32), initialized, not trained."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
    from helpers.tiny_bert import POS_DATA, corpus_words, write_tiny_bert
    from spacy.training import Example

    bert = write_tiny_bert(folder / "bert", corpus_words() + WORDS)
    nlp = spacy.blank("en")
    nlp.add_pipe("earlyexit_tagger", config={
        "task": "pos", "model": {"name": str(bert), "case_features": False, "offramp_context_layers": 0,
                                 "offramp_hidden": 0}})
    examples = [Example.from_dict(nlp.make_doc(text), {"pos": pos}) for text, pos in POS_DATA]
    nlp.initialize(lambda: examples)
    return nlp


def bench_pipe(n_docs: int, n_tokens: int, repeats: int, batch_size: int) -> Dict[str, Dict[str, float]]:
    """words/s of nlp.pipe with 1 and 2 processes, with the old and the new
    storage (the old one patched into the component's set_annotations)."""
    texts = [d.text for d in make_docs(n_docs, n_tokens, seed=1)]
    with tempfile.TemporaryDirectory() as tmp:
        nlp = tiny_pipeline(Path(tmp))
        nlp.get_pipe("earlyexit_tagger").configure_exit(exit_mode="token", threshold=0.5, window=1)
        list(nlp.pipe(texts[:64]))  # warm-up
        storages = {"per_token": set_exit_layers_per_token, "per_doc": set_exit_layers}
        runs = [(storage, n_process, False) for storage in storages for n_process in (1, 2)]
        runs += [("per_doc", 2, True)]
        name = {run: f"{run[0]} n_process={run[1]}" + (" +package registries" if run[2] else "") for run in runs}
        seconds: Dict[str, List[float]] = {name[run]: [] for run in runs}
        for repeat in range(repeats):
            for run in (runs if repeat % 2 == 0 else list(reversed(runs))):
                storage, n_process, cached = run
                component_module.set_exit_layers = storages[storage]
                start = time.perf_counter()
                with package_registries() if cached else nullcontext():
                    docs = list(nlp.pipe(texts, batch_size=batch_size, n_process=n_process))
                seconds[name[run]].append(time.perf_counter() - start)
                assert all(len(d._.exit_layers) == len(d) and None not in d._.exit_layers for d in docs)
        component_module.set_exit_layers = set_exit_layers
    words = n_docs * n_tokens
    return {name: {"seconds": statistics.median(s), "wps": words / statistics.median(s)}
            for name, s in seconds.items()}


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--pipe", action="store_true", help="also time nlp.pipe n_process=1 and 2")
    parser.add_argument("--docbin-only", action="store_true", help="time only DocBin(store_user_data=True)")
    parser.add_argument("--pipe-docs", type=int, default=2000)
    parser.add_argument("--pipe-repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    register_extensions()
    # srsly's own behaviour for the other rows: importing spacy_earlyexit
    # turns the per-call scans off (pipeline/msgpack_speed.py), which the
    # "+package registries" rows keep
    for registry in (srsly.msgpack_encoders, srsly.msgpack_decoders):
        registry.entry_points = True
    torch.set_num_threads(1)
    result = {
        "cpu": cpu_name(), "cores": __import__("os").cpu_count(), "torch": torch.__version__,
        "spacy": spacy.__version__, "python": platform.python_version(),
        "docs": args.docs, "tokens_per_doc": args.tokens, "repeats": args.repeats,
        "docbin_ms_per_doc": bench_docbin(args.docs, args.tokens, args.repeats),
    }
    if not args.docbin_only:
        result["serialization"] = bench_serialization(args.docs, args.tokens, args.repeats)
        result["msgpack_dumps_call_ms"] = bench_msgpack_call(args.repeats)
    if args.pipe:
        result["pipe"] = bench_pipe(args.pipe_docs, args.tokens, args.pipe_repeats, args.batch_size)
    print(json.dumps(result, indent=2))
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf8")


if __name__ == "__main__":
    main()
