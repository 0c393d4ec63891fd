"""The int8 kernel choice: a MiniLM-sized feed-forward block (384 -> 1536 ->
384, GELU) in float32 against int8 variants, one torch thread, interleaved,
median times, relative error against float32, and whether a row's result
depends on the other rows of the product.

    python benchmarks/int8/int8_kernels.py [--rows 2048,512,128] [--repetitions 25] [--out FILE.md]

Variants: fbgemm dynamic quantization as torch.ao.quantization.quantize_dynamic
does it (torch.ops.quantized.linear_dynamic, per-tensor activation scale,
reduce_range); torch._int_mm with per-row activation scales and per-channel
weights (model/quantization.py's Int8Linear), in one product and with the
feed-forward block cut into blocks of 256 rows (what packed_layer.feed_forward
does for int8 layers).
"""
import argparse
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from spacy_earlyexit.model.quantization import Int8Linear


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="2048,512,128")
    parser.add_argument("--repetitions", type=int, default=25)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    lin1, lin2 = torch.nn.Linear(384, 1536), torch.nn.Linear(1536, 384)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13 deprecates quantized tensors
        q1 = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin1), {torch.nn.Linear}, dtype=torch.qint8)[0]
        q2 = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin2), {torch.nn.Linear}, dtype=torch.qint8)[0]
    i1, i2 = Int8Linear.from_linear(lin1), Int8Linear.from_linear(lin2)
    variants = {
        "float32": lambda x: lin2(F.gelu(lin1(x))),
        "fbgemm quantize_dynamic (per-tensor)": lambda x: q2(F.gelu(q1(x))),
        "torch._int_mm per-row (Int8Linear)": lambda x: i2(F.gelu(i1(x))),
        "torch._int_mm per-row, 256-row blocks": lambda x: torch.cat([i2(F.gelu(i1(p))) for p in x.split(256)]),
    }
    lines = ["| rows | variant | ms (median) | speed-up vs float32 | relative error | rows independent |",
             "|---|---|---|---|---|---|"]
    with torch.no_grad():
        for n_rows in [int(r) for r in args.rows.split(",")]:
            x = torch.randn(n_rows, 384)
            times = {name: [] for name in variants}
            for repetition in range(args.repetitions):
                order = list(variants.items()) if repetition % 2 == 0 else list(variants.items())[::-1]
                for name, fn in order:
                    start = time.perf_counter()
                    fn(x)
                    times[name].append(time.perf_counter() - start)
            reference = variants["float32"](x)
            base = statistics.median(times["float32"])
            for name, fn in variants.items():
                out = fn(x)
                error = float((out - reference).norm() / reference.norm())
                alone = torch.cat([fn(x[i:i + 1]) for i in range(min(n_rows, 64))])
                independent = torch.equal(alone, out[: len(alone)])
                median = statistics.median(times[name])
                lines.append(f"| {n_rows} | {name} | {median * 1e3:.2f} | {base / median:.2f}x | {error:.4f} | {independent} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        open(args.out, "w").write(text + "\n")


if __name__ == "__main__":
    main()
