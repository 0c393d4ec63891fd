"""Resident memory of a pipeline in bfloat16 under many small calls, with
bfloat16's row sizes (packed_layer.BFLOAT16_EXACT_ROWS / _ROW_BUCKET_BITS)
or with float32's, against the same pipeline in float32. Each variant runs
in a fresh process (oneDNN's primitive cache lives as long as the process).

    python benchmarks/memory/bfloat16_rows.py PIPELINE DEV.spacy [--calls 1500]
    python benchmarks/memory/bfloat16_rows.py --one-layer

A call is nlp.pipe over 1-8 random dev texts (a service's micro-batch);
prints RSS (MB) after 100, 500, 1,000 calls and at the end, per variant.
--one-layer: one bfloat16 linear layer (384 -> 1,536) on 1..400 rows, then
the same 400 row counts again, RSS every 100.
"""
import argparse
import json
import random
import subprocess
import sys

VARIANTS = {
    "float32": ("float32", None),
    "bfloat16, float32's row sizes (64 exact, 6 bits)": ("bfloat16", (64, 6)),
    "bfloat16, its own row sizes": ("bfloat16", None),
}


def child(pipeline: str, dev: str, precision: str, rows, calls: int) -> None:
    import spacy
    import torch
    from spacy.tokens import DocBin

    import spacy_earlyexit
    from spacy_earlyexit.model import packed_layer

    torch.set_num_threads(1)
    if rows:
        packed_layer.BFLOAT16_EXACT_ROWS, packed_layer.BFLOAT16_ROW_BUCKET_BITS = rows
    nlp = spacy_earlyexit.load(pipeline, precision=precision)
    texts = [doc.text for doc in DocBin().from_disk(dev).get_docs(spacy.blank("en").vocab)]
    rng = random.Random(0)
    marks = {}
    for call in range(1, calls + 1):
        list(nlp.pipe([rng.choice(texts) for _ in range(rng.randint(1, 8))]))
        if call in (100, 500, 1000, calls):
            marks[call] = round(rss_mb())
    print(json.dumps(marks))


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        return int(status.read().split("VmRSS:")[1].split()[0]) / 1024


def one_layer() -> None:
    import torch

    torch.set_num_threads(1)
    layer = torch.nn.Linear(384, 1536).bfloat16()
    print(f"start: {rss_mb():.0f} MB")
    with torch.inference_mode():
        for rows in range(1, 401):
            layer(torch.randn(rows, 384).bfloat16())
            if rows % 100 == 0:
                print(f"after row counts 1-{rows}: {rss_mb():.0f} MB")
        for rows in range(1, 401):
            layer(torch.randn(rows, 384).bfloat16())
    print(f"the same 400 row counts again: {rss_mb():.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", nargs="?")
    parser.add_argument("dev", nargs="?")
    parser.add_argument("--calls", type=int, default=1500)
    parser.add_argument("--one-layer", action="store_true", help="one bfloat16 linear layer, no pipeline")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_layer:
        one_layer()
        return
    if not (args.pipeline and args.dev):
        parser.error("PIPELINE and DEV are needed (or --one-layer)")
    if args.child:
        precision, rows = VARIANTS[args.child]
        child(args.pipeline, args.dev, precision, rows, args.calls)
        return
    print("| variant | " + " | ".join(f"RSS after {n} calls (MB)" for n in (100, 500, 1000, args.calls)) + " |")
    print("|---|" + "---|" * 4)
    for name in VARIANTS:
        out = subprocess.run([sys.executable, __file__, args.pipeline, args.dev, "--calls", str(args.calls),
                              "--child", name], capture_output=True, text=True, check=True).stdout
        marks = json.loads(out.strip().splitlines()[-1])
        print(f"| {name} | " + " | ".join(str(value) for value in marks.values()) + " |")


if __name__ == "__main__":
    main()
