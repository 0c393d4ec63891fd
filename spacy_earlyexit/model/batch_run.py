"""One batch's state on its way through the layers: hidden states of the
spans still running, the exit rule's bookkeeping (word grid, uncertainties,
exit layers), and dropping finished spans. EarlyExitEncoder.forward_batches
drives one _BatchRun per batch through the layer loop."""
from typing import TYPE_CHECKING, Optional, Tuple

import torch

from .batch import EncoderBatch, EncoderOutput
from .exit_policy import ExitRule, ForcedExit
from .offramp import ContextOffRamp
from .uncertainty import normalized_entropy

if TYPE_CHECKING:
    from .encoder import EarlyExitEncoder


class _BatchRun:
    """One batch's state on its way through the layers (forward_batches).

    hidden: [R, T', d], the states of the R spans still running (rows), the
    grid cut to their longest span; rows: [R] original span of each row;
    row_of_span: [S] row of each span (-1: dropped). The run ends after
    layer `last_layer` (the depth cap, max_layer) at the latest; the
    per-layer outputs (layer_logits [L, W, C], layer_active [L, W]) keep the
    encoder's L layers, those above last_layer left empty (zeros, False),
    and hidden_states holds the embeddings and the layers run.
    """

    def __init__(
        self,
        encoder: "EarlyExitEncoder",
        batch: EncoderBatch,
        rule: ExitRule,
        forced_exit_layer: Optional[torch.Tensor],
        return_layer_logits: bool,
        output_hidden_states: bool,
        entity_classes: Optional[torch.Tensor] = None,
        last_layer: Optional[int] = None,
        storage: Optional[torch.Tensor] = None,
    ) -> None:
        """rule: the exit rule of the call; forced_exit_layer: [W] long,
        1-based, replaces it for this batch (self-sampling); entity_classes:
        [C] bool on the batch's device, for rules that read the entity grid;
        last_layer: the depth cap (1-based; None: the encoder's depth): the
        words still active after it exit there and the run stops. Forced
        exit layers ignore it (they may use every layer).
        storage: a flat region of at least S * T * d elements that holds the
        states for the whole run (inference; see state_arena.py), so that
        they are never allocated again; None: each layer's states are new
        tensors, and dropping rows copies them."""
        n_layers, n_words = encoder.n_layers, batch.n_words
        #: 1-based: the run stops after this layer; the words still active exit there
        self.last_layer = n_layers if last_layer is None or forced_exit_layer is not None else last_layer
        device = batch.input_ids.device
        self.encoder, self.batch = encoder, batch
        self.keep_finished = output_hidden_states
        self.real_all = batch.real_mask()
        self.hidden = encoder.embed_batch(batch, self.real_all)
        self.storage = storage if storage is not None and storage.dtype == self.hidden.dtype else None
        if self.storage is not None:
            self.hidden = _stored(self.hidden, self.storage)
        self.rows = torch.arange(batch.n_spans, device=device)
        self.row_of_span = self.rows.clone()
        self.word_active = torch.ones(n_words, dtype=torch.bool, device=device)
        # words that never exit early leave after the last layer run
        self.exit_layer = torch.full((n_words,), self.last_layer, dtype=torch.long, device=device)
        self.labels = torch.zeros(n_words, dtype=torch.long, device=device)
        # logits and uncertainties are float32 whatever the encoder's precision
        self.exit_logits = self.hidden.new_zeros(n_words, encoder.n_classes, dtype=torch.float32)
        n_slots = int(batch.word_slot.max()) + 1 if n_words else 0
        self.uncertainty = self.hidden.new_zeros(batch.n_spans, n_slots, dtype=torch.float32)
        self.word_grid = torch.zeros(batch.n_spans, n_slots, dtype=torch.bool, device=device)
        self.word_grid[batch.word_span, batch.word_slot] = True
        if forced_exit_layer is not None:
            forced_grid = torch.zeros(self.word_grid.shape, dtype=torch.long, device=device)
            forced_grid[batch.word_span, batch.word_slot] = forced_exit_layer
            rule = ForcedExit(forced_grid)
        self.rule = rule
        #: the rule decides each word from its own uncertainty (_exits skips the grid)
        self.own_word_rule = rule.reads_own_word_only
        self.entity_classes = None if entity_classes is None else entity_classes.to(device)
        # [S, slots] bool: each word's latest prediction is inside an entity
        self.entity = torch.zeros_like(self.word_grid) if rule.needs_entity else None
        self.layer_logits = (
            self.hidden.new_zeros(n_layers, n_words, encoder.n_classes, dtype=torch.float32)
            if return_layer_logits else None
        )
        self.layer_active = (
            torch.zeros(n_layers, n_words, dtype=torch.bool, device=device) if return_layer_logits else None
        )
        self.hidden_states = [self.hidden] if output_hidden_states else None
        heads = encoder.offramp_heads
        # [W, 2c + 1] the words of each word's window (-1: none); [W, 1] (the
        # word itself) for context off-ramps without neighbours; None: no context off-ramps
        self.window_words = (
            _window_words(batch, self.word_grid.shape[1], heads.context) if heads.context_layers else None
        )
        # [S] bool: spans with an active word (at first: spans with a word;
        # spans without words have nothing to compute)
        self.span_running = torch.zeros(batch.n_spans, dtype=torch.bool, device=device)
        self.span_running[batch.word_span] = True
        if not bool(self.span_running.all()) and not output_hidden_states:
            self.hidden, self.rows, self.row_of_span = _keep_rows(
                self.hidden, self.rows, self.span_running, batch.n_spans, storage=self.storage
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
        if self.storage is not None and hidden.data_ptr() != self.hidden.data_ptr():
            hidden = self.hidden.copy_(hidden)  # the layer gave a new tensor: back into storage
        self.hidden = hidden
        if self.hidden_states is not None:
            self.hidden_states.append(hidden)
        active_words = self.word_active.nonzero().squeeze(1)
        logits = self._offramp_logits(layer_index, hidden, active_words)
        if self.layer_logits is not None:
            self.layer_logits = self.layer_logits.index_put(
                (torch.full_like(active_words, layer_index), active_words), logits
            )
            assert self.layer_active is not None
            self.layer_active[layer_index, active_words] = True
        if self.exit_logits.requires_grad or logits.requires_grad:
            self.exit_logits = self.exit_logits.index_put((active_words,), logits)
        else:  # inference: in place, no new [W, C] block per layer
            self.exit_logits.index_put_((active_words,), logits)
        self.labels[active_words] = logits.argmax(dim=-1)
        if layer_index == self.last_layer - 1:
            self.running = False
            return
        exiting = self._exits(layer_index, logits, active_words)
        if bool(exiting.any()):
            self.exit_layer.masked_fill_(exiting, layer_index + 1)
            self.word_active.masked_fill_(exiting, False)
            self.span_running = torch.zeros(batch.n_spans, dtype=torch.bool, device=hidden.device)
            self.span_running[batch.word_span[self.word_active]] = True
            still = self.span_running.index_select(0, self.rows)
            if not self.keep_finished and not bool(still.all()):
                self.hidden, self.rows, self.row_of_span = _keep_rows(
                    hidden, self.rows, still, batch.n_spans, lengths=batch.lengths, storage=self.storage,
                )
        self.running = self.hidden.shape[0] > 0

    def _offramp_logits(self, layer_index: int, hidden: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        """The off-ramp of layer `layer_index` on `words` ([A] long): [A, C].

        hidden: [R, T', d] this layer's states of the running rows. A word's
        state is its first piece's; a context off-ramp also reads the states
        of its window's words (exited ones: the state they exited with, as
        their pieces keep it), zeros where the window leaves the span. The
        off-ramps read float32 states whatever the encoder's precision, so
        the exit rule's uncertainties are float32's."""
        encoder, batch = self.encoder, self.batch
        ramp = encoder.offramps[layer_index]
        length, d = hidden.shape[1], encoder.hidden_size
        flat = hidden.reshape(-1, d)
        if not isinstance(ramp, ContextOffRamp):
            piece = self.row_of_span[batch.word_span[words]] * length + batch.word_piece[words]
            return ramp(encoder.exit_states(flat.index_select(0, piece)).float())
        assert self.window_words is not None  # every context off-ramp has the heads' window
        window = self.window_words[words]
        present = window >= 0
        # a missing neighbour reads the word itself (then zeroed): word 0's span may be gone
        known = torch.where(present, window, words[:, None].expand_as(window))
        piece = self.row_of_span[batch.word_span[known]] * length + batch.word_piece[known]
        states = encoder.exit_states(flat.index_select(0, piece.reshape(-1))).float().reshape(*window.shape, d)
        return ramp(states * present[..., None].to(states.dtype))

    def _exits(self, layer_index: int, logits: torch.Tensor, active_words: torch.Tensor) -> torch.Tensor:
        """[W] bool: the active words that exit after this layer (the rule's
        decision on the word grid).

        logits: [A, C] of the A active words (active_words: [A] long); the
        uncertainty grid [S, slots] is updated for them first (unless the
        rule reads each word's own uncertainty only: then it decides on the
        active words' uncertainties without the grid).
        """
        if self.rule.never_exits:
            return torch.zeros_like(self.word_active)
        if self.own_word_rule:  # the grid's other words do not matter: no grid
            uncertainty = normalized_entropy(logits.detach())
            exiting = torch.zeros_like(self.word_active)
            return exiting.index_put_((active_words,), self.rule.word_exits(layer_index, uncertainty))
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
    storage: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Drop finished rows from the batch (and trailing padding with them).

    hidden: [R, T, d]; rows: [R] original span of each row; keep: [R] bool,
    or [n_spans] bool indexed by original span on the first call; storage:
    the flat region that holds `hidden` (the kept rows are written back to
    its start), or None (they are a new tensor).
    Returns (hidden [R', T', d], rows [R'], row_of_span [n_spans], -1 for dropped spans).
    """
    if keep.shape[0] != rows.shape[0]:
        keep = keep.index_select(0, rows)
    rows = rows[keep]
    hidden = hidden[keep]
    if lengths is not None and rows.numel():
        hidden = hidden[:, : int(lengths.index_select(0, rows).max())]
    if storage is not None:
        hidden = _stored(hidden, storage)
    row_of_span = torch.full((n_spans,), -1, dtype=torch.long, device=hidden.device)
    row_of_span[rows] = torch.arange(rows.numel(), device=hidden.device)
    return hidden, rows, row_of_span


def _stored(hidden: torch.Tensor, storage: torch.Tensor) -> torch.Tensor:
    """hidden [R, T, d] copied to the start of the flat region `storage`;
    returns the [R, T, d] view of it. `hidden` must not be a view of the
    region itself (the callers pass a fresh tensor)."""
    return storage[: hidden.numel()].view(hidden.shape).copy_(hidden)


def _window_words(batch: EncoderBatch, n_slots: int, context: int) -> torch.Tensor:
    """[W, 2c + 1] long: the words at slots k - c .. k + c of each word's span
    (k: its slot), -1 where the span has no word there."""
    device = batch.word_span.device
    slot_word = torch.full((batch.n_spans, n_slots), -1, dtype=torch.long, device=device)
    slot_word[batch.word_span, batch.word_slot] = torch.arange(batch.n_words, device=device)
    offsets = torch.arange(-context, context + 1, device=device)
    slots = batch.word_slot[:, None] + offsets[None, :]
    inside = (slots >= 0) & (slots < n_slots)
    found = slot_word[batch.word_span[:, None].expand_as(slots), slots.clamp(0, max(n_slots - 1, 0))]
    return torch.where(inside, found, torch.full_like(found, -1))
