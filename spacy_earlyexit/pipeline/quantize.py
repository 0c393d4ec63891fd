"""Turning a trained float32 pipeline into an int8 one (inference only).

quantize_pipeline(nlp) replaces the linear layers of every earlyexit_tagger's
encoder by int8 ones (model.quantization) and records it in the component's
config (architecture spacy_earlyexit.EarlyExitTransformer.v2, precision =
"int8"), so that nlp.to_disk writes a pipeline that spacy.load rebuilds in
int8 and nlp.config tells what was loaded.
"""
from typing import List, Optional

from spacy.language import Language

from ..model.quantization import PRECISIONS, quantize_layers

#: the first architecture with a precision setting; later ones keep theirs
INT8_ARCHITECTURE = "spacy_earlyexit.EarlyExitTransformer.v2"
PRECISION_ARCHITECTURES = (INT8_ARCHITECTURE, "spacy_earlyexit.EarlyExitTransformer.v3")
FACTORY = "earlyexit_tagger"


def quantize_pipeline(nlp: Language, dtype: str = "int8", components: Optional[List[str]] = None) -> List[str]:
    """Quantize the earlyexit_tagger components of `nlp` in place.

    dtype: "int8" (the only quantized precision). components: names to
    quantize (default: every earlyexit_tagger). Returns the names quantized.
    """
    if dtype not in PRECISIONS or dtype == "float32":
        raise ValueError(f"--dtype must be one of {', '.join(p for p in PRECISIONS if p != 'float32')}; got {dtype!r}")
    names = components or [name for name in nlp.pipe_names if nlp.get_pipe_meta(name).factory == FACTORY]
    if not names:
        raise ValueError(f"the pipeline has no {FACTORY} component (its components: {', '.join(nlp.pipe_names)})")
    for name in names:
        tagger = nlp.get_pipe(name)
        shim = tagger.model.shims[0]
        if shim._model is None:
            raise ValueError(f"{name} is not trained (no weights): quantize a trained pipeline")
        if shim.precision != "float32":
            raise ValueError(f"{name} already runs in {shim.precision}")
        quantize_layers(shim.encoder.layers)
        shim.precision = dtype
        tagger.model.attrs["precision"] = dtype
        model_config = nlp.get_pipe_config(name)["model"]
        if model_config.get("@architectures") not in PRECISION_ARCHITECTURES:
            model_config["@architectures"] = INT8_ARCHITECTURE
        model_config["precision"] = dtype
    return names
