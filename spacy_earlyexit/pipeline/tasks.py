"""Tasks: how gold annotation becomes per-token classes and predictions become
annotation. A task knows nothing of the model; the component picks one by name.

Every task maps a doc to one class per token, and says everything the rest
of the package needs to know about it (its classes, scores, the token
attributes it writes, its error messages), so that adding a task (Chinese
word segmentation, say) touches only the registry: `register_task` in the
task's own module, or the entry point group `spacy_earlyexit_tasks` for a
task defined in another package.
"""
import warnings
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy
from spacy.attrs import IDS as SPACY_ATTR_IDS
from spacy.parts_of_speech import IDS as POS_IDS
from spacy.scorer import Scorer, get_ner_prf
from spacy.tokens import Doc, Span
from spacy.training import Example
import catalogue

#: the task registry (catalogue, with entry points `spacy_earlyexit_tasks`)
TASKS = catalogue.create("spacy_earlyexit", "tasks", entry_points=True)


#: tasks already looked up: TASKS.get_all() reads every installed package's
#: entry points (milliseconds), and the component asks for its task per doc
_FOUND: Dict[str, "Task"] = {}


def register_task(task: "Task") -> "Task":
    """Make a task available under task.name (used by the factory's `task`)."""
    TASKS.register(task.name, func=task)
    _FOUND.pop(task.name, None)
    return task


def get_task(name: str) -> "Task":
    task = _FOUND.get(name)
    if task is not None:
        return task
    known = TASKS.get_all()
    if name not in known:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(sorted(known))}")
    _FOUND[name] = known[name]
    return known[name]


class Task:
    """Base class. Subclasses set `name`, `score_keys` and implement the hooks."""

    name: str = ""
    #: the headline score keys (per-layer scores use the first one)
    score_keys: Tuple[str, ...] = ()
    #: class given to whitespace tokens that have no word piece of their own
    whitespace_class: Optional[str] = None
    #: class of a non-whitespace token in a doc where no token has a word
    #: piece (e.g. only control characters); None: the whitespace class
    unknown_class: Optional[str] = None
    #: other tokens without a word piece of their own take the class of their
    #: nearest neighbour (True) or get None, for the task to decide (False)
    borrow_classes: bool = True
    #: the task makes its own tokens (segmentation): it is evaluated on the
    #: pipeline's tokenization of the text, not on the gold tokens
    retokenizes: bool = False
    #: the reference annotation the task trains on, for error messages
    annotation: str = ""
    #: the Doc.has_annotation attribute that tells whether a reference doc
    #: carries that annotation ("": always)
    annotation_attr: str = ""
    #: token attributes (without "_") written per token by `annotate` to JSONL
    output_attrs: Tuple[str, ...] = ()
    #: training needs at least one label (segmentation's classes are fixed)
    needs_labels: bool = True

    def entity_classes(self, classes: Sequence[str]) -> Optional[List[bool]]:
        """Per class, whether it lies inside an entity (read by the entity
        exit rule, ExitSettings.entity_exit); None: the task has no entities."""
        return None

    @property
    def has_entities(self) -> bool:
        """Whether the task's classes mark entities (the entity exit rule needs them)."""
        return self.entity_classes([]) is not None

    def join_borrowed(self, classes: List[Optional[str]], lender: Sequence[int]) -> List[Optional[str]]:
        """Adjust the classes of tokens that copied a neighbour's class (see
        borrow_classes). lender: per token, the token it copied, or -1."""
        return classes

    def has_annotation(self, doc: Doc) -> bool:
        """Whether a reference doc carries any annotation of this task."""
        return not self.annotation_attr or doc.has_annotation(self.annotation_attr)

    def labels_from_examples(self, examples: Iterable[Example]) -> Set[str]:
        raise NotImplementedError

    def validate_labels(self, labels: Iterable[str]) -> None:
        """Raise ValueError for labels the task cannot represent."""

    def classes(self, labels: Sequence[str]) -> List[str]:
        """The per-token classes for a label set (the model's output rows)."""
        return sorted(labels)

    def gold_classes(self, example: Example) -> List[Optional[str]]:
        """One class per token of example.predicted; None where unknown."""
        raise NotImplementedError

    def annotate(self, doc: Doc, classes: Sequence[Optional[str]], overwrite: bool) -> None:
        """Write per-token classes (None: no prediction) onto the doc."""
        raise NotImplementedError

    def prediction_units(self, doc: Doc) -> Doc:
        """A fresh doc of the units this task labels, from a doc that may
        already carry its annotation (per-layer scoring predicts evaluated docs
        again). Tasks that retokenize rebuild the units; others copy."""
        return doc.copy()

    def score(self, examples: Iterable[Example], **kwargs) -> Dict[str, object]:
        raise NotImplementedError

    def missing_annotation(self, examples: Sequence[Example]) -> str:
        """Why examples gave no labels: no annotation, or annotation without labels."""
        if any(self.has_annotation(eg.reference) for eg in examples):
            return f"the reference docs carry {self.annotation}, but no label (e.g. no entity at all)"
        return f"none of the {len(examples)} reference docs has {self.annotation}"

    def gold_indices(
        self, examples: Iterable[Example], classes: Sequence[str], component: str, labels: Sequence[str]
    ) -> numpy.ndarray:
        """[N] the gold class index of every predicted token of the examples,
        -1 where unknown. A gold label the component was not initialized with
        raises ValueError (naming `component` and the known `labels`)."""
        index = {name: i for i, name in enumerate(classes)}
        truth: List[int] = []
        for eg in examples:
            for value in self.gold_classes(eg):
                if value is None:
                    truth.append(-1)
                elif value in index:
                    truth.append(index[value])
                else:
                    raise ValueError(
                        f"{component}: the training data has the label {value!r}, which was not "
                        f"seen at initialize (known: {', '.join(labels)}); "
                        "initialize with examples that contain every label"
                    )
        return numpy.asarray(truth, dtype="int64")

    def warn_unknown_labels(self, component: str, examples: Sequence[Example], labels: Sequence[str]) -> None:
        """Warn about gold labels of evaluation data (e.g. spacy train's dev
        set) that the component was not initialized with: it can never
        predict them, so they count as errors. A warning, not an error: a
        rare label missing from the training data should not stop training."""
        known = set(labels) | set(self.classes(labels))
        unknown = sorted(self.labels_from_examples(examples) - known)
        if unknown:
            warnings.warn(
                f"{component}: the evaluation data has {self.name} label(s) the component "
                f"was not trained with: {', '.join(map(repr, unknown))}. It never predicts "
                "them, so they count as errors; add them to the training data (or with "
                "add_label before initialize) to learn them.",
                UserWarning,
                stacklevel=4,
            )


class TokenAttributeTask(Task):
    """A label per token stored in a token attribute (tag_, pos_)."""

    attr: str = ""

    def labels_from_examples(self, examples: Iterable[Example]) -> Set[str]:
        labels: Set[str] = set()
        for eg in examples:
            labels.update(getattr(t, f"{self.attr}_") for t in eg.reference)
        labels.discard("")
        return labels

    def gold_classes(self, example: Example) -> List[Optional[str]]:
        aligned = example.get_aligned(self.attr.upper(), as_string=True)
        return [value if value else None for value in aligned]

    def annotate(self, doc: Doc, classes: Sequence[Optional[str]], overwrite: bool) -> None:
        """Write the classes in one doc.from_array call (the per-token
        setattr of token.pos_ / tag_ cost more than the rest of annotation);
        without overwrite, tokens that already have a value keep it."""
        if len(classes) != len(doc):
            raise ValueError(f"{len(classes)} classes for a doc of {len(doc)} tokens")
        if not len(doc):
            return
        attr_id = SPACY_ATTR_IDS[self.annotation_attr]
        current = doc.to_array(attr_id)
        values = numpy.fromiter(
            (0 if value is None else self.attribute_value(doc, value) for value in classes),
            dtype="uint64", count=len(classes),
        )
        keep = values == 0
        if not overwrite:
            keep |= current != 0
        if bool(keep.all()):
            return
        doc.from_array([attr_id], numpy.where(keep, current, values).reshape(-1, 1))

    def attribute_value(self, doc: Doc, value: str) -> int:
        """The integer that doc.from_array stores for a class (its string id)."""
        return doc.vocab.strings.add(value)

    def score(self, examples: Iterable[Example], **kwargs) -> Dict[str, object]:
        return Scorer.score_token_attr(examples, self.attr, **kwargs)

    def classes(self, labels: Sequence[str]) -> List[str]:
        """The labels and the whitespace class."""
        return sorted(set(labels) | {self.whitespace_class})

    @property
    def output_attrs(self) -> Tuple[str, ...]:  # type: ignore[override]
        return (self.attr,)


class TagTask(TokenAttributeTask):
    """Fine-grained tags in token.tag_."""

    name = "tag"
    attr = "tag"
    score_keys = ("tag_acc",)
    whitespace_class = "_SP"
    annotation = "fine-grained tags (token.tag_)"
    annotation_attr = "TAG"


class PosTask(TokenAttributeTask):
    """Universal POS tags in token.pos_ (validated against UPOS)."""

    name = "pos"
    attr = "pos"
    score_keys = ("pos_acc",)
    whitespace_class = "SPACE"
    unknown_class = "X"
    annotation = "Universal POS tags (token.pos_)"
    annotation_attr = "POS"

    def attribute_value(self, doc: Doc, value: str) -> int:
        return POS_IDS[value]

    def validate_labels(self, labels: Iterable[str]) -> None:
        invalid = sorted(label for label in labels if label not in POS_IDS or not label)
        if invalid:
            raise ValueError(
                f"task 'pos' predicts Universal POS tags, but these labels are not UPOS: "
                f"{', '.join(map(repr, invalid))}; use task 'tag' for other tag sets"
            )

    def missing_annotation(self, examples: Sequence[Example]) -> str:
        reason = super().missing_annotation(examples)
        if not any(self.has_annotation(eg.reference) for eg in examples) and any(
            eg.reference.has_annotation("TAG") for eg in examples
        ):
            reason += "; they have fine-grained tags (token.tag_): use task 'tag' for those"
        return reason


BILUO_PREFIXES = ("B", "I", "L", "U")


def decode_biluo(classes: Sequence[Optional[str]]) -> List[Tuple[int, int, str]]:
    """Entities (start, end, label) from a per-token BILUO sequence, repairing
    invalid sequences instead of failing: an I or L that does not continue an
    entity of its type starts one; an entity left open is closed where the
    next one starts, at O, or at the end. None counts as O."""
    entities: List[Tuple[int, int, str]] = []
    open_start, open_label = -1, ""

    def close(end: int) -> None:
        nonlocal open_start, open_label
        if open_start >= 0:
            entities.append((open_start, end, open_label))
        open_start, open_label = -1, ""

    for i, value in enumerate(classes):
        prefix, _, label = (value or "O").partition("-")
        if prefix not in BILUO_PREFIXES or not label:
            close(i)
            continue
        continues = open_start >= 0 and open_label == label and prefix in ("I", "L")
        if not continues:
            close(i)
            open_start, open_label = i, label
        if prefix in ("L", "U"):
            close(i + 1)
    close(len(classes))
    return entities


def _spread_biluo(value: Optional[str], n: int) -> List[Optional[str]]:
    """The classes of n tokens that share one piece whose class is `value`."""
    prefix, _, label = (value or "O").partition("-")
    if prefix not in BILUO_PREFIXES or not label:
        return [value] * n
    first = "B" if prefix in ("B", "U") else "I"
    last = "L" if prefix in ("L", "U") else "I"
    return [f"{first}-{label}"] + [f"I-{label}"] * (n - 2) + [f"{last}-{label}"]


class NerTask(Task):
    """Named entities in doc.ents, BILUO classes per token."""

    name = "ner"
    output_attrs = ("ent_iob", "ent_type")
    score_keys = ("ents_f", "ents_p", "ents_r")
    whitespace_class = "O"
    annotation = "entity annotation (doc.ents, token.ent_iob_)"
    annotation_attr = "ENT_IOB"

    def labels_from_examples(self, examples: Iterable[Example]) -> Set[str]:
        return {ent.label_ for eg in examples for ent in eg.reference.ents}

    def validate_labels(self, labels: Iterable[str]) -> None:
        # a BILUO class splits at its first "-", so labels may contain "-" (e.g. "X-RAY")
        bad = sorted(repr(label) for label in labels if not label or not isinstance(label, str))
        if bad:
            raise ValueError(f"invalid entity label(s): {', '.join(bad)}")

    def classes(self, labels: Sequence[str]) -> List[str]:
        return ["O"] + [f"{p}-{label}" for label in sorted(labels) for p in BILUO_PREFIXES]

    def gold_classes(self, example: Example) -> List[Optional[str]]:
        return [None if value in (None, "-", "") else value for value in example.get_aligned_ner()]

    def entity_classes(self, classes: Sequence[str]) -> Optional[List[bool]]:
        """B-, I-, L- and U- classes are inside an entity, O is not."""
        return [value.partition("-")[0] in BILUO_PREFIXES and "-" in value for value in classes]

    def join_borrowed(self, classes: List[Optional[str]], lender: Sequence[int]) -> List[Optional[str]]:
        """A word piece that spans several tokens (e.g. "2008" or a Latin word
        in a doc of single characters) gives its class to all of them: spread
        it as one piece of an entity, so a copied B-X becomes B-X I-X ... I-X
        and a U-X becomes B-X I-X ... L-X, instead of one entity per token.

        lender: per token, the token whose class it copied, or -1 where the
        class is its own.
        """
        joined = list(classes)
        n, i = len(joined), 0
        while i < n:
            owner = lender[i] if lender[i] >= 0 else i
            end = i + 1
            while end < n and (lender[end] == owner or end == owner):
                end += 1
            if end - i > 1 and i <= owner < end:
                joined[i:end] = _spread_biluo(classes[owner], end - i)
            i = end
        return joined

    def annotate(self, doc: Doc, classes: Sequence[Optional[str]], overwrite: bool) -> None:
        spans = [Span(doc, start, end, label=label) for start, end, label in decode_biluo(classes)]
        if overwrite:
            doc.set_ents(spans, default="outside")
            return
        taken = set()
        for ent in doc.ents:
            taken.update(range(ent.start, ent.end))
        kept = [s for s in spans if not taken.intersection(range(s.start, s.end))]
        doc.set_ents(list(doc.ents) + kept, default="outside")

    def score(self, examples: Iterable[Example], **kwargs) -> Dict[str, object]:
        return get_ner_prf(examples, **kwargs)


for _task in (NerTask(), TagTask(), PosTask()):
    register_task(_task)
