"""Loading a saved pipeline with its earlyexit_tagger components in a chosen
precision: `spacy.load` with the config override that sets every such
component's `model.precision` (the component's name does not matter)."""
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import spacy
from spacy.language import Language
from spacy.util import load_config

from ..model.precision import CONFIG_PRECISIONS, check_precision

#: the component's factory name
FACTORY = "earlyexit_tagger"


def tagger_names_in_config(pipeline: Path) -> List[str]:
    """Names of the earlyexit_tagger components that `pipeline`'s config.cfg lists."""
    config = load_config(Path(pipeline) / "config.cfg")
    components = config.get("components", {})
    return [name for name in config["nlp"]["pipeline"] if components.get(name, {}).get("factory") == FACTORY]


def precision_overrides(names: List[str], precision: Optional[str]) -> Dict[str, Any]:
    """spacy.load's `config` overrides (dot notation) that run the components
    `names` in `precision` (one of CONFIG_PRECISIONS; None: as each
    component's config says)."""
    if precision is None:
        return {}
    check_precision(precision, CONFIG_PRECISIONS)
    return {f"components.{name}.model.precision": precision for name in names}


def load(pipeline: Union[str, Path], *, precision: Optional[str] = None, **load_options: Any) -> Language:
    """spacy.load(pipeline), every earlyexit_tagger in `precision`.

    precision: "auto" (the fast precision of this processor: see
    spacy_earlyexit.model.precision), "float32", "bfloat16" or "int8" (int8
    only for pipelines made by `quantize`); None loads what config.cfg says.
    load_options: passed to spacy.load (e.g. exclude); a `config` given there
    is kept beside the precision override.
    """
    if precision is None:
        return spacy.load(pipeline, **load_options)
    check_precision(precision, CONFIG_PRECISIONS)
    names = tagger_names_in_config(Path(pipeline))
    if not names:
        raise ValueError(f"{pipeline}: the pipeline has no {FACTORY} component, so precision={precision!r} "
                         "has nothing to set")
    config = {**(load_options.pop("config", None) or {}), **precision_overrides(names, precision)}
    return spacy.load(pipeline, config=config, **load_options)
