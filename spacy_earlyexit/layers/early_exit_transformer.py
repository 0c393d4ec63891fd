"""The thinc layer: docs in, per-token labels, exit layers and costs out.

It adapts spaCy docs to the torch EarlyExitEncoder (word pieces through
wordpieces.py), batches spans sorted by length, and maps word outputs back to
tokens (token_mapping.py). Everything a call needs travels as arguments:
`predict_docs(model, docs, settings)` for inference with an exit setting,
`train_docs(model, docs, self_sampling)` for a training step. Nothing per
call is stored on the model, so threads can share one pipeline. thinc's own
`forward` (model.predict / begin_update) is the full-depth, plain-training
case of the two.
"""
import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, cast

import numpy
import torch
from spacy.tokens import Doc
from thinc.api import Model, get_torch_default_device

from ..model import EarlyExitEncoder, ExitSettings
from ..model.batching import consecutive_groups, length_batches
from ..model.families import keep_first_layers
from ..model.offramp import OffRampHeads
from ..model.self_sampling import ReferencePredictions, SelfSampling, sample_exit_layers
from .data_classes import DocPieces, SpanGetter, TokenOutputs
from .loading import load_pretrained
from .piece_split import check_piece_split
from .shim import EarlyExitShim
from .token_mapping import borrowed, to_tokens
from .word_case import N_CASE_CLASSES, word_case_classes
from .wordpieces import max_pieces_of, tokenize_docs

#: padded piece slots of the encoder batches that go through the layers
#: together (forward_batches): enough batches for the per-row work after
#: exits to fill large matrix products, few enough for their states
#: (slots x hidden size floats) to stay small
WAVE_SLOTS = 65536
#: most padded pieces per encoder batch, per span of span_batch_size
PIECES_PER_SPAN = 128


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
    precision: str = "float32",
    freeze_embeddings: bool = False,
    layer_lr_decay: float = 1.0,
    piece_split: str = "none",
    case_features: bool = False,
    keep_layers: Optional[int] = None,
    offramp_heads: Optional[OffRampHeads] = None,
) -> Model[List[Doc], TokenOutputs]:
    """A thinc Model around an EarlyExitEncoder (weights loaded in init).
    precision: what the config asks for: "float32", "bfloat16", "int8" or
    "auto" (model/precision.py; only float32 trains). piece_split: which word pieces are cut at spaCy
    token boundaries ("none", "tokens", "han"; see layers/piece_split.py).
    case_features: give the encoder each token's case class (word_case.py)
    through a learned embedding (for uncased vocabularies). keep_layers: use
    only the first N layers of the pretrained encoder (None: all of them).
    offramp_heads: which off-ramps read a window of words (model/offramp.py;
    None: all plain)."""
    check_piece_split(piece_split)
    if span_batch_size < 1:
        raise ValueError(f"span_batch_size must be >= 1; got {span_batch_size}")
    if not 0.0 <= offramp_dropout < 1.0:
        raise ValueError(f"offramp_dropout must be in [0, 1); got {offramp_dropout}")
    if not isinstance(case_features, bool):
        raise ValueError(f"case_features must be true or false; got {case_features!r}")
    if keep_layers is not None and (
        isinstance(keep_layers, bool) or not isinstance(keep_layers, int) or keep_layers < 1
    ):
        raise ValueError(f"keep_layers must be null or an integer >= 1; got {keep_layers!r}")
    if not 0.0 < layer_lr_decay <= 1.0:
        raise ValueError(f"layer_lr_decay must be in (0, 1]; got {layer_lr_decay}")
    shim = EarlyExitShim(
        None,
        encoder_learn_rate_scale=encoder_learn_rate_scale,
        freeze_encoder=freeze_encoder,
        precision=precision,
        freeze_embeddings=freeze_embeddings,
        layer_lr_decay=layer_lr_decay,
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
            "precision": precision,
            "piece_split": piece_split,
            "case_features": case_features,
            "keep_layers": keep_layers,
            "offramp_heads": offramp_heads or OffRampHeads(),
        },
    )


def init(model: Model, X: Optional[List[Doc]] = None, Y=None) -> Model:
    shim = cast(EarlyExitShim, model.shims[0])
    if shim._model is not None:
        return model
    if shim.precision not in ("float32", "auto"):
        raise ValueError(
            f"the earlyexit_tagger's precision is {shim.precision!r}: a {shim.precision} pipeline "
            "cannot be initialized or trained. Train with precision \"float32\" (or \"auto\", "
            "which trains in float32); a saved float32 pipeline loads in bfloat16 with precision "
            "\"bfloat16\" or \"auto\", and `python -m spacy_earlyexit quantize` makes an int8 copy"
        )
    n_classes = model.get_dim("nO") if model.has_dim("nO") else None
    if not n_classes:
        raise ValueError("the earlyexit_tagger has no labels: its output size is unknown")
    tokenizer, transformer = load_pretrained(
        model.attrs["name"], model.attrs["tokenizer_config"], model.attrs["transformer_config"]
    )
    if model.attrs.get("keep_layers") is not None:
        transformer = keep_first_layers(transformer, model.attrs["keep_layers"])
    case_classes = N_CASE_CLASSES if model.attrs.get("case_features", False) else 0
    encoder = EarlyExitEncoder(
        transformer, n_classes, model.attrs["offramp_dropout"], case_classes=case_classes,
        offramp_heads=model.attrs.get("offramp_heads"),
    )
    encoder.to(get_torch_default_device())
    shim._model = encoder
    shim.tokenizer = tokenizer
    shim.runtime_precision = "float32"  # training runs in float32
    return model


def forward(model: Model, docs: List[Doc], is_train: bool) -> Tuple[TokenOutputs, Callable]:
    """thinc's forward: a plain training step, or inference at full depth."""
    if is_train:
        return train_docs(model, docs)
    return predict_docs(model, docs, ExitSettings()), lambda d: []


def _chunks(doc_pieces: DocPieces, batch_size: int, max_pieces: int) -> List[List[int]]:
    """Span indices grouped into encoder batches of similar length (at most
    batch_size spans and max_pieces padded pieces each; see length_batches)."""
    return length_batches(doc_pieces.span_lengths, batch_size, max_pieces)


def _waves(doc_pieces: DocPieces, batch_size: int, max_pieces: int) -> List[List[List[int]]]:
    """The encoder batches of _chunks, grouped into consecutive waves of at
    most WAVE_SLOTS padded slots (a batch larger than that is a wave alone)."""
    lengths = doc_pieces.span_lengths
    chunks = _chunks(doc_pieces, batch_size, max_pieces)
    slots = [len(chunk) * int(lengths[chunk].max()) for chunk in chunks]
    return [[chunks[i] for i in group] for group in consecutive_groups(slots, WAVE_SLOTS)]


def _tokenize(model: Model, docs: List[Doc]) -> Tuple[DocPieces, int]:
    """The docs' spans as word pieces, and the tokenizer's padding id."""
    shim = cast(EarlyExitShim, model.shims[0])
    tokenizer = shim.tokenizer
    doc_pieces = tokenize_docs(
        docs, model.attrs["get_spans"], tokenizer, max_pieces_of(tokenizer, shim.encoder.transformer.config),
        model.attrs.get("piece_split", "none"),
    )
    if shim.encoder.case_embedding is not None:  # the saved weights decide
        word_span = numpy.repeat(numpy.arange(doc_pieces.n_spans), numpy.diff(doc_pieces.word_offsets))
        doc_pieces.word_case = word_case_classes(docs, doc_pieces.span_doc[word_span], doc_pieces.word_token)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return doc_pieces, pad_id


def predict_docs(
    model: Model,
    docs: List[Doc],
    settings: ExitSettings,
    record_layer_labels: bool = False,
    entity_classes: Optional[Sequence[bool]] = None,
) -> TokenOutputs:
    """Label `docs` with early exit under `settings` (no gradients).

    record_layer_labels: also give every off-ramp's labels (outputs.layer_labels;
    meant for settings at full depth, where every layer sees every word).
    entity_classes: per class, whether it is inside an entity (the task's
    Task.entity_classes; needed by settings.entity_exit).
    """
    shim = cast(EarlyExitShim, model.shims[0])
    encoder = shim.encoder
    encoder.ensure_eval()
    doc_pieces, pad_id = _tokenize(model, docs)
    n_words = doc_pieces.n_words
    word_exit = numpy.zeros(n_words, dtype="int64")
    word_label = numpy.zeros(n_words, dtype="int64")
    word_layer_labels = numpy.zeros((encoder.n_layers, n_words), dtype="int64") if record_layer_labels else None
    entity_flags = None if entity_classes is None else torch.tensor(list(entity_classes), dtype=torch.bool)
    # inference mode: no autograd records at all (no version counters, no
    # views tracked), which the many small ops of a short doc feel
    with torch.inference_mode():
        batch_size = model.attrs["span_batch_size"]
        for wave in _waves(doc_pieces, batch_size, batch_size * PIECES_PER_SPAN):
            batches = [doc_pieces.encoder_batch(chunk, pad_id).to(shim.device) for chunk in wave]
            outs = encoder.forward_batches(
                batches, settings, return_layer_logits=record_layer_labels, entity_classes=entity_flags
            )
            for chunk, out in zip(wave, outs):
                chunk_words = doc_pieces.words_of(chunk)
                word_exit[chunk_words] = out.exit_layer.cpu().numpy()
                word_label[chunk_words] = out.labels.cpu().numpy()
                if word_layer_labels is not None and out.layer_logits is not None:
                    word_layer_labels[:, chunk_words] = out.layer_logits.argmax(dim=-1).cpu().numpy()
    shape = dataclasses.replace(encoder.shape, precision=shim.runtime_precision or "float32")
    outputs, token_word = to_tokens(len(docs), doc_pieces, word_label, word_exit, shape)
    if word_layer_labels is not None:
        outputs.layer_labels = [borrowed(word_layer_labels, words, -1) for words in token_word]
    return outputs


def train_docs(
    model: Model,
    docs: List[Doc],
    self_sampling: Optional[SelfSampling] = None,
    entity_classes: Optional[Sequence[bool]] = None,
) -> Tuple[TokenOutputs, Callable[[numpy.ndarray], List[Doc]]]:
    """A training forward pass: every layer's logits of every token, and the
    backward pass taking d(layer_logits) [L, N, C].

    self_sampling: None (joint training at full depth) or the settings of
    self-sampling fine-tuning (exits simulated per span, then forced).
    entity_classes: as in predict_docs (self_sampling.entity_exit needs it).
    """
    shim = cast(EarlyExitShim, model.shims[0])
    if shim.runtime_precision not in (None, "float32"):
        raise ValueError(
            f"this earlyexit_tagger runs in {shim.runtime_precision}: training it is not supported. "
            "Train (or fine-tune) it in float32 (precision \"float32\" in the model config); "
            "int8 copies come from `python -m spacy_earlyexit quantize`"
        )
    encoder = shim.encoder
    encoder.train()
    shim.set_trainable()
    doc_pieces, pad_id = _tokenize(model, docs)
    n_spans, n_words = doc_pieces.n_spans, doc_pieces.n_words
    n_layers, n_classes = encoder.n_layers, encoder.n_classes
    word_exit = numpy.zeros(n_words, dtype="int64")
    word_label = numpy.zeros(n_words, dtype="int64")
    layer_logits_words = layer_active_words = reference_words = None
    layer_logits_torch: Optional[torch.Tensor] = None
    if n_spans:
        batch = doc_pieces.encoder_batch(range(n_spans), pad_id).to(shim.device)
        forced = None
        if self_sampling is not None:
            stage1_logits = None
            if self_sampling.needs_reference:
                stage1_logits = _reference_predictions(shim, encoder).layer_logits(batch)
            entity_flags = None  # only the entity rule reads them
            if self_sampling.entity_exit and entity_classes is not None:
                entity_flags = torch.tensor(list(entity_classes), dtype=torch.bool)
            forced = sample_exit_layers(
                encoder, batch, self_sampling,
                layer_logits=stage1_logits if self_sampling.uncertainty_source == "stage1" else None,
                entity_classes=entity_flags,
            )
            if self_sampling.flooding > 0.0 and stage1_logits is not None:
                reference_words = stage1_logits.cpu().numpy()
        out = encoder(batch, forced_exit_layer=forced, return_layer_logits=True)
        word_exit[:] = out.exit_layer.cpu().numpy()
        word_label[:] = out.labels.cpu().numpy()
        layer_logits_torch = out.layer_logits
        layer_logits_words = layer_logits_torch.detach().cpu().numpy()
        layer_active_words = out.layer_active.cpu().numpy()

    outputs, token_word = to_tokens(len(docs), doc_pieces, word_label, word_exit, encoder.shape)
    token_word_all = numpy.concatenate(token_word) if token_word else numpy.zeros(0, dtype="int64")
    own = token_word_all >= 0
    outputs.layer_logits = numpy.zeros((n_layers, len(token_word_all), n_classes), dtype="float32")
    outputs.layer_active = numpy.zeros((n_layers, len(token_word_all)), dtype=bool)
    if layer_logits_words is not None and layer_active_words is not None:
        outputs.layer_logits[:, own] = layer_logits_words[:, token_word_all[own]]
        outputs.layer_active[:, own] = layer_active_words[:, token_word_all[own]]
    if reference_words is not None:
        outputs.reference_layer_logits = numpy.zeros_like(outputs.layer_logits)
        outputs.reference_layer_logits[:, own] = reference_words[:, token_word_all[own]]

    def backprop(d_layer_logits: numpy.ndarray) -> List[Doc]:
        if layer_logits_torch is not None:
            d_words = numpy.zeros((n_layers, n_words, n_classes), dtype="float32")
            d_words[:, token_word_all[own]] = d_layer_logits[:, own]
            torch.autograd.backward(layer_logits_torch, torch.from_numpy(d_words).to(shim.device))
        return []

    return outputs, backprop


def _reference_predictions(shim: EarlyExitShim, encoder: EarlyExitEncoder) -> ReferencePredictions:
    """The stage-1 reference of self-sampling: a frozen copy of the encoder as
    it is at the first step that needs it, kept on the shim (not saved)."""
    reference = shim.self_sampling_reference
    if reference is None:
        reference = ReferencePredictions(encoder)
        shim.self_sampling_reference = reference
    return reference
