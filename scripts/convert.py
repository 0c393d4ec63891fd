"""CoNLL-U / BIO / IOB file -> .spacy, with an optional fixed-seed dev split
(project.yml: `convert`, `demo-convert`).

    python scripts/convert.py corpus/train.conllu corpus/pos/train.spacy --lang en
    python scripts/convert.py assets/wnut16/ner.txt corpus/demo/train.spacy \\
        --dev-output corpus/demo/dev.spacy --dev-share 0.1 --seed 0
"""
from pathlib import Path
from typing import Optional

from spacy_earlyexit.cli._util import Arg, Opt, existing_file, fail, new_app, run_app

FORMATS = ("conllu", "bio", "iob")
DEV_SHARE = 0.1
SEED = 0

app = new_app("convert.py", __doc__.split("\n\n")[0])


@app.command()
def convert(
    input: Path = Arg(..., metavar="INPUT", help="a CoNLL-U file (*.conllu) or BIO/IOB columns (word first, tag last)"),
    output: Path = Arg(..., metavar="OUTPUT", help=".spacy file (the train part when --dev-output is given)"),
    file_format: Optional[str] = Opt(None, "--format", show_default="conllu for *.conllu, else bio",
                                     help="conllu, bio or iob (bio and iob are read alike)"),
    lang: str = Opt("en", "--lang", "-l", help="spaCy language of the docs' vocabulary"),
    dev_output: Optional[Path] = Opt(None, "--dev-output", show_default="no split", help="also split off a dev set into this file"),
    dev_share: Optional[float] = Opt(None, "--dev-share", show_default=str(DEV_SHARE),
                                     help="share of the docs for --dev-output (needs --dev-output)"),
    seed: Optional[int] = Opt(None, "--seed", show_default=str(SEED),
                              help="seed of the dev split (needs --dev-output)"),
) -> None:
    """Convert a CoNLL-U, BIO or IOB file to .spacy (optional fixed-seed dev split)."""
    import spacy

    from corpora.convert import read_corpus, split_docs, write_docbin

    if file_format is not None and file_format not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}; got {file_format!r}")
    if dev_output is None:
        for flag, value in (("--dev-share", dev_share), ("--seed", seed)):
            if value is not None:
                fail(f"{flag} does nothing without --dev-output")
    share = DEV_SHARE if dev_share is None else dev_share
    if not 0.0 < share < 1.0:
        fail(f"--dev-share must be between 0 and 1; got {share}")
    existing_file(input, "INPUT")
    try:
        vocab = spacy.blank(lang).vocab
    except ImportError:
        fail(f"--lang {lang}: spaCy has no language {lang!r} (e.g. en, de, zh; xx: multi-language)")
    docs = read_corpus(input, vocab, file_format)
    if not docs:
        fail(f"INPUT {input}: no sentences found")
    if dev_output is not None:
        train, dev = split_docs(docs, share, SEED if seed is None else seed)
        write_docbin(train, output)
        write_docbin(dev, dev_output)
        print(f"{input}: {len(train)} docs -> {output}, {len(dev)} docs -> {dev_output} "
              f"(dev share {share}, seed {SEED if seed is None else seed})")
    else:
        write_docbin(docs, output)
        print(f"{input}: {len(docs)} docs -> {output}")


if __name__ == "__main__":
    run_app(app, prog_name="python scripts/convert.py")
