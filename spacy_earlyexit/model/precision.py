"""Which precision the encoder runs in, and choosing it by processor.

A pipeline's weights are saved in one precision ("float32", "bfloat16" or
"int8"); its config asks for one to run in ("float32", "bfloat16", "int8" or
"auto"). Float32 and bfloat16 weights run in either of those two (a cast at
load time, no retraining); int8 weights run in int8 only (`quantize` makes
them). "auto" takes the fast path of the processor it runs on:

- int8 where the weights are int8 (quantized pipelines);
- bfloat16 where the CPU has AMX tile units (Intel Sapphire Rapids and
  later: a bfloat16 matrix product runs several times faster than float32),
  or on a CUDA device that supports bfloat16;
- on a CPU with AVX-512 bfloat16 instructions but no AMX, bfloat16 where a
  product of the encoder's own shape, timed once at load, runs at least
  `BFLOAT16_MIN_SPEEDUP` times faster than in float32. The flag alone does
  not tell: some such CPUs run bfloat16 products several times faster than
  float32, others half as fast;
- float32 otherwise (bfloat16 without hardware support is emulated, slow).

Only the transformer (embeddings and layers) changes precision: off-ramps and
the case embedding stay float32, and each off-ramp reads its states cast to
float32, so the exit rule's uncertainties are computed in float32.
"""
import statistics
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, FrozenSet, Optional

import torch
from torch import nn
from torch.nn import functional as F

#: the precisions an encoder's weights can be in and run in
PRECISIONS = ("float32", "bfloat16", "int8")
#: what a config may ask for: one of PRECISIONS, or "auto" (see resolve_precision)
CONFIG_PRECISIONS = PRECISIONS + ("auto",)
#: on a CPU without AMX, "auto" takes bfloat16 only where its products measure at least this much faster
BFLOAT16_MIN_SPEEDUP = 1.25


@dataclass(frozen=True)
class CpuFeatures:
    """The processor features that decide the fast precision.

    amx: AMX tile units (bfloat16 and int8 matrix products).
    avx512_bf16: AVX-512 bfloat16 dot products (faster than float32 on some
        CPUs without AMX, slower on others: measured before use).
    vnni: AVX-512 or AVX VNNI (int8 dot products).
    """

    amx: bool = False
    avx512_bf16: bool = False
    vnni: bool = False

    def describe(self) -> str:
        present = [name for name in ("amx", "avx512_bf16", "vnni") if getattr(self, name)]
        return ", ".join(present) or "none of amx, avx512_bf16, vnni"


def features_from_flags(flags: FrozenSet[str]) -> CpuFeatures:
    """CpuFeatures from /proc/cpuinfo-style flag names."""
    return CpuFeatures(
        amx=bool({"amx_bf16", "amx_tile"} & flags),
        avx512_bf16="avx512_bf16" in flags,
        vnni=bool({"avx512_vnni", "avx_vnni"} & flags),
    )


def read_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> FrozenSet[str]:
    """The flags of the first processor in `cpuinfo` (empty where unreadable)."""
    try:
        text = cpuinfo.read_text(encoding="utf8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_features() -> CpuFeatures:
    """This processor's features, as torch reports them (torch.cpu), else
    from the OS (/proc/cpuinfo)."""
    probes = {
        "amx": "_is_amx_tile_supported",
        "avx512_bf16": "_is_avx512_bf16_supported",
        "vnni": "_is_vnni_supported",
    }
    found = {}
    for name, probe in probes.items():
        check = getattr(torch.cpu, probe, None)
        if check is None:
            return features_from_flags(read_cpu_flags())
        found[name] = bool(check())
    return CpuFeatures(**found)


def bfloat16_speedup(in_features: int, out_features: int, *, rows: int = 256, repetitions: int = 7) -> float:
    """How many times faster a bfloat16 product than a float32 one on this
    CPU at torch's current thread count: `x @ w.T` with x (rows, in_features)
    and w (out_features, in_features), timed in interleaved pairs, median of
    `repetitions` ratios. Cached per shape and thread count: the first call
    costs a few dozen milliseconds for a BERT-base-sized layer."""
    return _timed_bfloat16_speedup(in_features, out_features, rows, repetitions, torch.get_num_threads())


@lru_cache(maxsize=16)
def _timed_bfloat16_speedup(in_features: int, out_features: int, rows: int, repetitions: int, threads: int) -> float:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, in_features, generator=generator)
    w = torch.randn(out_features, in_features, generator=generator)
    pairs = ((x, w), (x.bfloat16(), w.bfloat16()))
    ratios = []
    with torch.inference_mode():
        for inputs, weight in pairs:  # warm-up: oneDNN builds its kernels on the first call
            F.linear(inputs, weight)
        for _ in range(repetitions):
            seconds = []
            for inputs, weight in pairs:
                start = time.perf_counter()
                F.linear(inputs, weight)
                seconds.append(time.perf_counter() - start)
            ratios.append(seconds[0] / max(seconds[1], 1e-9))
    return statistics.median(ratios)


def _cpu_bfloat16_speedup(features: CpuFeatures, measure: Optional[Callable[[], float]]) -> Optional[float]:
    """bfloat16's speed-up over float32 on a CPU with `features`: inf with AMX
    (not timed), 0 without avx512_bf16 (emulated), else `measure()`; None
    where it would have to be measured and `measure` is None."""
    if features.amx:
        return float("inf")
    if not features.avx512_bf16:
        return 0.0
    return None if measure is None else measure()


def cpu_bfloat16_is_fast(features: CpuFeatures, measure: Optional[Callable[[], float]]) -> bool:
    """Whether bfloat16 products beat float32 ones by BFLOAT16_MIN_SPEEDUP
    on a CPU with `features`: yes with AMX, no without avx512_bf16 (emulated),
    otherwise `measure()` decides (a bfloat16_speedup; None: not measured, no)."""
    speedup = _cpu_bfloat16_speedup(features, measure)
    return speedup is not None and speedup >= BFLOAT16_MIN_SPEEDUP


def check_precision(precision: str, allowed=CONFIG_PRECISIONS) -> None:
    if precision not in allowed:
        raise ValueError(f"precision must be one of {', '.join(allowed)}; got {precision!r}")


def resolve_precision(
    configured: str,
    saved: str,
    *,
    device_type: str = "cpu",
    features: Optional[CpuFeatures] = None,
    cuda_bf16: bool = False,
    measure_bfloat16: Optional[Callable[[], float]] = None,
) -> str:
    """The precision to run weights saved in `saved` when the config asks
    for `configured`; raises ValueError for what cannot run.

    device_type: "cpu" or "cuda"; features: the CPU's (default: this one's);
    cuda_bf16: whether the CUDA device supports bfloat16; measure_bfloat16:
    returns the CPU's bfloat16 speed-up over float32 for the encoder's
    products (bfloat16_speedup), asked only for "auto" on a CPU with
    avx512_bf16 and no AMX (None: such a CPU runs float32).
    """
    check_precision(configured)
    check_precision(saved, PRECISIONS)
    if configured == "auto":
        if saved == "int8":
            return "int8"
        if device_type == "cuda":
            return "bfloat16" if cuda_bf16 else "float32"
        features = cpu_features() if features is None else features
        return "bfloat16" if cpu_bfloat16_is_fast(features, measure_bfloat16) else "float32"
    if configured == "int8" and saved != "int8":
        raise ValueError(
            f"the config asks for precision \"int8\" but the saved weights are {saved}: make int8 "
            "pipelines with `python -m spacy_earlyexit quantize`, which also sets the config"
        )
    if saved == "int8" and configured != "int8":
        raise ValueError(
            f"the saved weights are int8 but the config asks for precision {configured!r}: set "
            "precision = \"int8\" (or \"auto\") in the component's model config, as `quantize` writes it"
        )
    return configured


def slow_on_this_cpu(
    precision: str,
    features: Optional[CpuFeatures] = None,
    measure_bfloat16: Optional[Callable[[], float]] = None,
) -> bool:
    """Whether `precision` runs slower than float32 on this CPU: bfloat16
    without AMX, unless the CPU has avx512_bf16 and `measure_bfloat16()`
    (a bfloat16_speedup) finds its products at least as fast as float32's."""
    if precision != "bfloat16":
        return False
    speedup = _cpu_bfloat16_speedup(cpu_features() if features is None else features, measure_bfloat16)
    return speedup is None or speedup < 1.0


def transformer_precision(transformer: nn.Module) -> str:
    """"bfloat16" when the transformer's floating parameters are bfloat16, else "float32"."""
    for param in transformer.parameters():
        if param.is_floating_point():
            return "bfloat16" if param.dtype == torch.bfloat16 else "float32"
    return "float32"
