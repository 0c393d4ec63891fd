"""`quantize`: an int8 copy of a trained pipeline."""
import argparse
from pathlib import Path


def cmd_quantize(args: argparse.Namespace) -> None:
    import spacy
    import torch

    from ..pipeline.quantize import quantize_pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    nlp = spacy.load(args.pipeline)
    names = quantize_pipeline(nlp, args.dtype)
    output = Path(args.output)
    nlp.to_disk(output)
    for name in names:
        model_file = output / name / "model"
        size = model_file.stat().st_size / 1e6 if model_file.exists() else float("nan")
        print(f"{name}: encoder linear layers in {args.dtype} ({size:.1f} MB of model data)")
    print(f"saved {args.pipeline} in {args.dtype} -> {output}")


def add_commands(commands: "argparse._SubParsersAction") -> None:
    quantize = commands.add_parser(
        "quantize", help="an int8 copy of a trained pipeline (encoder linear layers in int8; inference only)"
    )
    quantize.add_argument("pipeline", help="a trained pipeline (folder)")
    quantize.add_argument("output", help="where to write the quantized pipeline")
    quantize.add_argument("--dtype", default="int8", choices=["int8"])
    quantize.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    quantize.set_defaults(func=cmd_quantize)
