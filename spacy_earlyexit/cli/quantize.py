"""`quantize`: an int8 copy of a trained pipeline (inference only)."""
from pathlib import Path

from ._util import Arg, Opt, app, fail, load_pipeline, refuse_existing, replaced_folder, set_threads

DTYPES = ("int8",)


@app.command("quantize")
def quantize_cli(
    pipeline: Path = Arg(..., help="a trained pipeline (folder)"),
    output: Path = Arg(..., help="the folder to write the quantized pipeline to (a new one unless --force)"),
    dtype: str = Opt("int8", "--dtype", help="the encoder's linear layers in this type (int8 only, for now)"),
    force: bool = Opt(False, "--force", help="replace an existing OUTPUT"),
    threads: int = Opt(0, "--threads", min=0, help="torch threads (0: torch's default)"),
) -> None:
    """Write an int8 copy of a trained pipeline.

    The encoder's linear layers in int8; the copy is for inference only.
    """
    from ..pipeline.quantize import quantize_pipeline

    if dtype not in DTYPES:
        fail(f"--dtype must be {' or '.join(DTYPES)}; got {dtype!r}")
    refuse_existing(output, "OUTPUT", force=force)
    if output.resolve() == pipeline.resolve():
        fail(f"OUTPUT {output} is the PIPELINE: write the quantized copy elsewhere")
    set_threads(threads)
    nlp = load_pipeline(pipeline, "PIPELINE")
    names = quantize_pipeline(nlp, dtype)
    with replaced_folder(output) as scratch:
        nlp.to_disk(scratch)
    for name in names:
        model_file = output / name / "model"
        size = model_file.stat().st_size / 1e6 if model_file.exists() else float("nan")
        print(f"{name}: encoder linear layers in {dtype} ({size:.1f} MB of model data)")
    print(f"saved {pipeline} in {dtype} -> {output}")
