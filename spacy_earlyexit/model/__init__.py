"""The torch side of spacy-earlyexit: encoder, exit rule, packed layers, cost model.

Nothing in this package imports spaCy.
"""
from .cost_model import EncoderShape, span_cost, spans_cost
from .batch import EncoderBatch, EncoderOutput
from .encoder import EarlyExitEncoder
from .exit_settings import EXIT_MODES, EXIT_SETTING_NAMES, ExitSettings
from .uncertainty import normalized_entropy

__all__ = [
    "EarlyExitEncoder",
    "EncoderBatch",
    "EncoderOutput",
    "EncoderShape",
    "ExitSettings",
    "EXIT_MODES",
    "EXIT_SETTING_NAMES",
    "normalized_entropy",
    "span_cost",
    "spans_cost",
]
