"""The spaCy component `earlyexit_tagger`: labels, annotation, loss, scoring.

The model (a thinc layer around the torch EarlyExitEncoder) gives per-token
classes and exit layers; this component turns them into doc.ents / tag_ /
pos_ / words (through a Task), token._.exit_layer and doc._.early_exit,
trains with a weighted sum of per-layer cross-entropies (loss.py), and owns
the exit settings (the run-time speed/accuracy dial). A call's settings
travel as arguments down to the layer loop: concurrent calls with different
settings do not see each other's.
"""
import json
import warnings
from dataclasses import asdict
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Union

import numpy
from spacy import util
from spacy.errors import Errors
from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.tokens import Doc
from spacy.training import Example, validate_examples, validate_get_examples
from spacy.util import minibatch
from spacy.vocab import Vocab
from thinc.api import Config, Model

from ..corpus import memory
from ..layers.data_classes import TokenOutputs
from ..layers.early_exit_transformer import predict_docs, train_docs
from ..layers.shim import ModelDataError
from ..model import EXIT_SETTING_NAMES, ExitSettings
from ..model.exit_policy import exit_rule
from ..model.self_sampling import SelfSampling
from .annotation import token_classes
from .extensions import exit_summary, register_extensions, set_exit_layers
from .load_checks import check_classes, check_saved_task, model_load_error
from .loss import early_exit_loss, layer_loss_weights
from .scorers import score_early_exit
from .tasks import get_task

DEFAULT_MODEL_CONFIG = """
[model]
@architectures = "spacy_earlyexit.EarlyExitTransformer.v1"
name = "bert-base-cased"
offramp_dropout = 0.1
encoder_learn_rate_scale = 0.1
freeze_encoder = false
span_batch_size = 64

[model.get_spans]
@span_getters = "spacy-transformers.strided_spans.v1"
window = 128
stride = 96

[model.tokenizer_config]

[model.transformer_config]
"""
DEFAULT_MODEL = Config().from_str(DEFAULT_MODEL_CONFIG)["model"]


class EarlyExitTagger(TrainablePipe):
    """A multi-exit transformer tagger (see the module docstring)."""

    def __init__(
        self,
        vocab: Vocab,
        model: Model,
        name: str = "earlyexit_tagger",
        *,
        task: str = "ner",
        overwrite: bool = False,
        exit_settings: Optional[ExitSettings] = None,
        loss_weights: str = "depth",
        self_sampling: Optional[SelfSampling] = None,
        score_layers: bool = True,
        scorer: Optional[Callable] = score_early_exit,
    ) -> None:
        register_extensions()
        get_task(task)
        layer_loss_weights(loss_weights, 1)
        self.vocab = vocab
        self.model = model
        self.name = name
        self.scorer = scorer
        self.cfg: Dict[str, Any] = {
            "labels": [],
            "task": task,
            "overwrite": overwrite,
            "exit": (exit_settings or ExitSettings()).to_dict(),
            "loss_weights": loss_weights,
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
        return ExitSettings.from_dict(self.cfg["exit"])

    def configure_exit(self, **changes: Any) -> ExitSettings:
        """Change exit settings (validated); they are saved with the pipeline.

        E.g. configure_exit(exit_mode="token", threshold=0.2, window=1).
        """
        settings = self.exit_settings.updated(**changes)
        if self._is_initialized():
            exit_rule(settings, self.n_layers)  # e.g. one threshold multiplier per layer
        self.cfg["exit"] = settings.to_dict()
        return settings

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
            memory.count_docs(len(docs))  # only releases memory if asked for

    def predict(self, docs: Iterable[Doc]) -> TokenOutputs:
        return self._predict(self.exit_settings, list(docs))

    def _predict(self, settings: ExitSettings, docs: List[Doc], layer_labels: bool = False) -> TokenOutputs:
        if not self._is_initialized():
            raise ValueError(
                f"the {self.name} component is not initialized: call nlp.initialize() "
                "or load a trained pipeline first"
            )
        exit_rule(settings, self.n_layers)  # clear errors before any work
        return predict_docs(self.model, docs, settings, record_layer_labels=layer_labels)

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
        values = token_classes(self.task, [t.is_space for t in doc], labels, own, classes, lenders)
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
            self.model, [eg.predicted for eg in examples], SelfSampling(**sampling) if sampling else None
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
        )
        if numpy.isnan(loss):
            raise ValueError(Errors.E910.format(name=self.name))
        return loss, d_logits

    # --- serialization -----------------------------------------------------
    def from_disk(self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()) -> "EarlyExitTagger":
        """Load the component's settings (cfg) and model (weights, transformer
        config, tokenizer) from `path`. Errors name the file and what is
        wrong with it; nothing is unpickled."""
        path = util.ensure_path(path)

        def load_cfg(file: Path) -> None:
            if not file.exists():
                raise ValueError(f"{self.name}: the saved pipeline lacks {file} (labels and settings)")
            try:
                # the standard library parses floats exactly (srsly's reader
                # can be 1 ulp off, e.g. a threshold of 0.7 came back as 0.7000000000000001)
                self._load_cfg(json.loads(file.read_text(encoding="utf8")), file)
            except json.JSONDecodeError as error:
                raise ValueError(f"{self.name}: {file} is not valid JSON ({error})") from error

        def load_model(file: Path) -> None:
            if not file.exists():
                raise ValueError(
                    f"{self.name}: the saved pipeline lacks its model file {file} (weights, "
                    "transformer config, tokenizer); save the pipeline again with nlp.to_disk"
                )
            self._load_model_bytes(file.read_bytes(), str(file))

        readers = {
            "cfg": load_cfg,
            "vocab": lambda file: self.vocab.from_disk(file, exclude=exclude),
            "model": load_model,
        }
        util.from_disk(path, readers, exclude)
        if "model" not in exclude:
            self._check_classes(str(path))
        return self

    def from_bytes(self, bytes_data: bytes, *, exclude: Iterable[str] = tuple()) -> "EarlyExitTagger":
        """As from_disk, from the bytes of to_bytes."""
        readers = {
            "cfg": lambda data: self._load_cfg(json.loads(data), "the component data"),
            "vocab": lambda data: self.vocab.from_bytes(data, exclude=exclude),
            "model": lambda data: self._load_model_bytes(data, "the model data"),
        }
        util.from_bytes(bytes_data, readers, exclude)
        if "model" not in exclude:
            self._check_classes("the component data")
        return self

    def _load_cfg(self, cfg: Dict[str, Any], source: Any) -> None:
        check_saved_task(self.name, self.cfg["task"], cfg, source)
        self.cfg.update(cfg)

    def _load_model_bytes(self, data: bytes, source: str) -> None:
        try:
            self.model.from_bytes(data)
        except ModelDataError as error:
            raise ValueError(f"{self.name}: cannot load {source}: {error}") from error
        except Exception as error:  # noqa: BLE001 - thinc's msgpack layer: any failure is a bad file
            raise model_load_error(self.name, source, len(data), error) from error

    def _check_classes(self, source: str) -> None:
        if self._is_initialized():
            check_classes(self.name, self.task.name, self.classes, self.model.shims[0].encoder.n_classes, source)

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
        """Run the predicted docs at full depth and score each off-ramp."""
        task = self.task
        copies = [task.prediction_units(eg.predicted) for eg in examples]
        outputs = self._predict(ExitSettings(exit_mode="off"), copies, layer_labels=True)
        scores: Dict[str, Any] = {}
        classes = self.classes
        key = task.score_keys[0]
        for layer in range(self.n_layers):
            layer_examples = []
            for eg, doc, labels, own in zip(examples, copies, outputs.layer_labels, outputs.has_output):
                layer_doc = doc.copy()
                self._annotate(layer_doc, labels[layer], own, classes, overwrite=True)
                layer_examples.append(Example(layer_doc, eg.reference))
            scores[f"{key}_layer_{layer + 1}"] = task.score(layer_examples, **kwargs).get(key)
        return scores


@Language.factory(
    "earlyexit_tagger",
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
        "loss_weights": "depth",
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
    loss_weights: str,
    self_sampling: Optional[SelfSampling],
    score_layers: bool,
    scorer: Optional[Callable],
) -> EarlyExitTagger:
    """Create an earlyexit_tagger. task: "ner", "tag", "pos" or "segment"; exit_mode,
    threshold, window, window_includes_exited, threshold_multipliers and
    sentence_score: the exit rule (see ExitSettings); loss_weights: "depth",
    "uniform" or "last"; self_sampling: settings of self-sampling fine-tuning
    (None: plain joint training)."""
    settings = ExitSettings(
        exit_mode=exit_mode,
        threshold=threshold,
        window=window,
        window_includes_exited=window_includes_exited,
        threshold_multipliers=tuple(threshold_multipliers) if threshold_multipliers else None,
        sentence_score=sentence_score,
    )
    return EarlyExitTagger(
        nlp.vocab,
        model,
        name,
        task=task,
        overwrite=overwrite,
        exit_settings=settings,
        loss_weights=loss_weights,
        self_sampling=self_sampling,
        score_layers=score_layers,
        scorer=scorer,
    )
