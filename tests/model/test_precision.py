"""Choosing the precision: what a config may ask for, what each saved
precision can run in, and "auto" by processor (features mocked)."""
from pathlib import Path

import pytest
import torch

from spacy_earlyexit.model import precision
from spacy_earlyexit.model.precision import (
    BFLOAT16_MIN_SPEEDUP, CpuFeatures, bfloat16_speedup, features_from_flags, read_cpu_flags, resolve_precision,
    slow_on_this_cpu, transformer_precision,
)

AMX = CpuFeatures(amx=True, avx512_bf16=True, vnni=True)
VNNI_ONLY = CpuFeatures(amx=False, avx512_bf16=True, vnni=True)
PLAIN = CpuFeatures()


@pytest.mark.parametrize(
    "configured, saved, features, expected",
    [
        ("auto", "float32", AMX, "bfloat16"),
        ("auto", "float32", VNNI_ONLY, "float32"),  # avx512_bf16 without AMX, not measured
        ("auto", "float32", PLAIN, "float32"),
        ("auto", "bfloat16", PLAIN, "float32"),
        ("auto", "int8", PLAIN, "int8"),
        ("auto", "int8", AMX, "int8"),
        ("float32", "float32", AMX, "float32"),
        ("bfloat16", "float32", PLAIN, "bfloat16"),  # asked for: given (with a warning at load)
        ("float32", "bfloat16", AMX, "float32"),
        ("int8", "int8", PLAIN, "int8"),
    ],
)
def test_resolve(configured, saved, features, expected):
    assert resolve_precision(configured, saved, features=features) == expected


@pytest.mark.parametrize(
    "features, speedup, expected",
    [
        (VNNI_ONLY, 3.0, "bfloat16"),  # avx512_bf16 that measures fast (e.g. recent AMD EPYC)
        (VNNI_ONLY, BFLOAT16_MIN_SPEEDUP, "bfloat16"),
        (VNNI_ONLY, BFLOAT16_MIN_SPEEDUP - 0.01, "float32"),
        (VNNI_ONLY, 0.5, "float32"),  # avx512_bf16 that measures slow
        (PLAIN, 10.0, "float32"),  # no bfloat16 instructions: emulated, never timed
        (AMX, 0.1, "bfloat16"),  # AMX: never timed
    ],
)
def test_auto_on_a_cpu_times_bfloat16_only_where_the_flags_leave_it_open(features, speedup, expected):
    calls = []

    def measure():
        calls.append(1)
        return speedup

    assert resolve_precision("auto", "float32", features=features, measure_bfloat16=measure) == expected
    assert len(calls) == (1 if features == VNNI_ONLY else 0)
    assert resolve_precision("float32", "float32", features=features, measure_bfloat16=measure) == "float32"
    assert resolve_precision("auto", "int8", features=features, measure_bfloat16=measure) == "int8"
    assert len(calls) == (1 if features == VNNI_ONLY else 0)


def test_slow_on_this_cpu_asks_the_measure_only_without_amx():
    assert slow_on_this_cpu("bfloat16", VNNI_ONLY, lambda: 0.6)
    assert not slow_on_this_cpu("bfloat16", VNNI_ONLY, lambda: 1.5)
    assert slow_on_this_cpu("bfloat16", VNNI_ONLY)  # not measured
    assert slow_on_this_cpu("bfloat16", PLAIN, lambda: 5.0)
    assert not slow_on_this_cpu("bfloat16", AMX, lambda: 0.1)
    assert not slow_on_this_cpu("float32", PLAIN)


def test_bfloat16_speedup_is_timed_once_per_shape_and_thread_count(monkeypatch):
    timed = []
    real = precision.F.linear

    def counting_linear(x, w, *args):
        timed.append(x.dtype)
        return real(x, w, *args)

    precision._timed_bfloat16_speedup.cache_clear()
    monkeypatch.setattr(precision.F, "linear", counting_linear)
    first = bfloat16_speedup(32, 64, rows=8, repetitions=3)
    assert first > 0
    assert timed.count(torch.float32) == timed.count(torch.bfloat16) == 4  # warm-up + 3 interleaved pairs
    assert bfloat16_speedup(32, 64, rows=8, repetitions=3) == first
    assert len(timed) == 8  # cached
    bfloat16_speedup(32, 48, rows=8, repetitions=3)
    assert len(timed) == 16  # another shape is timed again
    precision._timed_bfloat16_speedup.cache_clear()


def test_auto_on_cuda_follows_bfloat16_support():
    assert resolve_precision("auto", "float32", device_type="cuda", cuda_bf16=True) == "bfloat16"
    assert resolve_precision("auto", "float32", device_type="cuda", cuda_bf16=False) == "float32"


@pytest.mark.parametrize("configured, saved", [("int8", "float32"), ("float32", "int8"), ("bfloat16", "int8")])
def test_what_cannot_run_is_refused(configured, saved):
    with pytest.raises(ValueError, match="int8"):
        resolve_precision(configured, saved, features=AMX)


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("float16", "float32", features=AMX)


def test_flags_and_cpuinfo(tmp_path: Path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 avx512_vnni amx_bf16 amx_tile\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    flags = read_cpu_flags(info)
    assert features_from_flags(flags) == AMX
    assert features_from_flags(frozenset({"avx_vnni"})) == CpuFeatures(vnni=True)
    assert read_cpu_flags(tmp_path / "missing") == frozenset()


def test_detection_falls_back_to_cpuinfo_when_torch_cannot_tell(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.setattr(precision, "read_cpu_flags", lambda: frozenset({"amx_tile", "avx512_vnni"}))
    assert precision.cpu_features() == CpuFeatures(amx=True, vnni=True)


def test_detection_asks_torch(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: True, raising=False)
    assert precision.cpu_features() == VNNI_ONLY
    assert slow_on_this_cpu("bfloat16") and not slow_on_this_cpu("float32")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert not slow_on_this_cpu("bfloat16")


def test_transformer_precision():
    layer = torch.nn.Linear(2, 2)
    assert transformer_precision(layer) == "float32"
    assert transformer_precision(layer.to(torch.bfloat16)) == "bfloat16"
