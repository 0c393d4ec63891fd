"""What both annotation engines share: the result record, the pipeline's
early-exit components, per-run settings and checks of the paths."""
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager, Dict, List, Optional, Sequence, Tuple

from spacy.language import Language
from tqdm import tqdm

from ..model import ExitSettings
from ..pipeline.load import FACTORY
from .formats import AnnotateInputError, PathLike, file_format



@dataclass
class AnnotateResult:
    """What a run did: docs and tokens written, wall-clock seconds (pipeline
    loading included), and where."""

    engine: str
    n_docs: int
    n_tokens: int
    seconds: float
    output: Path
    #: docs of n_docs that a previous, interrupted run had written (resume)
    resumed_docs: int = 0
    #: what the early-exit components ran in (local engine; None on Ray, whose workers choose)
    precision: Optional[str] = None



def label_attrs(nlp: Language) -> Tuple[str, ...]:
    """The token attributes the pipeline's early-exit components label."""
    attrs: List[str] = []
    for name in tagger_names(nlp):
        for attr in nlp.get_pipe(name).task.output_attrs:
            if attr not in attrs:
                attrs.append(attr)
    return tuple(attrs)



def batch_memory_zone(nlp: Language) -> ContextManager[Any]:
    """`nlp.memory_zone()` for one batch: the strings, lexemes and tokenizer
    cache entries its docs add are freed when it closes, so a long run's
    StringStore stays the size of one batch's. Docs made inside must be
    written out inside. No zone (a null context) when the caller already runs
    `nlp` in one: spaCy's zones must not be nested."""
    return nullcontext() if nlp.vocab.in_memory_zone else nlp.memory_zone()


def tagger_names(nlp: Language) -> List[str]:
    """Names of the pipeline's components made by the earlyexit_tagger factory."""
    return [name for name in nlp.pipe_names if nlp.get_pipe_meta(name).factory == FACTORY]


def validate_overrides(overrides: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The per-call exit settings, checked (names and values): ValueError naming the setting."""
    overrides = dict(overrides or {})
    ExitSettings().updated(**overrides)
    return overrides


def component_cfg(names: Sequence[str], overrides: Dict[str, Any]) -> Optional[Dict[str, Dict[str, Any]]]:
    """nlp.pipe's component_cfg giving `overrides` to every named component."""
    return {name: dict(overrides) for name in names} if overrides else None


def check_paths(pipeline: Optional[PathLike], input_path: Path, output_path: Path) -> None:
    file_format(input_path)
    file_format(output_path)
    if not input_path.is_file():
        raise AnnotateInputError(f"{input_path}: no such file")
    if output_path.exists() and output_path.resolve() == input_path.resolve():
        raise AnnotateInputError(f"{output_path}: the output would overwrite the input")
    if pipeline is not None and not (Path(pipeline) / "config.cfg").is_file():
        raise AnnotateInputError(f"{pipeline}: not a saved spaCy pipeline folder (no config.cfg)")
    output_path.parent.mkdir(parents=True, exist_ok=True)


def progress_bar(total: Optional[int], enabled: bool, engine: str, initial: int = 0) -> tqdm:
    return tqdm(total=total, unit="doc", desc=f"annotate ({engine})", file=sys.stderr, disable=not enabled,
                initial=initial)


def check_positive(**values: Optional[int]) -> None:
    for name, value in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an integer >= 1; got {value!r}")

