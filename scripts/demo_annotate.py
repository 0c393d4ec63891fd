"""The demo's last step (project.yml: `demo-annotate`): annotate a few
tweet-like sentences, print their entities with the layers where their
tokens exited, and write the exit view as HTML.

    python scripts/demo_annotate.py training/demo/chosen --html metrics/demo/exits.html
"""
from pathlib import Path
from typing import List, Optional

from spacy_earlyexit.cli._util import Arg, Opt, load_pipeline, new_app, run_app

app = new_app("demo_annotate.py", __doc__.split("\n\n")[0])


@app.command()
def demo_annotate_cli(
    pipeline: Path = Arg(..., metavar="PIPELINE", help="a trained pipeline (folder)"),
    text: Optional[List[str]] = Opt(None, "--text", show_default="five tweet-like sentences",
                                    help="a sentence to annotate (repeatable)"),
    html: Optional[Path] = Opt(None, "--html", show_default="not written", help="also write the exit view of the sentences here"),
) -> None:
    """Annotate sentences; print entities and exit layers."""
    from corpora.demo import demo_annotate

    demo_annotate(load_pipeline(pipeline, "PIPELINE"), text, html, name=str(pipeline))


if __name__ == "__main__":
    run_app(app, prog_name="python scripts/demo_annotate.py")
