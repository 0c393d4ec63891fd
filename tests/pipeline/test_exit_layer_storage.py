"""Exit layers stored compactly: one doc.user_data entry per doc
(pipeline/extensions.py), behind token._.exit_layer and doc._.exit_layers.

References: the model's own outputs (the component's predict), a plain
per-offset dict for retokenization, and a `struct` decoding of the stored
bytes written here, not the package's numpy decoding.
"""
import pickle
import random
import struct
from typing import Dict, List, Optional

import numpy
import pytest
import spacy
from spacy.tokens import Doc, DocBin

from helpers.tiny_bert import NER_DATA, POS_DATA, train_tiny_pipeline
from spacy_earlyexit.pipeline.extensions import EXIT_LAYERS_KEY, register_extensions, set_exit_layers
from spacy_earlyexit.pipeline.segmentation import merge_words

TOKEN_EXIT = {"exit_mode": "token", "threshold": 0.5, "window": 1}
TEXTS = [text for text, _ in NER_DATA + POS_DATA] + ["", "hello world", " ".join(["Paris"] * 60)]


@pytest.fixture(scope="module")
def nlp(tiny_bert):
    """A NER pipeline whose token exit gives a mix of exit layers."""
    pipeline = train_tiny_pipeline(tiny_bert, "ner", 100)
    pipeline.get_pipe("earlyexit_tagger").configure_exit(**TOKEN_EXIT)
    return pipeline


def stored(doc: Doc) -> Dict[int, int]:
    """The stored value decoded with struct: {char offset: layer (0 = unset)}."""
    data = doc.user_data[EXIT_LAYERS_KEY]
    assert isinstance(data, bytes) and len(data) % 5 == 0
    n_tokens = len(data) // 5
    offsets = struct.unpack(f"<{n_tokens}I", data[:4 * n_tokens])
    layers = struct.unpack(f"{n_tokens}B", data[4 * n_tokens:])
    return dict(zip(offsets, layers))


def annotations(docs) -> List[tuple]:
    return [([t._.exit_layer for t in d], d._.exit_layers, d._.early_exit,
             [(e.start, e.end, e.label_) for e in d.ents]) for d in docs]


def test_exit_layers_are_the_models(nlp):
    """token._.exit_layer and doc._.exit_layers are the layers the model
    returned (the component's predict, 0 read as 1, as set_annotations does)."""
    docs = list(nlp.pipe(TEXTS))
    outputs = nlp.get_pipe("earlyexit_tagger").predict([nlp.make_doc(text) for text in TEXTS])
    seen = set()
    for doc, exits in zip(docs, outputs.exit_layers):
        expected = [max(int(layer), 1) for layer in exits]
        assert [t._.exit_layer for t in doc] == expected
        assert doc._.exit_layers == expected
        assert stored(doc) == {t.idx: layer for t, layer in zip(doc, expected)}
        seen.update(expected)
    assert len(seen) > 1, "precondition: a mix of exit layers"


def test_one_user_data_entry_per_doc_whatever_its_length(nlp):
    """O(1) user_data entries per doc: exit layers and early_exit, not one per token."""
    short, long = nlp("Paris ."), nlp(" ".join(["Paris"] * 60))
    assert len(long) == 60
    assert set(short.user_data) == set(long.user_data) == {EXIT_LAYERS_KEY, ("._.", "early_exit", None, None)}
    assert len(long.user_data[EXIT_LAYERS_KEY]) == 5 * len(long)


def test_round_trips(nlp):
    """to_bytes/from_bytes, DocBin with user data, copy and pickle keep every annotation."""
    docs = list(nlp.pipe(TEXTS))
    expected = annotations(docs)
    assert annotations(Doc(nlp.vocab).from_bytes(d.to_bytes()) for d in docs) == expected
    docbin = DocBin(store_user_data=True, docs=docs)
    restored = DocBin(store_user_data=True).from_bytes(docbin.to_bytes()).get_docs(nlp.vocab)
    assert annotations(restored) == expected
    assert annotations(d.copy() for d in docs) == expected
    assert annotations(pickle.loads(pickle.dumps(docs))) == expected


def test_setting_one_token_keeps_the_others():
    register_extensions()
    doc = spacy.blank("en")("Alice lives in Paris .")
    assert doc._.exit_layers == [None] * 5 and EXIT_LAYERS_KEY not in doc.user_data
    doc[3]._.exit_layer = 4
    assert doc._.exit_layers == [None, None, None, 4, None]
    set_exit_layers(doc, [1, 2, 3, 4, 5])
    doc[0]._.exit_layer = None
    doc[4]._.exit_layer = 6
    assert [t._.exit_layer for t in doc] == doc._.exit_layers == [None, 2, 3, 4, 6]
    with pytest.raises(ValueError):
        set_exit_layers(doc, [1, 2])
    with pytest.raises(ValueError):
        set_exit_layers(doc, [1, 2, 3, 4, 256])


def test_retokenizing_later_keeps_values_by_character_offset():
    """A merge or split the component did not arrange (e.g. merge_entities
    later in the pipeline) behaves as spaCy's per-offset token extensions do:
    a token keeps the value stored at its character offset, a new offset has none."""
    register_extensions()
    rng = random.Random(0)
    for _ in range(50):
        words = [rng.choice(["ab", "c", "def", "g"]) for _ in range(rng.randint(2, 12))]
        doc = Doc(spacy.blank("en").vocab, words=words)
        layers = [rng.randint(1, 6) for _ in doc]
        set_exit_layers(doc, layers)
        by_offset: Dict[int, Optional[int]] = {t.idx: layer for t, layer in zip(doc, layers)}
        start = rng.randrange(len(doc) - 1)
        end = rng.randint(start + 2, len(doc))
        with doc.retokenize() as retokenizer:
            retokenizer.merge(doc[start:end])
        target = next((t for t in doc if len(t.text) > 1), None)
        if target is not None and target.i != start:
            with doc.retokenize() as retokenizer:
                retokenizer.split(target, [target.text[0], target.text[1:]], heads=[(target, 0), (target, 0)])
        expected = [by_offset.get(t.idx) for t in doc]
        assert [t._.exit_layer for t in doc] == doc._.exit_layers == expected


def test_segmentation_merges_keep_one_value_per_token():
    """merge_words: each word's exit layer is the max of its characters', and
    the stored array holds exactly the merged doc's tokens (no stale entries)."""
    register_extensions()
    zh = spacy.blank("zh")
    rng = random.Random(1)
    for _ in range(50):
        text = "".join(rng.choice("我爱北京天安门中国人 ") for _ in range(rng.randint(1, 30)))
        doc = zh.make_doc(text)
        layers = [rng.randint(1, 6) for _ in doc]
        set_exit_layers(doc, layers)
        layer_at = {t.idx: layer for t, layer in zip(doc, layers)}
        words, start = [], 0
        while start < len(doc):
            end = min(len(doc), start + rng.randint(1, 4))
            words.append((start, end))
            start = end
        merge_words(doc, words)
        assert doc.text == text
        for token in doc:
            inside = [layer_at[i] for i in range(token.idx, token.idx + len(token.text)) if i in layer_at]
            assert token._.exit_layer == max(inside)
        assert stored(doc) == {t.idx: t._.exit_layer for t in doc}


def test_docs_saved_with_per_token_keys_are_still_read():
    """Docs written before the compact storage kept ("._.", "exit_layer", offset, None) keys."""
    register_extensions()
    doc = spacy.blank("en")("Alice lives in Paris .")
    for token, layer in zip(doc, [3, 1, 2, 2, 1]):
        doc.user_data[("._.", "exit_layer", token.idx, None)] = layer
    restored = Doc(doc.vocab).from_bytes(doc.to_bytes())
    assert [t._.exit_layer for t in restored] == restored._.exit_layers == [3, 1, 2, 2, 1]


def test_stored_array_is_uint8_after_offsets(nlp):
    """The documented layout: uint32 offsets then uint8 layers (numpy reading)."""
    doc = nlp("Alice lives in Paris .")
    data = doc.user_data[EXIT_LAYERS_KEY]
    offsets = numpy.frombuffer(data[:4 * len(doc)], dtype="<u4")
    assert offsets.tolist() == [t.idx for t in doc]
    assert list(data[4 * len(doc):]) == doc._.exit_layers
