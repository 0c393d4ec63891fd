"""Benchmark: throughput of `python -m spacy_earlyexit annotate`, local engine
(one process) against the Ray engine with 1 and 2 workers.

Docs are the sentence texts (`# text =` lines) of a CoNLL-U file, UD English
EWT dev by default, written to a JSONL file and annotated into JSONL, every
configuration end to end (pipeline loading and, for Ray, actor start-up
included; the local Ray cluster itself is started once, before timing).
Configurations run interleaved, `--repetitions` times, and medians are
reported: docs/s, words/s (tokens written), the start-up cost (median
seconds of a run on the first batch only) and the steady throughput of the
rest ((docs - one batch) / (seconds - start-up)), also per worker. The outputs of all configurations are checked to be identical.

    python benchmarks/tools/annotate_throughput.py PIPELINE --threads 1 --out benchmarks/annotate_throughput/annotate_throughput

Writes OUT.json and OUT.md (a markdown table, also printed).
"""
import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

from spacy_earlyexit.corpus.annotate import annotate

DEFAULT_CONLLU = Path(__file__).resolve().parents[3] / "shared" / "data" / "ud_en_ewt" / "en_ewt-ud-dev.conllu"


def conllu_texts(path: Path) -> List[str]:
    """The `# text = ...` sentence texts of a CoNLL-U file, in order."""
    prefix = "# text = "
    with open(path, encoding="utf8") as stream:
        return [line[len(prefix):].rstrip("\n") for line in stream if line.startswith(prefix)]


def write_jsonl(texts: List[str], path: Path) -> Path:
    with open(path, "w", encoding="utf8") as stream:
        for index, text in enumerate(texts):
            stream.write(json.dumps({"id": index, "text": text}, ensure_ascii=False) + "\n")
    return path


def run(config: Dict[str, Any], pipeline: str, source: Path, output: Path, args: argparse.Namespace) -> Any:
    return annotate(
        pipeline, source, output, engine=config["engine"], batch_size=args.batch_size,
        workers=config["workers"], threads=args.threads, exit_overrides=args.overrides,
        address=args.address, progress=False,
    )


def markdown_table(result: Dict[str, Any]) -> str:
    lines = [
        "| engine | workers | docs/s | words/s | seconds | start-up s | steady docs/s | steady words/s "
        "| steady words/s per worker |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['engine']} | {row['workers']} | {row['docs_per_second']:.1f} | {row['words_per_second']:.0f} "
            f"| {row['seconds']:.2f} | {row['startup_seconds']:.2f} | {row['steady_docs_per_second']:.1f} "
            f"| {row['steady_words_per_second']:.0f} | {row['steady_words_per_second_per_worker']:.0f} |"
        )
    return "\n".join(lines)


def describe(result: Dict[str, Any]) -> str:
    """One sentence on what was measured (heads the markdown file)."""
    return (f"{result['n_docs']} docs ({result['n_words']} words) from {Path(result['conllu']).name}, "
            f"batch size {result['batch_size']}, {result['torch_threads']} torch thread(s) per process, "
            f"exit overrides {result['exit_overrides'] or 'none'}, median of {result['repetitions']} "
            f"interleaved repetitions; outputs identical across engines: {result['outputs_identical']}.")


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", help="saved pipeline folder")
    parser.add_argument("--conllu", type=Path, default=DEFAULT_CONLLU, help="sentence texts from `# text =` lines")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N sentences (0: all)")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", default="1,2", help="Ray pool sizes to time, comma-separated")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process / per Ray worker")
    parser.add_argument("--exit-mode", default=None, help="override the saved exit setting")
    parser.add_argument("--threshold", type=float, default=None)
    parser.add_argument("--window", type=int, default=None)
    parser.add_argument("--address", default=None, help="existing Ray cluster (default: a local one)")
    parser.add_argument("--out", default="metrics/benchmarks/annotate_throughput")
    args = parser.parse_args(argv)
    args.overrides = {name: value for name, value in
                      (("exit_mode", args.exit_mode), ("threshold", args.threshold), ("window", args.window))
                      if value is not None}

    if not args.conllu.is_file():
        raise SystemExit(f"{args.conllu}: no such file; give a CoNLL-U file with --conllu "
                         "(UD English EWT dev: en_ewt-ud-dev.conllu)")
    texts = conllu_texts(args.conllu)
    if args.limit:
        texts = texts[: args.limit]
    if not texts:
        raise SystemExit(f"{args.conllu}: no `# text =` lines")
    workers = [int(value) for value in args.workers.split(",") if value.strip()]
    configs = [{"engine": "local", "workers": 1}] + [{"engine": "ray", "workers": n} for n in workers]

    try:
        import ray
    except ImportError:
        raise SystemExit("the Ray runs need Ray Data: pip install spacy-earlyexit[ray]") from None
    if args.address:
        ray.init(address=args.address)
    else:
        ray.init(num_cpus=max(workers) * args.threads, include_dashboard=False)
    print(f"{len(texts)} docs from {args.conllu}; batch size {args.batch_size}, torch threads {args.threads}, "
          f"exit overrides {args.overrides or 'none'}", file=sys.stderr)

    runs: Dict[str, Dict[str, List[float]]] = {}
    words: Dict[str, int] = {}
    startup_counts = (0, 0)
    outputs: Dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as folder:
        source = write_jsonl(texts, Path(folder) / "docs.jsonl")
        startup_source = write_jsonl(texts[: args.batch_size], Path(folder) / "one_batch.jsonl")
        for repetition in range(args.repetitions):
            ordered = configs if repetition % 2 == 0 else configs[::-1]
            for config in ordered:
                name = f"{config['engine']} x{config['workers']}"
                timings = runs.setdefault(name, {"seconds": [], "startup_seconds": []})
                output = Path(folder) / f"{config['engine']}_{config['workers']}.jsonl"
                result = run(config, args.pipeline, source, output, args)
                timings["seconds"].append(result.seconds)
                words[name] = result.n_tokens
                outputs[name] = output.read_bytes()
                startup = run(config, args.pipeline, startup_source, Path(folder) / "one_batch_out.jsonl", args)
                timings["startup_seconds"].append(startup.seconds)
                startup_counts = (startup.n_docs, startup.n_tokens)
                print(f"repetition {repetition + 1}/{args.repetitions} {name}: {result.seconds:.2f} s "
                      f"(one batch {startup.seconds:.2f} s)", file=sys.stderr)
    ray.shutdown()

    identical = len(set(outputs.values())) == 1
    rows = []
    for config in configs:
        name = f"{config['engine']} x{config['workers']}"
        seconds = statistics.median(runs[name]["seconds"])
        startup = statistics.median(runs[name]["startup_seconds"])
        steady = max(seconds - startup, 1e-9)
        steady_docs, steady_words = len(texts) - startup_counts[0], words[name] - startup_counts[1]
        rows.append({
            "engine": config["engine"],
            "workers": config["workers"],
            "seconds": seconds,
            "seconds_all": runs[name]["seconds"],
            "startup_seconds": startup,
            "docs_per_second": len(texts) / seconds,
            "words_per_second": words[name] / seconds,
            "steady_docs_per_second": steady_docs / steady,
            "steady_words_per_second": steady_words / steady,
            "steady_words_per_second_per_worker": steady_words / steady / config["workers"],
        })
    result = {
        "pipeline": str(args.pipeline),
        "conllu": str(args.conllu),
        "n_docs": len(texts),
        "n_words": words["local x1"],
        "batch_size": args.batch_size,
        "torch_threads": args.threads,
        "exit_overrides": args.overrides,
        "repetitions": args.repetitions,
        "outputs_identical": identical,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown_table(result)
    out.with_suffix(".md").write_text(f"{describe(result)}\n\n{table}\n")
    print(table)
    if not identical:
        raise SystemExit("the engines' outputs differ")
    return result


if __name__ == "__main__":
    main()
