"""A BERT-family encoder with an off-ramp on every layer and early exit.

The layer loop is explicit: after each layer the off-ramp of that layer labels
the words that are still active, the exit rule decides who leaves, exited words
are frozen (their pieces keep their state and serve as keys/values), and spans
whose words have all exited are dropped from the batch.
"""
import warnings
from dataclasses import dataclass
from typing import List, Optional

import torch
from torch import nn

from .cost_model import EncoderShape
from .exit_policy import sentence_exits, token_exits
from .exit_settings import ExitSettings
from .packed_layer import PieceLayout, is_packable, masked_layer_forward, packed_layer_forward
from .uncertainty import normalized_entropy


@dataclass
class EncoderBatch:
    """Word-piece input for a batch of S spans padded to T pieces, with W words.

    input_ids: [S, T] long, padded with the tokenizer's pad id.
    lengths: [S] long, real pieces per span (padding is on the right).
    word_span: [W] long, the span of each word.
    word_slot: [W] long, the word's position among its span's words.
    word_piece: [W] long, position (0..T-1) of the piece that represents the
        word (its first word piece).
    piece_word: [S, T] long, the word that owns each piece (its pieces exit
        with it), or -1 for pieces of no word ([CLS], [SEP], padding).
    """

    input_ids: torch.Tensor
    lengths: torch.Tensor
    word_span: torch.Tensor
    word_slot: torch.Tensor
    word_piece: torch.Tensor
    piece_word: torch.Tensor

    @property
    def n_spans(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def n_words(self) -> int:
        return int(self.word_span.shape[0])

    def real_mask(self) -> torch.Tensor:
        """[S, T] bool: real (non-padding) pieces."""
        positions = torch.arange(self.input_ids.shape[1], device=self.input_ids.device)
        return positions[None, :] < self.lengths[:, None]

    def to(self, device: torch.device) -> "EncoderBatch":
        return EncoderBatch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


@dataclass
class EncoderOutput:
    """What one forward pass gives, per word.

    exit_layer: [W] long, 1-based layer at which each word exited.
    labels: [W] long, argmax of the off-ramp at the exit layer.
    exit_logits: [W, C] float, that off-ramp's logits.
    layer_logits: [L, W, C] float, every layer's logits (zeros where a word was
        no longer active), when requested.
    layer_active: [L, W] bool, whether a word was active at each layer, when
        layer_logits was requested.
    hidden_states: L + 1 tensors [S, T, d] (embeddings, then each layer), when
        requested.
    """

    exit_layer: torch.Tensor
    labels: torch.Tensor
    exit_logits: torch.Tensor
    layer_logits: Optional[torch.Tensor] = None
    layer_active: Optional[torch.Tensor] = None
    hidden_states: Optional[List[torch.Tensor]] = None


class OffRamp(nn.Module):
    """Dropout + linear from a layer's hidden state to the label set."""

    def __init__(self, hidden_size: int, n_classes: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden_size, n_classes)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [N, d] -> logits [N, C]"""
        return self.linear(self.dropout(hidden))


class EarlyExitEncoder(nn.Module):
    """Wraps a Hugging Face BERT-family model (`transformer`) with off-ramps."""

    def __init__(self, transformer: nn.Module, n_classes: int, offramp_dropout: float = 0.1):
        super().__init__()
        if not hasattr(transformer, "embeddings") or not hasattr(
            getattr(transformer, "encoder", None), "layer"
        ):
            raise ValueError(
                f"{type(transformer).__name__} is not a BERT-family encoder "
                "(expected .embeddings and .encoder.layer); supported: BERT, RoBERTa, "
                "XLM-R, ELECTRA, MiniLM and other models with that structure"
            )
        if n_classes < 1:
            raise ValueError(f"n_classes must be >= 1; got {n_classes}")
        self.transformer = transformer
        config = transformer.config
        self.hidden_size = int(config.hidden_size)
        self.n_classes = n_classes
        self.offramps = nn.ModuleList(
            OffRamp(self.hidden_size, n_classes, offramp_dropout) for _ in self.layers
        )
        self.packed = all(is_packable(layer) for layer in self.layers)
        if not self.packed:
            warnings.warn(
                f"{type(self.layers[0]).__name__} layers are not of the BERT structure: "
                "early exit uses the masked path, which is correct but saves no time",
                stacklevel=2,
            )

    @property
    def layers(self) -> nn.ModuleList:
        return self.transformer.encoder.layer

    @property
    def n_layers(self) -> int:
        return len(self.transformer.encoder.layer)

    @property
    def shape(self) -> EncoderShape:
        config = self.transformer.config
        return EncoderShape(
            n_layers=self.n_layers,
            hidden_size=self.hidden_size,
            intermediate_size=int(config.intermediate_size),
            n_classes=self.n_classes,
        )

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids: [S, T] -> [S, T, d]"""
        hidden = self.transformer.embeddings(input_ids=input_ids)
        project = getattr(self.transformer, "embeddings_project", None)  # ELECTRA
        return project(hidden) if project is not None else hidden

    def forward(
        self,
        batch: EncoderBatch,
        settings: Optional[ExitSettings] = None,
        forced_exit_layer: Optional[torch.Tensor] = None,
        return_layer_logits: bool = False,
        output_hidden_states: bool = False,
    ) -> EncoderOutput:
        """Run the encoder with early exit.

        settings: the exit rule (None: full depth).
        forced_exit_layer: [W] long, 1-based exit layer per word, used instead of
            the exit rule (self-sampling fine-tuning).
        return_layer_logits: also return every layer's logits (training).
        output_hidden_states: also return each layer's states; finished spans are
            then kept in the batch so that every state is available.
        """
        settings = settings or ExitSettings()
        n_layers, n_words = self.n_layers, batch.n_words
        device = batch.input_ids.device
        thresholds = settings.layer_thresholds(n_layers)
        mode = settings.exit_mode if forced_exit_layer is None else "forced"

        real_all = batch.real_mask()
        hidden = self.embed(batch.input_ids)
        rows = torch.arange(batch.n_spans, device=device)  # original span of each row
        row_of_span = rows.clone()
        word_active = torch.ones(n_words, dtype=torch.bool, device=device)
        exit_layer = torch.full((n_words,), n_layers, dtype=torch.long, device=device)
        labels = torch.zeros(n_words, dtype=torch.long, device=device)
        exit_logits = hidden.new_zeros(n_words, self.n_classes)
        n_slots = int(batch.word_slot.max()) + 1 if n_words else 0
        uncertainty = hidden.new_zeros(batch.n_spans, n_slots)
        word_grid = torch.zeros(batch.n_spans, n_slots, dtype=torch.bool, device=device)
        word_grid[batch.word_span, batch.word_slot] = True
        layer_logits = hidden.new_zeros(n_layers, n_words, self.n_classes) if return_layer_logits else None
        layer_active = (
            torch.zeros(n_layers, n_words, dtype=torch.bool, device=device) if return_layer_logits else None
        )
        hidden_states = [hidden] if output_hidden_states else None
        inplace = not output_hidden_states and not torch.is_grad_enabled()
        # spans without words have nothing to compute
        has_words = torch.zeros(batch.n_spans, dtype=torch.bool, device=device)
        has_words[batch.word_span] = True
        if not bool(has_words.all()) and not output_hidden_states:
            hidden, rows, row_of_span = self._keep_rows(hidden, rows, has_words, batch.n_spans)

        for layer_index, layer in enumerate(self.layers):
            if hidden.shape[0] == 0:
                break
            real = real_all.index_select(0, rows)[:, : hidden.shape[1]]
            piece_word = batch.piece_word.index_select(0, rows)[:, : hidden.shape[1]]
            active_pieces = real & ((piece_word < 0) | word_active[piece_word.clamp(min=0)])
            span_running = torch.zeros(batch.n_spans, dtype=torch.bool, device=device)
            span_running[batch.word_span[word_active]] = True
            active_pieces &= span_running.index_select(0, rows)[:, None]
            if self.packed:
                layout = PieceLayout.build(real, active_pieces)
                hidden = packed_layer_forward(layer, hidden, layout, inplace=inplace)
            else:
                hidden = masked_layer_forward(layer, hidden, real, active_pieces)
            if hidden_states is not None:
                hidden_states.append(hidden)

            active_words = word_active.nonzero().squeeze(1)
            length = hidden.shape[1]
            flat_piece = row_of_span[batch.word_span[active_words]] * length + batch.word_piece[active_words]
            logits = self.offramps[layer_index](
                hidden.reshape(-1, self.hidden_size).index_select(0, flat_piece)
            )
            if layer_logits is not None:
                layer_logits = layer_logits.index_put(
                    (torch.full_like(active_words, layer_index), active_words), logits
                )
                layer_active[layer_index, active_words] = True
            exit_logits = exit_logits.index_put((active_words,), logits)
            labels[active_words] = logits.argmax(dim=-1)
            if layer_index == n_layers - 1:
                break

            exiting = self._exits(
                mode, settings, thresholds[layer_index], layer_index, batch,
                logits, active_words, word_active, uncertainty, word_grid, forced_exit_layer,
            )
            if bool(exiting.any()):
                exit_layer[exiting] = layer_index + 1
                word_active &= ~exiting
                still = torch.zeros(batch.n_spans, dtype=torch.bool, device=device)
                still[batch.word_span[word_active]] = True
                if not output_hidden_states and not bool(still.index_select(0, rows).all()):
                    hidden, rows, row_of_span = self._keep_rows(
                        hidden, rows, still.index_select(0, rows), batch.n_spans,
                        lengths=batch.lengths,
                    )
        return EncoderOutput(
            exit_layer=exit_layer,
            labels=labels,
            exit_logits=exit_logits,
            layer_logits=layer_logits,
            layer_active=layer_active,
            hidden_states=hidden_states,
        )

    @staticmethod
    def _keep_rows(hidden, rows, keep, n_spans, lengths=None):
        """Drop finished rows from the batch (and trailing padding with them).

        hidden: [R, T, d]; rows: [R] original span of each row; keep: [R] bool,
        or [n_spans] bool indexed by original span on the first call.
        """
        if keep.shape[0] != rows.shape[0]:
            keep = keep.index_select(0, rows)
        rows = rows[keep]
        hidden = hidden[keep]
        if lengths is not None and rows.numel():
            hidden = hidden[:, : int(lengths.index_select(0, rows).max())]
        row_of_span = torch.full((n_spans,), -1, dtype=torch.long, device=hidden.device)
        row_of_span[rows] = torch.arange(rows.numel(), device=hidden.device)
        return hidden, rows, row_of_span

    @staticmethod
    def _exits(
        mode, settings, threshold, layer_index, batch, logits, active_words,
        word_active, uncertainty, word_grid, forced_exit_layer,
    ) -> torch.Tensor:
        """[W] bool: the active words that exit after this layer."""
        if mode == "off":
            return torch.zeros_like(word_active)
        if mode == "forced":
            return word_active & (forced_exit_layer == layer_index + 1)
        spans, slots = batch.word_span[active_words], batch.word_slot[active_words]
        uncertainty[spans, slots] = normalized_entropy(logits.detach()).to(uncertainty.dtype)
        active_grid = torch.zeros_like(word_grid)
        active_grid[spans, slots] = True
        if mode == "sentence":
            span_exit = sentence_exits(uncertainty, active_grid, threshold, settings.sentence_score)
            return word_active & span_exit[batch.word_span]
        counted = word_grid if settings.window_includes_exited else active_grid
        exit_grid = token_exits(uncertainty, active_grid, counted, settings.window, threshold)
        return exit_grid[batch.word_span, batch.word_slot]
