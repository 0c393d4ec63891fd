"""Word pieces that never cross a spaCy token boundary (`piece_split`).

A SentencePiece vocabulary (XLM-R, multilingual-e5) holds multi-character
pieces: "北京", "在上海", "2008", "iPhone". On a character doc (spaCy's zh
tokenizer, one token per character) such a piece covers several tokens, and
with the first-piece representation the tokens after the first can only
copy its prediction: a word boundary inside the piece ("在|上海") can never
be predicted, nor an entity edge inside it.

`piece_split` decides which pieces are cut at token boundaries:

- "none": the tokenizer's own pieces (English and the other word-level
  tasks; the default).
- "tokens": every piece that covers several tokens is cut at each token
  boundary inside it, and each part is tokenized again by the tokenizer's
  subword model alone (a SentencePiece word-start marker stays on the first
  part). Pieces inside one token are kept. On a character doc every token
  gets its own piece(s).
- "han": as "tokens", but only at the boundaries next to a Han character
  (CJK ideographs): Latin words and numbers in a Chinese text keep their
  pieces ("iPhone", "2008"), whose characters then share one prediction.

A part is normalized with the tokenizer's normalizer; where that changes
its length (e.g. a ligature), all of its pieces get the part's characters
as offsets (they all belong to the part's one token anyway).
"""
import re
from typing import Iterable, List, Sequence, Tuple

PIECE_SPLITS = ("none", "tokens", "han")

#: CJK ideographs (Unified, Extensions A-F, Compatibility)
HAN = re.compile(
    "[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df\U0002a700-\U0002ebef\U0002f800-\U0002fa1f]"
)


def check_piece_split(piece_split: str) -> str:
    if piece_split not in PIECE_SPLITS:
        raise ValueError(f"piece_split must be one of {', '.join(PIECE_SPLITS)}; got {piece_split!r}")
    return piece_split


def cut_points(text: str, token_starts: Iterable[int], piece_split: str) -> List[int]:
    """The character offsets of `text` (a span's text) where no piece may
    continue: token starts other than 0, all of them ("tokens") or those with
    a Han character on either side ("han"). Sorted."""
    starts = sorted(s for s in token_starts if 0 < s < len(text))
    if piece_split == "han":
        return [s for s in starts if HAN.match(text[s - 1]) or HAN.match(text[s])]
    return starts


def _byte_to_char(text: str) -> List[int]:
    """[len(utf8) + 1] the character index of every byte offset of text."""
    index: List[int] = []
    for position, char in enumerate(text):
        index.extend([position] * len(char.encode("utf8")))
    index.append(len(text))
    return index


class PieceSplitter:
    """Re-tokenizes the parts of crossing pieces with a fast tokenizer's own
    normalizer and subword model (no pre-tokenizer: no word-start marker is
    added)."""

    def __init__(self, tokenizer) -> None:
        backend = tokenizer.backend_tokenizer
        self.normalizer = backend.normalizer
        self.model = backend.model
        self.marker = getattr(backend.pre_tokenizer, "replacement", None)
        self.id_to_token = backend.id_to_token
        self._cache: dict = {}

    def part_pieces(self, part: str, start: int, with_marker: bool) -> List[Tuple[int, Tuple[int, int]]]:
        """(id, (start, end)) of the pieces of one part of a cut piece; start:
        the part's character offset in the span text."""
        key = (part, with_marker)
        cached = self._cache.get(key)
        if cached is None:
            normalized = self.normalizer.normalize_str(part) if self.normalizer is not None else part
            prefix = self.marker if with_marker and self.marker else ""
            string = prefix + normalized
            chars = _byte_to_char(string)
            same_length = len(normalized) == len(part)
            cached = []
            for token in self.model.tokenize(string) if string else []:
                low = max(chars[token.offsets[0]] - len(prefix), 0)
                high = max(chars[token.offsets[1]] - len(prefix), 0)
                if not same_length:
                    low, high = (0, 0) if high == 0 else (0, len(part))
                cached.append((token.id, (low, high)))
            if len(self._cache) < 100_000:
                self._cache[key] = cached
        return [(i, (start + low, start + high)) for i, (low, high) in cached]

    def split(
        self, text: str, ids: Sequence[int], offsets: Sequence[Tuple[int, int]], cuts: Sequence[int]
    ) -> Tuple[List[int], List[Tuple[int, int]]]:
        """The pieces (ids, character offsets in `text`) of one span with every
        piece that contains a cut point (cut_points) tokenized again part by
        part; other pieces (special pieces included) are kept as they are."""
        if not cuts:
            return list(ids), list(offsets)
        new_ids: List[int] = []
        new_offsets: List[Tuple[int, int]] = []
        cut_index, n_cuts = 0, len(cuts)
        for piece_id, (low, high) in zip(ids, offsets):
            while cut_index < n_cuts and cuts[cut_index] <= low:
                cut_index += 1
            inside = []
            scan = cut_index
            while scan < n_cuts and cuts[scan] < high:
                inside.append(cuts[scan])
                scan += 1
            if not inside:
                new_ids.append(piece_id)
                new_offsets.append((low, high))
                continue
            piece = self.id_to_token(piece_id) or ""
            with_marker = bool(self.marker) and piece.startswith(str(self.marker))
            edges = [low] + inside + [high]
            for part_index, (start, end) in enumerate(zip(edges[:-1], edges[1:])):
                for new_id, span in self.part_pieces(text[start:end], start, with_marker and part_index == 0):
                    new_ids.append(new_id)
                    new_offsets.append(span)
        return new_ids, new_offsets
