"""Tiny E5S1 files for the tests, written with `struct` straight from the format
description (docs/E5_BACKBONE.md), independently of the package's reader.

Q4_0 tensors are encoded here by hand from known nibbles and scales, so a
test can compare the reader's output with (nibble - 8) * scale computed
without any bytes.
"""
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

F32, Q4_0 = 0, 1

#: pieces of the tiny vocabulary: XLM-R's specials, then pieces with scores,
#: `<mask>` last (score 0 like the specials)
TINY_PIECES: List[Tuple[str, float]] = [
    ("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0),
    ("▁", -2.5), ("▁the", -3.1), ("▁cat", -4.2), ("the", -5.3), ("cat", -5.9),
    ("t", -6.1), ("h", -6.4), ("e", -5.2), ("c", -6.6), ("a", -5.7), ("s", -5.5),
    ("▁sat", -4.9), ("on", -4.4), ("▁on", -3.9), ("▁ca", -4.7), ("ts", -4.8),
    ("東京", -7.1), ("東", -8.3), ("京", -8.4), ("は", -6.2), ("大きい", -9.0),
    ("大", -7.7), ("き", -8.8), ("い", -7.9), (",", -3.3), (".", -3.0),
    ("A", -6.9), ("B", -7.3), ("ab", -6.0), ("▁ab", -5.4), ("b", -6.8),
    ("fi", -6.3), ("▁fi", -5.8), ("x", -9.5), ("1", -6.7), ("▁1", -6.05),
    ("<mask>", 0.0),
]
#: full-width letters -> ASCII, tab and ideographic space -> space, a ligature
#: -> two letters, a control character deleted
TINY_NORMALIZATION: Dict[int, str] = {
    0xFF21: "A", 0xFF22: "B", 0xFF41: "a", 0xFF42: "b", 0x09: " ", 0x3000: " ",
    0xFB01: "fi", 0x2460: "1", 0x01: "",
}


@dataclass
class TinyModel:
    """Dimensions and float weights of a tiny model; `nibbles`/`scales` give
    the Q4_0 tensors exactly ((nibble - 8) * scale)."""

    hidden: int = 64
    layers: int = 2
    heads: int = 4
    intermediate: int = 128
    vocab_rows: int = len(TINY_PIECES) + 3  # a few rows without a piece, like the real file
    positions: int = 32
    token_types: int = 2
    eps: float = 1e-12
    seed: int = 0
    nibbles: Dict[str, np.ndarray] = field(default_factory=dict)
    scales: Dict[str, np.ndarray] = field(default_factory=dict)
    floats: Dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        H, FF = self.hidden, self.intermediate
        q4_shapes = {"emb.word": (self.vocab_rows, H)}
        f32_shapes = {"emb.pos": (self.positions, H), "emb.type": (self.token_types, H)}
        for layer in range(self.layers):
            for kind, shape in (("q", (H, H)), ("k", (H, H)), ("v", (H, H)), ("ao", (H, H)),
                                ("fi", (FF, H)), ("fo", (H, FF))):
                q4_shapes[f"l{layer}.{kind}.w"] = shape
                f32_shapes[f"l{layer}.{kind}.b"] = (shape[0],)
        for name, shape in q4_shapes.items():
            self.nibbles[name] = rng.integers(0, 16, size=shape, dtype=np.uint8)
            # fp16 scales, exactly representable; a small spread like real weights
            self.scales[name] = rng.uniform(0.004, 0.03, size=(shape[0], shape[1] // 32)).astype(np.float16)
        for name, shape in f32_shapes.items():
            self.floats[name] = rng.normal(0.0, 0.1, size=shape).astype(np.float32)
        for prefix in ["emb.ln"] + [f"l{i}.{ln}" for i in range(self.layers) for ln in ("aln", "oln")]:
            self.floats[f"{prefix}.w"] = (1.0 + rng.normal(0.0, 0.1, size=H)).astype(np.float32)
            self.floats[f"{prefix}.b"] = rng.normal(0.0, 0.1, size=H).astype(np.float32)

    def weight(self, name: str) -> np.ndarray:
        """Any tensor as float64, Q4_0 ones from nibbles and scales (no bytes)."""
        if name in self.floats:
            return self.floats[name].astype(np.float64)
        nibbles = self.nibbles[name].astype(np.float64) - 8.0
        scales = np.repeat(self.scales[name].astype(np.float64), 32, axis=1)
        return nibbles * scales


def encode_q4_0(nibbles: np.ndarray, scales: np.ndarray) -> bytes:
    """Rows of nibbles [rows, cols] and fp16 scales [rows, cols / 32] -> Q4_0
    bytes, one block at a time: scale, then byte j = nibble j | nibble j+16 << 4."""
    out = bytearray()
    for row, row_scales in zip(nibbles, scales):
        for block, scale in enumerate(row_scales):
            values = row[block * 32:(block + 1) * 32]
            out += struct.pack("<e", float(scale))
            out += bytes(int(values[j]) | (int(values[j + 16]) << 4) for j in range(16))
    return bytes(out)


def tensor_payloads(model: TinyModel) -> Dict[str, Tuple[int, int, bytes]]:
    """name -> (dtype, element count, bytes), in the engine's order."""
    names = ["emb.word", "emb.pos", "emb.type", "emb.ln.w", "emb.ln.b"]
    for layer in range(model.layers):
        for kind in ("q", "k", "v", "ao", "aln", "fi", "fo", "oln"):
            names += [f"l{layer}.{kind}.w", f"l{layer}.{kind}.b"]
    payloads = {}
    for name in names:
        if name in model.nibbles:
            payloads[name] = (Q4_0, model.nibbles[name].size, encode_q4_0(model.nibbles[name], model.scales[name]))
        else:
            array = model.floats[name]
            payloads[name] = (F32, array.size, array.astype("<f4").tobytes())
    return payloads


def write_e5_file(
    path: Path,
    model: TinyModel,
    pieces: List[Tuple[str, float]] = TINY_PIECES,
    normalization: Dict[int, str] = TINY_NORMALIZATION,
    special_ids: Tuple[int, int, int, int] = (0, 2, 1, 3),  # bos, eos, pad, unk
    magic: bytes = b"E5S1",
    version: int = 1,
    payloads: Optional[Dict[str, Tuple[int, int, bytes]]] = None,
    offsets: Optional[Dict[str, int]] = None,
) -> Dict[str, int]:
    """Write an E5S1 file; returns the byte positions of its sections
    (`directory`, `data`, `end`). `offsets` overrides where the directory says
    a tensor is (to make broken files)."""
    out = bytearray()
    out += magic + struct.pack("<I", version)
    out += struct.pack("<7i", model.hidden, model.layers, model.heads, model.intermediate,
                       model.vocab_rows, model.positions, model.token_types)
    out += struct.pack("<fi", model.eps, 32)
    blobs = [piece.encode("utf-8") for piece, _ in pieces]
    out += struct.pack("<5iQ", len(pieces), *special_ids, sum(len(b) for b in blobs))
    starts = np.cumsum([0] + [len(b) for b in blobs])
    out += struct.pack(f"<{len(starts)}I", *starts)
    out += struct.pack(f"<{len(pieces)}f", *(score for _, score in pieces))
    out += b"".join(blobs)
    records = bytearray()
    for codepoint, text in normalization.items():
        records += struct.pack("<IB", codepoint, len(text))
        records += struct.pack(f"<{len(text)}I", *(ord(c) for c in text))
    out += struct.pack("<iI", len(normalization), len(records)) + records
    payloads = tensor_payloads(model) if payloads is None else payloads
    directory_at = len(out)
    entries_size = 4 + sum(2 + len(name.encode()) + 21 for name in payloads)
    data_at = (directory_at + entries_size + 63) // 64 * 64
    out += struct.pack("<i", len(payloads))
    cursor, data = data_at, bytearray()
    for name, (dtype, count, payload) in payloads.items():
        encoded = name.encode()
        offset = (offsets or {}).get(name, cursor)
        out += struct.pack("<H", len(encoded)) + encoded + struct.pack("<BIQQ", dtype, count, offset, len(payload))
        data += payload
        cursor += len(payload)
    out += bytes(data_at - len(out)) + data
    Path(path).write_bytes(bytes(out))
    return {"directory": directory_at, "data": data_at, "end": len(out)}
