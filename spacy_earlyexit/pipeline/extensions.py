"""Custom attributes: Token._.exit_layer, Doc._.exit_layers, Doc._.early_exit.

Storage: the exit layers of a doc are ONE doc.user_data entry,
`EXIT_LAYERS_KEY`, holding bytes: the tokens' character offsets
(little-endian uint32, ascending) followed by their exit layers (uint8, 1-based;
0: unset). `token._.exit_layer` and `doc._.exit_layers` are getters that read
it; `token._.exit_layer = value` (and the retokenizer's `attrs={"_": ...}`)
writes into it. One entry per doc, not one per token as spaCy stores token
extensions with a default value: Doc.to_bytes() packs one msgpack `bin`
value instead of 2 x len(doc) keys and values. Being an ordinary user_data
value, it survives doc.to_bytes(), DocBin(store_user_data=True), doc.copy()
and nlp.pipe(..., n_process=2). (What made serializing docs with user_data
slow was srsly's registry scan per msgpack call: msgpack_speed.py.)

Values are keyed by character offset, as spaCy keys token extension values:
after a retokenization the component did not arrange, a merged token keeps
the value of its first token and a token at a new offset has none (None),
exactly as before. Segmentation (segmentation.merge_words) writes the merged
words' values itself. Docs written before this storage (one user_data key per
token) are still read.

Not carried by Doc.from_docs, which keeps only per-token and per-span
extension keys (spaCy warns W102 and drops the entry).
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy
from spacy.attrs import IDX
from spacy.tokens import Doc, Token

#: the doc.user_data key of a doc's exit layers (see the module docstring)
EXIT_LAYERS_KEY = "spacy_earlyexit.exit_layers"
#: exit layers are stored as uint8: 1..MAX_STORED_LAYER, 0 for unset
MAX_STORED_LAYER = 255
_OFFSET_DTYPE = numpy.dtype("<u4")
_LAYER_DTYPE = numpy.dtype("u1")
_BYTES_PER_TOKEN = _OFFSET_DTYPE.itemsize + _LAYER_DTYPE.itemsize
_MAX_OFFSET = int(numpy.iinfo(_OFFSET_DTYPE).max)


def _legacy_key(char_offset: int) -> Tuple[str, str, int, None]:
    """Where spaCy's default-value token extension kept a token's value
    (docs saved before the compact storage)."""
    return ("._.", "exit_layer", char_offset, None)


def encode_exit_layers(char_offsets: numpy.ndarray, exit_layers: Sequence[Optional[int]]) -> bytes:
    """The stored value: char_offsets [N] ascending ints, exit_layers [N]
    1-based ints or None (unset); the two of the same length."""
    if len(char_offsets) != len(exit_layers):
        raise ValueError(f"{len(exit_layers)} exit layers for {len(char_offsets)} offsets")
    try:
        layers = numpy.asarray(exit_layers, dtype="int64")
    except TypeError:  # None among them
        layers = numpy.asarray([0 if layer is None else layer for layer in exit_layers], dtype="int64")
    offsets = numpy.asarray(char_offsets, dtype="int64")
    if layers.size:
        if layers.min() < 0 or layers.max() > MAX_STORED_LAYER:
            raise ValueError(f"exit layers must lie in 1..{MAX_STORED_LAYER} (or be None); got {layers.tolist()}")
        if offsets[-1] > _MAX_OFFSET:
            raise ValueError("docs longer than 2**32 characters cannot store exit layers")
    return offsets.astype(_OFFSET_DTYPE).tobytes() + layers.astype(_LAYER_DTYPE).tobytes()


def decode_exit_layers(data: bytes) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """(char offsets [N] uint32, exit layers [N] uint8, 0 = unset) of a stored value."""
    n_tokens = len(data) // _BYTES_PER_TOKEN
    offsets = numpy.frombuffer(data, dtype=_OFFSET_DTYPE, count=n_tokens)
    layers = numpy.frombuffer(data, dtype=_LAYER_DTYPE, count=n_tokens, offset=n_tokens * _OFFSET_DTYPE.itemsize)
    return offsets, layers


def _token_exit_layer(token: Token) -> Optional[int]:
    """Getter of Token._.exit_layer: the token's 1-based exit layer, or None."""
    user_data = token.doc.user_data
    data = user_data.get(EXIT_LAYERS_KEY)
    if data is None:
        return user_data.get(_legacy_key(token.idx))
    n_tokens = len(data) // _BYTES_PER_TOKEN
    i, char_offset = token.i, token.idx
    width = _OFFSET_DTYPE.itemsize
    if i < n_tokens and int.from_bytes(data[i * width:(i + 1) * width], "little") == char_offset:
        position = i  # the stored tokens are the doc's tokens (the usual case)
    else:  # the doc was retokenized since: look the offset up
        offsets, _ = decode_exit_layers(data)
        position = int(numpy.searchsorted(offsets, char_offset))
        if position == n_tokens or offsets[position] != char_offset:
            return None
    return data[n_tokens * width + position] or None


def _set_token_exit_layer(token: Token, value: Optional[int]) -> None:
    """Setter of Token._.exit_layer (value: 1-based layer, or None to unset)."""
    doc = token.doc
    data = doc.user_data.get(EXIT_LAYERS_KEY)
    if data is None:  # start from the doc's offsets (and any legacy values)
        offsets = doc.to_array(IDX).astype("int64")
        layers: List[Optional[int]] = _doc_exit_layers(doc)
    else:
        stored_offsets, stored_layers = decode_exit_layers(data)
        offsets = stored_offsets.astype("int64")
        layers = [int(layer) or None for layer in stored_layers]
    position = int(numpy.searchsorted(offsets, token.idx))
    if position < len(offsets) and offsets[position] == token.idx:
        layers[position] = value
    else:
        offsets = numpy.insert(offsets, position, token.idx)
        layers.insert(position, value)
    doc.user_data[EXIT_LAYERS_KEY] = encode_exit_layers(offsets, layers)


def _doc_exit_layers(doc: Doc) -> List[Optional[int]]:
    """Getter of Doc._.exit_layers: per token, its exit layer or None."""
    data = doc.user_data.get(EXIT_LAYERS_KEY)
    if data is None:
        return [doc.user_data.get(_legacy_key(char_offset)) for char_offset in doc.to_array(IDX).tolist()]
    offsets, layers = decode_exit_layers(data)
    doc_offsets = doc.to_array(IDX)
    if len(offsets) == len(doc_offsets) and numpy.array_equal(offsets, doc_offsets):
        values = layers
    else:  # retokenized since: match by offset
        if not len(offsets):
            return [None] * len(doc)
        positions = numpy.minimum(numpy.searchsorted(offsets, doc_offsets), len(offsets) - 1)
        values = numpy.where(offsets[positions] == doc_offsets, layers[positions], 0)
    return [int(layer) or None for layer in values.tolist()]


def register_extensions() -> None:
    """Register the attributes (safe to call again; replaces an
    `exit_layer` registered some other way, so that one storage is in use)."""
    if not Token.has_extension("exit_layer") or Token.get_extension("exit_layer")[2] is not _token_exit_layer:
        Token.set_extension("exit_layer", getter=_token_exit_layer, setter=_set_token_exit_layer, force=True)
    if not Doc.has_extension("exit_layers"):
        Doc.set_extension("exit_layers", getter=_doc_exit_layers)
    if not Doc.has_extension("early_exit"):
        Doc.set_extension("early_exit", default=None)


def set_exit_layers(doc: Doc, exit_layers: Sequence[Optional[int]]) -> None:
    """Set Token._.exit_layer on every token of `doc` at once.

    exit_layers: [len(doc)] 1-based layers (None: unset). Writes the one
    user_data entry (EXIT_LAYERS_KEY), replacing any earlier values.
    """
    if len(exit_layers) != len(doc):
        raise ValueError(f"{len(exit_layers)} exit layers for a doc of {len(doc)} tokens")
    doc.user_data[EXIT_LAYERS_KEY] = encode_exit_layers(doc.to_array(IDX), exit_layers)


def get_exit_layers(doc: Doc) -> List[Optional[int]]:
    """Per token of `doc`, its exit layer or None (what doc._.exit_layers gives)."""
    return _doc_exit_layers(doc)


def has_exit_layers(doc: Doc) -> bool:
    """Whether any exit layer is stored on `doc` (either storage)."""
    return EXIT_LAYERS_KEY in doc.user_data or any(
        isinstance(key, tuple) and key[:2] == ("._.", "exit_layer") for key in doc.user_data
    )


def exit_summary(
    exit_layers: List[int], cost: float, full_cost: float, int8_cost: Optional[float] = None
) -> Dict[str, Any]:
    """Doc._.early_exit: mean exit layer and analytic speed-up of one doc.

    cost, full_cost: multiply-adds with early exit and at full depth.
    int8_cost (int8 pipelines): the part of `cost` that ran in int8, given
    as "int8_flops" (the float32 part is "flops" minus it).
    """
    summary = {
        "exit_layer_mean": sum(exit_layers) / len(exit_layers) if exit_layers else 0.0,
        "flops": cost,
        "flops_full": full_cost,
        "flops_speedup": full_cost / cost if cost > 0 else 1.0,
    }
    if int8_cost is not None:
        summary["int8_flops"] = int8_cost
    return summary
