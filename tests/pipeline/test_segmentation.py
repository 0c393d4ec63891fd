"""Chinese word segmentation (task "segment") and NER on character docs:
BMES decoding against a reference computation (property tests), gold classes
from the alignment, word-piece alignment of characters, learning a toy corpus
through nlp.update, mixed-text round trips, to_disk/from_disk, converters and
the char BERT builder."""
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy
import pytest
import spacy
from hypothesis import given, settings
from hypothesis import strategies as st
from spacy.language import Language
from spacy.tokens import Doc
from spacy.training import Corpus, Example
from spacy.util import get_words_and_spaces

from corpora.char_bert import SPECIAL_TOKENS, build_char_bert, char_vocab
from helpers.tiny_bert import PLAIN_OFFRAMPS, train_until_perfect as train
from spacy_earlyexit.pipeline.extensions import EXIT_LAYERS_KEY
from helpers.requirements import require
from corpora.convert import write_docbin
from corpora.convert_zh import (
    msra_docs, parse_pku_line, pku_docs, split_indices, split_sentences, ud_docs,
)
from spacy_earlyexit.layers.wordpieces import tokenize_docs
from spacy_earlyexit.pipeline.segmentation import SegmentTask, bmes_classes, decode_bmes
from spacy_earlyexit.pipeline.tasks import get_task


# gold words, separated by "|"; " " is a real space in the text
SEGMENT_DATA = [
    "我|爱|北京|天安门",
    "北京|是|中国|的|首都",
    "他|喜欢|学习|中文",
    "我们|在|北京|学习",
    "天安门|在|北京",
    "我|用|iPhone |12|看|新闻",
]
# entities on the same sentences: (word index, label)
NER_ENTITIES = {0: [(2, "LOC"), (3, "LOC")], 1: [(0, "LOC"), (2, "LOC")], 3: [(2, "LOC")],
                4: [(0, "LOC"), (2, "LOC")], 5: [(2, "ORG")]}
MIXED_TEXTS = [
    "我爱北京天安门。",
    "Hello world，我用iPhone 12看新闻！",
    "２０２１年，  北京\n天安门  xyz鍂 。",
    "   ",
    "",
    "他说：“你好！”\t(ok) 3.14",
]
SHARED_UD = Path(__file__).resolve().parents[3] / "shared" / "data" / "ud_zh_gsdsimp"
ZH = spacy.blank("zh")


def gold_words(line: str) -> List[str]:
    return line.split("|")


def text_of(line: str) -> str:
    return "".join(gold_words(line))


def reference_doc(vocab, words: Sequence[str], text: str) -> Doc:
    """The gold words of `text` (a word's trailing space becomes whitespace)."""
    words, spaces = get_words_and_spaces([w.strip() for w in words if w.strip()], text)
    return Doc(vocab, words=words, spaces=spaces)


def expected_classes(words: Sequence[str], doc: Doc) -> List[Optional[str]]:
    """Reference computation: BMES of each character token from the words'
    character offsets in doc.text (None for whitespace tokens)."""
    position: Dict[int, str] = {}
    offset = 0
    for word in words:
        core = word.strip()
        start = doc.text.index(core, offset)
        for i, cls in enumerate(bmes_classes([len(core)])):
            position[start + i] = cls
        offset = start + len(core)
    return [None if t.is_space else position[t.idx] for t in doc]


# --- decoding: property tests --------------------------------------------------
ALPHABET = "我爱北京天安门中国人的了AbcZ019２０，。！“”　 \n\t"
WORD_CHARS = "我爱北京天安门中国人的了AbcZ019２０，。！“”"


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_classes_keep_text_and_cover_every_character(data):
    """Random classes (valid or not, None included) over random text: the
    segmentation covers every character once, keeps the text and whitespace
    tokens, never puts whitespace inside a word, and gives each word the max
    of its characters' exit layers."""
    text = data.draw(st.text(alphabet=ALPHABET, max_size=40))
    doc = ZH.make_doc(text)
    classes = data.draw(st.lists(st.sampled_from(["B", "M", "E", "S", "I", None]),
                                 min_size=len(doc), max_size=len(doc)))
    layers = data.draw(st.lists(st.integers(1, 6), min_size=len(doc), max_size=len(doc)))
    before = [(t.idx, t.text, t.whitespace_, t.is_space) for t in doc]
    for token, layer in zip(doc, layers):
        token._.exit_layer = layer
    layer_at = {t.idx: layer for t, layer in zip(doc, layers)}

    words = decode_bmes(classes, [t.is_space for t in doc], [bool(t.whitespace_) for t in doc])
    assert [i for start, end in words for i in range(start, end)] == list(range(len(doc)))

    SegmentTask().annotate(doc, classes, overwrite=False)
    assert doc.text == text
    assert "".join(t.text_with_ws for t in doc) == text
    starts = {idx for idx, _, _, _ in before}
    for token in doc:
        assert token.idx in starts  # words start at character boundaries
        if token.is_space:
            assert (token.idx, token.text, token.whitespace_, True) in before
        else:
            assert not any(c.isspace() for c in token.text)
            inside = [layer_at[i] for i in range(token.idx, token.idx + len(token.text)) if i in layer_at]
            assert token._.exit_layer == max(inside)
    # the stored exit layers hold exactly the merged tokens: no stale characters
    data = doc.user_data.get(EXIT_LAYERS_KEY, b"")
    assert len(data) == 5 * len(doc)
    assert numpy.frombuffer(data[:4 * len(doc)], dtype="<u4").tolist() == [t.idx for t in doc]


@settings(max_examples=200, deadline=None)
@given(
    words=st.lists(
        st.tuples(
            st.text(alphabet=WORD_CHARS, min_size=1, max_size=5),
            st.sampled_from(["", "", " ", "  ", "\n"]),  # what follows the word
        ),
        max_size=12,
    )
)
def test_valid_classes_give_back_the_words(words):
    """A random segmentation: gold_classes of (characters, gold words) equal
    the BMES computed from offsets, and decoding them gives the words back."""
    text = "".join(word + sep for word, sep in words)
    doc = ZH.make_doc(text)
    gold = [w for w, _ in words]
    expected = expected_classes(gold, doc)
    reference = reference_doc(ZH.vocab, gold, text)
    assert SegmentTask().gold_classes(Example(doc, reference)) == expected
    SegmentTask().annotate(doc, expected, overwrite=True)
    assert [t.text for t in doc if not t.is_space] == gold
    assert doc.text == text


def test_decode_repairs():
    none = [False] * 6
    assert decode_bmes(["B", "B", "E", "M", "E", "S"], none, none) == [(0, 1), (1, 3), (3, 5), (5, 6)]
    assert decode_bmes(["E", "M", "M", "S", "E", "E"], none, none) == [(0, 1), (1, 3), (3, 4), (4, 5), (5, 6)]
    # None continues the word before (open or closed) or starts one
    assert decode_bmes([None, "S", None, "B", None, "E"], none, none) == [(0, 1), (1, 3), (3, 6)]
    # whitespace tokens stand alone; trailing whitespace ends a word
    assert decode_bmes(["B", "M", "E", "B", "M", "E"], [False, True] + [False] * 4,
                       [False, False, False, True, False, False]) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 6)]


def test_gold_classes_units_longer_than_a_character():
    """Units need not be characters: a unit inside a word is labelled by its
    place; a unit across two gold words gets None."""
    text = "北京天安门"
    predicted = Doc(ZH.vocab, words=["北", "京天", "安", "门"], spaces=[False] * 4)
    reference = Doc(ZH.vocab, words=["北京", "天安门"], spaces=[False, False])
    assert SegmentTask().gold_classes(Example(predicted, reference)) == ["B", None, "M", "E"]
    predicted = Doc(ZH.vocab, words=["北京", "天", "安门"], spaces=[False] * 3)
    assert SegmentTask().gold_classes(Example(predicted, reference)) == ["S", "B", "E"]
    assert predicted.text == text


# --- the backbone: a tiny char BERT -------------------------------------------
@pytest.fixture(scope="module")
def char_bert(tmp_path_factory) -> Path:
    counts = Counter(c for line in SEGMENT_DATA for c in text_of(line) if not c.isspace())
    vocab = char_vocab(counts)
    return build_char_bert(vocab, tmp_path_factory.mktemp("char_bert"), n_layers=2, hidden=32,
                           heads=4, max_position=64, dropout=0.0)


def test_char_bert_vocab_and_tokenizer(char_bert):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(char_bert)
    assert tokenizer.is_fast
    vocab = tokenizer.get_vocab()
    assert all(t in vocab for t in SPECIAL_TOKENS)
    # Latin letters and digits continue words (## pieces); CJK characters never do
    assert "##P" in vocab and "##2" in vocab and "##京" not in vocab and "京" in vocab
    assert AutoModel.from_pretrained(char_bert).config.num_hidden_layers == 2
    pieces = tokenizer.tokenize("北京iPhone 12")
    assert pieces == ["北", "京", "i", "##P", "##h", "##o", "##n", "##e", "1", "##2"]


def test_every_character_gets_its_own_piece(char_bert):
    """Through the component's alignment: one piece per character token, an
    unknown CJK character aligned to its [UNK]; whitespace has none; an
    unknown Latin run is one [UNK] owned by its first character."""
    from spacy_transformers.span_getters import configure_strided_spans
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(char_bert)
    vocab = tokenizer.get_vocab()
    doc = ZH.make_doc("我爱鍂北京  iPhone xyz。")
    pieces = tokenize_docs([doc], configure_strided_spans(128, 96), tokenizer, 64)
    source = pieces.token_source[0]
    span = pieces.span(0)
    for token, (span_i, slot) in zip(doc, source):
        if token.is_space or token.text in "yz":
            assert span_i < 0, token.text
            continue
        assert span_i >= 0, token.text
        piece = span.input_ids[span.word_piece[slot]]
        if token.text in "鍂x。":  # not in the toy corpus
            assert token.text not in vocab and piece == tokenizer.unk_token_id
        else:
            assert tokenizer.convert_ids_to_tokens(piece).lstrip("#") == token.text


# --- learning ------------------------------------------------------------------
def make_nlp(bert: Path, task: str = "segment", **config) -> Language:
    nlp = spacy.blank("zh")
    model = {**PLAIN_OFFRAMPS, "name": str(bert), "encoder_learn_rate_scale": 1.0, "offramp_dropout": 0.0}
    nlp.add_pipe("earlyexit_tagger", config={"task": task, "model": model, **config})
    return nlp


def segment_examples(nlp: Language) -> List[Example]:
    """Character docs (nlp.make_doc) with the gold words as reference."""
    return [Example(nlp.make_doc(text_of(line)), reference_doc(nlp.vocab, gold_words(line), text_of(line)))
            for line in SEGMENT_DATA]


@pytest.fixture(scope="module")
def segmenter(char_bert) -> Language:
    nlp = make_nlp(char_bert)
    scores = train(nlp, segment_examples(nlp), "token_f")
    nlp.scores = scores
    return nlp


def test_learns_to_segment_the_toy_corpus(segmenter):
    scores = segmenter.scores
    assert scores["token_f"] == 1.0
    assert scores["token_f_layer_2"] == 1.0  # the last off-ramp, scored on characters again
    assert 0.0 <= scores["token_f_layer_1"] <= 1.0
    assert scores["exit_layer_mean"] == 2.0  # exit_mode off: every word at full depth
    for line in SEGMENT_DATA:
        doc = segmenter(text_of(line))
        assert [t.text for t in doc if not t.is_space] == [w.strip() for w in gold_words(line)]
        assert doc._.exit_layers == [2] * len(doc)


def test_labels_and_initialize(segmenter):
    tagger = segmenter.get_pipe("earlyexit_tagger")
    assert tagger.labels == ("B", "E", "M", "S") and tagger.classes == ["B", "E", "M", "S"]
    assert get_task("segment").labels_from_examples([]) == {"B", "M", "E", "S"}
    with pytest.raises(ValueError, match="fixed labels"):
        get_task("segment").validate_labels(["X"])


@pytest.mark.parametrize("text", MIXED_TEXTS)
def test_mixed_text_round_trips(segmenter, text):
    doc = segmenter(text)
    assert doc.text == text
    assert [t.text for t in doc if t.is_space] == [t.text for t in ZH.make_doc(text) if t.is_space]
    assert all(t._.exit_layer in (1, 2) for t in doc if not t.is_space)
    if "xyz" in text:  # one [UNK] piece: its characters stay in one word
        assert any("xyz" in t.text for t in doc)


def test_token_exit_merges_exit_layers(segmenter):
    """With token-level exit, a word's exit layer is the max of its characters'."""
    tagger = segmenter.get_pipe("earlyexit_tagger")
    texts = [text_of(line) for line in SEGMENT_DATA]
    characters = [ZH.make_doc(t) for t in texts]
    setting = {"exit_mode": "token", "threshold": 0.1}
    outputs = tagger._predict(tagger.exit_settings.updated(**setting), characters)
    docs = list(segmenter.pipe(texts, component_cfg={"earlyexit_tagger": setting}))
    mixed = 0  # words whose characters exit at different layers
    for doc, exits in zip(docs, outputs.exit_layers):
        by_offset = {t.idx: int(e) for t, e in zip(ZH.make_doc(doc.text), exits)}
        for token in doc:
            inside = [by_offset[i] for i in range(token.idx, token.idx + len(token)) if i in by_offset]
            assert token._.exit_layer == max(inside)
            mixed += len(set(inside)) > 1
    assert mixed > 0


def test_to_disk_from_disk(segmenter, tmp_path):
    segmenter.to_disk(tmp_path / "pipeline")
    loaded = spacy.load(tmp_path / "pipeline")
    assert loaded.get_pipe("earlyexit_tagger").cfg["task"] == "segment"
    assert loaded.config["nlp"]["tokenizer"]["segmenter"] == "char"
    for text in MIXED_TEXTS + [text_of(line) for line in SEGMENT_DATA]:
        a, b = segmenter(text), loaded(text)
        assert [(t.text, t.whitespace_, t._.exit_layer) for t in a] == [
            (t.text, t.whitespace_, t._.exit_layer) for t in b
        ]
        assert a._.early_exit == b._.early_exit


def test_ner_on_character_docs(char_bert, tmp_path):
    """task "ner" on character docs, from an MSRA-style file (CRLF, BMES)."""
    lines = []
    for index, line in enumerate(SEGMENT_DATA):
        labels = dict(NER_ENTITIES.get(index, []))
        for word_i, word in enumerate(w.strip() for w in gold_words(line)):
            classes = bmes_classes([len(word)])
            tags = [f"{cls}-{labels[word_i]}" if word_i in labels else "O" for cls in classes]
            lines.extend(f"{char} {tag}" for char, tag in zip(word, tags))
        lines.append("")
    path = tmp_path / "msra.txt"
    path.write_bytes("\r\n".join(lines).encode("utf8"))
    docs, repaired = msra_docs(path, ZH.vocab)
    assert repaired == 0 and len(docs) == len(SEGMENT_DATA)
    assert [(e.text, e.label_) for e in docs[5].ents] == [("iPhone", "ORG")]
    nlp = make_nlp(char_bert, task="ner")
    examples = [Example(nlp.make_doc(doc.text), doc) for doc in docs]
    assert all(len(eg.predicted) == len(eg.reference) for eg in examples)
    scores = train(nlp, examples, "ents_f", max_steps=300)
    assert scores["ents_f"] == 1.0
    doc = nlp("北京是中国的首都")
    assert [(e.text, e.label_) for e in doc.ents] == [("北京", "LOC"), ("中国", "LOC")]


# --- converters ------------------------------------------------------------------
CONLLU = """# text = 我在北京 ok。
1\t我\t我\tPRON\tPN\t_\t2\tnsubj\t_\tSpaceAfter=No
2-3\t在北京\t_\t_\t_\t_\t_\t_\t_\t_
2\t在\t在\tADP\tP\t_\t0\troot\t_\tSpaceAfter=No
3\t北京\t北京\tPROPN\tNNP\t_\t2\tobj\t_\t_
3.1\t空\t_\t_\t_\t_\t_\t_\t_\tSpaceAfter=No
4\tok\tok\tINTJ\tUH\t_\t2\tdiscourse\t_\tSpaceAfter=No
5\t。\t。\tPUNCT\t.\t_\t2\tpunct\t_\tSpaceAfter=No

"""


def test_ud_conversion_and_corpus_examples(tmp_path):
    """UD words -> docs with correct spaces; spaCy's Corpus with a zh
    pipeline then gives character docs predicted, words as reference."""
    (tmp_path / "tiny.conllu").write_text(CONLLU, encoding="utf8")
    docs = ud_docs(tmp_path / "tiny.conllu", ZH.vocab)
    assert [t.text for t in docs[0]] == ["我", "在", "北京", "ok", "。"]
    assert docs[0].text == "我在北京 ok。" and docs[0][2].pos_ == "PROPN"
    write_docbin(docs, tmp_path / "ud.spacy")
    eg = next(iter(Corpus(tmp_path / "ud.spacy")(ZH)))
    assert [t.text for t in eg.predicted] == ["我", "在", "北", "京", "o", "k", "。"]
    assert SegmentTask().gold_classes(eg) == ["S", "S", "B", "E", "B", "E", "S"]


def test_pku_lines_sentences_and_split(tmp_path):
    line = "19980101-01-001-001/m  [中国/ns  政府/n]nt  说/v  ：/w  “/w  好/a  。/w  ”/w  他/r  走/v  ！/w"
    pairs = parse_pku_line(line)
    assert pairs[:3] == [("中国", "ns"), ("政府", "n"), ("说", "v")]
    sentences = ["".join(w for w, _ in s) for s in split_sentences(pairs)]
    assert sentences == ["中国政府说：“好。”", "他走！"]
    parts = split_indices(100, [0.1, 0.2], seed=0)
    assert [len(p) for p in parts] == [70, 10, 20]
    assert sorted(i for p in parts for i in p) == list(range(100))
    assert split_indices(100, [0.1, 0.2], seed=0) == parts != split_indices(100, [0.1, 0.2], seed=1)
    path = tmp_path / "pku.txt"
    path.write_text("\n".join([line] * 4 + ["迈向/v  世纪/n"] * 6) + "\n", encoding="utf8")
    train, held_out = pku_docs(path, ZH.vocab, [0.2], seed=0, sentences=True)
    assert len(train) + len(held_out) == 14 and not any(d.has_unknown_spaces for d in train)
    assert train[0][0].tag_ in ("ns", "v")


def test_ud_gsdsimp_converts():
    require(SHARED_UD.is_dir(), "../shared/data/ud_zh_gsdsimp (not in the repository)")
    docs = ud_docs(SHARED_UD / "zh_gsdsimp-ud-dev.conllu", ZH.vocab)  # checks `# text` per sentence
    assert len(docs) == 500
    examples = [Example(ZH.make_doc(d.text), d) for d in docs[:50]]
    assert all(None not in SegmentTask().gold_classes(eg) for eg in examples)


# --- NER on pieces longer than a character ------------------------------------------
@pytest.mark.parametrize(
    "classes,lender,expected",
    [
        # one piece over three tokens, its class copied to the two after it
        (["U-ORG", "U-ORG", "U-ORG"], [-1, 0, 0], ["B-ORG", "I-ORG", "L-ORG"]),
        (["B-ORG", "B-ORG", "O"], [-1, 0, -1], ["B-ORG", "I-ORG", "O"]),
        (["I-ORG", "I-ORG", "L-ORG"], [-1, 0, -1], ["I-ORG", "I-ORG", "L-ORG"]),
        (["B-X", "L-X", "L-X"], [-1, -1, 1], ["B-X", "I-X", "L-X"]),
        (["O", "O", "U-X"], [-1, 0, -1], ["O", "O", "U-X"]),
        # tokens at the start copy the first token that has a class of its own
        (["U-LOC", "U-LOC", "O"], [1, -1, -1], ["B-LOC", "L-LOC", "O"]),
        # a whitespace token (own class) between a lender and a borrower breaks the group
        (["U-X", "O", "U-X"], [-1, -1, 0], ["U-X", "O", "U-X"]),
        ([], [], []),
    ],
)
def test_ner_spreads_a_copied_class_over_its_piece(classes, lender, expected):
    assert get_task("ner").join_borrowed(classes, lender) == expected
    # other tasks copy classes as they are
    assert get_task("pos").join_borrowed(classes, lender) == classes


def test_ner_entity_on_a_multi_character_piece(char_bert, tmp_path):
    """With a vocabulary holding "iPhone" as one piece (as bert-base-chinese
    holds Latin words), the piece's class covers all six character tokens:
    one entity, not six."""
    from transformers import AutoTokenizer

    from spacy_earlyexit.layers.data_classes import TokenOutputs

    vocab_file = char_bert / "vocab.txt"
    bert = tmp_path / "bert"
    bert.mkdir()
    for path in char_bert.iterdir():
        if path.is_file() and path.name not in ("vocab.txt", "tokenizer.json"):
            (bert / path.name).write_bytes(path.read_bytes())
    lines = vocab_file.read_text(encoding="utf8").splitlines()
    lines[-1] = "iPhone"  # same vocabulary size, the last entry replaced
    (bert / "vocab.txt").write_text("\n".join(lines) + "\n", encoding="utf8")
    assert AutoTokenizer.from_pretrained(bert).tokenize("用iPhone看") == ["用", "iPhone", "看"]
    nlp = make_nlp(bert, task="ner")
    tagger = nlp.get_pipe("earlyexit_tagger")
    tagger.add_label("ORG")
    nlp.initialize()
    doc = nlp.make_doc("用iPhone看")
    assert len(doc) == 8
    raw = tagger.model.predict([doc])  # the alignment: "iPhone" is owned by "i"
    assert raw.has_output[0].tolist() == [True, True] + [False] * 5 + [True]
    classes = tagger.classes
    labels = [classes.index("O"), classes.index("U-ORG")] + [classes.index("U-ORG")] * 5 + [classes.index("O")]
    outputs = TokenOutputs(
        labels=[numpy.asarray(labels)], exit_layers=[numpy.ones(8, dtype="int64")],
        has_output=raw.has_output, costs=[(1.0, 1.0)],
    )
    tagger.set_annotations([doc], outputs)
    assert [(e.text, e.label_) for e in doc.ents] == [("iPhone", "ORG")]
