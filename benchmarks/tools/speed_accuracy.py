"""Benchmark: words/s, accuracy and speed-up of early exit on a dev corpus.

The sweep's measurement (spacy_earlyexit.tuning.sweep.run_sweep) on one
pipeline and a grid of settings: every setting side by side in one process,
interleaved on slices of docs, several repetitions, medians and paired
ratios; optionally with a plain spacy-transformers pipeline (transformer +
tagger with a TransformerListener) on the same backbone timed alongside as a
throughput reference.

    python benchmarks/tools/speed_accuracy.py PIPELINE DEV.spacy --out benchmarks/pos_minilm/pos_ewt
    # another trained pipeline (e.g. a 6-layer one at full depth) timed alongside:
    python benchmarks/tools/speed_accuracy.py PIPELINE DEV.spacy --reference-pipeline minilm=OTHER_PIPELINE
"""
import argparse
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import spacy
import torch
from spacy.tokens import DocBin

from spacy_earlyexit.tuning.sweep import markdown_table, run_sweep

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
    parser.add_argument("--out", default="metrics/benchmarks/speed_accuracy")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--limit", type=int, default=0, help="use only the first N docs")
    parser.add_argument("--grid", default=None, help="JSON list of settings (default: built-in grid)")
    parser.add_argument("--reference-backbone", default=None, help="also time spacy-transformers on this backbone")
    parser.add_argument("--reference-pipeline", action="append", default=[], metavar="NAME=PATH",
                        help="also time this trained pipeline at its saved setting (repeatable)")
    parser.add_argument("--reference-repetitions", type=int, default=0,
                        help="time the reference in only the first N repetitions (0: all)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--slice-docs", type=int, default=0,
                        help="interleave the settings on slices of N docs (0: one batch)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    nlp = spacy.load(args.pipeline)
    references = {}
    if args.reference_backbone:
        gold_docs = list(DocBin().from_disk(args.dev).get_docs(nlp.vocab))
        labels = sorted({t.tag_ for d in gold_docs for t in d} - {""})
        references["spacy-transformers"] = build_reference(args.reference_backbone, labels, nlp.vocab)
    for item in args.reference_pipeline:
        name, _, path = item.partition("=")
        if not path:
            raise SystemExit(f"--reference-pipeline takes NAME=PATH; got {item!r}")
        references[name] = spacy.load(path)
    grid = json.loads(args.grid) if args.grid else DEFAULT_GRID
    result = run_sweep(
        {"pipeline": nlp}, args.dev, grid, repetitions=args.repetitions, batch_size=args.batch_size,
        limit=args.limit, slice_docs=args.slice_docs, references=references,
        reference_repetitions=args.reference_repetitions or None,
    )
    result["pipeline"] = str(args.pipeline)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown_table(result)
    out.with_suffix(".md").write_text(table + "\n")
    print(f"{result['n_docs']} docs, {result['n_words']} words, torch threads {result['torch_threads']}")
    print(table)
    return result


if __name__ == "__main__":
    main()
