"""What the memory measures cost in words/s: the state arena, rounded row
counts and the growth guard.

One process, one pipeline, the same docs (mixed lengths, as in soak.py)
through nlp.pipe under four variants, interleaved for --repeats rounds:

- before: every call's hidden states in fresh tensors, exact row counts, no
  growth guard (the component before these measures);
- arena: states in the reused block (model/state_arena.py);
- defaults: and the per-row work on rounded-up row counts
  (packed_layer.bucket_rows): the component as it ships;
- defaults+guard: and the resident-memory guard of corpus/memory.py (off by
  default) at --guard.

Reports words/s per variant and round, and the median of the per-round
ratios against `before`.

    python benchmarks/tools/memory_speed.py --pipeline PIPELINE --docs 1024 --repeats 5
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import spacy
import torch

from precision_speed import machine
from soak import COMPONENT, DEFAULT_CONLLU, read_texts, sentence_range, stream
from spacy_earlyexit.corpus import memory
from spacy_earlyexit.model import packed_layer
from spacy_earlyexit.model.state_arena import StateArena

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ("before", "arena", "defaults", "defaults+guard")
ROW_BUCKET_BITS = packed_layer.ROW_BUCKET_BITS


def set_variant(encoder: torch.nn.Module, variant: str, guard: float) -> None:
    encoder.state_arena = None if variant == "before" else StateArena()
    packed_layer.ROW_BUCKET_BITS = ROW_BUCKET_BITS if variant.startswith("defaults") else 0
    memory.configure(release_on_growth=guard if variant == "defaults+guard" else 0)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--conllu", default=str(DEFAULT_CONLLU))
    parser.add_argument("--docs", type=int, default=1024)
    parser.add_argument("--sentences-per-doc", type=sentence_range, default=(1, 8), metavar="N|MIN-MAX")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threshold", type=float, default=0.1)
    parser.add_argument("--window", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--guard", type=float, default=0.05, help="release_on_growth of defaults+guard")
    parser.add_argument("--out", default=str(ROOT / "metrics" / "benchmarks" / "memory_speed"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    guard = args.guard
    nlp = spacy.load(args.pipeline)
    encoder = nlp.get_pipe(COMPONENT).model.shims[0].encoder
    texts = list(stream(read_texts(Path(args.conllu)), args.docs, args.sentences_per_doc))
    setting = {"exit_mode": "token", "threshold": args.threshold, "window": args.window}
    cfg = {COMPONENT: setting}
    n_words = sum(len(doc) for doc in nlp.pipe(texts, batch_size=args.batch_size, component_cfg=cfg))  # warm-up
    speeds: Dict[str, List[float]] = {variant: [] for variant in VARIANTS}
    releases: Dict[str, int] = {variant: 0 for variant in VARIANTS}
    for round_index in range(args.repeats):
        order = VARIANTS if round_index % 2 == 0 else VARIANTS[::-1]
        for variant in order:
            set_variant(encoder, variant, guard)
            before = memory.releases
            start = time.perf_counter()
            for _ in nlp.pipe(texts, batch_size=args.batch_size, component_cfg=cfg):
                pass
            speeds[variant].append(n_words / (time.perf_counter() - start))
            releases[variant] += memory.releases - before
        print(" ".join(f"{v} {speeds[v][-1]:.0f}" for v in VARIANTS), "words/s", flush=True)
    ratios = {
        variant: round(statistics.median(a / b for a, b in zip(speeds[variant], speeds["before"])), 3)
        for variant in VARIANTS
    }
    result: Dict[str, Any] = {
        "pipeline": args.pipeline, "docs": args.docs, "words": n_words,
        "sentences_per_doc": list(args.sentences_per_doc), "batch_size": args.batch_size, "setting": setting,
        "repeats": args.repeats, "torch_threads": torch.get_num_threads(), "machine": machine(),
        "words_per_second": {v: [round(s) for s in speeds[v]] for v in VARIANTS},
        "median_words_per_second": {v: round(statistics.median(speeds[v])) for v in VARIANTS},
        "median_ratio_to_before": ratios, "guard_releases": releases,
    }
    lines = [
        f"CPU: {result['machine']['cpu']} ({', '.join(result['machine']['cpu_flags'])}); torch "
        f"{result['machine']['torch']}, {result['torch_threads']} thread(s). {args.pipeline}: {args.docs} docs "
        f"({n_words} words, {args.sentences_per_doc[0]}-{args.sentences_per_doc[1]} sentences each), token mode "
        f"t={args.threshold} k={args.window}, batch {args.batch_size}, {args.repeats} interleaved rounds.",
        "",
        "| variant | median words/s | median ratio to before | guard releases |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {v} | {result['median_words_per_second'][v]:,} | {ratios[v]:.3f} | {releases[v]} |" for v in VARIANTS
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
