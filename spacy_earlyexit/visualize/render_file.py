"""Annotate a file with a saved pipeline and write the exit view as a page.

    from spacy_earlyexit.visualize import render_file
    render_file("training/model-best", "sample.jsonl", "exits.html",
                exit_overrides={"exit_mode": "token", "threshold": 0.1}, limit=50)

INPUT is read as `annotate` reads it (JSONL with a "text" field, a `.spacy`
DocBin), or as plain text (`.txt`, `.text`): one doc per non-blank line.
Docs of a `.spacy` file keep their tokens but lose their annotation (a dev
set's gold labels), so the page shows what the pipeline predicts.
"""
import itertools
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Union

import spacy
from spacy.language import Language
from spacy.tokens import Doc

from ..corpus.formats import AnnotateInputError, file_format, read_docbin, read_jsonl
from ..corpus.job import component_cfg, tagger_names, validate_overrides
from .render import render

PathLike = Union[str, Path]
TEXT_SUFFIXES = (".txt", ".text")
#: the annotation shown for a pipeline whose early-exit components all do one task
TASK_ANNOTATION = {"ner": "ents", "pos": "pos", "tag": "tag", "segment": "words"}


def input_format(path: PathLike) -> str:
    """"text" for .txt/.text, else annotate's file_format ("jsonl", "spacy")."""
    if Path(path).suffix.lower() in TEXT_SUFFIXES:
        return "text"
    try:
        return file_format(path)
    except AnnotateInputError as error:
        raise AnnotateInputError(f"{error} (or plain text: {', '.join(TEXT_SUFFIXES)})") from None


def read_text_lines(path: PathLike) -> Iterator[str]:
    """One text per non-blank line of a UTF-8 file (newline removed), lazily;
    AnnotateInputError naming the line for invalid UTF-8."""
    with open(path, "rb") as stream:
        for number, raw in enumerate(stream, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf8").rstrip("\r\n")
            except UnicodeDecodeError as error:
                raise AnnotateInputError(f"{path}, line {number}: not UTF-8 ({error.reason})") from None
            if line.strip():
                yield line


def read_inputs(path: PathLike, nlp: Language) -> Iterator[Union[str, Doc]]:
    """Texts (JSONL, plain text) or unannotated docs (.spacy) of INPUT, lazily."""
    kind = input_format(path)
    if not Path(path).is_file():
        raise AnnotateInputError(f"{path}: no such file")
    if kind == "jsonl":
        return (text for text, _meta in read_jsonl(path))
    if kind == "spacy":
        retokenizes = any(nlp.get_pipe(name).task.retokenizes for name in tagger_names(nlp))
        return (unannotated(nlp, doc, retokenizes) for doc in read_docbin(path, nlp.vocab)[1])
    return read_text_lines(path)


def unannotated(nlp: Language, doc: Doc, retokenizes: bool = False) -> Doc:
    """A doc of the same tokens without annotation (a corpus's gold entities
    or tags would otherwise be kept and shown instead of the pipeline's);
    for a task that makes its own tokens (segmentation), the pipeline's
    tokenization of the text."""
    if retokenizes:
        return nlp.make_doc(doc.text)
    return Doc(nlp.vocab, words=[token.text for token in doc], spaces=[bool(token.whitespace_) for token in doc])


def pipeline_n_layers(nlp: Language, names: List[str]) -> int:
    """The deepest encoder among the named early-exit components."""
    return max(int(nlp.get_pipe(name).n_layers) for name in names)


def pipeline_settings(nlp: Language, name: str, overrides: Mapping[str, Any]) -> Dict[str, Any]:
    """The exit settings a run of component `name` uses: saved ones with
    the run's overrides."""
    return nlp.get_pipe(name).exit_settings.updated(**overrides).to_dict()


def render_file(
    pipeline_path: Union[PathLike, Language],
    input_path: PathLike,
    output_html: PathLike,
    *,
    exit_overrides: Optional[Dict[str, Any]] = None,
    limit: Optional[int] = None,
    batch_size: int = 256,
) -> Path:
    """Annotate INPUT with the pipeline and write the exit view of its docs
    as an HTML page; returns the page's path.

    pipeline_path: a saved pipeline folder (or a loaded Language).
    input_path: .jsonl (a "text" field per line), .spacy, or .txt (a doc per line).
    exit_overrides: exit settings for this run (the CLI's --exit-mode,
        --threshold, --window), e.g. {"threshold": 0.2}; default: the
        pipeline's saved settings.
    limit: render only the first `limit` docs (None: all).
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be an integer >= 0; got {limit!r}")
    overrides = validate_overrides(exit_overrides)
    input_format(input_path)  # unknown formats fail before the pipeline loads
    nlp = pipeline_path if isinstance(pipeline_path, Language) else spacy.load(pipeline_path)
    names = tagger_names(nlp)
    if not names:
        raise ValueError(f"the pipeline has no earlyexit_tagger component (components: {', '.join(nlp.pipe_names)})")
    inputs = read_inputs(input_path, nlp)
    if limit is not None:
        inputs = itertools.islice(inputs, limit)
    docs: List[Doc] = list(nlp.pipe(inputs, batch_size=batch_size, component_cfg=component_cfg(names, overrides)))
    tasks = {nlp.get_pipe(name).cfg["task"] for name in names}
    annotation = TASK_ANNOTATION.get(tasks.pop(), "auto") if len(tasks) == 1 else "auto"
    html = render(
        docs, page=True, jupyter=False, n_layers=pipeline_n_layers(nlp, names),
        annotation=annotation, settings=pipeline_settings(nlp, names[0], overrides),
    )
    output = Path(output_html)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(html, encoding="utf8")
    return output
