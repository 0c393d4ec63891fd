"""The data that moves between the layer's steps: docs as tokenized spans
(DocPieces, in flat arrays), and per-token results (TokenOutputs)."""
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy
import torch
from spacy.tokens import Doc, Span

from ..model import EncoderBatch

SpanGetter = Callable[[List[Doc]], List[List[Span]]]


def segment_positions(counts: numpy.ndarray) -> numpy.ndarray:
    """[sum(counts)] position of each element within its segment:
    counts [3, 2] -> [0, 1, 2, 0, 1]."""
    counts = numpy.asarray(counts, dtype="int64")
    starts = numpy.cumsum(counts) - counts
    return numpy.arange(int(counts.sum()), dtype="int64") - numpy.repeat(starts, counts)


def segment_offsets(counts: numpy.ndarray) -> numpy.ndarray:
    """[n + 1] segment boundaries of segments of the given sizes."""
    offsets = numpy.zeros(len(counts) + 1, dtype="int64")
    numpy.cumsum(counts, out=offsets[1:])
    return offsets


@dataclass
class SpanPieces:
    """One tokenized span, as lists (for inspection; see DocPieces.span).

    doc_index: which doc of the batch it comes from; start, end: token offsets
    in the doc. input_ids: [T] piece ids including special pieces.
    word_tokens: [W] doc token index of each word; word_piece: [W] its
    representative piece; piece_word: [T] owning word slot or -1;
    word_n_pieces: [W] pieces owned by each word.
    """

    doc_index: int
    start: int
    end: int
    input_ids: List[int]
    word_tokens: List[int]
    word_piece: List[int]
    piece_word: List[int]
    word_n_pieces: List[int]


@dataclass
class DocPieces:
    """A batch of docs as tokenized spans, in flat arrays.

    S spans (each with at least one word), P pieces, W words; the pieces and
    words of span s are piece_offsets[s]:piece_offsets[s + 1] and
    word_offsets[s]:word_offsets[s + 1].

    span_doc, span_start, span_end: [S] int, the doc of each span and its
        token offsets in the doc.
    piece_offsets: [S + 1]; input_ids: [P] piece ids, special pieces included.
    piece_word: [P] the slot (within its span) of the word owning each piece,
        or -1 ([CLS], [SEP], pieces no token owns).
    word_offsets: [S + 1]; word_token: [W] doc token index of each word;
    word_piece: [W] position (within its span) of the word's first piece;
    word_n_pieces: [W] pieces owned by each word.
    token_sources: [N, 2] int over the N tokens of all docs, one doc after
        another: (span, word slot) giving each token's output, or (-1, -1)
        for a token with no word piece of its own.
    token_offsets: [D + 1] where each doc's tokens start in token_sources.
    word_case: [W] case class of each word's token (layers/word_case.py), or
        None when the encoder takes no case classes.
    """

    span_doc: numpy.ndarray
    span_start: numpy.ndarray
    span_end: numpy.ndarray
    piece_offsets: numpy.ndarray
    input_ids: numpy.ndarray
    piece_word: numpy.ndarray
    word_offsets: numpy.ndarray
    word_token: numpy.ndarray
    word_piece: numpy.ndarray
    word_n_pieces: numpy.ndarray
    token_sources: numpy.ndarray
    token_offsets: numpy.ndarray
    word_case: Optional[numpy.ndarray] = None

    @property
    def n_spans(self) -> int:
        return len(self.span_doc)

    @property
    def n_words(self) -> int:
        return len(self.word_token)

    @property
    def token_source(self) -> List[numpy.ndarray]:
        """token_sources split by doc: per doc, [n_tokens, 2]."""
        return numpy.split(self.token_sources, self.token_offsets[1:-1]) if len(self.token_offsets) > 1 else []

    @property
    def span_lengths(self) -> numpy.ndarray:
        """[S] pieces of each span (special pieces included)."""
        return numpy.diff(self.piece_offsets)

    def span(self, index: int) -> SpanPieces:
        """Span `index` as lists."""
        pieces = slice(self.piece_offsets[index], self.piece_offsets[index + 1])
        words = slice(self.word_offsets[index], self.word_offsets[index + 1])
        return SpanPieces(
            doc_index=int(self.span_doc[index]),
            start=int(self.span_start[index]),
            end=int(self.span_end[index]),
            input_ids=self.input_ids[pieces].tolist(),
            word_tokens=self.word_token[words].tolist(),
            word_piece=self.word_piece[words].tolist(),
            piece_word=self.piece_word[pieces].tolist(),
            word_n_pieces=self.word_n_pieces[words].tolist(),
        )

    def words_of(self, span_indices: Union[Sequence[int], numpy.ndarray]) -> numpy.ndarray:
        """[W'] indices of the words of the given spans, in that order."""
        spans = numpy.asarray(span_indices, dtype="int64")
        counts = self.word_offsets[spans + 1] - self.word_offsets[spans]
        return numpy.repeat(self.word_offsets[spans], counts) + segment_positions(counts)

    def encoder_batch(self, span_indices: Sequence[int], pad_id: int) -> EncoderBatch:
        """Pad the chosen spans into one EncoderBatch (tensors on the CPU)."""
        spans = numpy.asarray(span_indices, dtype="int64")
        lengths = self.piece_offsets[spans + 1] - self.piece_offsets[spans]
        n_rows, length = len(spans), int(lengths.max())
        rows = numpy.repeat(numpy.arange(n_rows), lengths)
        columns = segment_positions(lengths)
        source = numpy.repeat(self.piece_offsets[spans], lengths) + columns
        n_words = self.word_offsets[spans + 1] - self.word_offsets[spans]
        words = self.words_of(spans)
        first_word = numpy.cumsum(n_words) - n_words  # of each row, in the batch
        owners = self.piece_word[source]
        input_ids = numpy.full((n_rows, length), pad_id, dtype="int64")
        input_ids[rows, columns] = self.input_ids[source]
        piece_word = numpy.full((n_rows, length), -1, dtype="int64")
        piece_word[rows, columns] = numpy.where(owners >= 0, owners + first_word[rows], -1)
        piece_case = None
        if self.word_case is not None:
            batch_case = numpy.zeros((n_rows, length), dtype="int64")
            owner_word = numpy.where(owners >= 0, owners + self.word_offsets[spans][rows], 0)
            batch_case[rows, columns] = numpy.where(owners >= 0, self.word_case[owner_word], 0)
            piece_case = torch.from_numpy(batch_case)
        return EncoderBatch(
            input_ids=torch.from_numpy(input_ids),
            lengths=torch.from_numpy(lengths),
            word_span=torch.from_numpy(numpy.repeat(numpy.arange(n_rows), n_words)),
            word_slot=torch.from_numpy(segment_positions(n_words)),
            word_piece=torch.from_numpy(self.word_piece[words]),
            piece_word=torch.from_numpy(piece_word),
            piece_case=piece_case,
        )


@dataclass
class TokenOutputs:
    """Per-doc results of a forward pass.

    labels: per doc [n_tokens] int class index (-1 where the doc has no token
        with a word piece).
    exit_layers: per doc [n_tokens] int, 1-based (0 where labels is -1).
    has_output: per doc [n_tokens] bool, whether the token has its own output
        (False: it took a neighbour's, e.g. whitespace).
    costs: per doc (multiply-adds with early exit, at full depth, and on int8 encoders the int8 part).
    layer_logits: [L, N, C] float32 over all N tokens of the batch, in doc
        order (training only); layer_active: [L, N] bool, the token was still
        computed at that layer (training only).
    layer_labels: per doc [L, n_tokens] int, every off-ramp's class (only
        when the model's attrs ask for it: per-layer scoring at full depth).
    reference_layer_logits: [L, N, C] float32, the stage-1 model's logits at
        full depth (self-sampling with loss flooding only).
    lenders: per doc [n_tokens] int, the token (position in the doc) whose
        output each token took (itself where has_output; -1: none), when known.
    """

    labels: List[numpy.ndarray]
    exit_layers: List[numpy.ndarray]
    has_output: List[numpy.ndarray]
    costs: List[Tuple[float, ...]]
    layer_logits: Optional[numpy.ndarray] = None
    layer_active: Optional[numpy.ndarray] = None
    layer_labels: Optional[List[numpy.ndarray]] = None
    reference_layer_logits: Optional[numpy.ndarray] = None
    lenders: Optional[List[numpy.ndarray]] = None
