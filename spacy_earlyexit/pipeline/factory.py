"""The `earlyexit_tagger` factory: the component's config and its defaults."""
from typing import Callable, List, Optional

from spacy.language import Language
from thinc.api import Config, Model

from ..model import ExitSettings
from ..model.self_sampling import SelfSampling
from . import schedules  # noqa: F401 (registers the corpus-sized schedule)
from .component import EarlyExitTagger
from .load import FACTORY
#: the architecture and settings of the project's NER training recipe;
#: a partial "model" block in add_pipe's config is merged into it
DEFAULT_MODEL_CONFIG = """
[model]
@architectures = "spacy_earlyexit.EarlyExitTransformer.v1"
name = "bert-base-cased"
offramp_dropout = 0.1
encoder_learn_rate_scale = 0.1
freeze_encoder = false
freeze_embeddings = false
layer_lr_decay = 1.0
span_batch_size = 64
precision = "float32"
piece_split = "none"
case_features = true
keep_layers = null
offramp_context_layers = "all"
offramp_context = 1
offramp_hidden = 384

[model.get_spans]
@span_getters = "spacy-transformers.strided_spans.v1"
window = 128
stride = 96

[model.tokenizer_config]

[model.transformer_config]
"""
DEFAULT_MODEL = Config().from_str(DEFAULT_MODEL_CONFIG)["model"]


@Language.factory(
    FACTORY,
    assigns=["doc.ents", "token.ent_iob", "token.ent_type", "token.tag", "token.pos", "token._.exit_layer"],
    default_config={
        "model": DEFAULT_MODEL,
        "task": "ner",
        "overwrite": False,
        "exit_mode": "off",
        "threshold": 0.1,
        "window": 0,
        "window_includes_exited": False,
        "threshold_multipliers": None,
        "sentence_score": "max",
        "entity_exit": False,
        "entity_margin": 1,
        "entity_threshold_scale": 1.0,
        "max_layer": None,
        "loss_weights": "depth",
        "distillation": 0.0,
        "distillation_temperature": 1.0,
        "self_sampling": None,
        "score_layers": True,
        "scorer": {"@scorers": "spacy_earlyexit.scorer.v1"},
    },
    default_score_weights={
        "ents_f": 1.0,
        "ents_p": 0.0,
        "ents_r": 0.0,
        "tag_acc": 1.0,
        "pos_acc": 1.0,
        "token_f": 1.0,
        "exit_layer_mean": None,
        "flops_speedup": None,
    },
)
def make_earlyexit_tagger(
    nlp: Language,
    name: str,
    model: Model,
    task: str,
    overwrite: bool,
    exit_mode: str,
    threshold: float,
    window: int,
    window_includes_exited: bool,
    threshold_multipliers: Optional[List[float]],
    sentence_score: str,
    entity_exit: bool,
    entity_margin: int,
    entity_threshold_scale: float,
    max_layer: Optional[int],
    loss_weights: str,
    distillation: float,
    distillation_temperature: float,
    self_sampling: Optional[SelfSampling],
    score_layers: bool,
    scorer: Optional[Callable],
) -> EarlyExitTagger:
    """Create an earlyexit_tagger. task: "ner", "tag", "pos" or "segment";
    exit_mode, threshold, window, window_includes_exited,
    threshold_multipliers, sentence_score, entity_exit, entity_margin and
    entity_threshold_scale: the exit rule (see ExitSettings); max_layer: the
    depth cap, at most this many layers run (None: all); loss_weights:
    "depth", "uniform" or "last"; distillation, distillation_temperature:
    share a of the last layer's distribution (at temperature T) in the
    earlier off-ramps' loss (see loss.early_exit_loss; 0: off);
    self_sampling: settings of self-sampling fine-tuning (None: plain joint
    training)."""
    settings = ExitSettings(
        exit_mode=exit_mode,
        threshold=threshold,
        window=window,
        window_includes_exited=window_includes_exited,
        threshold_multipliers=tuple(threshold_multipliers) if threshold_multipliers else None,
        sentence_score=sentence_score,
        entity_exit=entity_exit,
        entity_margin=entity_margin,
        entity_threshold_scale=entity_threshold_scale,
        max_layer=max_layer,
    )
    return EarlyExitTagger(
        nlp.vocab,
        model,
        name,
        nlp=nlp,
        task=task,
        overwrite=overwrite,
        exit_settings=settings,
        loss_weights=loss_weights,
        distillation=distillation,
        distillation_temperature=distillation_temperature,
        self_sampling=self_sampling,
        score_layers=score_layers,
        scorer=scorer,
    )
