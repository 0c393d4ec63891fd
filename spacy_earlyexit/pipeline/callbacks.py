"""Registered training callbacks for the multi-stage workflow.

Stage 2 and the second step of the two-stage variant *source* a trained
component: spaCy then keeps the sourced component's settings, so the changes
these stages need are made by `[training.before_update]` callbacks, which
spaCy calls as callback(nlp, {"step": ..., "epoch": ...}) before every update.
They are idempotent: setting the same values at every step costs nothing.
"""
from dataclasses import asdict
from typing import Any, Callable, Dict

from spacy.language import Language
from spacy.util import registry

from ..model.self_sampling import SelfSampling
from .loss import layer_loss_weights

BeforeUpdate = Callable[[Language, Dict[str, Any]], None]


def _tagger(nlp: Language, component: str):
    if component not in nlp.pipe_names:
        raise ValueError(
            f"no component {component!r} in the pipeline (it has: {', '.join(nlp.pipe_names)})"
        )
    return nlp.get_pipe(component)


@registry.callbacks("spacy_earlyexit.enable_self_sampling.v1")
def make_enable_self_sampling(
    self_sampling: SelfSampling, component: str = "earlyexit_tagger"
) -> BeforeUpdate:
    """A before_update callback that turns on self-sampling fine-tuning.

    self_sampling: the settings, a `spacy_earlyexit.SelfSampling.v1` block.
    component: the earlyexit_tagger's name in the pipeline.
    """
    settings = asdict(self_sampling)
    settings["window_range"] = list(settings["window_range"])
    settings["threshold_range"] = list(settings["threshold_range"])

    def enable_self_sampling(nlp: Language, args: Dict[str, Any]) -> None:
        _tagger(nlp, component).cfg["self_sampling"] = dict(settings)

    return enable_self_sampling


@registry.callbacks("spacy_earlyexit.train_offramps_only.v1")
def make_train_offramps_only(
    component: str = "earlyexit_tagger",
    loss_weights: str = "depth",
    freeze_final_offramp: bool = True,
) -> BeforeUpdate:
    """A before_update callback for the second step of the two-stage variant
    (DeeBERT style): the encoder (and, by default, the final classifier,
    trained in the first step) stay fixed; the other off-ramps train.

    component: the earlyexit_tagger's name in the pipeline.
    loss_weights: the per-layer loss weights for this step ("depth",
        "uniform"); the first step trained with "last".
    freeze_final_offramp: also keep the last layer's classifier fixed.
    """
    layer_loss_weights(loss_weights, 2)  # validates the name

    def train_offramps_only(nlp: Language, args: Dict[str, Any]) -> None:
        tagger = _tagger(nlp, component)
        tagger.cfg["loss_weights"] = loss_weights
        shim = tagger.model.shims[0]
        shim.freeze_encoder = True
        if freeze_final_offramp:
            shim.encoder.offramps[-1].requires_grad_(False)

    return train_offramps_only


@registry.callbacks("spacy_earlyexit.set_torch_threads.v1")
def make_set_torch_threads(threads: int = 0) -> Callable[[Language], Language]:
    """An [initialize.before_init] callback that sets torch's CPU threads for
    the training process (training, evaluation and saving).

    threads: 0 leaves torch's default (one per core). On a machine shared
        with other jobs, 1 can be many times faster: threads that wait for
        each other spin while the cores are busy elsewhere.
    """
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0: torch's default); got {threads}")

    def set_torch_threads(nlp: Language) -> Language:
        if threads:
            import torch

            torch.set_num_threads(threads)
        return nlp

    return set_torch_threads
