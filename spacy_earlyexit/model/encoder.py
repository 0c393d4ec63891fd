"""A BERT-family encoder with an off-ramp on every layer and early exit.

The layer loop is explicit: after each layer the off-ramp of that layer labels
the words that are still active, the exit rule decides who leaves, exited words
are frozen (their pieces keep their state and serve as keys/values), and spans
whose words have all exited are dropped from the batch.
"""
import warnings
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .cost_model import EncoderShape
from .exit_policy import ExitRule, ForcedExit, exit_rule
from .exit_settings import ExitSettings
from .families import EncoderFamily, family_of
from .packed_layer import PieceLayout, masked_layer_forward, packed_layers_forward
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
    """Wraps a Hugging Face encoder (`transformer`) with off-ramps.

    The encoder's family (families.py: BERT layout, DistilBERT, DeBERTa,
    ModernBERT) says where its embeddings and layers are and how to call
    them. packed: compute only the active pieces at each layer (None: where
    the family's layers allow it; False: the masked path, every piece
    computed, exited ones kept frozen; True: required).
    """

    def __init__(
        self,
        transformer: Any,
        n_classes: int,
        offramp_dropout: float = 0.1,
        packed: Optional[bool] = None,
    ):
        super().__init__()
        if n_classes < 1:
            raise ValueError(f"n_classes must be >= 1; got {n_classes}")
        #: where the transformer keeps its parts (not a module: no weights of its own)
        self.family: EncoderFamily = family_of(transformer)
        #: the Hugging Face model (duck-typed: transformers' classes share no base)
        self.transformer: Any = transformer
        config: Any = transformer.config
        self.hidden_size = int(config.hidden_size)
        self.n_classes = n_classes
        self.offramp_dropout = float(offramp_dropout)
        self.offramps = nn.ModuleList(
            OffRamp(self.hidden_size, n_classes, offramp_dropout) for _ in self.layers
        )
        packable = self.family.packable(transformer)
        if packed and not packable:
            raise ValueError(
                f"{type(self.layers[0]).__name__} layers ({self.family.name} family) cannot take "
                "the packed path; leave packed=None for the masked path"
            )
        self.packed = packable if packed is None else bool(packed)
        if packed is None and not packable:
            warnings.warn(
                f"{type(self.layers[0]).__name__} layers ({self.family.name} family) cannot take "
                "the packed path: early exit uses the masked path, which is correct but saves "
                "time only where whole spans have exited",
                stacklevel=2,
            )

    @property
    def layers(self) -> nn.ModuleList:
        return self.family.layer_list(self.transformer)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def shape(self) -> EncoderShape:
        config: Any = self.transformer.config
        project = getattr(self.transformer, "embeddings_project", None)  # ELECTRA
        return EncoderShape(
            n_layers=self.n_layers,
            hidden_size=self.hidden_size,
            intermediate_size=int(getattr(config, self.family.intermediate_size)),
            n_classes=self.n_classes,
            embedding_projection=int(project.in_features) if project is not None else 0,
            gated_feed_forward=self.family.gated_feed_forward,
            relative_positions=_relative_positions(self.transformer),
            packed=self.packed,
        )

    def embed(self, input_ids: torch.Tensor, real_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """input_ids: [S, T], real_mask: [S, T] bool (None: every piece real) -> [S, T, d]"""
        if real_mask is None:
            real_mask = torch.ones(input_ids.shape, dtype=torch.bool, device=input_ids.device)
        return self.family.embed(self.transformer, input_ids, real_mask)

    def exit_states(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, d] states -> [N, d] as the off-ramps read them (ModernBERT: its
        final norm; the others: unchanged)."""
        return self.family.norm_for_exit(self.transformer, hidden)

    def forward(
        self,
        batch: EncoderBatch,
        settings: Optional[ExitSettings] = None,
        forced_exit_layer: Optional[torch.Tensor] = None,
        return_layer_logits: bool = False,
        output_hidden_states: bool = False,
        entity_classes: Optional[torch.Tensor] = None,
    ) -> EncoderOutput:
        """Run the encoder with early exit.

        settings: the exit rule (None: full depth).
        entity_classes: [C] bool, the classes inside an entity (needed by
            the entity exit rule, settings.entity_exit; the task gives them).
        forced_exit_layer: [W] long, 1-based exit layer per word, used instead of
            the exit rule (self-sampling fine-tuning).
        return_layer_logits: also return every layer's logits (training).
        output_hidden_states: also return each layer's states; finished spans are
            then kept in the batch so that every state is available.
        """
        forced = None if forced_exit_layer is None else [forced_exit_layer]
        return self.forward_batches(
            [batch], settings, forced, return_layer_logits, output_hidden_states, entity_classes
        )[0]

    def forward_batches(
        self,
        batches: Sequence[EncoderBatch],
        settings: Optional[ExitSettings] = None,
        forced_exit_layers: Optional[Sequence[torch.Tensor]] = None,
        return_layer_logits: bool = False,
        output_hidden_states: bool = False,
        entity_classes: Optional[torch.Tensor] = None,
    ) -> List[EncoderOutput]:
        """forward() for several batches, layer by layer together.

        Attention and the exit rule run per batch, as in forward(); the per-row
        work of batches with few active pieces is merged into one matrix
        product (see packed_layers_forward), which keeps the products large
        after most words have exited. Each batch's output is forward()'s.
        forced_exit_layers: one [W_b] tensor per batch, or None.
        entity_classes: [C] bool, as in forward().
        """
        rule = exit_rule(settings or ExitSettings(), self.n_layers)
        entity_classes = check_entity_classes(rule, entity_classes, self.n_classes)
        runs = [
            _BatchRun(
                self, batch, rule,
                None if forced_exit_layers is None else forced_exit_layers[index],
                return_layer_logits, output_hidden_states, entity_classes,
            )
            for index, batch in enumerate(batches)
        ]
        inplace = not output_hidden_states and not torch.is_grad_enabled()
        for layer_index, layer in enumerate(self.layers):
            live = [run for run in runs if run.running]
            if not live:
                break
            masks = [run.piece_masks() for run in live]
            if self.packed:
                layouts = [PieceLayout.build(real, active) for real, active in masks]
                hiddens = packed_layers_forward(
                    layer, [run.hidden for run in live], layouts, inplace=inplace, parts=self.family.parts
                )
            else:
                hiddens = [
                    masked_layer_forward(layer, run.hidden, real, active, call=self._masked_call(layer_index, layer))
                    for run, (real, active) in zip(live, masks)
                ]
            for run, hidden in zip(live, hiddens):
                run.after_layer(layer_index, hidden)
        return [run.output() for run in runs]

    def _masked_call(self, index: int, layer: nn.Module):
        """layer `index` as (hidden [S, T, d], real_mask [S, T]) -> [S, T, d]."""
        call = self.family.masked_call
        return lambda hidden, real: call(self.transformer, index, layer, hidden, real)


def _relative_positions(transformer: Any) -> int:
    """Relative-position scores DeBERTa's attention computes per piece and
    layer: its relative embeddings (2 x buckets or 2 x max distance) times its
    position attention types (c2p, p2c); 0 without relative attention."""
    encoder: Any = getattr(transformer, "encoder", None)
    if not getattr(encoder, "relative_attention", False):
        return 0
    types = getattr(transformer.config, "pos_att_type", None) or []
    if isinstance(types, str):
        types = types.lower().split("|")
    n_types = sum(1 for kind in ("c2p", "p2c") if kind in types)
    return int(encoder.rel_embeddings.num_embeddings) * n_types


class _BatchRun:
    """One batch's state on its way through the layers (forward_batches).

    hidden: [R, T', d], the states of the R spans still running (rows), the
    grid cut to their longest span; rows: [R] original span of each row;
    row_of_span: [S] row of each span (-1: dropped).
    """

    def __init__(
        self,
        encoder: EarlyExitEncoder,
        batch: EncoderBatch,
        rule: ExitRule,
        forced_exit_layer: Optional[torch.Tensor],
        return_layer_logits: bool,
        output_hidden_states: bool,
        entity_classes: Optional[torch.Tensor] = None,
    ) -> None:
        """rule: the exit rule of the call; forced_exit_layer: [W] long,
        1-based, replaces it for this batch (self-sampling); entity_classes:
        [C] bool on the batch's device, for rules that read the entity grid."""
        n_layers, n_words = encoder.n_layers, batch.n_words
        device = batch.input_ids.device
        self.encoder, self.batch = encoder, batch
        self.keep_finished = output_hidden_states
        self.real_all = batch.real_mask()
        self.hidden = encoder.embed(batch.input_ids, self.real_all)
        self.rows = torch.arange(batch.n_spans, device=device)
        self.row_of_span = self.rows.clone()
        self.word_active = torch.ones(n_words, dtype=torch.bool, device=device)
        self.exit_layer = torch.full((n_words,), n_layers, dtype=torch.long, device=device)
        self.labels = torch.zeros(n_words, dtype=torch.long, device=device)
        self.exit_logits = self.hidden.new_zeros(n_words, encoder.n_classes)
        n_slots = int(batch.word_slot.max()) + 1 if n_words else 0
        self.uncertainty = self.hidden.new_zeros(batch.n_spans, n_slots)
        self.word_grid = torch.zeros(batch.n_spans, n_slots, dtype=torch.bool, device=device)
        self.word_grid[batch.word_span, batch.word_slot] = True
        if forced_exit_layer is not None:
            forced_grid = torch.zeros(self.word_grid.shape, dtype=torch.long, device=device)
            forced_grid[batch.word_span, batch.word_slot] = forced_exit_layer
            rule = ForcedExit(forced_grid)
        self.rule = rule
        self.entity_classes = None if entity_classes is None else entity_classes.to(device)
        # [S, slots] bool: each word's latest prediction is inside an entity
        self.entity = torch.zeros_like(self.word_grid) if rule.needs_entity else None
        self.layer_logits = (
            self.hidden.new_zeros(n_layers, n_words, encoder.n_classes) if return_layer_logits else None
        )
        self.layer_active = (
            torch.zeros(n_layers, n_words, dtype=torch.bool, device=device) if return_layer_logits else None
        )
        self.hidden_states = [self.hidden] if output_hidden_states else None
        # [S] bool: spans with an active word (at first: spans with a word;
        # spans without words have nothing to compute)
        self.span_running = torch.zeros(batch.n_spans, dtype=torch.bool, device=device)
        self.span_running[batch.word_span] = True
        if not bool(self.span_running.all()) and not output_hidden_states:
            self.hidden, self.rows, self.row_of_span = _keep_rows(
                self.hidden, self.rows, self.span_running, batch.n_spans
            )
        self.running = self.hidden.shape[0] > 0

    def piece_masks(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """([R, T'] real pieces, [R, T'] pieces computed at the next layer)."""
        batch, rows, length = self.batch, self.rows, self.hidden.shape[1]
        real = self.real_all.index_select(0, rows)[:, :length]
        piece_word = batch.piece_word.index_select(0, rows)[:, :length]
        active_pieces = real & ((piece_word < 0) | self.word_active[piece_word.clamp(min=0)])
        active_pieces &= self.span_running.index_select(0, rows)[:, None]
        return real, active_pieces

    def after_layer(self, layer_index: int, hidden: torch.Tensor) -> None:
        """Take a layer's states [R, T', d]: off-ramp, exits, drop finished rows."""
        batch, encoder = self.batch, self.encoder
        self.hidden = hidden
        if self.hidden_states is not None:
            self.hidden_states.append(hidden)
        active_words = self.word_active.nonzero().squeeze(1)
        length = hidden.shape[1]
        flat_piece = self.row_of_span[batch.word_span[active_words]] * length + batch.word_piece[active_words]
        logits = encoder.offramps[layer_index](
            encoder.exit_states(hidden.reshape(-1, encoder.hidden_size).index_select(0, flat_piece))
        )
        if self.layer_logits is not None:
            self.layer_logits = self.layer_logits.index_put(
                (torch.full_like(active_words, layer_index), active_words), logits
            )
            assert self.layer_active is not None
            self.layer_active[layer_index, active_words] = True
        self.exit_logits = self.exit_logits.index_put((active_words,), logits)
        self.labels[active_words] = logits.argmax(dim=-1)
        if layer_index == encoder.n_layers - 1:
            self.running = False
            return
        exiting = self._exits(layer_index, logits, active_words)
        if bool(exiting.any()):
            self.exit_layer[exiting] = layer_index + 1
            self.word_active &= ~exiting
            self.span_running = torch.zeros(batch.n_spans, dtype=torch.bool, device=hidden.device)
            self.span_running[batch.word_span[self.word_active]] = True
            still = self.span_running.index_select(0, self.rows)
            if not self.keep_finished and not bool(still.all()):
                self.hidden, self.rows, self.row_of_span = _keep_rows(
                    hidden, self.rows, still, batch.n_spans, lengths=batch.lengths,
                )
        self.running = self.hidden.shape[0] > 0

    def _exits(self, layer_index: int, logits: torch.Tensor, active_words: torch.Tensor) -> torch.Tensor:
        """[W] bool: the active words that exit after this layer (the rule's
        decision on the word grid).

        logits: [A, C] of the A active words (active_words: [A] long); the
        uncertainty grid [S, slots] is updated for them first.
        """
        if self.rule.never_exits:
            return torch.zeros_like(self.word_active)
        batch = self.batch
        spans, slots = batch.word_span[active_words], batch.word_slot[active_words]
        if self.rule.needs_uncertainty:
            self.uncertainty[spans, slots] = normalized_entropy(logits.detach()).to(self.uncertainty.dtype)
        if self.entity is not None:
            assert self.entity_classes is not None
            self.entity[spans, slots] = self.entity_classes[logits.argmax(dim=-1)]
        active_grid = torch.zeros_like(self.word_grid)
        active_grid[spans, slots] = True
        exit_grid = self.rule.exits(layer_index, self.uncertainty, active_grid, self.word_grid, self.entity)
        return exit_grid[batch.word_span, batch.word_slot]

    def output(self) -> EncoderOutput:
        return EncoderOutput(
            exit_layer=self.exit_layer,
            labels=self.labels,
            exit_logits=self.exit_logits,
            layer_logits=self.layer_logits,
            layer_active=self.layer_active,
            hidden_states=self.hidden_states,
        )


def check_entity_classes(
    rule: ExitRule, entity_classes: Optional[torch.Tensor], n_classes: int
) -> Optional[torch.Tensor]:
    """The [C] bool vector of classes inside an entity, checked against the
    rule (which may need it) and the encoder's classes; None if unused."""
    if not rule.needs_entity:
        return None
    if entity_classes is None:
        raise ValueError(
            "entity_exit needs to know which classes are inside an entity, which only an "
            "entity task (task 'ner') gives; turn entity_exit off for this task"
        )
    entity_classes = torch.as_tensor(entity_classes, dtype=torch.bool)
    if entity_classes.shape != (n_classes,):
        raise ValueError(
            f"entity_classes must hold one flag per class ({n_classes}); got shape {tuple(entity_classes.shape)}"
        )
    return entity_classes


def _keep_rows(
    hidden: torch.Tensor,
    rows: torch.Tensor,
    keep: torch.Tensor,
    n_spans: int,
    lengths: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Drop finished rows from the batch (and trailing padding with them).

    hidden: [R, T, d]; rows: [R] original span of each row; keep: [R] bool,
    or [n_spans] bool indexed by original span on the first call.
    Returns (hidden [R', T', d], rows [R'], row_of_span [n_spans], -1 for dropped spans).
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
