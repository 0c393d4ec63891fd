"""Benchmark: words/s, accuracy and speed-up of early exit on a dev corpus.

Runs every setting side by side in one process, interleaved, several
repetitions (each times every setting on one slice of docs, by default one
nlp.pipe batch, before the next slice, alternating the order of settings),
and reports medians: words/s of nlp.pipe, the task score, mean
exit layer, analytic FLOPs speed-up, wall-clock speed-up over exit_mode "off"
(the median over repetitions of the ratio within each repetition) and the
ratio wall / FLOPs. Optionally times a plain spacy-transformers
pipeline (transformer + tagger with a TransformerListener) on the same
backbone as a throughput reference.

    python benchmarks/speed_accuracy.py PIPELINE DEV.spacy --out benchmarks/results/pos_ewt
"""
import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import spacy
import torch
from spacy.tokens import Doc, DocBin
from spacy.training import Example

from spacy_earlyexit.tuning.sweep import _fresh_docs as fresh_docs, doc_slices, paired_speedup, setting_name

COMPONENT = "earlyexit_tagger"

DEFAULT_GRID = [
    {"exit_mode": "off"},
    {"exit_mode": "sentence", "threshold": 0.05},
    {"exit_mode": "sentence", "threshold": 0.1},
    {"exit_mode": "sentence", "threshold": 0.2},
    {"exit_mode": "token", "threshold": 0.05, "window": 0},
    {"exit_mode": "token", "threshold": 0.1, "window": 0},
    {"exit_mode": "token", "threshold": 0.2, "window": 0},
    {"exit_mode": "token", "threshold": 0.3, "window": 0},
    {"exit_mode": "token", "threshold": 0.1, "window": 1},
    {"exit_mode": "token", "threshold": 0.2, "window": 1},
    {"exit_mode": "token", "threshold": 0.3, "window": 1},
    {"exit_mode": "token", "threshold": 0.4, "window": 1},
    {"exit_mode": "token", "threshold": 0.2, "window": 2},
]


def time_pipe(nlp, docs: List[Doc], batch_size: int, component_cfg=None) -> float:
    start = time.perf_counter()
    for _ in nlp.pipe(docs, batch_size=batch_size, component_cfg=component_cfg):
        pass
    return time.perf_counter() - start


def build_reference(backbone: str, labels: List[str], vocab):
    """A plain spacy-transformers pipeline on the same backbone (untrained
    heads: throughput only)."""
    from spacy.lang.en import English

    nlp = English(vocab=vocab)
    nlp.add_pipe(
        "transformer",
        config={
            "model": {
                "@architectures": "spacy-transformers.TransformerModel.v3",
                "name": backbone,
                "tokenizer_config": {"use_fast": True},
                "get_spans": {"@span_getters": "spacy-transformers.strided_spans.v1", "window": 128, "stride": 96},
            }
        },
    )
    tagger = nlp.add_pipe(
        "tagger",
        config={
            "model": {
                "@architectures": "spacy.Tagger.v2",
                "tok2vec": {
                    "@architectures": "spacy-transformers.TransformerListener.v1",
                    "grad_factor": 1.0,
                    "pooling": {"@layers": "reduce_mean.v1"},
                },
            }
        },
    )
    for label in labels:
        tagger.add_label(label)
    nlp.initialize()
    return nlp


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline")
    parser.add_argument("dev", help=".spacy file with gold annotation")
    parser.add_argument("--out", default="benchmarks/results/speed_accuracy")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--limit", type=int, default=0, help="use only the first N docs")
    parser.add_argument("--time-limit", type=int, default=0, help="time on the first N of those docs only")
    parser.add_argument("--grid", default=None, help="JSON list of settings (default: built-in grid)")
    parser.add_argument("--reference-backbone", default=None, help="also time spacy-transformers on this backbone")
    parser.add_argument("--reference-repetitions", type=int, default=0,
                        help="time the reference in only the first N repetitions (0: all)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--slice-docs", type=int, default=0,
                        help="interleave the settings on slices of N docs (0: one batch)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    nlp = spacy.load(args.pipeline)
    tagger = nlp.get_pipe(COMPONENT)
    tagger.cfg["score_layers"] = False  # per-off-ramp scores are not needed here
    gold_docs = list(DocBin().from_disk(args.dev).get_docs(nlp.vocab))
    if args.limit:
        gold_docs = gold_docs[: args.limit]
    n_words = sum(len(d) for d in gold_docs)
    grid = json.loads(args.grid) if args.grid else DEFAULT_GRID
    key = tagger.task.score_keys[0]
    print(f"{len(gold_docs)} docs, {n_words} words, torch threads {torch.get_num_threads()}")

    # accuracy, exit statistics (deterministic: one pass each)
    rows: Dict[str, Dict[str, Any]] = {}
    for setting in grid:
        name = setting_name(setting)
        examples = [Example(doc, gold) for doc, gold in zip(fresh_docs(nlp, gold_docs), gold_docs)]
        scores = nlp.evaluate(examples, batch_size=args.batch_size, component_cfg={COMPONENT: dict(setting)})
        rows[name] = {
            "setting": setting,
            key: scores.get(key),
            "exit_layer_mean": scores.get("exit_layer_mean"),
            "flops_speedup": scores.get("flops_speedup"),
            "seconds": [],
        }
        print(f"{name:22s} {key}={scores.get(key):.4f} exit={scores.get('exit_layer_mean'):.2f} "
              f"flops_x={scores.get('flops_speedup'):.2f}")
    reference = None
    if args.reference_backbone:
        labels = sorted({getattr(t, "tag_") for d in gold_docs for t in d} - {""})
        reference = build_reference(args.reference_backbone, labels, nlp.vocab)
        rows["spacy-transformers"] = {"setting": None, "seconds": []}

    # timing: interleaved repetitions
    if args.time_limit:
        gold_docs = gold_docs[: args.time_limit]
        n_words = sum(len(d) for d in gold_docs)
    docs = fresh_docs(nlp, gold_docs)
    time_pipe(nlp, docs[:200], args.batch_size)  # warm-up
    parts = doc_slices(len(gold_docs), args.slice_docs or args.batch_size)
    for repetition in range(args.repetitions):
        order = grid if repetition % 2 == 0 else grid[::-1]
        for setting in order:
            rows[setting_name(setting)]["seconds"].append(0.0)
        for part in parts:  # every setting on one slice, then the next slice
            for setting in order:
                seconds = time_pipe(nlp, fresh_docs(nlp, gold_docs[part]), args.batch_size, {COMPONENT: dict(setting)})
                rows[setting_name(setting)]["seconds"][-1] += seconds
        if reference is not None and (not args.reference_repetitions or repetition < args.reference_repetitions):
            rows["spacy-transformers"]["seconds"].append(
                time_pipe(reference, fresh_docs(nlp, gold_docs), args.batch_size)
            )
        print(f"repetition {repetition + 1}/{args.repetitions} done")
    base = rows["off"]["seconds"] if "off" in rows else None
    for row in rows.values():
        median = statistics.median(row["seconds"])
        row["words_per_second"] = n_words / median
        row["wall_speedup"] = paired_speedup(base[: len(row["seconds"])], row["seconds"]) if base else None
        flops = row.get("flops_speedup")
        row["wall_over_flops"] = row["wall_speedup"] / flops if (flops and row["wall_speedup"]) else None

    result = {
        "pipeline": str(args.pipeline),
        "dev": str(args.dev),
        "n_docs": len(gold_docs),
        "n_words_timed": n_words,
        "repetitions": args.repetitions,
        "batch_size": args.batch_size,
        "slice_docs": args.slice_docs or args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "score_key": key,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    table = markdown_table(result)
    out.with_suffix(".md").write_text(table + "\n")
    print(table)
    return result


def markdown_table(result: Dict[str, Any]) -> str:
    key = result["score_key"]
    off = result["rows"].get("off", {}).get(key)
    lines = [
        f"| setting | {key} | Δ vs off (points) | mean exit layer | FLOPs speed-up | words/s | wall speed-up | wall / FLOPs |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def fmt(value, pattern):
        return pattern.format(value) if value is not None else "–"

    for name, row in result["rows"].items():
        score = row.get(key)
        delta = (score - off) * 100 if (score is not None and off is not None) else None
        lines.append(
            f"| {name} | {fmt(score and score * 100, '{:.2f}')} | {fmt(delta, '{:+.2f}')} | "
            f"{fmt(row.get('exit_layer_mean'), '{:.2f}')} | {fmt(row.get('flops_speedup'), '{:.2f}x')} | "
            f"{row['words_per_second']:.0f} | {fmt(row.get('wall_speedup'), '{:.2f}x')} | "
            f"{fmt(row.get('wall_over_flops'), '{:.2f}')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
