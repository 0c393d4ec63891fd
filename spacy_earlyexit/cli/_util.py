"""What every command shares: the typer app, `Arg`/`Opt` with defaults shown,
one-line errors for user mistakes, and the readers of command-line values.

A user mistake (a missing file, a value that does not parse, a file in the
wrong format) ends the command with ONE line on stderr, `error: ...`, naming
the flag or file, and exit status 1: `fail(...)` inside a command, and
`run_app` turns click's own usage errors and the ValueErrors and file errors
a command lets through into such a line. The workflow scripts beside
project.yml (scripts/*.py) use the same helpers.
"""
import importlib
import json
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, NoReturn, Optional, Sequence, Tuple, Type, TypeVar

import typer

NAME = "spacy-earlyexit"
HELP = """Early-exit BERT taggers for spaCy: set the speed/accuracy dial of a trained
earlyexit_tagger pipeline and run it on corpora.

Run `spacy-earlyexit COMMAND --help` (or `python -m spacy_earlyexit COMMAND
--help`) for a command's options. The project workflow's own steps (corpus
converters, backbone fetchers) are the scripts beside project.yml."""
COMPONENT = "earlyexit_tagger"

#: `param: int = Opt(1, "--flag", help=...)`: typer options and arguments with
#: their defaults shown in --help (as spaCy's CLI)
Arg = partial(typer.Argument, show_default=True)
Opt = partial(typer.Option, show_default=True)

T = TypeVar("T")

#: the command line of this process when run_app read it from sys.argv (the
#: process's own command, which `annotate` may start again with jemalloc
#: preloaded); None when a command was called from Python
PROCESS_ARGV: Optional[List[str]] = None


def new_app(name: str, help_text: str) -> typer.Typer:
    """A typer app in the house style: plain help (no colour boxes), no
    shell-completion options, help when run without arguments."""
    return typer.Typer(
        name=name, help=help_text, no_args_is_help=True, add_completion=False,
        rich_markup_mode=None, pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    )


app = new_app(NAME, HELP)


def fail(message: str) -> NoReturn:
    """End the command for a user mistake: one line on stderr, exit status 1."""
    raise SystemExit(f"error: {one_line(message)}")


def one_line(text: str) -> str:
    """`text` with its line breaks and runs of spaces as single spaces."""
    return " ".join(str(text).split())


def run_app(typer_app: typer.Typer, argv: Optional[Sequence[str]] = None, *, prog_name: str = NAME) -> Any:
    """Run `typer_app` on argv (default: this process's arguments). Usage
    errors, ValueErrors and file errors end in one line on stderr and exit
    status 1 (SystemExit); --help prints and returns 0."""
    global PROCESS_ARGV
    PROCESS_ARGV = list(sys.argv[1:]) if argv is None else None
    command = typer.main.get_command(typer_app)
    try:
        return command.main(args=list(argv) if argv is not None else None, prog_name=prog_name,
                            standalone_mode=False)
    except NO_ARGS_IS_HELP as error:
        context = getattr(error, "ctx", None)
        typer.echo(context.get_help() if context is not None else error.format_message())
        raise SystemExit(0) from None
    except USAGE_ERRORS as error:
        context = getattr(error, "ctx", None)
        where = f"{context.command_path}: " if context is not None else ""
        hint = f" (see {context.command_path} --help)" if context is not None else ""
        fail(f"{where}{error.format_message()}{hint}")
    except CLICK_ERRORS as error:
        fail(error.format_message())
    except ABORTS:
        fail("aborted")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as error:
        fail(f"{error.filename}: {error.strerror}" if error.filename else str(error))
    except subprocess.CalledProcessError as error:
        command_line = " ".join(str(part) for part in error.cmd) if isinstance(error.cmd, list) else error.cmd
        fail(f"`{command_line}` failed with exit status {error.returncode}")
    except ValueError as error:  # bad input: a message, not a traceback
        fail(str(error))


def _exception_classes(name: str) -> Tuple[Type[BaseException], ...]:
    """The class `name` of click's exceptions: typer's vendored copy
    (typer >= 0.2x) and click's own, where they exist."""
    found: List[Type[BaseException]] = []
    for module_name in ("typer._click.exceptions", "click.exceptions"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        cls = getattr(module, name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException) and cls not in found:
            found.append(cls)
    return tuple(found)


NO_ARGS_IS_HELP = _exception_classes("NoArgsIsHelpError")
USAGE_ERRORS = _exception_classes("UsageError")
CLICK_ERRORS = _exception_classes("ClickException")
ABORTS = tuple(dict.fromkeys(_exception_classes("Abort") + (typer.Abort,)))


# --- reading command-line values ------------------------------------------
def comma_list(text: str, flag: str, parse: Callable[[str], T], expected: str) -> List[T]:
    """The comma-separated values of `flag` (empty items skipped), each read
    by `parse`; a value it cannot read fails naming the flag."""
    values: List[T] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            values.append(parse(item))
        except ValueError:
            fail(f"{flag}: {item!r} is not {expected} (give a comma-separated list, e.g. {flag} {_example(expected)})")
    if not values:
        fail(f"{flag}: give at least one value")
    return values


def _example(expected: str) -> str:
    return "0.1,0.2" if "number" in expected else ("0,1" if "integer" in expected else "a,b")


def floats(text: str, flag: str) -> List[float]:
    """"0.1,0.2" -> [0.1, 0.2] (failing with the flag's name otherwise)."""
    return comma_list(text, flag, float, "a number")


def ints(text: str, flag: str) -> List[int]:
    """"0,1" -> [0, 1] (failing with the flag's name otherwise)."""
    return comma_list(text, flag, int, "an integer")


def words(text: str, flag: str) -> List[str]:
    """"a, b" -> ["a", "b"]."""
    return comma_list(text, flag, str, "a word")


def named_paths(items: Sequence[str], flag: str) -> Dict[str, Path]:
    """NAME=PATH values of a repeatable option -> {name: path}; the folder
    must exist and each name be given once."""
    named: Dict[str, Path] = {}
    for item in items:
        name, sign, path = item.partition("=")
        if not sign or not name.strip() or not path.strip():
            fail(f"{flag} takes NAME=PATH (e.g. {flag} stage1=training/joint/model-best); got {item!r}")
        name = name.strip()
        if name in named:
            fail(f"{flag}: the name {name!r} is given twice")
        named[name] = existing_dir(path.strip(), f"{flag} {name}")
    return named


def existing_file(path: Any, what: str) -> Path:
    """`path` as a Path, failing (naming `what`, e.g. "--dev") unless it is a readable file."""
    return _existing(path, what, is_kind=Path.is_file, kind="file", not_kind="not a file")


def existing_dir(path: Any, what: str) -> Path:
    """`path` as a Path, failing (naming `what`) unless it is a folder."""
    return _existing(path, what, is_kind=Path.is_dir, kind="folder",
                     not_kind="not a folder (a pipeline is a folder saved by nlp.to_disk)")


def _existing(path: Any, what: str, *, is_kind: Callable[[Path], bool], kind: str, not_kind: str) -> Path:
    found = Path(path)
    if not found.exists():
        fail(f"{what} {found}: no such {kind}")
    if not is_kind(found):
        fail(f"{what} {found}: {not_kind}")
    return found


def read_json(path: Path, what: str) -> Any:
    """The JSON in a file, failing with the file's name (and the line and
    column) when it is missing or not JSON."""
    try:
        text = existing_file(path, what).read_text(encoding="utf8")
    except UnicodeDecodeError as error:
        fail(f"{what} {path}: not JSON (not UTF-8 text: {error.reason} at byte {error.start})")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        fail(f"{what} {path}:{error.lineno}: not JSON ({error.msg}, column {error.colno})")


def load_pipeline(
    path: Path, what: str, *, component: Optional[str] = COMPONENT, precision: Optional[str] = None, **load_options: Any
):
    """spacy.load(path) (with `precision`: spacy_earlyexit.load), failing with
    one line naming `what` when the folder is not a pipeline or (with
    `component`) has no such component."""
    from ..pipeline.load import load

    folder = existing_dir(path, what)
    try:
        nlp = load(folder, precision=precision, **load_options)
    except (OSError, ValueError, KeyError) as error:
        fail(f"{what} {folder}: not a spaCy pipeline that loads ({one_line(str(error))})")
    if component is not None and component not in nlp.pipe_names:
        fail(f"{what} {folder}: the pipeline has no {component} (it has: {', '.join(nlp.pipe_names) or 'nothing'})")
    return nlp


def refuse_existing(output: Path, what: str, *, force: bool) -> None:
    """Fail when `output` exists and `force` was not given."""
    if output.exists() and not force:
        fail(f"{what} {output} exists: pass --force to replace it, or choose another path")


@contextmanager
def replaced_folder(output: Path) -> Iterator[Path]:
    """A scratch folder beside `output` to write into; when the block ends
    without an error it replaces `output` (whatever was there is removed),
    else it is removed and `output` is left as it was."""
    output.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        yield scratch
        if output.is_dir() and not output.is_symlink():
            shutil.rmtree(output)
        elif output.exists():
            output.unlink()
        scratch.rename(output)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch)


def use_gpu(gpu_id: int) -> None:
    """Run on GPU `gpu_id` (spacy.require_gpu); -1: the CPU."""
    if gpu_id < 0:
        return
    import spacy

    try:
        spacy.require_gpu(gpu_id)
    except (ValueError, ImportError) as error:
        fail(f"--gpu-id {gpu_id}: {error}")


def set_threads(threads: int) -> None:
    """torch.set_num_threads(threads) when threads > 0."""
    if threads < 0:
        fail(f"--threads must be >= 0 (0: torch's default); got {threads}")
    if threads:
        import torch

        torch.set_num_threads(threads)
