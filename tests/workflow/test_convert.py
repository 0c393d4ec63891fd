"""Column-file conversion: Universal NER's .iob2 (index column, annotator
columns, `#` comments), CoNLL-2003 (chunk tags before the NER tags) and
WNUT-16 (hashtags are words, not comments)."""
import pytest
import spacy

from corpora.convert import read_columns, read_corpus

UNER = """# newdoc id = answers-1
# sent_id = answers-1-0001
# text = Where is New York ?
1\tWhere\tO\t-\t-
2\tis\tO\t-\t-
3\tNew\tB-LOC\t-\tstephen
4\tYork\tI-LOC\t-\tstephen
5\t?\tO\t-\t-

# sent_id = answers-1-0002
# text = Ask Bob .
1\tAsk\tO\t-\t-
2\tBob\tB-PER\t-\tstephen
3\t.\tO\t-\t-
"""

CONLL03 = """-DOCSTART- -X- -X- O

EU NNP B-NP I-ORG
rejects VBZ B-VP O
German JJ B-NP I-MISC
call NN I-NP O
"""

WNUT = "#nowplaying\tO\tx\n@bob\tO\tx\nParis\tB-geo-loc\tx\n\nhi\tO\tx\n"


def test_uner_iob2(tmp_path) -> None:
    path = tmp_path / "en_ewt-ud-dev.iob2"
    path.write_text(UNER, encoding="utf8")
    assert read_columns(path) == [
        [("Where", "O"), ("is", "O"), ("New", "B-LOC"), ("York", "I-LOC"), ("?", "O")],
        [("Ask", "O"), ("Bob", "B-PER"), (".", "O")],
    ]
    docs = read_corpus(path, spacy.blank("en").vocab)
    assert [(e.text, e.label_) for d in docs for e in d.ents] == [("New York", "LOC"), ("Bob", "PER")]


def test_conll03_takes_the_last_tag_column(tmp_path) -> None:
    path = tmp_path / "eng.train"
    path.write_text(CONLL03, encoding="utf8")
    assert read_columns(path) == [[("EU", "I-ORG"), ("rejects", "O"), ("German", "I-MISC"), ("call", "O")]]


def test_wnut_hashtags_are_words(tmp_path) -> None:
    path = tmp_path / "ner.txt"
    path.write_text(WNUT, encoding="utf8")
    # the third column is not tags: the tags are the second
    assert read_columns(path) == [[("#nowplaying", "O"), ("@bob", "O"), ("Paris", "B-geo-loc")], [("hi", "O")]]


def test_bad_tags_are_named(tmp_path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("a\tO\nb\tX-PER\n", encoding="utf8")
    with pytest.raises(ValueError, match="X-PER"):
        read_corpus(path, spacy.blank("en").vocab)
