"""Where the time of nlp.pipe goes, per word, for each precision (issue #35
point 3): word pieces, embeddings, linear products, int8 row quantization,
attention, norms/GELU/residuals, packing (gathers, scatters, grids), off-ramps,
the exit rule, state updates, mapping back to tokens, annotation, the rest.

    python benchmarks/tools/profile_per_word.py PIPELINE DEV.spacy [--int8 INT8_PIPELINE] \
        [--precisions float32,bfloat16,int8] [--setting JSON] [--repetitions 3] [--out FILE]

Each part is the *exclusive* wall time of the functions that do it (a
perf_counter around each call, minus the time of timed calls nested inside
it), summed while nlp.pipe runs over the dev docs (batches of 1,024, one
torch thread); "rest of nlp.pipe" is the total minus the parts. Off-ramps
include their own linear layers. The precisions take turns within each
repetition; medians over repetitions, in microseconds per word. Timing
every call adds a little to each part (a few hundred nanoseconds a call).
bfloat16 is PIPELINE loaded with model.precision "bfloat16"; int8 is
--int8 (a `spacy-earlyexit quantize` copy of PIPELINE).
"""
import argparse
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import torch
from spacy.tokens import DocBin
from torch import nn
from torch.nn import functional as F

import spacy_earlyexit
from spacy_earlyexit.layers import early_exit_transformer as layer_module
from spacy_earlyexit.model import batch_run, families, packed_layer, quantization
from spacy_earlyexit.model.encoder import EarlyExitEncoder
from spacy_earlyexit.pipeline.component import EarlyExitTagger
from spacy_earlyexit.tuning.timing import fresh_docs

PIPE = "earlyexit_tagger"
LINEAR = "linear products (Q/K/V, attention output, FFN)"
OFFRAMPS = "off-ramps (their linears included)"
#: (owner, attribute) -> part; the part of a call is its own, except inside
#: the off-ramps, which keep everything nested in them
PARTS: List[Tuple[Any, str, str]] = [
    (layer_module, "tokenize_docs", "word pieces (tokenize + align)"),
    (layer_module.DocPieces, "encoder_batch", "encoder batches (padding)"),
    (EarlyExitEncoder, "forward_batches", "encoder loop and outputs"),
    (EarlyExitEncoder, "embed_batch", "embeddings"),
    (batch_run._BatchRun, "__init__", "batch set-up and piece masks"),
    (batch_run._BatchRun, "piece_masks", "batch set-up and piece masks"),
    (packed_layer.PieceLayout, "build", "batch set-up and piece masks"),
    (packed_layer, "_packed_group", "packing (gathers, scatters, grids)"),
    (packed_layer, "same_input_products", LINEAR),
    (nn.Linear, "forward", LINEAR),
    (quantization.Int8Linear, "forward", LINEAR),
    (quantization.Int8Linear, "quantized_product", LINEAR),
    (quantization, "quantize_rows", "int8 row quantization"),
    (F, "scaled_dot_product_attention", "attention (scores, softmax, context)"),
    (families.BertLayerParts, "attention_output", "norms, GELU, residuals"),
    (families.BertLayerParts, "feed_forward", "norms, GELU, residuals"),
    (packed_layer, "feed_forward", "norms, GELU, residuals"),
    (batch_run._BatchRun, "after_layer", "state updates after a layer"),
    (batch_run._BatchRun, "_offramp_logits", OFFRAMPS),
    (batch_run._BatchRun, "_exits", "exit rule"),
    (layer_module, "to_tokens", "back to tokens + cost model"),
    (EarlyExitTagger, "set_annotations", "annotation (set_annotations)"),
]


class ExclusiveTimer:
    """Exclusive wall time per part over the wrapped calls."""

    def __init__(self) -> None:
        self.totals: Dict[str, float] = defaultdict(float)
        self.stack: List[List[Any]] = []  # [part, time of nested timed calls]

    def wrap(self, part: str, function: Callable) -> Callable:
        def timed(*args, **kwargs):
            owner = self.stack[-1][0] if self.stack else None
            own = OFFRAMPS if owner == OFFRAMPS else part
            self.stack.append([own, 0.0])
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                _, nested = self.stack.pop()
                self.totals[own] += elapsed - nested
                if self.stack:
                    self.stack[-1][1] += elapsed
        return timed


def measure(nlp, docs, setting: Dict[str, Any], batch_size: int) -> Dict[str, float]:
    """Seconds per part for one nlp.pipe pass over `docs`."""
    timer = ExclusiveTimer()
    originals = [(owner, name, owner.__dict__[name]) for owner, name, _ in PARTS]
    try:
        for (owner, name, part), (_, _, original) in zip(PARTS, originals):
            if isinstance(original, (classmethod, staticmethod)):
                setattr(owner, name, type(original)(timer.wrap(part, original.__func__)))
            else:
                setattr(owner, name, timer.wrap(part, original))
        fresh = fresh_docs(nlp, docs)
        start = time.perf_counter()
        for _ in nlp.pipe(fresh, batch_size=batch_size, component_cfg={PIPE: setting}):
            pass
        total = time.perf_counter() - start
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
    parts = dict(timer.totals)
    parts["rest of nlp.pipe"] = total - sum(parts.values())
    parts["total"] = total
    return parts


def load(path: str, precision: str):
    nlp = spacy_earlyexit.load(path, precision="bfloat16" if precision == "bfloat16" else None)
    nlp.get_pipe(PIPE).cfg["score_layers"] = False
    return nlp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", help="a float32 early-exit pipeline")
    parser.add_argument("dev", help="DocBin to run over")
    parser.add_argument("--int8", default=None, help="its int8 copy (spacy-earlyexit quantize)")
    parser.add_argument("--precisions", default="float32,bfloat16,int8")
    parser.add_argument("--setting", default='{"exit_mode": "token", "threshold": 0.05, "window": 0, '
                                             '"threshold_multipliers": [1, 4, 16, 16, 16, 16]}')
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    precisions = [p for p in args.precisions.split(",") if p and (p != "int8" or args.int8)]
    pipelines = {p: load(args.int8 if p == "int8" else args.pipeline, p) for p in precisions}
    for precision, nlp in pipelines.items():
        assert nlp.get_pipe(PIPE).precision == precision, (precision, nlp.get_pipe(PIPE).precision)
    docs = list(DocBin().from_disk(args.dev).get_docs(pipelines[precisions[0]].vocab))
    n_words = sum(len(doc) for doc in docs)
    setting = json.loads(args.setting)
    runs: Dict[str, List[Dict[str, float]]] = {p: [] for p in precisions}
    for nlp in pipelines.values():
        measure(nlp, docs[:64], setting, args.batch_size)  # warm-up
    for _ in range(args.repetitions):
        for precision, nlp in pipelines.items():
            runs[precision].append(measure(nlp, docs, setting, args.batch_size))
    names = [part for _, _, part in PARTS]
    names = list(dict.fromkeys(names)) + ["rest of nlp.pipe", "total"]
    table = {
        p: {name: statistics.median(run.get(name, 0.0) for run in runs[p]) / n_words * 1e6 for name in names}
        for p in precisions
    }
    print(f"{n_words} words, setting {json.dumps(setting)}, {args.repetitions} repetitions, us per word\n")
    print("| part | " + " | ".join(precisions) + " |")
    print("|---|" + "---|" * len(precisions))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{table[p][name]:.2f}" for p in precisions) + " |")
    print("| words/s | " + " | ".join(f"{1e6 / table[p]['total']:,.0f}" for p in precisions) + " |")
    if args.out:
        result = {"pipeline": args.pipeline, "int8": args.int8, "setting": setting, "n_words": n_words,
                  "repetitions": args.repetitions, "us_per_word": table, "runs": runs}
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
