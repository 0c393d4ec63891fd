"""Registered architectures and settings blocks.

Until the first release each registered name has one version, changed in
place; after it, a changed signature gets a new version and the released
one stays as it is."""
from typing import Any, Dict, List, Optional, Union

from spacy.util import registry
from spacy_transformers.span_getters import configure_strided_spans

from ..layers.early_exit_transformer import EarlyExitTransformerModel
from ..layers.wordpieces import SpanGetter
from ..model.offramp import OffRampHeads
from ..model.self_sampling import SelfSampling

#: the span getter when a config names none: windows of 128 tokens, 96 apart
DEFAULT_SPAN_WINDOW = 128
DEFAULT_SPAN_STRIDE = 96


@registry.architectures("spacy_earlyexit.EarlyExitTransformer.v1")
def EarlyExitTransformer_v1(
    name: str,
    get_spans: Optional[SpanGetter] = None,
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
    case_features: bool = True,
    keep_layers: Optional[int] = None,
    offramp_context_layers: Union[int, str] = "all",
    offramp_context: int = 1,
    offramp_hidden: int = 384,
    nO: Optional[int] = None,
):
    """A BERT-family encoder with an off-ramp (a classifier) on every layer.
    The defaults are those of the project's NER training recipe.

    name: a local folder with the encoder's config, weights and tokenizer (or a
        Hugging Face hub name, which needs the network the first time).
    get_spans: a span getter (e.g. spacy-transformers.strided_spans.v1; null:
        strided spans of 128 tokens, 96 apart); spans longer than the
        encoder's maximum are split further, never truncated.
    tokenizer_config / transformer_config: extra keyword arguments for
        AutoTokenizer / AutoModel.from_pretrained (remote code is refused).
    offramp_dropout: dropout before each off-ramp's classifier.
    encoder_learn_rate_scale: the encoder's learning rate as a multiple of the
        optimizer's (the off-ramps use the optimizer's rate as it is).
    freeze_encoder: train the off-ramps only (two-stage variant).
    freeze_embeddings: keep the word-embedding matrix fixed (position/type
        embeddings and their LayerNorm still train): for large-vocabulary
        encoders (multilingual-e5-small: 250k pieces).
    layer_lr_decay: in (0, 1]; encoder layer i of L (1-based) trains at the
        encoder rate x layer_lr_decay^(L - i), the embeddings at x decay^L
        (1.0: one rate for the whole encoder).
    span_batch_size: spans per encoder batch at inference (sorted by length).
    precision: "float32", or "int8" (the encoder's linear layers run in int8
        with per-row dynamic activation scales; off-ramps stay float32).
        int8 pipelines are inference-only: `python -m spacy_earlyexit
        quantize` makes one from a trained pipeline and sets this.
    piece_split: which word pieces are cut at spaCy token boundaries: "none"
        (the tokenizer's own pieces; a token after the first of a multi-token
        piece copies its prediction), "tokens" (no piece crosses a token
        boundary) or "han" (cut only next to Han characters). Chinese
        character docs with a SentencePiece vocabulary (multilingual-e5,
        XLM-R) need "tokens" or "han", else a word boundary inside a piece
        such as "在上海" can never be predicted.
    case_features: add a learned embedding of each token's case class (lower,
        Title, Title at a sentence start, UPPER, mixed, no cased letter) to
        the input states of its word pieces: uncased vocabularies (MiniLM,
        bert-base-uncased) cannot see capitalization otherwise. It starts at
        zero (the pretrained encoder unchanged); harmless on cased encoders.
    keep_layers: use only the first N layers of the pretrained encoder (the
        layers above are dropped when the weights are loaded; the pipeline
        saves N layers). null: all layers.
    offramp_context_layers: the lowest N layers ("all": every layer) get
        context off-ramps, which read the states of the offramp_context words
        either side of a word too, through a hidden layer of offramp_hidden
        units (0: linear). 0: every off-ramp is dropout + linear on the word's
        own state, as in the paper.
    The saved weights decide case_features and the off-ramp shapes when a
    trained pipeline is loaded.
    """
    if get_spans is None:
        get_spans = configure_strided_spans(DEFAULT_SPAN_WINDOW, DEFAULT_SPAN_STRIDE)
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
    uncertainty_source: str = "current",
    flooding: float = 0.0,
    entity_exit: bool = False,
    entity_margin: int = 1,
) -> SelfSampling:
    """Self-sampling fine-tuning settings: the ranges that each training
    span's exit setting is drawn from (see model.self_sampling.SelfSampling).

    uncertainty_source: "current" (the model being trained) or "stage1"
        (cached predictions of the sourced stage-1 model) for the simulated
        exits. flooding: 0 (off), or f > 0: flood each token's loss toward f
        times its stage-1 loss. entity_exit, entity_margin: simulate the
        entity exit rule (the inference settings of the same names) instead
        of plain TOKEE.
    """
    return SelfSampling(
        window_range=tuple(window_range),
        threshold_range=tuple(threshold_range),
        full_depth_share=full_depth_share,
        aggressive_share=aggressive_share,
        window_includes_exited=window_includes_exited,
        uncertainty_source=uncertainty_source,
        flooding=flooding,
        entity_exit=entity_exit,
        entity_margin=entity_margin,
    )
