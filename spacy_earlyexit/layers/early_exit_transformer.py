"""The thinc layer: docs in, per-token labels, exit layers and costs out.

It adapts spaCy docs to the torch EarlyExitEncoder (through wordpieces.py),
batches spans sorted by length, and maps word outputs back to tokens. The
exit settings and self-sampling settings are read from the model's attrs,
which the pipeline component sets.
"""
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy
import torch
from spacy.tokens import Doc
from thinc.api import Model, get_torch_default_device

from ..model import EarlyExitEncoder, ExitSettings, spans_cost
from ..model.batching import consecutive_groups, length_batches
from ..model.self_sampling import ReferencePredictions, SelfSampling, sample_exit_layers
from .shim import EarlyExitShim
from .wordpieces import (
    DocPieces, SpanGetter, lender_index, lender_index_segments, max_pieces_of, tokenize_docs,
)

EXIT_SETTINGS_ATTR = "exit_settings"
SELF_SAMPLING_ATTR = "self_sampling"


@dataclass
class TokenOutputs:
    """Per-doc results of a forward pass.

    labels: per doc [n_tokens] int class index (-1 where the doc has no token
        with a word piece).
    exit_layers: per doc [n_tokens] int, 1-based (0 where labels is -1).
    has_output: per doc [n_tokens] bool, whether the token has its own output
        (False: it took a neighbour's, e.g. whitespace).
    costs: per doc (multiply-adds with early exit, at full depth).
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
    costs: List[Tuple[float, float]]
    layer_logits: Optional[numpy.ndarray] = None
    layer_active: Optional[numpy.ndarray] = None
    layer_labels: Optional[List[numpy.ndarray]] = None
    reference_layer_logits: Optional[numpy.ndarray] = None
    lenders: Optional[List[numpy.ndarray]] = None


def EarlyExitTransformerModel(
    name: str,
    get_spans: SpanGetter,
    tokenizer_config: Dict[str, Any],
    transformer_config: Dict[str, Any],
    offramp_dropout: float,
    encoder_learn_rate_scale: float,
    freeze_encoder: bool,
    span_batch_size: int,
    nO: Optional[int] = None,
) -> Model[List[Doc], TokenOutputs]:
    """A thinc Model around an EarlyExitEncoder (weights loaded in init)."""
    if span_batch_size < 1:
        raise ValueError(f"span_batch_size must be >= 1; got {span_batch_size}")
    if not 0.0 <= offramp_dropout < 1.0:
        raise ValueError(f"offramp_dropout must be in [0, 1); got {offramp_dropout}")
    shim = EarlyExitShim(
        None, encoder_learn_rate_scale=encoder_learn_rate_scale, freeze_encoder=freeze_encoder
    )
    return Model(
        "early_exit_transformer",
        forward,
        init=init,
        dims={"nO": nO},
        shims=[shim],
        attrs={
            "name": name,
            "get_spans": get_spans,
            "tokenizer_config": dict(tokenizer_config),
            "transformer_config": dict(transformer_config),
            "offramp_dropout": offramp_dropout,
            "span_batch_size": span_batch_size,
            EXIT_SETTINGS_ATTR: ExitSettings().to_dict(),
            SELF_SAMPLING_ATTR: None,
        },
    )


def load_pretrained(name: str, tokenizer_config: Dict[str, Any], transformer_config: Dict[str, Any]):
    """Load a Hugging Face encoder and its fast tokenizer (never remote code)."""
    from transformers import AutoModel, AutoTokenizer

    for forbidden in ("trust_remote_code",):
        if tokenizer_config.get(forbidden) or transformer_config.get(forbidden):
            raise ValueError("spacy-earlyexit never runs remote code: remove trust_remote_code")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, use_fast=True, **tokenizer_config)
        transformer = AutoModel.from_pretrained(name, **transformer_config)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"could not load the transformer {name!r}: {error}\n"
            "Give a local folder with config.json, weights and tokenizer files, or a "
            "Hugging Face hub name; a hub name needs network access (this machine may "
            "be offline, e.g. HF_HUB_OFFLINE=1)."
        ) from error
    return tokenizer, transformer


def init(model: Model, X: Optional[List[Doc]] = None, Y=None) -> Model:
    shim: EarlyExitShim = model.shims[0]
    if shim._model is not None:
        return model
    n_classes = model.get_dim("nO") if model.has_dim("nO") else None
    if not n_classes:
        raise ValueError("the earlyexit_tagger has no labels: its output size is unknown")
    tokenizer, transformer = load_pretrained(
        model.attrs["name"], model.attrs["tokenizer_config"], model.attrs["transformer_config"]
    )
    encoder = EarlyExitEncoder(transformer, n_classes, model.attrs["offramp_dropout"])
    encoder.to(get_torch_default_device())
    shim._model = encoder
    shim.tokenizer = tokenizer
    return model


def _chunks(doc_pieces: DocPieces, batch_size: int, max_pieces: int) -> List[List[int]]:
    """Span indices grouped into encoder batches of similar length (at most
    batch_size spans and max_pieces padded pieces each; see length_batches)."""
    return length_batches(doc_pieces.span_lengths, batch_size, max_pieces)


#: padded piece slots of the encoder batches that go through the layers
#: together (forward_batches): enough batches for the per-row work after
#: exits to fill large matrix products, few enough for their states
#: (slots x hidden size floats) to stay small
WAVE_SLOTS = 65536


def _waves(doc_pieces: DocPieces, batch_size: int, max_pieces: int) -> List[List[List[int]]]:
    """The encoder batches of _chunks, grouped into consecutive waves of at
    most WAVE_SLOTS padded slots (a batch larger than that is a wave alone)."""
    lengths = doc_pieces.span_lengths
    chunks = _chunks(doc_pieces, batch_size, max_pieces)
    slots = [len(chunk) * int(lengths[chunk].max()) for chunk in chunks]
    return [[chunks[i] for i in group] for group in consecutive_groups(slots, WAVE_SLOTS)]


def forward(model: Model, docs: List[Doc], is_train: bool) -> Tuple[TokenOutputs, Callable]:
    shim: EarlyExitShim = model.shims[0]
    encoder = shim.encoder
    tokenizer = shim.tokenizer
    doc_pieces = tokenize_docs(
        docs, model.attrs["get_spans"], tokenizer, max_pieces_of(tokenizer, encoder.transformer.config)
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    n_spans, n_words = doc_pieces.n_spans, doc_pieces.n_words
    word_exit = numpy.zeros(n_words, dtype="int64")
    word_label = numpy.zeros(n_words, dtype="int64")
    device = shim.device
    settings = ExitSettings.from_dict(model.attrs[EXIT_SETTINGS_ATTR])
    backprop_words: Optional[Callable] = None
    layer_logits_words = layer_active_words = reference_words = None

    if is_train:
        encoder.train()
        for param in encoder.transformer.parameters():
            param.requires_grad_(not shim.freeze_encoder)
        if n_spans:
            batch = doc_pieces.encoder_batch(range(n_spans), pad_id).to(device)
            forced = None
            sampling_cfg = model.attrs.get(SELF_SAMPLING_ATTR)
            if sampling_cfg:
                sampling = SelfSampling(**sampling_cfg)
                stage1_logits = None
                if sampling.needs_reference:
                    stage1_logits = _reference_predictions(shim, encoder).layer_logits(batch)
                forced = sample_exit_layers(
                    encoder, batch, sampling,
                    layer_logits=stage1_logits if sampling.uncertainty_source == "stage1" else None,
                )
                if sampling.flooding > 0.0:
                    reference_words = stage1_logits.cpu().numpy()
            out = encoder(batch, forced_exit_layer=forced, return_layer_logits=True)
            word_exit[:] = out.exit_layer.cpu().numpy()
            word_label[:] = out.labels.cpu().numpy()
            layer_logits_torch = out.layer_logits
            layer_logits_words = layer_logits_torch.detach().cpu().numpy()
            layer_active_words = out.layer_active.cpu().numpy()

            def backprop_words(d_words: numpy.ndarray) -> None:
                grad = torch.from_numpy(numpy.ascontiguousarray(d_words, dtype="float32")).to(device)
                torch.autograd.backward(layer_logits_torch, grad)
    else:
        encoder.eval()
        max_batch_pieces = model.attrs["span_batch_size"] * 128
        record = bool(model.attrs.get("record_layer_labels"))
        word_layer_labels = numpy.zeros((encoder.n_layers, n_words), dtype="int64") if record else None
        with torch.no_grad():
            for wave in _waves(doc_pieces, model.attrs["span_batch_size"], max_batch_pieces):
                batches = [doc_pieces.encoder_batch(chunk, pad_id).to(device) for chunk in wave]
                outs = encoder.forward_batches(batches, settings, return_layer_logits=record)
                for chunk, out in zip(wave, outs):
                    chunk_words = doc_pieces.words_of(chunk)
                    word_exit[chunk_words] = out.exit_layer.cpu().numpy()
                    word_label[chunk_words] = out.labels.cpu().numpy()
                    if record:
                        word_layer_labels[:, chunk_words] = out.layer_logits.argmax(dim=-1).cpu().numpy()

    outputs, token_word = _to_tokens(docs, doc_pieces, word_label, word_exit, encoder)
    if not is_train:
        if word_layer_labels is not None:
            outputs.layer_labels = [
                _borrowed(word_layer_labels, words, -1) for words in token_word
            ]
        return outputs, lambda d: []

    token_word_all = numpy.concatenate(token_word) if token_word else numpy.zeros(0, dtype="int64")
    n_layers, n_classes = encoder.n_layers, encoder.n_classes
    own = token_word_all >= 0
    outputs.layer_logits = numpy.zeros((n_layers, len(token_word_all), n_classes), dtype="float32")
    outputs.layer_active = numpy.zeros((n_layers, len(token_word_all)), dtype=bool)
    if layer_logits_words is not None:
        outputs.layer_logits[:, own] = layer_logits_words[:, token_word_all[own]]
        outputs.layer_active[:, own] = layer_active_words[:, token_word_all[own]]
    if reference_words is not None:
        outputs.reference_layer_logits = numpy.zeros_like(outputs.layer_logits)
        outputs.reference_layer_logits[:, own] = reference_words[:, token_word_all[own]]

    def backprop(d_layer_logits: numpy.ndarray) -> List[Doc]:
        if backprop_words is not None:
            d_words = numpy.zeros((n_layers, n_words, n_classes), dtype="float32")
            d_words[:, token_word_all[own]] = d_layer_logits[:, own]
            backprop_words(d_words)
        return []

    return outputs, backprop


def _reference_predictions(shim: EarlyExitShim, encoder: EarlyExitEncoder) -> ReferencePredictions:
    """The stage-1 reference of self-sampling: a frozen copy of the encoder as
    it is at the first step that needs it, kept on the shim (not saved)."""
    reference = getattr(shim, "self_sampling_reference", None)
    if reference is None:
        reference = ReferencePredictions(encoder)
        shim.self_sampling_reference = reference
    return reference


def _to_tokens(docs, doc_pieces: DocPieces, word_label, word_exit, encoder):
    """Map word results to tokens; tokens without a piece borrow a neighbour's.

    Vectorised over all tokens of the batch (one split per doc at the end).
    """
    word_offsets = doc_pieces.word_offsets
    word_pieces = doc_pieces.word_n_pieces
    word_span = numpy.repeat(numpy.arange(doc_pieces.n_spans), numpy.diff(word_offsets))
    owned = numpy.bincount(word_span, weights=word_pieces, minlength=doc_pieces.n_spans)
    other = doc_pieces.span_lengths - owned.astype("int64")
    span_doc = doc_pieces.span_doc
    span_costs, span_full = spans_cost(encoder.shape, word_pieces, word_offsets, other, word_exit)
    doc_cost = numpy.bincount(span_doc, weights=span_costs, minlength=len(docs))
    doc_full = numpy.bincount(span_doc, weights=span_full, minlength=len(docs))
    lengths = numpy.diff(doc_pieces.token_offsets)
    source = doc_pieces.token_sources
    own = source[:, 0] >= 0
    word = numpy.where(own, word_offsets[numpy.maximum(source[:, 0], 0)] + source[:, 1], -1)
    lenders = lender_index_segments(own, lengths)  # position within the doc, or -1
    starts = numpy.cumsum(lengths) - lengths
    lender_flat = numpy.where(lenders >= 0, lenders + numpy.repeat(starts, lengths), -1)
    lent_word = numpy.where(lender_flat >= 0, word[numpy.maximum(lender_flat, 0)], -1)
    if len(word_label):
        labels = numpy.where(lent_word >= 0, word_label[numpy.maximum(lent_word, 0)], -1)
        exits = numpy.where(lent_word >= 0, word_exit[numpy.maximum(lent_word, 0)], 0)
    else:
        labels = numpy.full(len(word), -1, dtype="int64")
        exits = numpy.zeros(len(word), dtype="int64")
    cuts = numpy.cumsum(lengths)[:-1]
    outputs = TokenOutputs(
        labels=numpy.split(labels, cuts) if len(docs) else [],
        exit_layers=numpy.split(exits, cuts) if len(docs) else [],
        has_output=numpy.split(own, cuts) if len(docs) else [],
        costs=[(float(c), float(f)) for c, f in zip(doc_cost, doc_full)],
        lenders=numpy.split(lenders, cuts) if len(docs) else [],
    )
    return outputs, (numpy.split(word, cuts) if len(docs) else [])


def _borrowed(word_values: numpy.ndarray, token_word: numpy.ndarray, missing: int) -> numpy.ndarray:
    """Per-token values from per-word values (last axis), tokens without a
    word taking their nearest neighbour's (see lender_index).

    word_values: [..., W]; token_word: [n_tokens] word index or -1.
    Returns [..., n_tokens], `missing` where the doc has no word at all.
    """
    lender = lender_index(token_word >= 0)
    word = numpy.where(lender >= 0, token_word[numpy.maximum(lender, 0)], -1)
    if word_values.shape[-1] == 0:
        return numpy.full(word_values.shape[:-1] + word.shape, missing, dtype="int64")
    values = word_values[..., numpy.maximum(word, 0)]
    return numpy.where(word >= 0, values, missing)
