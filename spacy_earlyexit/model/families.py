"""Where each encoder family keeps its parts, and how to call its layers.

The early-exit encoder needs four things from a Hugging Face encoder: its
embeddings (input ids -> first hidden states), its list of layers, a way to
run one whole layer with the padding masked (the masked path, every piece
computed), and, for the packed path, the pieces of a layer (Q/K/V
projections, attention output with its residual and norm, feed-forward with
its residual and norm). An `EncoderFamily` says this for one layout;
`family_of(transformer)` picks it.

| family      | layers              | path   | models                                   |
|-------------|---------------------|--------|------------------------------------------|
| BERT        | encoder.layer       | packed | BERT, RoBERTa, XLM-R, ELECTRA, MiniLM, CamemBERT |
| DistilBERT  | transformer.layer   | packed | DistilBERT                               |
| DeBERTa     | encoder.layer       | masked | DeBERTa, DeBERTa-v2/v3 (relative positions, conv) |
| ModernBERT  | layers              | masked | ModernBERT (rotary, local/global, pre-norm) |

A BERT-layout model whose layers lack the BERT parts (relative position
attention, decoders, layers wrapped in other modules) takes the masked path
with the BERT calling convention.
"""
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

import torch
from torch import nn

#: a Hugging Face layer or model; transformers' classes share no base class
HFModule = Any


def _path(module: HFModule, path: str) -> HFModule:
    """module.a.b.c for path "a.b.c", or None where an attribute is missing."""
    for name in path.split("."):
        module = getattr(module, name, None)
        if module is None:
            return None
    return module


def _additive_key_mask(real_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """real_mask [S, T] bool -> [S, 1, 1, T] float: 0 to attend, dtype's min for padding."""
    additive = torch.zeros(real_mask.shape, dtype=dtype, device=real_mask.device)
    return additive.masked_fill(~real_mask, torch.finfo(dtype).min)[:, None, None, :]


# --------------------------------------------------------------------------
# the pieces of a layer, for the packed path
# --------------------------------------------------------------------------
class LayerParts:
    """The pieces of a post-norm transformer layer the packed path computes:

        attended = attention_output(layer, softmax(Q K^T / sqrt(d_h)) V, x)
        result = feed_forward(layer, attended)

    where attention_output and feed_forward include their residual and norm.
    Subclasses say where a family keeps them.
    """

    #: attribute paths from the layer to its Q, K, V projections (nn.Linear d -> d)
    query: str
    key: str
    value: str
    #: path to the self-attention module (head count, dropout)
    attention: str
    #: paths that must exist for the layer to be packable
    required: Tuple[str, ...]

    def projections(self, layer: HFModule) -> Tuple[nn.Linear, nn.Linear, nn.Linear]:
        return _path(layer, self.query), _path(layer, self.key), _path(layer, self.value)

    def n_heads(self, layer: HFModule) -> int:
        raise NotImplementedError

    def attention_dropout(self, layer: HFModule) -> float:
        """The attention probabilities' dropout rate now (0 in eval mode)."""
        attention = _path(layer, self.attention)
        dropout = getattr(attention, "dropout", None)
        return float(dropout.p) if attention.training and isinstance(dropout, nn.Dropout) else 0.0

    def attention_output(self, layer: HFModule, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """context, residual: [N, d] -> [N, d] (output projection, residual, norm)."""
        raise NotImplementedError

    def feed_forward(self, layer: HFModule, attended: torch.Tensor) -> torch.Tensor:
        """attended: [N, d] -> [N, d] (feed-forward block, residual, norm)."""
        raise NotImplementedError

    #: path of the feed-forward block's first linear layer (d -> d_ff)
    intermediate: str = ""

    def intermediate_linear(self, layer: HFModule) -> Any:
        """The feed-forward block's first linear layer (d -> d_ff)."""
        return _path(layer, self.intermediate)

    def feed_forward_width(self, layer: HFModule) -> int:
        """d_ff, the width of the feed-forward block's intermediate."""
        return int(self.intermediate_linear(layer).out_features)

    def is_packable(self, layer: HFModule) -> bool:
        return all(_path(layer, path) is not None for path in self.required)


class BertLayerParts(LayerParts):
    """BertLayer and its copies (RoBERTa, XLM-R, ELECTRA, CamemBERT, MiniLM):
    attention.self.{query,key,value}, attention.output(dense, LayerNorm),
    intermediate.dense, output(dense, LayerNorm)."""

    query, key, value = "attention.self.query", "attention.self.key", "attention.self.value"
    attention = "attention.self"
    intermediate = "intermediate.dense"
    required = (
        "attention.self.query", "attention.self.key", "attention.self.value",
        "attention.output.dense", "attention.output.LayerNorm",
        "intermediate.dense", "intermediate.intermediate_act_fn",
        "output.dense", "output.LayerNorm",
    )

    def n_heads(self, layer: HFModule) -> int:
        return int(layer.attention.self.num_attention_heads)

    def attention_output(self, layer: HFModule, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return layer.attention.output(context, residual)

    def feed_forward(self, layer: HFModule, attended: torch.Tensor) -> torch.Tensor:
        return layer.output(layer.intermediate(attended), attended)

    def is_packable(self, layer: HFModule) -> bool:
        """Absolute positions only; no decoder, no cross-attention."""
        if not super().is_packable(layer):
            return False
        position_type = getattr(layer.attention.self, "position_embedding_type", "absolute")
        if position_type not in (None, "absolute"):
            return False
        return not (getattr(layer, "is_decoder", False) or getattr(layer, "add_cross_attention", False))


class DistilBertLayerParts(LayerParts):
    """DistilBERT's TransformerBlock: attention.{q_lin,k_lin,v_lin,out_lin},
    sa_layer_norm, ffn.{lin1,lin2}, output_layer_norm. Unlike BERT, no
    dropout after out_lin (as in DistilBERT's own forward)."""

    query, key, value = "attention.q_lin", "attention.k_lin", "attention.v_lin"
    attention = "attention"
    intermediate = "ffn.lin1"
    required = (
        "attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin",
        "sa_layer_norm", "ffn.lin1", "ffn.lin2", "ffn.activation", "output_layer_norm",
    )

    def n_heads(self, layer: HFModule) -> int:
        return int(layer.attention.n_heads)

    def attention_output(self, layer: HFModule, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return layer.sa_layer_norm(layer.attention.out_lin(context) + residual)

    def feed_forward(self, layer: HFModule, attended: torch.Tensor) -> torch.Tensor:
        # ff_chunk: lin1, activation, lin2, dropout (ffn.forward would chunk
        # along dim 1, the features of [N, d] rows)
        return layer.output_layer_norm(layer.ffn.ff_chunk(attended) + attended)

    def is_packable(self, layer: HFModule) -> bool:
        return super().is_packable(layer) and not layer.attention.pruned_heads


# --------------------------------------------------------------------------
# whole-layer calls, for the masked path
# --------------------------------------------------------------------------
#: (transformer, layer index, layer, hidden [S, T, d], real_mask [S, T] bool)
#: -> the layer's new states [S, T, d] for every piece (padding masked as keys)
MaskedCall = Callable[[HFModule, int, HFModule, torch.Tensor, torch.Tensor], torch.Tensor]


def bert_masked_call(transformer: HFModule, index: int, layer: HFModule, hidden: torch.Tensor, real_mask: torch.Tensor) -> torch.Tensor:
    """BertLayer's convention: an additive [S, 1, 1, T] mask."""
    return layer(hidden, attention_mask=_additive_key_mask(real_mask, hidden.dtype))[0]


def distilbert_masked_call(transformer: HFModule, index: int, layer: HFModule, hidden: torch.Tensor, real_mask: torch.Tensor) -> torch.Tensor:
    """TransformerBlock's convention: a [S, T] 0/1 mask for eager attention,
    an additive 4-d mask for SDPA (what DistilBertModel prepares for each)."""
    if transformer.config._attn_implementation == "eager":
        mask = real_mask.to(hidden.dtype)
    else:
        mask = _additive_key_mask(real_mask, hidden.dtype)
    return layer(hidden, attn_mask=mask)[0]


def deberta_masked_call(transformer: HFModule, index: int, layer: HFModule, hidden: torch.Tensor, real_mask: torch.Tensor) -> torch.Tensor:
    """DebertaV2Layer's convention (as DebertaV2Encoder.forward calls it): a
    [S, 1, T, T] 0/1 mask, relative positions and relative embeddings; the
    convolution of some checkpoints is applied after the first layer, with
    the layer's input (the embeddings) as its input."""
    encoder = transformer.encoder
    input_mask = real_mask.long()
    output = layer(
        hidden,
        encoder.get_attention_mask(input_mask),
        query_states=None,
        relative_pos=encoder.get_rel_pos(hidden),
        rel_embeddings=encoder.get_rel_embedding(),
    )[0]
    if index == 0 and getattr(encoder, "conv", None) is not None:
        output = encoder.conv(hidden, output, input_mask)
    return output


def modernbert_masked_call(transformer: HFModule, index: int, layer: HFModule, hidden: torch.Tensor, real_mask: torch.Tensor) -> torch.Tensor:
    """ModernBertEncoderLayer's convention (SDPA or eager attention): a global
    additive mask, a sliding-window one for the local layers, positions
    0..T-1 for the rotary embedding."""
    config = transformer.config
    if config._attn_implementation == "flash_attention_2":
        raise ValueError(
            "ModernBERT with flash_attention_2 takes unpadded input, which the early-exit "
            "encoder does not build: load it with attn_implementation='sdpa' or 'eager'"
        )
    length = hidden.shape[1]
    global_mask = _additive_key_mask(real_mask, hidden.dtype)
    positions = torch.arange(length, device=hidden.device)
    far = (positions[None, :] - positions[:, None]).abs() > config.local_attention // 2
    window_mask = global_mask.masked_fill(far[None, None], torch.finfo(hidden.dtype).min)
    return layer(
        hidden,
        attention_mask=global_mask,
        sliding_window_mask=window_mask,
        position_ids=positions[None, :],
    )[0]


# --------------------------------------------------------------------------
# the families
# --------------------------------------------------------------------------
def _plain_embed(transformer: HFModule, input_ids: torch.Tensor, real_mask: torch.Tensor) -> torch.Tensor:
    """embeddings(input_ids), then ELECTRA's projection where there is one."""
    hidden = transformer.embeddings(input_ids=input_ids)
    project = getattr(transformer, "embeddings_project", None)
    return project(hidden) if project is not None else hidden


def _deberta_embed(transformer: HFModule, input_ids: torch.Tensor, real_mask: torch.Tensor) -> torch.Tensor:
    """DeBERTa zeroes the embeddings of padding (its convolution reads them)."""
    return transformer.embeddings(input_ids=input_ids, mask=real_mask.long())


@dataclass(frozen=True)
class EncoderFamily:
    """How the early-exit encoder reaches one layout's parts.

    layers: attribute path from the model to its nn.ModuleList of layers.
    parts: the layer pieces for the packed path; None: masked path only.
    masked_call: runs one whole layer (see MaskedCall).
    embed: (model, input_ids [S, T], real_mask [S, T]) -> [S, T, d].
    exit_norm: path to a norm applied to the states the off-ramps read (a
        pre-norm model's final norm); None: they read the states as they are.
    intermediate_size: config attribute holding d_ff.
    gated_feed_forward: the feed-forward block is gated (GLU: 3 d d_ff
        multiply-adds per piece instead of 2 d d_ff).
    """

    name: str
    layers: str
    parts: Optional[LayerParts]
    masked_call: MaskedCall
    embed: Callable[[HFModule, torch.Tensor, torch.Tensor], torch.Tensor] = _plain_embed
    exit_norm: Optional[str] = None
    intermediate_size: str = "intermediate_size"
    gated_feed_forward: bool = False

    def layer_list(self, transformer: HFModule) -> nn.ModuleList:
        return _path(transformer, self.layers)

    def packable(self, transformer: HFModule) -> bool:
        """Whether every layer has the pieces the packed path computes."""
        return self.parts is not None and all(self.parts.is_packable(layer) for layer in self.layer_list(transformer))

    def norm_for_exit(self, transformer: HFModule, hidden: torch.Tensor) -> torch.Tensor:
        """[N, d] states as the off-ramps read them."""
        return hidden if self.exit_norm is None else _path(transformer, self.exit_norm)(hidden)


BERT_PARTS = BertLayerParts()
DISTILBERT_PARTS = DistilBertLayerParts()

BERT = EncoderFamily("BERT", "encoder.layer", BERT_PARTS, bert_masked_call)
DISTILBERT = EncoderFamily(
    "DistilBERT", "transformer.layer", DISTILBERT_PARTS, distilbert_masked_call, intermediate_size="hidden_dim"
)
DEBERTA = EncoderFamily("DeBERTa", "encoder.layer", None, deberta_masked_call, embed=_deberta_embed)
MODERNBERT = EncoderFamily(
    "ModernBERT", "layers", None, modernbert_masked_call, exit_norm="final_norm", gated_feed_forward=True
)

SUPPORTED = (
    "BERT, RoBERTa, XLM-R, ELECTRA, MiniLM, CamemBERT (packed); DistilBERT (packed); "
    "DeBERTa, DeBERTa-v2/v3 and ModernBERT (masked)"
)


def family_of(transformer: HFModule) -> EncoderFamily:
    """The family whose layout `transformer` has (by structure and model
    type); a ValueError naming the supported families otherwise."""
    model_type = getattr(getattr(transformer, "config", None), "model_type", "")
    has_embeddings = _path(transformer, "embeddings") is not None
    if model_type == "modernbert" and _path(transformer, "layers") is not None:
        return MODERNBERT
    if has_embeddings and isinstance(_path(transformer, "transformer.layer"), nn.ModuleList):
        return DISTILBERT
    if has_embeddings and isinstance(_path(transformer, "encoder.layer"), nn.ModuleList):
        if _path(transformer, "encoder.get_rel_embedding") is not None:
            return DEBERTA
        return BERT
    raise ValueError(
        f"{type(transformer).__name__} is not a supported encoder (model type {model_type!r}): "
        f"expected the layout of one of {SUPPORTED}"
    )


def keep_first_layers(transformer: HFModule, n_layers: int) -> HFModule:
    """Cut `transformer` (any supported family) to its first n_layers layers,
    in place, and set its config's layer count to match (so that a model
    saved with that config is rebuilt with n_layers). Returns `transformer`.

    For backbones whose top layers were trained for another objective
    (multilingual-e5: sentence embeddings), the middle layers can carry a
    token task better than the last, and fewer layers also run faster.
    """
    layers = family_of(transformer).layer_list(transformer)
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or not 1 <= n_layers <= len(layers):
        raise ValueError(
            f"keep_layers must be an integer from 1 to the encoder's {len(layers)} layers; got {n_layers!r}"
        )
    del layers[n_layers:]
    transformer.config.num_hidden_layers = n_layers
    return transformer
