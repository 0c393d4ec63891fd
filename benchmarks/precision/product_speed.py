"""One linear layer's product in float32, bfloat16 and int8 (torch._int_mm)
on this CPU, one thread: the figure that decides the fast precision.

    python benchmarks/precision/product_speed.py [--rows 2048,256,25] [--in 384] [--out 1536]

Prints ms per product (median of 20 after warm-up) and each precision's
speed-up over float32, with the CPU model and torch build. int8 times the
bare integer product (no row quantization); `precision.bfloat16_speedup` is
what "auto" times at load.
"""
import argparse
import platform
import statistics
import subprocess
import time

import torch


def median_ms(function, repeats: int = 20) -> float:
    function()
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="2048,256,25")
    parser.add_argument("--in", dest="in_features", type=int, default=384)
    parser.add_argument("--out", dest="out_features", type=int, default=1536)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"CPU: {cpu_model()}; torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), 1 thread; "
          f"product (rows x {args.in_features}) by ({args.in_features} x {args.out_features})\n")
    print("| rows | float32 ms | bfloat16 ms | bfloat16 vs float32 | int8 ms | int8 vs float32 |")
    print("|---|---|---|---|---|---|")
    generator = torch.Generator().manual_seed(0)
    for rows in (int(value) for value in args.rows.split(",")):
        x = torch.randn(rows, args.in_features, generator=generator)
        w = torch.randn(args.out_features, args.in_features, generator=generator)
        xb, wb = x.bfloat16(), w.bfloat16()
        xi = torch.randint(-127, 128, (max(rows, 17), args.in_features), dtype=torch.int8, generator=generator)
        wi = torch.randint(-127, 128, (args.in_features, args.out_features), dtype=torch.int8, generator=generator)
        with torch.inference_mode():
            f32 = median_ms(lambda: torch.nn.functional.linear(x, w))
            b16 = median_ms(lambda: torch.nn.functional.linear(xb, wb))
            i8 = median_ms(lambda: torch._int_mm(xi, wi))
        print(f"| {rows} | {f32:.3f} | {b16:.3f} | {f32 / b16:.2f}x | {i8:.3f} | {f32 / i8:.2f}x |")


if __name__ == "__main__":
    main()
