"""A random-init (NOT pretrained) character BERT whose vocabulary is the
characters of .spacy corpora (project.yml: `build-char-bert`).

    python scripts/char_bert.py corpus/zh_pku/train.spacy corpus/zh_msra/train.spacy assets/zh-char-bert-random
"""
import json
from pathlib import Path
from typing import List, Optional

from spacy_earlyexit.cli._util import Arg, Opt, existing_file, fail, new_app, run_app

app = new_app("char_bert.py", __doc__.split("\n\n")[0])


@app.command()
def char_bert_cli(
    paths: List[Path] = Arg(..., metavar="CORPUS... OUTPUT_DIR",
                            help=".spacy file(s) whose characters make the vocabulary, then the folder to write"),
    layers: int = Opt(4, "--layers", min=1, help="encoder layers"),
    hidden: int = Opt(256, "--hidden", min=1, help="hidden size (a multiple of --heads)"),
    heads: int = Opt(4, "--heads", min=1, help="attention heads"),
    intermediate: Optional[int] = Opt(None, "--intermediate", min=1, show_default="4 x hidden",
                                      help="feed-forward size"),
    max_position: int = Opt(512, "--max-position", min=1, help="longest input in pieces"),
    dropout: float = Opt(0.1, "--dropout", min=0.0, max=1.0, help="dropout of the hidden layers and attention"),
    min_count: int = Opt(1, "--min-count", min=1, help="leave out rarer characters (they become [UNK])"),
    seed: int = Opt(0, "--seed", help="seed of the random weights"),
) -> None:
    """Build a random-init character BERT from the characters of .spacy corpora."""
    from corpora.char_bert import build_char_bert_from_corpora

    if len(paths) < 2:
        fail("give at least one CORPUS and then the OUTPUT_DIR")
    *corpora, output_dir = paths
    for corpus in corpora:
        existing_file(corpus, "CORPUS")
    if hidden % heads:
        fail(f"--hidden ({hidden}) must be a multiple of --heads ({heads})")
    output = build_char_bert_from_corpora(
        corpora, output_dir, layers=layers, hidden=hidden, heads=heads, intermediate=intermediate,
        max_position=max_position, dropout=dropout, min_count=min_count, seed=seed,
    )
    info = json.loads((output / "char_bert.json").read_text(encoding="utf8"))
    print(f"{output}: random-init BERT (not pretrained), {layers} layers, hidden {hidden}, "
          f"{info['vocab_size']} pieces from {info['characters']} characters of "
          f"{', '.join(str(c) for c in corpora)}")


if __name__ == "__main__":
    run_app(app, prog_name="python scripts/char_bert.py")
