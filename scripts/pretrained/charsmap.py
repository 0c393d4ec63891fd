"""A SentencePiece `precompiled_charsmap` built from a codepoint -> text map.

`tokenizers.normalizers.Precompiled` applies such a blob in one pass (one trie
walk per character), where a `Sequence` of one `Replace` per mapped codepoint
would scan the text once per entry. The blob is what SentencePiece stores in
its models: u32 byte length of a double-array trie, the trie (u32 units in
the darts-clone layout, as `spm_precompiled` reads them), then the
replacement strings, each ending in NUL. A key is the UTF-8 of the source
character; the value at its leaf is the byte offset of its replacement.

darts-clone unit layout (u32): bits 0-7 label; bit 8 "a key ends here" (its
value sits in the unit at `position ^ offset`); bit 9 offset scaled by 256;
bits 10-31 offset; a leaf unit holds its value in bits 0-30 and bit 31 set.
A child with label c of the node at p with offset o sits at p ^ o ^ c; the
base p ^ o of every node is distinct, so a unit's label identifies its parent.
"""
import struct
from collections import deque
from typing import Dict, List, Set, Tuple

_LEAF_BIT = 1 << 31
_HAS_LEAF_BIT = 1 << 8
_MAX_PLAIN_OFFSET = 1 << 21


class _Node:
    __slots__ = ("children", "value")

    def __init__(self) -> None:
        self.children: Dict[int, "_Node"] = {}
        self.value = -1  # replacement offset if a key ends here


def _build_trie(keys: List[Tuple[bytes, int]]) -> _Node:
    root = _Node()
    for key, value in keys:
        node = root
        for byte in key:
            node = node.children.setdefault(byte, _Node())
        node.value = value
    return root


def _replacement_blob(mapping: Dict[int, str]) -> Tuple[bytes, Dict[str, int]]:
    """All distinct replacements, NUL-terminated; returns blob and offsets."""
    blob = bytearray()
    offsets: Dict[str, int] = {}
    for text in sorted(set(mapping.values())):
        offsets[text] = len(blob)
        blob += text.encode("utf-8") + b"\0"
    return bytes(blob), offsets


def precompiled_charsmap(mapping: Dict[int, str]) -> bytes:
    """Serialize codepoint -> replacement (possibly "") as a precompiled charsmap.

    Args:
        mapping: source codepoint -> replacement text (an empty text deletes
            the character). Codepoint 0 cannot be a key (NUL ends a key).
    Returns:
        the bytes for `tokenizers.normalizers.Precompiled(...)`.
    """
    if 0 in mapping:
        raise ValueError("codepoint 0 cannot be mapped in a precompiled charsmap")
    blob, value_of = _replacement_blob(mapping)
    root = _build_trie([(chr(cp).encode("utf-8"), value_of[text]) for cp, text in mapping.items()])
    units = _place(root)
    trie = struct.pack(f"<{len(units)}I", *units)
    return struct.pack("<I", len(trie)) + trie + blob


def _place(root: _Node) -> List[int]:
    """Lay the trie out as a double array (greedy first fit, breadth first)."""
    used = bytearray(1 << 12)
    used[0] = 1
    units: Dict[int, int] = {}
    bases: Set[int] = set()
    queue = deque([(root, 0)])
    first_free = 1
    while queue:
        node, position = queue.popleft()
        labels = sorted(node.children)
        if node.value >= 0:
            labels = [0] + labels
        while first_free < len(used) and used[first_free]:
            first_free += 1
        offset = _find_offset(used, bases, position, labels, first_free)
        while (offset | 0xFF | position) >= len(used):  # keep every reachable unit in range
            used.extend(bytes(len(used)))
            offset = _find_offset(used, bases, position, labels, first_free)
        if offset >= _MAX_PLAIN_OFFSET:
            raise ValueError("charsmap trie too large for plain darts offsets")
        bases.add(position ^ offset)
        units[position] = units.get(position, 0) | (offset << 10)
        for label in labels:
            child_position = position ^ offset ^ label
            used[child_position] = 1
            if label == 0:
                units[child_position] = _LEAF_BIT | node.value
                continue
            child = node.children[label]
            units[child_position] = label | (_HAS_LEAF_BIT if child.value >= 0 else 0)
            queue.append((child, child_position))
    array = [0] * len(used)  # a power of two: XORs of in-range values stay in range
    for position, unit in units.items():
        array[position] = unit
    return array


def _find_offset(used: bytearray, bases: Set[int], position: int, labels: List[int], first_free: int) -> int:
    """The smallest offset > 0 putting every child of `position` on a free unit,
    with a base (position ^ offset) no other node has (len(used) if none yet)."""
    capacity = len(used)
    for candidate in range(first_free, capacity):
        if used[candidate]:
            continue
        offset = candidate ^ position ^ labels[0]
        if offset == 0 or (position ^ offset) in bases:
            continue
        if all((position ^ offset ^ label) < capacity and not used[position ^ offset ^ label] for label in labels):
            return offset
    return capacity
