"""Where the time of nlp.pipe goes, per word: word-piece tokenization and
alignment, the encoder (layers and off-ramps), mapping back to tokens,
annotation, and the rest of nlp.pipe (batching, doc copies, Python steps).

    python benchmarks/tools/outside_encoder.py PIPELINE DEV.spacy [--int8] [--setting JSON] \
        [--repetitions 3] [--out FILE.json]

Each part is timed by wrapping the function that does it (time.perf_counter
around the call) while nlp.pipe runs over the dev docs with batches of
1,024; "rest of nlp.pipe" is the total minus the parts. One torch thread.
Reported in microseconds per word (median over repetitions).
"""
import argparse
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

import spacy
import torch
from spacy.tokens import DocBin

from spacy_earlyexit.layers import early_exit_transformer as layer
from spacy_earlyexit.model import encoder as encoder_module
from spacy_earlyexit.pipeline import component as component_module
from spacy_earlyexit.pipeline.quantize import quantize_pipeline
from spacy_earlyexit.tuning.timing import fresh_docs

PARTS = {
    "word pieces (tokenize + align)": (layer, "tokenize_docs"),
    "encoder batches (padding)": (layer.DocPieces, "encoder_batch"),
    "encoder (layers + off-ramps)": (encoder_module.EarlyExitEncoder, "forward_batches"),
    "map back to tokens + cost model": (layer, "to_tokens"),
    "annotation (set_annotations)": (component_module.EarlyExitTagger, "set_annotations"),
}


def timed(totals: Dict[str, float], name: str, function):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - start
    return wrapper


def measure(nlp, docs, setting, batch_size: int) -> Dict[str, float]:
    totals: Dict[str, float] = defaultdict(float)
    originals = {name: getattr(owner, attr) for name, (owner, attr) in PARTS.items()}
    try:
        for name, (owner, attr) in PARTS.items():
            setattr(owner, attr, timed(totals, name, originals[name]))
        fresh = fresh_docs(nlp, docs)
        start = time.perf_counter()
        for _ in nlp.pipe(fresh, batch_size=batch_size, component_cfg={"earlyexit_tagger": setting}):
            pass
        total = time.perf_counter() - start
    finally:
        for name, (owner, attr) in PARTS.items():
            setattr(owner, attr, originals[name])
    totals["rest of nlp.pipe"] = total - sum(totals.values())
    totals["total"] = total
    return dict(totals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline")
    parser.add_argument("dev")
    parser.add_argument("--int8", action="store_true", help="quantize the pipeline in memory first")
    parser.add_argument("--setting", default='{"exit_mode": "token", "threshold": 0.05, "window": 0, '
                                             '"threshold_multipliers": [1, 4, 16, 16, 16, 16]}')
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    nlp = spacy.load(args.pipeline)
    if args.int8:
        quantize_pipeline(nlp)
    nlp.get_pipe("earlyexit_tagger").cfg["score_layers"] = False
    docs = list(DocBin().from_disk(args.dev).get_docs(nlp.vocab))
    n_words = sum(len(doc) for doc in docs)
    setting = json.loads(args.setting)
    measure(nlp, docs[:64], setting, args.batch_size)  # warm-up
    runs: List[Dict[str, float]] = [measure(nlp, docs, setting, args.batch_size) for _ in range(args.repetitions)]
    per_word = {name: statistics.median(run[name] for run in runs) / n_words * 1e6 for name in runs[0]}
    result = {"pipeline": args.pipeline, "int8": args.int8, "setting": setting, "n_words": n_words,
              "repetitions": args.repetitions, "us_per_word": per_word,
              "words_per_second": n_words / statistics.median(run["total"] for run in runs)}
    for name, value in per_word.items():
        print(f"{name:36s} {value:7.2f} us/word")
    print(f"words/s: {result['words_per_second']:.0f}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
