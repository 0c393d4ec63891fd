"""Turning a trained float32 pipeline into an int8 one (inference only).

quantize_pipeline(nlp) replaces the linear layers of every earlyexit_tagger's
encoder by int8 ones (model.quantization) and records it in the component's
model config (precision = "int8"), so that nlp.to_disk writes a pipeline that spacy.load rebuilds in
int8 and nlp.config tells what was loaded.
"""
from typing import List, Optional

from spacy.language import Language

from ..model.quantization import quantize_layers
from .load import FACTORY



def quantize_pipeline(nlp: Language, dtype: str = "int8", components: Optional[List[str]] = None) -> List[str]:
    """Quantize the earlyexit_tagger components of `nlp` in place.

    dtype: "int8" (the only quantized precision). components: names to
    quantize (default: every earlyexit_tagger). Returns the names quantized.
    """
    if dtype != "int8":
        raise ValueError(f"--dtype must be int8 (the only quantized precision); got {dtype!r}")
    names = components or [name for name in nlp.pipe_names if nlp.get_pipe_meta(name).factory == FACTORY]
    if not names:
        raise ValueError(f"the pipeline has no {FACTORY} component (its components: {', '.join(nlp.pipe_names)})")
    for name in names:
        tagger = nlp.get_pipe(name)
        shim = tagger.model.shims[0]
        if shim._model is None:
            raise ValueError(f"{name} is not trained (no weights): quantize a trained pipeline")
        if shim.runtime_precision != "float32":
            raise ValueError(
                f"{name} runs in {shim.runtime_precision}: quantize a pipeline loaded in float32 "
                "(precision \"float32\" in its model config)"
            )
        quantize_layers(shim.encoder.layers)
        shim.precision = dtype
        shim.runtime_precision = dtype
        tagger.model.attrs["precision"] = dtype
        nlp.get_pipe_config(name)["model"]["precision"] = dtype
    return names
