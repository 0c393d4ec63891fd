"""The command line: `spacy-earlyexit COMMAND` (or `python -m spacy_earlyexit
COMMAND`), one typer app (`_util.app`) with a module per command, as spaCy's
own CLI:

    sweep          score and time exit settings on a dev set (sweep.py)
    choose         pick an operating point from a sweep, save it in a copy of its pipeline (choose.py)
    evaluate       score a pipeline and time its exit setting, with config overrides (evaluate.py)
    annotate       annotate a JSONL or .spacy corpus, in this process or on Ray (annotate.py)
    render         the exit view of a corpus as HTML (annotate.py)
    jemalloc-path  the installed jemalloc library, for LD_PRELOAD (annotate.py)
    quantize       an int8 copy of a trained pipeline (quantize.py)

User mistakes end in one line on stderr and exit status 1 (`_util.fail`,
`_util.run_app`). The project workflow's own steps (corpus converters,
backbone fetchers, the demo) are scripts beside project.yml, not commands.
"""
from typing import Any, Optional, Sequence

# the order of --help's list: the dial, then running a pipeline
from . import sweep, choose, evaluate, annotate, quantize  # noqa: F401,I001 (they register their commands)
from ._util import app, run_app


def main(argv: Optional[Sequence[str]] = None) -> Any:
    """Run a command: argv as `spacy-earlyexit` would get it (default: this
    process's arguments)."""
    return run_app(app, argv)
