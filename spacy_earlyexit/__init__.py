"""spacy-earlyexit: early-exit BERT sequence labelling for spaCy.

Importing the package registers the `earlyexit_tagger` factory, the
`spacy_earlyexit.EarlyExitTransformer.v1` architecture, the
`spacy_earlyexit.scorer.v1` scorer and the token/doc extensions. spaCy finds
all of them through entry points, so `spacy.blank(...).add_pipe(...)` works
without importing this package.

Layout: `model` (torch only), `layers` (the thinc layer), `pipeline` (the
spaCy component), `corpus` (annotating files), `tuning` (sweep, choose),
`visualize` (the exit view), `cli` (`spacy-earlyexit`, also
`python -m spacy_earlyexit`).
"""
from .pipeline.extensions import register_extensions
from .pipeline.msgpack_speed import cache_msgpack_registries

register_extensions()
cache_msgpack_registries()  # Doc serialization without a registry scan per msgpack call

from .pipeline import architectures, callbacks, scorers  # noqa: E402,F401  (registrations)
from .pipeline import segmentation  # noqa: E402,F401  (registers the "segment" task)
from .pipeline import process  # noqa: E402,F401  (fork handlers for n_process workers)
from .model import ExitSettings  # noqa: E402
from .pipeline.component import EarlyExitTagger  # noqa: E402
from .pipeline.factory import make_earlyexit_tagger  # noqa: E402
from .pipeline.load import load  # noqa: E402
from .visualize import render  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "EarlyExitTagger", "ExitSettings", "load", "make_earlyexit_tagger", "register_extensions", "render", "__version__",
]
