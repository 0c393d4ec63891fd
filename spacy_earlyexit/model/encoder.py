"""A BERT-family encoder with an off-ramp on every layer and early exit.

The layer loop is explicit: after each layer the off-ramp of that layer labels
the words that are still active, the exit rule decides who leaves, exited words
are frozen (their pieces keep their state and serve as keys/values), and spans
whose words have all exited are dropped from the batch.
"""
import warnings
from typing import Any, List, Optional, Sequence

import torch
from torch import nn

from .batch import EncoderBatch, EncoderOutput
from .batch_run import _BatchRun, check_entity_classes
from .cost_model import EncoderShape
from .exit_policy import exit_rule, last_layer
from .exit_settings import ExitSettings
from .families import EncoderFamily, family_of
from .offramp import OffRamp, OffRampHeads, offramp_macs  # noqa: F401 (OffRamp: re-exported)
from .packed_layer import PieceLayout, masked_layer_forward, packed_layers_forward
from .state_arena import StateArena


class EarlyExitEncoder(nn.Module):
    """Wraps a Hugging Face encoder (`transformer`) with off-ramps.

    The encoder's family (families.py: BERT layout, DistilBERT, DeBERTa,
    ModernBERT) says where its embeddings and layers are and how to call
    them. case_classes: K > 0 adds a learned case embedding ([K + 1, d], row 0
    for pieces of no word, zero at first so that the pretrained encoder is
    unchanged) to the input states of every piece, by its word's case class
    (EncoderBatch.piece_case): an uncased vocabulary keeps capitalization
    this way. offramp_heads: which layers get context off-ramps (offramp.py;
    None: every off-ramp plain). packed: compute only the active pieces at each layer (None: where
    the family's layers allow it; False: the masked path, every piece
    computed, exited ones kept frozen; True: required).
    """

    def __init__(
        self,
        transformer: Any,
        n_classes: int,
        offramp_dropout: float = 0.1,
        packed: Optional[bool] = None,
        case_classes: int = 0,
        offramp_heads: Optional[OffRampHeads] = None,
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
        self.offramp_heads = offramp_heads or OffRampHeads()
        self.offramps = self.offramp_heads.build(len(self.layers), self.hidden_size, n_classes, offramp_dropout)
        if isinstance(case_classes, bool) or not isinstance(case_classes, int) or case_classes < 0:
            raise ValueError(f"case_classes must be an integer >= 0; got {case_classes!r}")
        self.case_classes = case_classes
        self.case_embedding: Optional[nn.Embedding] = None
        if case_classes:
            self.case_embedding = nn.Embedding(case_classes + 1, self.hidden_size, padding_idx=0)
            nn.init.zeros_(self.case_embedding.weight)
        packable = self.family.packable(transformer)
        if packed and not packable:
            raise ValueError(
                f"{type(self.layers[0]).__name__} layers ({self.family.name} family) cannot take "
                "the packed path; leave packed=None for the masked path"
            )
        self.packed = packable if packed is None else bool(packed)
        #: per-thread block for the states of inference calls (state_arena.py;
        #: None: fresh tensors for every call's states)
        self.state_arena: Optional[StateArena] = StateArena()
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

    def ensure_eval(self) -> None:
        """eval() unless every module already is in eval mode: eval() writes
        the flag of every module (137 for MiniLM) on every call, reading
        them is several times cheaper."""
        pending: List[nn.Module] = [self]
        while pending:
            module = pending.pop()
            if module.training:
                self.eval()
                return
            pending.extend(child for child in module._modules.values() if child is not None)

    def state_dtype(self) -> torch.dtype:
        """dtype of the hidden states (the input embeddings' weights': float32,
        or bfloat16 when the transformer runs in bfloat16)."""
        embeddings = self.transformer.get_input_embeddings()
        return embeddings.weight.dtype if embeddings is not None else torch.float32

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
            offramp_macs=offramp_macs(self.offramps),
        )

    def embed(self, input_ids: torch.Tensor, real_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """input_ids: [S, T], real_mask: [S, T] bool (None: every piece real) -> [S, T, d]"""
        if real_mask is None:
            real_mask = torch.ones(input_ids.shape, dtype=torch.bool, device=input_ids.device)
        return self.family.embed(self.transformer, input_ids, real_mask)

    def embed_batch(self, batch: EncoderBatch, real_mask: torch.Tensor) -> torch.Tensor:
        """The batch's input states [S, T, d]: the transformer's embeddings,
        plus the case embedding of each piece's word when the encoder has one."""
        hidden = self.embed(batch.input_ids, real_mask)
        if self.case_embedding is None:
            return hidden
        if batch.piece_case is None:
            raise ValueError(
                "this encoder has a case embedding (case_classes "
                f"{self.case_classes}) but the batch gives no piece_case"
            )
        if batch.piece_case.shape != batch.input_ids.shape:
            raise ValueError(
                f"piece_case has shape {tuple(batch.piece_case.shape)}, the batch's pieces "
                f"{tuple(batch.input_ids.shape)}"
            )
        return hidden + self.case_embedding(batch.piece_case).to(hidden.dtype)

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

        settings: the exit rule (None: full depth). With settings.max_layer
            the layers above it are not computed: the words still active
            after layer max_layer exit there.
        entity_classes: [C] bool, the classes inside an entity (needed by
            the entity exit rule, settings.entity_exit; the task gives them).
        forced_exit_layer: [W] long, 1-based exit layer per word, used instead of
            the exit rule (self-sampling fine-tuning); settings.max_layer is
            then ignored (the forced layers may reach the top).
        return_layer_logits: also return every layer's logits (training),
            [L, W, C]; with max_layer, layers above it stay zero (and
            layer_active False).
        output_hidden_states: also return each layer's states; finished spans are
            then kept in the batch so that every state is available. With
            max_layer: the embeddings and the layers up to max_layer only.
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
        The loop stops when no batch is running: after settings.max_layer at
        the latest, so the layers above the depth cap are never computed.
        forced_exit_layers: one [W_b] tensor per batch, or None (given:
        settings.max_layer is ignored, as in forward()).
        entity_classes: [C] bool, as in forward().
        """
        settings = settings or ExitSettings()
        rule = exit_rule(settings, self.n_layers)
        entity_classes = check_entity_classes(rule, entity_classes, self.n_classes)
        inplace = not output_hidden_states and not torch.is_grad_enabled()
        storage: List[Optional[torch.Tensor]] = [None] * len(batches)
        shapes = [(batch.n_spans, int(batch.input_ids.shape[1]), self.hidden_size) for batch in batches]
        if inplace and self.state_arena is not None and self.state_arena.wanted(shapes):
            # the states of every batch live in one block reused across calls (state_arena.py)
            storage = list(self.state_arena.regions(
                shapes, dtype=self.state_dtype(), device=batches[0].input_ids.device
            ))
        runs = [
            _BatchRun(
                self, batch, rule,
                None if forced_exit_layers is None else forced_exit_layers[index],
                return_layer_logits, output_hidden_states, entity_classes,
                last_layer(settings, self.n_layers), storage=storage[index],
            )
            for index, batch in enumerate(batches)
        ]
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
