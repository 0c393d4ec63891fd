"""Chinese word segmentation as a task of the earlyexit_tagger: task "segment".

Input docs are made of *units*, normally single characters: spaCy's `zh`
pipeline with its default `char` segmenter gives one token per character, and
whitespace runs other than a single trailing space as tokens of their own.
Every unit gets one of four classes, B (begins a word), M (inside), E (ends a
word) or S (a one-unit word); decoding repairs invalid sequences and
`doc.retokenize()` merges the units of each word into one token.

What counts as a unit:
- Any non-whitespace token is a unit and is labelled like a character, even
  when it is longer than one (a Latin word or a number kept whole by another
  tokenizer): the task can merge units, never split them.
- Whitespace tokens (`token.is_space`) are never part of a word: they stay
  tokens of their own, whatever the model predicts for them.
- A word never spans whitespace: a unit with trailing whitespace ends its word.
- A unit without a word piece of its own (it shares a piece with the unit
  before it, e.g. "hello" as one piece of bert-base-chinese spread over five
  character tokens, or a control character the tokenizer drops) gets no class
  (None) and joins the word of the unit before it: the encoder cannot see a
  boundary inside a piece. A SentencePiece vocabulary (XLM-R,
  multilingual-e5) holds many such pieces ("北京", and "在上海", which
  crosses the boundary 在|上海): with the architecture's piece_split
  "tokens" (or "han") such pieces are cut at every character, so every
  character has a class and an exit layer of its own and any boundary can be
  predicted (layers/piece_split.py).

Segmentation always retokenizes: the component's `overwrite` setting has no
effect (there is no "unset" segmentation to keep). The text is never altered:
merging keeps every character and its whitespace, so `doc.text` is unchanged.
A merged word's `token._.exit_layer` is the maximum of its units'.

Gold classes come from the alignment of the unit doc (example.predicted) with
the gold words (example.reference), so `spacy train` works with ordinary
.spacy corpora whose docs hold the gold words with correct spaces (spaCy's
Corpus makes the predicted doc with nlp.make_doc(reference.text)).
"""
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

from spacy.scorer import Scorer
from spacy.tokens import Doc
from spacy.training import Example
from spacy.util import get_words_and_spaces

from .extensions import get_exit_layers, has_exit_layers, set_exit_layers
from .tasks import Task, register_task

SEGMENT_CLASSES: Tuple[str, ...] = ("B", "M", "E", "S")


def decode_bmes(
    classes: Sequence[Optional[str]], whitespace: Sequence[bool], spaced: Sequence[bool]
) -> List[Tuple[int, int]]:
    """Words (start, end) in token offsets from per-token BMES classes.

    classes: one of B, M, E, S or None per token (BIES's I is read as M).
    whitespace: per token, whether it is a whitespace token (always a word of
        its own, whatever its class). spaced: per token, whether it has
        trailing whitespace (its word ends there).
    Repairs instead of failing: B or S closes the word before; M or E that
    does not continue an open word starts one; None continues the word before
    (open or closed) or starts one. The result covers every token exactly once,
    in order.
    """
    words: List[Tuple[int, int]] = []
    start = -1  # start of the pending word (-1: none)
    is_open = False  # whether the pending word may still grow through M / E

    def emit(end: int) -> None:
        nonlocal start, is_open
        if start >= 0:
            words.append((start, end))
        start, is_open = -1, False

    for i, value in enumerate(classes):
        if whitespace[i]:
            emit(i)
            words.append((i, i + 1))
            continue
        value = "M" if value == "I" else value
        if value is None:
            if start < 0:
                start, is_open = i, True
        elif value in ("M", "E") and start >= 0 and is_open:
            is_open = value == "M"
        else:  # B, S, unknown classes, or M / E without an open word
            emit(i)
            start, is_open = i, value in ("B", "M")
        if spaced[i]:
            emit(i + 1)
    emit(len(classes))
    return words


def bmes_classes(word_lengths: Iterable[int]) -> List[str]:
    """The BMES classes of consecutive words of the given lengths in units."""
    classes: List[str] = []
    for length in word_lengths:
        if length == 1:
            classes.append("S")
        elif length > 1:
            classes.extend(["B"] + ["M"] * (length - 2) + ["E"])
    return classes


def character_doc(doc: Doc) -> Doc:
    """A new doc of `doc.text` with one token per character, as spaCy's zh
    tokenizer makes it with segmenter "char" (whitespace other than a single
    trailing space becomes tokens)."""
    words, spaces = get_words_and_spaces(list(doc.text), doc.text)
    return Doc(doc.vocab, words=words, spaces=spaces)


def merge_words(doc: Doc, words: Sequence[Tuple[int, int]]) -> None:
    """Merge each multi-token word (start, end) into one token, in place.

    words: (start, end) token offsets, not overlapping (one-token words are
    left as they are). The merged token's `_.exit_layer` is the maximum of its
    tokens' (left unset if none has one); the doc's stored exit layers
    (extensions.EXIT_LAYERS_KEY, one value per token) are rewritten for the
    merged tokens, so they stay one per token. Values of other token
    extensions that the inner tokens left in doc.user_data (keyed by their
    character offsets) are removed.
    """
    merges = sorted((start, end) for start, end in words if end - start >= 2)
    if not merges:
        return
    layers = get_exit_layers(doc) if has_exit_layers(doc) else None
    inner_offsets: Set[int] = {token.idx for start, end in merges for token in doc[start + 1:end]}
    with doc.retokenize() as retokenizer:
        for start, end in merges:
            retokenizer.merge(doc[start:end])
    # other token extensions' values live in user_data under ("._.", name, offset, None)
    stale = [
        key for key in doc.user_data
        if isinstance(key, tuple) and len(key) == 4 and key[0] == "._."
        and key[3] is None and key[2] in inner_offsets
    ]
    for key in stale:
        del doc.user_data[key]
    if layers is None:
        return
    merged: List[Optional[int]] = []
    position = 0
    for start, end in merges:
        merged.extend(layers[position:start])
        inside = [layer for layer in layers[start:end] if layer is not None]
        merged.append(max(inside) if inside else None)
        position = end
    merged.extend(layers[position:])
    set_exit_layers(doc, merged)


class SegmentTask(Task):
    """Word segmentation: BMES per unit, units merged into words (see the
    module docstring for units, whitespace and overwrite)."""

    name = "segment"
    needs_labels = False
    score_keys = ("token_f", "token_p", "token_r")
    # whitespace tokens get no class: decode_bmes keeps them as they are
    whitespace_class = None
    # a unit without a piece of its own joins the word before (class None)
    borrow_classes = False
    retokenizes = True

    def labels_from_examples(self, examples: Iterable[Example]) -> Set[str]:
        """Always B, M, E, S: the gold words are the annotation."""
        return set(SEGMENT_CLASSES)

    def validate_labels(self, labels: Iterable[str]) -> None:
        bad = sorted(repr(label) for label in labels if label not in SEGMENT_CLASSES)
        if bad:
            raise ValueError(
                f"task 'segment' has the fixed labels {', '.join(SEGMENT_CLASSES)}; got {', '.join(bad)}"
            )

    def classes(self, labels: Sequence[str]) -> List[str]:
        return sorted(SEGMENT_CLASSES)

    def gold_classes(self, example: Example) -> List[Optional[str]]:
        """BMES of each predicted unit within the gold word it aligns to; None
        for whitespace and for units that align to no or several gold words."""
        predicted, reference = example.predicted, example.reference
        x2y = example.alignment.x2y
        lengths = x2y.lengths
        offsets = [0]
        for length in lengths:
            offsets.append(offsets[-1] + int(length))
        data = x2y.data

        def only_word(i: int) -> int:
            """The one gold word unit i aligns to, else -1."""
            if i < 0 or i >= len(predicted) or lengths[i] != 1:
                return -1
            word = int(data[offsets[i]])
            return -1 if reference[word].is_space else word

        def touches(i: int, word: int) -> bool:
            """Whether unit i overlaps the gold word (alone or with others)."""
            return 0 <= i < len(predicted) and word in data[offsets[i]:offsets[i + 1]]

        classes: List[Optional[str]] = []
        for token in predicted:
            word = only_word(token.i)
            if token.is_space or word < 0:
                classes.append(None)
                continue
            begins = not touches(token.i - 1, word)
            ends = not touches(token.i + 1, word)
            classes.append("S" if begins and ends else "B" if begins else "E" if ends else "M")
        return classes

    def annotate(self, doc: Doc, classes: Sequence[Optional[str]], overwrite: bool) -> None:
        """Decode the classes and merge each word into one token (always, see
        the module docstring; `overwrite` is ignored)."""
        words = decode_bmes(classes, [t.is_space for t in doc], [bool(t.whitespace_) for t in doc])
        merge_words(doc, words)

    def prediction_units(self, doc: Doc) -> Doc:
        """A character doc of doc.text (doc may already be segmented)."""
        return character_doc(doc)

    def score(self, examples: Iterable[Example], **kwargs) -> Dict[str, object]:
        """token_acc, token_p, token_r, token_f (spaCy's Scorer.score_tokenization)."""
        return Scorer.score_tokenization(examples)


register_task(SegmentTask())
