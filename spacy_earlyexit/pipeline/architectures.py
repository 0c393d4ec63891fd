"""Registered architectures and settings blocks (versioned; never edit a
released version, add a new one)."""
from typing import Any, Dict, List, Optional, Union

from spacy.util import registry

from ..layers.early_exit_transformer import EarlyExitTransformerModel
from ..layers.wordpieces import SpanGetter
from ..model.offramp import OffRampHeads
from ..model.self_sampling import SelfSampling


@registry.architectures("spacy_earlyexit.EarlyExitTransformer.v1")
def EarlyExitTransformer_v1(
    name: str,
    get_spans: SpanGetter,
    tokenizer_config: Dict[str, Any] = {},
    transformer_config: Dict[str, Any] = {},
    offramp_dropout: float = 0.1,
    encoder_learn_rate_scale: float = 0.1,
    freeze_encoder: bool = False,
    span_batch_size: int = 64,
    nO: Optional[int] = None,
):
    """A BERT-family encoder with an off-ramp (dropout + linear) on every layer.

    name: Hugging Face hub name or local folder of the encoder.
    get_spans: a span getter (e.g. spacy-transformers.strided_spans.v1); spans
        longer than the encoder's maximum are split further, never truncated.
    tokenizer_config / transformer_config: extra keyword arguments for
        AutoTokenizer / AutoModel.from_pretrained (remote code is refused).
    offramp_dropout: dropout before each off-ramp's linear layer.
    encoder_learn_rate_scale: the encoder's learning rate as a multiple of the
        optimizer's (the off-ramps use the optimizer's rate as it is).
    freeze_encoder: train the off-ramps only (two-stage variant).
    span_batch_size: spans per encoder batch at inference (sorted by length).
    """
    return EarlyExitTransformerModel(
        name=name,
        get_spans=get_spans,
        tokenizer_config=tokenizer_config,
        transformer_config=transformer_config,
        offramp_dropout=offramp_dropout,
        encoder_learn_rate_scale=encoder_learn_rate_scale,
        freeze_encoder=freeze_encoder,
        span_batch_size=span_batch_size,
        nO=nO,
    )


@registry.architectures("spacy_earlyexit.EarlyExitTransformer.v2")
def EarlyExitTransformer_v2(
    name: str,
    get_spans: SpanGetter,
    tokenizer_config: Dict[str, Any] = {},
    transformer_config: Dict[str, Any] = {},
    offramp_dropout: float = 0.1,
    encoder_learn_rate_scale: float = 0.1,
    freeze_encoder: bool = False,
    freeze_embeddings: bool = False,
    layer_lr_decay: float = 1.0,
    span_batch_size: int = 64,
    precision: str = "float32",
    piece_split: str = "none",
    nO: Optional[int] = None,
):
    """EarlyExitTransformer.v1 plus:

    freeze_embeddings: keep the word-embedding matrix fixed (it gets no
        gradient; position/type embeddings and their LayerNorm still train):
        for large-vocabulary encoders (multilingual-e5-small: 250k pieces).
    layer_lr_decay: in (0, 1]; encoder layer i of L (1-based) trains at the
        encoder rate x layer_lr_decay^(L - i), the embeddings at x decay^L
        (1.0: one rate for the whole encoder, as v1).
    precision: "float32", or "int8" (the encoder's Q, K, V, attention output
        and feed-forward layers run in int8 with per-row dynamic activation
        scales; off-ramps stay float32). int8 pipelines are inference-only:
        `python -m spacy_earlyexit quantize` makes one from a trained
        pipeline and sets this.
    piece_split: which word pieces are cut at spaCy token boundaries
        (layers/piece_split.py): "none" (the tokenizer's own pieces; a token
        after the first of a multi-token piece copies its prediction),
        "tokens" (no piece crosses a token boundary: on character docs every
        character has its own pieces) or "han" (cut only next to Han
        characters: Latin words and numbers keep their pieces). Chinese
        character docs with a SentencePiece vocabulary (multilingual-e5,
        XLM-R) need "tokens" or "han", else a word boundary inside a piece
        such as "在上海" can never be predicted.
    The other arguments are those of v1.
    """
    return EarlyExitTransformer_v3(
        name, get_spans, tokenizer_config, transformer_config, offramp_dropout,
        encoder_learn_rate_scale, freeze_encoder, freeze_embeddings, layer_lr_decay,
        span_batch_size, precision, piece_split, case_features=False, nO=nO,
    )


@registry.architectures("spacy_earlyexit.EarlyExitTransformer.v3")
def EarlyExitTransformer_v3(
    name: str,
    get_spans: SpanGetter,
    tokenizer_config: Dict[str, Any] = {},
    transformer_config: Dict[str, Any] = {},
    offramp_dropout: float = 0.1,
    encoder_learn_rate_scale: float = 0.1,
    freeze_encoder: bool = False,
    freeze_embeddings: bool = False,
    layer_lr_decay: float = 1.0,
    span_batch_size: int = 64,
    precision: str = "float32",
    piece_split: str = "none",
    case_features: bool = False,
    keep_layers: Optional[int] = None,
    offramp_context_layers: Union[int, str] = 0,
    offramp_context: int = 1,
    offramp_hidden: int = 0,
    nO: Optional[int] = None,
):
    """EarlyExitTransformer.v2 plus:

    case_features: add a learned embedding of each token's case class
        (lower, Title, Title at a sentence start, UPPER, mixed, no cased
        letter: layers/word_case.py) to the input states of its word pieces.
        For uncased vocabularies (MiniLM, bert-base-uncased), which cannot
        see capitalization otherwise; it starts at zero (the pretrained
        encoder unchanged) and trains at the off-ramps' rate.
    keep_layers: use only the first N layers of the pretrained encoder (the
        layers above are dropped when the weights are loaded; the pipeline
        saves N layers). null: all layers. For backbones whose top layers were
        trained for another objective: multilingual-e5-small's layers 10-12
        (sentence embeddings) learn NER much more slowly than its middle
        layers (benchmarks/results/ner/e5_layer_probe.md).
    offramp_context_layers: the lowest N layers ("all": every layer) get context off-ramps
        (model/offramp.py), which read the states of the offramp_context
        words either side of a word too, through a hidden layer of
        offramp_hidden units (0: linear). 0 (default): every off-ramp is
        dropout + linear on the word's own state, as in the paper. The
        saved weights decide when a pipeline is loaded.
    The other arguments are those of v2.
    """
    return EarlyExitTransformerModel(
        name=name,
        get_spans=get_spans,
        tokenizer_config=tokenizer_config,
        transformer_config=transformer_config,
        offramp_dropout=offramp_dropout,
        encoder_learn_rate_scale=encoder_learn_rate_scale,
        freeze_encoder=freeze_encoder,
        span_batch_size=span_batch_size,
        precision=precision,
        nO=nO,
        freeze_embeddings=freeze_embeddings,
        layer_lr_decay=layer_lr_decay,
        piece_split=piece_split,
        case_features=case_features,
        keep_layers=keep_layers,
        offramp_heads=OffRampHeads(offramp_context_layers, offramp_context, offramp_hidden),
    )


@registry.misc("spacy_earlyexit.SelfSampling.v1")
def make_self_sampling_v1(
    window_range: List[int] = [0, 2],
    threshold_range: List[float] = [0.0, 0.5],
    full_depth_share: float = 0.1,
    aggressive_share: float = 0.1,
    window_includes_exited: bool = False,
) -> SelfSampling:
    """Self-sampling fine-tuning settings: the ranges that each training span's
    exit setting is drawn from (see model.self_sampling.SelfSampling)."""
    return make_self_sampling_v2(
        window_range=window_range,
        threshold_range=threshold_range,
        full_depth_share=full_depth_share,
        aggressive_share=aggressive_share,
        window_includes_exited=window_includes_exited,
    )


@registry.misc("spacy_earlyexit.SelfSampling.v2")
def make_self_sampling_v2(
    window_range: List[int] = [0, 2],
    threshold_range: List[float] = [0.0, 0.5],
    full_depth_share: float = 0.1,
    aggressive_share: float = 0.1,
    window_includes_exited: bool = False,
    uncertainty_source: str = "current",
    flooding: float = 0.0,
) -> SelfSampling:
    """Self-sampling fine-tuning settings (see model.self_sampling.SelfSampling); v1 plus
    uncertainty_source ("current" model or cached "stage1" predictions for
    the simulated exits) and flooding (0: off; f > 0: flood each token's loss
    toward f times its stage-1 loss)."""
    return SelfSampling(
        window_range=tuple(window_range),
        threshold_range=tuple(threshold_range),
        full_depth_share=full_depth_share,
        aggressive_share=aggressive_share,
        window_includes_exited=window_includes_exited,
        uncertainty_source=uncertainty_source,
        flooding=flooding,
    )


@registry.misc("spacy_earlyexit.SelfSampling.v3")
def make_self_sampling_v3(
    window_range: List[int] = [0, 2],
    threshold_range: List[float] = [0.0, 0.5],
    full_depth_share: float = 0.1,
    aggressive_share: float = 0.1,
    window_includes_exited: bool = False,
    uncertainty_source: str = "current",
    flooding: float = 0.0,
    entity_exit: bool = False,
    entity_margin: int = 1,
) -> SelfSampling:
    """v2 plus entity_exit and entity_margin: simulate the entity exit rule
    (the inference setting of the same names) instead of plain TOKEE."""
    sampling = make_self_sampling_v2(
        window_range, threshold_range, full_depth_share, aggressive_share,
        window_includes_exited, uncertainty_source, flooding,
    )
    return SelfSampling(**{**sampling.__dict__, "entity_exit": entity_exit, "entity_margin": entity_margin})
