"""spacy-earlyexit: early-exit BERT sequence labelling for spaCy.

Importing the package registers the `earlyexit_tagger` factory, the
`spacy_earlyexit.EarlyExitTransformer.v1` architecture, the
`spacy_earlyexit.scorer.v1` scorer and the token/doc extensions. spaCy finds
all of them through entry points, so `spacy.blank(...).add_pipe(...)` works
without importing this package.
"""
from .extensions import register_extensions

register_extensions()

from . import architectures, callbacks, scorers  # noqa: E402,F401  (registrations)
from . import segmentation  # noqa: E402,F401  (registers the "segment" task)
from .model import ExitSettings  # noqa: E402
from .pipeline_component import EarlyExitTagger, make_earlyexit_tagger  # noqa: E402

__version__ = "0.1.0"

__all__ = ["EarlyExitTagger", "ExitSettings", "make_earlyexit_tagger", "register_extensions", "__version__"]
