"""Corpus annotation: file formats, the local and Ray engines, memory on long runs."""
from .annotate import annotate
from .formats import AnnotateInputError
from .job import AnnotateResult

__all__ = ["AnnotateInputError", "AnnotateResult", "annotate"]
