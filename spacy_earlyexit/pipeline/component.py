"""The spaCy component `earlyexit_tagger`: labels, annotation, loss, scoring.

The model (a thinc layer around the torch EarlyExitEncoder) gives per-token
classes and exit layers; this component turns them into doc.ents / tag_ /
pos_ / words (through a Task), token._.exit_layer and doc._.early_exit,
trains with a weighted sum of per-layer cross-entropies (loss.py), and owns
the exit settings (the run-time speed/accuracy dial). A call's settings
travel as arguments down to the layer loop: concurrent calls with different
settings do not see each other's.

The exit setting has one home: the component's block of the pipeline config
(`nlp.config`, saved as config.cfg). `configure_exit` writes it there, and
loading a pipeline takes it from there, so config overrides at `spacy.load`
and edits of config.cfg take effect.
"""
import warnings
import weakref
from dataclasses import asdict
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Union

import numpy
from spacy import util
from spacy.attrs import IS_SPACE
from spacy.errors import Errors
from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.tokens import Doc
from spacy.training import Example, validate_examples, validate_get_examples
from spacy.util import minibatch
from spacy.vocab import Vocab
from thinc.api import Model

from ..corpus import memory
from ..layers.data_classes import TokenOutputs
from ..layers.early_exit_transformer import predict_docs, train_docs
from ..model import EXIT_SETTING_NAMES, ExitSettings
from ..model.exit_policy import exit_rule
from ..model.self_sampling import SelfSampling
from .annotation import token_classes
from .extensions import exit_summary, register_extensions, set_exit_layers
from .serialization import load_from_bytes, load_from_disk
from .loss import check_distillation, early_exit_loss, layer_loss_weights
from .scorers import score_early_exit
from .layer_scores import score_off_ramps
from .tasks import get_task

class PipelineRef:
    """A weak reference to the pipeline whose config records a component's
    exit setting. A pickled copy (spawned n_process workers, deep copies)
    refers to no pipeline."""

    def __init__(self, nlp: Optional[Language]) -> None:
        self._ref = weakref.ref(nlp) if nlp is not None else None

    def __call__(self) -> Optional[Language]:
        return self._ref() if self._ref is not None else None

    def __getstate__(self) -> Dict[str, Any]:
        return {}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self._ref = None


def check_settings_for_task(settings: ExitSettings, task: Any, name: str) -> None:
    """Refuse exit settings that the task cannot use (entity_exit needs entities)."""
    if settings.entity_exit and not task.has_entities:
        raise ValueError(
            f"{name}: entity_exit is for tasks with entities (task 'ner'); this component's "
            f"task is {task.name!r}: set entity_exit to false"
        )


class EarlyExitTagger(TrainablePipe):
    """A multi-exit transformer tagger (see the module docstring)."""

    def __init__(
        self,
        vocab: Vocab,
        model: Model,
        name: str = "earlyexit_tagger",
        *,
        nlp: Optional[Language] = None,
        task: str = "ner",
        overwrite: bool = False,
        exit_settings: Optional[ExitSettings] = None,
        loss_weights: str = "depth",
        distillation: float = 0.0,
        distillation_temperature: float = 1.0,
        self_sampling: Optional[SelfSampling] = None,
        score_layers: bool = True,
        scorer: Optional[Callable] = score_early_exit,
    ) -> None:
        """nlp: the pipeline whose config records the exit setting (the
        factory passes it; None: a component outside any pipeline)."""
        register_extensions()
        task_spec = get_task(task)  # validates the name
        layer_loss_weights(loss_weights, 1)
        check_distillation(distillation, distillation_temperature)
        self.vocab = vocab
        self.model = model
        self.name = name
        self.scorer = scorer
        self._nlp_ref = PipelineRef(nlp)
        settings = exit_settings or ExitSettings()
        check_settings_for_task(settings, task_spec, name)
        self._exit_settings = settings
        # what is saved as cfg.json: labels and training settings; the exit
        # setting lives in the pipeline config
        self.cfg: Dict[str, Any] = {
            "labels": [],
            "task": task,
            "overwrite": overwrite,
            "loss_weights": loss_weights,
            "distillation": float(distillation),
            "distillation_temperature": float(distillation_temperature),
            "self_sampling": asdict(self_sampling) if self_sampling is not None else None,
            "score_layers": score_layers,
        }

    # --- labels -----------------------------------------------------------
    @property
    def task(self):
        return get_task(self.cfg["task"])

    @property
    def labels(self) -> tuple:
        return tuple(self.cfg["labels"])

    @property
    def label_data(self) -> List[str]:
        return list(self.cfg["labels"])

    @property
    def classes(self) -> List[str]:
        """The model's output classes (e.g. BILUO tags for NER)."""
        return self.task.classes(self.cfg["labels"])

    @property
    def precision(self) -> Optional[str]:
        """The precision the encoder runs in ("float32", "bfloat16" or "int8";
        the config's model.precision may say "auto"); None before there is a model."""
        return self.model.shims[0].runtime_precision

    @property
    def n_layers(self) -> int:
        """The encoder's number of layers (= off-ramps)."""
        return self.model.shims[0].encoder.n_layers

    def add_label(self, label: str) -> int:
        if not isinstance(label, str):
            raise ValueError(Errors.E187)
        if label in self.cfg["labels"]:
            return 0
        if self._is_initialized():
            raise ValueError(f"cannot add label {label!r}: the earlyexit_tagger is already initialized")
        self.task.validate_labels([label])
        self.cfg["labels"] = sorted(self.cfg["labels"] + [label])
        return 1

    def _is_initialized(self) -> bool:
        return self.model.shims[0]._model is not None

    # --- exit settings: the run-time dial -----------------------------------
    @property
    def exit_settings(self) -> ExitSettings:
        """The exit setting that calls use unless they override it."""
        return self._exit_settings

    def configure_exit(self, **changes: Any) -> ExitSettings:
        """Change exit settings (validated against the task and, once the
        model exists, its depth); the pipeline's config records them, so
        `nlp.config` shows them and `nlp.to_disk` saves them in config.cfg.

        E.g. configure_exit(exit_mode="token", threshold=0.2, window=1).
        """
        settings = self.exit_settings.updated(**changes)
        self._check_settings(settings)
        self._exit_settings = settings
        self._record_in_config(settings)
        return settings

    def _check_settings(self, settings: ExitSettings) -> None:
        """Refuse a setting that cannot work for this task or depth."""
        check_settings_for_task(settings, self.task, self.name)
        if self._is_initialized():
            try:
                exit_rule(settings, self.n_layers)  # e.g. one threshold multiplier per layer
            except ValueError as error:
                raise ValueError(f"{self.name}: {error}") from error

    def _record_in_config(self, settings: ExitSettings) -> None:
        """Write `settings` into this component's block of its pipeline's config."""
        nlp = self._nlp_ref()
        if nlp is None:
            return  # a component made outside a pipeline has no config to write
        names = [name for name, component in nlp.components if component is self]
        if not names:
            warnings.warn(
                f"{self.name}: the pipeline this component was created in no longer holds it, "
                "so no nlp.config records the new exit setting: call configure_exit on the "
                "component after adding it to its pipeline, then save that pipeline",
                UserWarning,
                stacklevel=3,
            )
            return
        for name in names:
            nlp.get_pipe_config(name).update(settings.to_dict())

    def _settings_for_call(self, overrides: Dict[str, Any]) -> ExitSettings:
        unknown = sorted(set(overrides) - set(EXIT_SETTING_NAMES))
        if unknown:
            raise ValueError(
                f"{self.name} got unknown setting(s) {', '.join(unknown)}; per-call settings are: "
                f"{', '.join(EXIT_SETTING_NAMES)}"
            )
        return self.exit_settings.updated(**overrides)

    # --- inference ---------------------------------------------------------
    def __call__(self, doc: Doc, *, batch_size: Optional[int] = None, **exit_overrides: Any) -> Doc:
        # batch_size is accepted and ignored: nlp.pipe writes it into the
        # component_cfg dict it is given, which users then pass to nlp() too
        settings = self._settings_for_call(exit_overrides)
        error_handler = self.get_error_handler()
        try:
            self.set_annotations([doc], self._predict(settings, [doc]))
            memory.count_docs(1)  # the resident-memory guard (memory.py)
            return doc
        except Exception as error:  # noqa: BLE001 - spaCy's error-handler contract
            error_handler(self.name, self, [doc], error)

    def pipe(self, stream: Iterable[Doc], *, batch_size: int = 128, **exit_overrides: Any) -> Iterator[Doc]:
        settings = self._settings_for_call(exit_overrides)
        error_handler = self.get_error_handler()
        memory.limit_heap_blocks()  # only if asked for (memory.configure)
        for docs in minibatch(stream, size=batch_size):
            try:
                self.set_annotations(docs, self._predict(settings, docs))
                yield from docs
            except Exception as error:  # noqa: BLE001
                error_handler(self.name, self, docs, error)
            memory.count_docs(len(docs))  # the resident-memory guard (memory.py)

    def predict(self, docs: Iterable[Doc]) -> TokenOutputs:
        return self._predict(self.exit_settings, list(docs))

    def _predict(self, settings: ExitSettings, docs: List[Doc], layer_labels: bool = False) -> TokenOutputs:
        if not self._is_initialized():
            raise ValueError(
                f"the {self.name} component is not initialized: call nlp.initialize() "
                "or load a trained pipeline first"
            )
        exit_rule(settings, self.n_layers)  # clear errors before any work
        return predict_docs(
            self.model, docs, settings, record_layer_labels=layer_labels,
            entity_classes=self.task.entity_classes(self.classes),
        )

    def set_annotations(self, docs: Iterable[Doc], outputs: TokenOutputs) -> None:
        classes = self.classes
        lenders = outputs.lenders or [None] * len(outputs.labels)
        for doc, labels, exits, own, cost, lender in zip(
            docs, outputs.labels, outputs.exit_layers, outputs.has_output, outputs.costs, lenders
        ):
            exit_list = numpy.maximum(exits, 1).tolist()
            set_exit_layers(doc, exit_list)
            doc._.early_exit = exit_summary(exit_list, *cost)
            # after the exit layers: a task may retokenize (and merge them)
            self._annotate(doc, labels, own, classes, self.cfg["overwrite"], lender)

    def _annotate(self, doc: Doc, labels, own, classes: List[str], overwrite: bool, lenders=None) -> None:
        values = token_classes(self.task, doc.to_array(IS_SPACE).astype(bool).tolist(), labels, own, classes, lenders)
        self.task.annotate(doc, values, overwrite)

    # --- training ----------------------------------------------------------
    def initialize(
        self,
        get_examples: Callable[[], Iterable[Example]],
        *,
        nlp: Optional[Language] = None,
        labels: Optional[Sequence[str]] = None,
    ) -> None:
        # spacy train passes a generator function, which validate_get_examples
        # accepts even when the corpus is empty
        if callable(get_examples) and next(iter(get_examples()), None) is None:
            raise ValueError(
                f"{self.name}: no training examples: get_examples() gave none. With "
                "`spacy train`, check that the training corpus (paths.train) holds docs."
            )
        validate_get_examples(get_examples, "EarlyExitTagger.initialize")
        task = self.task
        if labels is None:
            labels = task.labels_from_examples(get_examples())
        # labels added with add_label before initialize are kept, as in spaCy's components
        labels = sorted(set(self.cfg["labels"]) | set(labels))
        task.validate_labels(labels)
        if not labels and task.needs_labels:
            raise ValueError(
                f"{self.name}: found no {task.name} labels in the initialization examples "
                f"(nor any added with add_label): {task.missing_annotation(list(get_examples()))}"
            )
        self.cfg["labels"] = sorted(labels)
        self.model.set_dim("nO", len(self.classes))
        docs = [eg.predicted for eg in islice(get_examples(), 10)]
        self.model.initialize(X=docs)
        if nlp is not None:
            self._nlp_ref = PipelineRef(nlp)
        self.configure_exit()

    def update(
        self,
        examples: Iterable[Example],
        *,
        drop: float = 0.0,
        sgd=None,
        losses: Optional[Dict[str, float]] = None,
    ) -> Dict[str, float]:
        if losses is None:
            losses = {}
        losses.setdefault(self.name, 0.0)
        examples = list(examples)
        validate_examples(examples, "EarlyExitTagger.update")
        if not any(len(eg.predicted) for eg in examples):
            return losses
        sampling = self.cfg["self_sampling"]
        outputs, backprop = train_docs(
            self.model, [eg.predicted for eg in examples], SelfSampling(**sampling) if sampling else None,
            entity_classes=self.task.entity_classes(self.classes),
        )
        loss, d_logits = self.get_loss(examples, outputs)
        backprop(d_logits)
        if sgd not in (None, False):
            self.finish_update(sgd)
        losses[self.name] += loss
        return losses

    def get_loss(self, examples: Iterable[Example], outputs: TokenOutputs):
        """The per-layer cross-entropy loss (loss.early_exit_loss) of the
        tokens with gold classes. outputs.layer_logits: [L, N, C]; returns
        (loss, d_layer_logits [L, N, C])."""
        validate_examples(examples, "EarlyExitTagger.get_loss")
        gold = self.task.gold_indices(examples, self.classes, self.name, self.cfg["labels"])
        if len(gold) and not (gold >= 0).any():
            # a warning, not an error: partially annotated corpora (several
            # tasks' docs mixed) can give a batch without this annotation
            warnings.warn(
                f"{self.name}: no token of this training batch has a gold {self.task.name} "
                f"label: the reference docs carry no {self.task.annotation} (or it does not "
                "align with the predicted tokens); the batch teaches nothing",
                UserWarning,
                stacklevel=3,
            )
        own = numpy.concatenate(outputs.has_output) if outputs.has_output else numpy.zeros(0, bool)
        sampling = self.cfg.get("self_sampling") or {}
        loss, d_logits = early_exit_loss(
            outputs.layer_logits, numpy.where(own, gold, -1), outputs.layer_active,
            layer_loss_weights(self.cfg["loss_weights"], outputs.layer_logits.shape[0]),
            outputs.reference_layer_logits, sampling.get("flooding", 0.0),
            self.cfg.get("distillation", 0.0), self.cfg.get("distillation_temperature", 1.0),
        )
        if numpy.isnan(loss):
            raise ValueError(Errors.E910.format(name=self.name))
        return loss, d_logits

    # --- serialization -----------------------------------------------------
    def from_disk(self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()) -> "EarlyExitTagger":
        """Load the component's settings (cfg) and model (weights, transformer
        config, tokenizer) from `path`. Errors name the file and what is
        wrong with it; nothing is unpickled."""
        return load_from_disk(self, util.ensure_path(path), exclude)

    def from_bytes(self, bytes_data: bytes, *, exclude: Iterable[str] = tuple()) -> "EarlyExitTagger":
        """As from_disk, from the bytes of to_bytes."""
        return load_from_bytes(self, bytes_data, exclude)

    # --- scoring -----------------------------------------------------------
    def score(self, examples: Iterable[Example], **kwargs: Any) -> Dict[str, Any]:
        """The scorer's scores plus, if score_layers, the headline score of
        every off-ramp at full depth (e.g. pos_acc_layer_3)."""
        examples = list(examples)
        if self._is_initialized():
            self.task.warn_unknown_labels(self.name, examples, self.cfg["labels"])
        scores = self.scorer(examples, task=self.task.name, **kwargs)
        if self.cfg["score_layers"] and examples and self._is_initialized():
            scores.update(self.score_layers(examples, **kwargs))
        return scores

    def score_layers(self, examples: List[Example], **kwargs: Any) -> Dict[str, Any]:
        """The headline score of every off-ramp at full depth (layer_scores.py)."""
        return score_off_ramps(self, examples, **kwargs)
