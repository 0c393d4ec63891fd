"""The spaCy component `earlyexit_tagger`: labels, annotation, loss, scoring.

The model (a thinc layer around the torch EarlyExitEncoder) gives per-token
classes and exit layers; this component turns them into doc.ents / tag_ /
pos_ (through a Task), token._.exit_layer and doc._.early_exit, trains with a
depth-weighted sum of per-layer cross-entropies, and owns the exit settings
(the run-time speed/accuracy dial).
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

from ..layers.early_exit_transformer import EXIT_SETTINGS_ATTR, SELF_SAMPLING_ATTR, TokenOutputs
from ..layers.shim import ModelDataError
from ..layers.wordpieces import lender_index
from ..model import EXIT_SETTING_NAMES, ExitSettings
from ..model.self_sampling import SelfSampling
from ..corpus import memory
from .extensions import exit_summary, register_extensions, set_exit_layers
from .scorers import score_early_exit
from .tasks import get_task

LOSS_WEIGHTS = ("depth", "uniform", "last")

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


def layer_loss_weights(scheme: str, n_layers: int) -> numpy.ndarray:
    """[L] weights of the per-layer losses: "depth" (w_l proportional to l),
    "uniform" or "last" (the final classifier only)."""
    if scheme == "depth":
        weights = numpy.arange(1, n_layers + 1, dtype="float32")
    elif scheme == "uniform":
        weights = numpy.ones(n_layers, dtype="float32")
    elif scheme == "last":
        weights = numpy.zeros(n_layers, dtype="float32")
        weights[-1] = 1.0
    else:
        raise ValueError(f"loss_weights must be one of {', '.join(LOSS_WEIGHTS)}; got {scheme!r}")
    return weights / weights.sum()


def _cross_entropy(logits: numpy.ndarray, target: numpy.ndarray) -> numpy.ndarray:
    """logits [L, N, C], target [N] int -> [L, N] cross-entropy per layer and token."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_norm = numpy.log(numpy.exp(shifted).sum(axis=-1))
    return log_norm - numpy.take_along_axis(shifted, target[None, :, None], axis=-1)[..., 0]


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

    def add_label(self, label: str) -> int:
        if not isinstance(label, str):
            raise ValueError(Errors.E187)
        if label in self.cfg["labels"]:
            return 0
        if self._is_initialized():
            raise ValueError(
                f"cannot add label {label!r}: the earlyexit_tagger is already initialized"
            )
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
            settings.layer_thresholds(self.model.shims[0].encoder.n_layers)
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
        memory.limit_heap_blocks()  # flat RSS on long streams (memory.py)
        for docs in minibatch(stream, size=batch_size):
            try:
                self.set_annotations(docs, self._predict(settings, docs))
                yield from docs
            except Exception as error:  # noqa: BLE001
                error_handler(self.name, self, docs, error)
            memory.count_docs(len(docs))  # free memory back to the system now and then

    def predict(self, docs: Iterable[Doc]) -> TokenOutputs:
        return self._predict(self.exit_settings, list(docs))

    def _predict(self, settings: ExitSettings, docs: List[Doc], layer_labels: bool = False) -> TokenOutputs:
        if not self._is_initialized():
            raise ValueError(
                f"the {self.name} component is not initialized: call nlp.initialize() "
                "or load a trained pipeline first"
            )
        settings.layer_thresholds(self.model.shims[0].encoder.n_layers)
        self.model.attrs[EXIT_SETTINGS_ATTR] = settings.to_dict()
        self.model.attrs["record_layer_labels"] = layer_labels
        try:
            return self.model.predict(docs)
        finally:
            self.model.attrs["record_layer_labels"] = False

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
        """lenders: [n_tokens] int, the token each token took its output from
        (computed from `own` when not given)."""
        task = self.task
        values: List[Optional[str]] = []
        if lenders is None:
            lenders = lender_index(numpy.asarray(own, dtype=bool))
        lenders = lenders.tolist()
        copied: List[int] = []  # per token: the token whose class it copied, or -1
        for token, label, has_own, lender in zip(doc, labels, own, lenders):
            if not has_own and token.is_space and task.whitespace_class is not None:
                values.append(task.whitespace_class)
            elif label < 0:  # no token of the doc has a word piece
                unknown = task.unknown_class if not token.is_space else None
                values.append(unknown or task.whitespace_class)
            elif not has_own and not task.borrow_classes:
                values.append(None)
            else:
                values.append(classes[label])
                copied.append(-1 if has_own else lender)
                continue
            copied.append(-1)
        task.annotate(doc, task.join_borrowed(values, copied), overwrite)

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
        if not labels and task.name != "segment":
            raise ValueError(
                f"{self.name}: found no {task.name} labels in the initialization examples "
                f"(nor any added with add_label): {self._missing_annotation(get_examples())}"
            )
        self.cfg["labels"] = sorted(labels)
        self.model.set_dim("nO", len(self.classes))
        docs = [eg.predicted for eg in islice(get_examples(), 10)]
        self.model.initialize(X=docs)
        self.configure_exit()

    def _missing_annotation(self, examples: Iterable[Example]) -> str:
        """Why examples gave no labels: no annotation, or annotation without labels."""
        task = self.task
        examples = list(examples)
        if any(task.has_annotation(eg.reference) for eg in examples):
            return f"the reference docs carry {task.annotation}, but no label (e.g. no entity at all)"
        reason = f"none of the {len(examples)} reference docs has {task.annotation}"
        if task.name == "pos" and any(eg.reference.has_annotation("TAG") for eg in examples):
            reason += "; they have fine-grained tags (token.tag_): use task 'tag' for those"
        return reason

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
        self.model.attrs[SELF_SAMPLING_ATTR] = self.cfg["self_sampling"]
        outputs, backprop = self.model.begin_update([eg.predicted for eg in examples])
        loss, d_logits = self.get_loss(examples, outputs)
        backprop(d_logits)
        if sgd not in (None, False):
            self.finish_update(sgd)
        losses[self.name] += loss
        return losses

    def get_loss(self, examples: Iterable[Example], outputs: TokenOutputs):
        """Weighted sum over layers of the cross-entropy summed over the tokens
        with gold labels that were still active at that layer, divided by the
        number of tokens with gold labels (so a token's weight at a layer does
        not depend on how many others exited).

        outputs.layer_logits: [L, N, C]; returns (loss, d_layer_logits [L, N, C]).
        """
        validate_examples(examples, "EarlyExitTagger.get_loss")
        index = {name: i for i, name in enumerate(self.classes)}
        truth: List[int] = []
        for eg in examples:
            for value in self.task.gold_classes(eg):
                if value is None:
                    truth.append(-1)
                elif value in index:
                    truth.append(index[value])
                else:
                    raise ValueError(
                        f"{self.name}: the training data has the label {value!r}, which was not "
                        f"seen at initialize (known: {', '.join(self.cfg['labels'])}); "
                        "initialize with examples that contain every label"
                    )
        gold = numpy.asarray(truth, dtype="int64")
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
        logits = outputs.layer_logits
        n_layers = logits.shape[0]
        own = numpy.concatenate(outputs.has_output) if outputs.has_output else numpy.zeros(0, bool)
        known = (gold >= 0) & own
        valid = outputs.layer_active & known[None, :]
        weights = layer_loss_weights(self.cfg["loss_weights"], n_layers)
        shifted = logits - logits.max(axis=-1, keepdims=True)
        log_probs = shifted - numpy.log(numpy.exp(shifted).sum(axis=-1, keepdims=True))
        target = numpy.maximum(gold, 0)
        picked = numpy.take_along_axis(log_probs, target[None, :, None], axis=-1)[..., 0]
        n_known = max(int(known.sum()), 1)
        scale = (weights[:, None] * valid) / n_known  # [L, N]
        token_loss = -picked  # [L, N]
        grad_scale = scale
        flooding = (self.cfg.get("self_sampling") or {}).get("flooding", 0.0)
        if flooding and outputs.reference_layer_logits is not None:
            # self-sampling's loss flooding: |loss - b| + b with b = flooding x
            # the token's loss under the stage-1 model (gradient reversed below b)
            level = flooding * _cross_entropy(outputs.reference_layer_logits, target)
            grad_scale = scale * numpy.where(token_loss >= level, 1.0, -1.0)
            token_loss = numpy.abs(token_loss - level) + level
        loss = float((token_loss * scale).sum())
        d_logits = numpy.exp(log_probs)
        d_logits[:, numpy.arange(len(gold)), target] -= 1.0
        d_logits *= grad_scale[..., None]
        if numpy.isnan(loss):
            raise ValueError(Errors.E910.format(name=self.name))
        return loss, d_logits.astype("float32")

    # --- serialization -----------------------------------------------------
    def from_disk(self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()) -> "EarlyExitTagger":
        """Load the component's settings (cfg) and model (weights, transformer
        config, tokenizer) from `path`. Errors name the file and what is
        wrong with it; nothing is unpickled."""
        path = util.ensure_path(path)
        configured_task = self.cfg["task"]

        def load_cfg(file: Path) -> None:
            if not file.exists():
                raise ValueError(f"{self.name}: the saved pipeline lacks {file} (labels and settings)")
            try:
                # the standard library parses floats exactly (srsly's reader
                # can be 1 ulp off, e.g. a threshold of 0.7 came back as 0.7000000000000001)
                cfg = json.loads(file.read_text(encoding="utf8"))
            except ValueError as error:
                raise ValueError(f"{self.name}: {file} is not valid JSON ({error})") from error
            self._check_saved_task(configured_task, cfg, file)
            self.cfg.update(cfg)

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
        configured_task = self.cfg["task"]

        def load_cfg(data: bytes) -> None:
            cfg = json.loads(data)
            self._check_saved_task(configured_task, cfg, "the component data")
            self.cfg.update(cfg)

        readers = {
            "cfg": load_cfg,
            "vocab": lambda data: self.vocab.from_bytes(data, exclude=exclude),
            "model": lambda data: self._load_model_bytes(data, "the model data"),
        }
        util.from_bytes(bytes_data, readers, exclude)
        if "model" not in exclude:
            self._check_classes("the component data")
        return self

    def _load_model_bytes(self, data: bytes, source: str) -> None:
        try:
            self.model.from_bytes(data)
        except ModelDataError as error:
            raise ValueError(f"{self.name}: cannot load {source}: {error}") from error
        except Exception as error:  # noqa: BLE001 - thinc's msgpack layer: any failure is a bad file
            raise ValueError(
                f"{self.name}: cannot load {source} ({len(data)} bytes): it is corrupt, truncated "
                f"or not an earlyexit_tagger model ({type(error).__name__}: {error})"
            ) from error

    def _check_saved_task(self, configured_task: str, cfg: Dict[str, Any], source: Any) -> None:
        saved = cfg.get("task", configured_task)
        if saved != configured_task:
            raise ValueError(
                f"{self.name}: the pipeline's config sets task {configured_task!r}, but the "
                f"component saved in {source} was trained for task {saved!r}; a trained "
                f"component cannot change its task: set task = {saved!r} in config.cfg, or "
                "train a new pipeline"
            )

    def _check_classes(self, source: str) -> None:
        """The saved labels (cfg) must give the saved model's number of outputs."""
        if not self._is_initialized():
            return
        n_outputs = self.model.shims[0].encoder.n_classes
        classes = self.classes
        if len(classes) != n_outputs:
            raise ValueError(
                f"{self.name}: in {source}, the saved labels give {len(classes)} "
                f"{self.task.name} classes, but the saved model has {n_outputs} outputs: "
                "the labels (cfg) and the model file come from different pipelines"
            )

    # --- scoring -----------------------------------------------------------
    def score(self, examples: Iterable[Example], **kwargs: Any) -> Dict[str, Any]:
        """The scorer's scores plus, if score_layers, the headline score of
        every off-ramp at full depth (e.g. pos_acc_layer_3)."""
        examples = list(examples)
        if self._is_initialized():
            self._warn_unknown_labels(examples)
        scores = self.scorer(examples, task=self.task.name, **kwargs)
        if self.cfg["score_layers"] and examples and self._is_initialized():
            scores.update(self.score_layers(examples, **kwargs))
        return scores

    def _warn_unknown_labels(self, examples: List[Example]) -> None:
        """Warn about gold labels of evaluation data (e.g. spacy train's dev
        set) that the component was not initialized with: it can never
        predict them, so they count as errors. A warning, not an error: a
        rare label missing from the training data should not stop training."""
        task = self.task
        known = set(self.cfg["labels"]) | set(task.classes(self.cfg["labels"]))
        unknown = sorted(task.labels_from_examples(examples) - known)
        if unknown:
            warnings.warn(
                f"{self.name}: the evaluation data has {task.name} label(s) the component "
                f"was not trained with: {', '.join(map(repr, unknown))}. It never predicts "
                "them, so they count as errors; add them to the training data (or with "
                "add_label before initialize) to learn them.",
                UserWarning,
                stacklevel=3,
            )

    def score_layers(self, examples: List[Example], **kwargs: Any) -> Dict[str, Any]:
        """Run the predicted docs at full depth and score each off-ramp."""
        task = self.task
        copies = [task.prediction_units(eg.predicted) for eg in examples]
        outputs = self._predict(ExitSettings(exit_mode="off"), copies, layer_labels=True)
        scores: Dict[str, Any] = {}
        classes = self.classes
        n_layers = self.model.shims[0].encoder.n_layers
        key = task.score_keys[0]
        for layer in range(n_layers):
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
