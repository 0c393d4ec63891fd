"""Reliability (issue #6): a bad-input matrix through nlp.pipe in token mode;
identical results across processes, thread counts, repeated runs and a
save/load round trip; no autograd state at inference; saved pipelines that
are corrupt or do not match their config fail with errors that say what is
wrong. Training-data problems: tests/test_training_data_errors.py.

Single bad inputs one at a time (empty doc, 5,000 tokens, unknown labels,
per-call settings) are in test_bad_input.py; loading without the original
model folder, pickle and doc serialization in test_serialization.py."""
import json
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Tuple, Union

import pytest
import spacy
import srsly
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from spacy.language import Language
from spacy.tokens import Doc, Span
from spacy.training import Example
from spacy.util import load_model_from_config

from helpers.tiny_bert import NER_DATA, POS_DATA, corpus_words, write_tiny_bert, train_tiny_pipeline


TAGGER = "earlyexit_tagger"
# after 100 training steps these thresholds (window 1) give tokens exiting at
# different layers on the matrix below (checked in test_matrix_in_one_stream)
TOKEN_EXIT = {
    "ner": {"exit_mode": "token", "threshold": 0.7, "window": 1},
    "pos": {"exit_mode": "token", "threshold": 0.8, "window": 1},
}
PRESET_ENT = "PRESET"  # an entity label the tagger does not know
PRESET_POS = "SYM"  # a UPOS tag absent from POS_DATA
POS_LABELS = sorted({tag for _, tags in POS_DATA for tag in tags})


def train(bert: Path, task: str, steps: int = 100) -> Language:
    nlp = train_tiny_pipeline(bert, task, steps)
    nlp.get_pipe(TAGGER).configure_exit(**TOKEN_EXIT[task])
    return nlp


@pytest.fixture(scope="module")
def pipelines(tiny_bert) -> Dict[str, Language]:
    return {task: train(tiny_bert, task) for task in ("ner", "pos")}


@pytest.fixture(scope="module")
def n_layers(tiny_bert) -> int:
    return json.loads((tiny_bert / "config.json").read_text())["num_hidden_layers"]


# --- the bad-input matrix -------------------------------------------------------------


def preset_doc(nlp: Language) -> Doc:
    """A doc that already carries entities and POS tags on some tokens."""
    doc = nlp.make_doc("Alice lives in Paris with Bob .")
    doc.ents = [Span(doc, 0, 2, PRESET_ENT), Span(doc, 5, 6, PRESET_ENT)]
    doc[3].pos_ = PRESET_POS
    doc[4].pos_ = PRESET_POS
    return doc


def long_text(n_chars: int) -> str:
    text = ""
    sentences = [text for text, _ in NER_DATA]
    while len(text) < n_chars:
        text += sentences[len(text) % len(sentences)] + (" " if len(text) % 3 else "\n")
    return text[:n_chars]


# a word of 98 pieces ("a", "##b", "##a", ...; the encoder takes 64): BERT's
# tokenizer turns words over 100 characters into a single [UNK], so a longer
# one would not be longer than the encoder
LONG_WORD = "ab" * 49

CASES: Dict[str, Union[str, Callable[[Language], Doc]]] = {
    "empty": "",
    "whitespace_only": " \n\t  \r\n ",
    "20000_chars": long_text(20000),
    "combining_marks": "Cafe\u0301 nai\u0308ve e\u0301e\u0301 Paris .",
    "emoji_zwj": "family \U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466 and "
                 "\U0001F3F3\ufe0f\u200d\U0001F308 !",
    "emoji_skin_tone": "Alice \U0001F44D\U0001F3FD waves \U0001F44B\U0001F3FF\U0001F44B .",
    "control_chars": "Alice\x00lives \x07in\u200bParis\ufeff .\r\nBob\x1b[0m visited",
    "control_only": "\x00\x07\u200b\ufeff",
    "right_to_left": "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645 Alice "
                     "\u05e9\u05b8\u05c1\u05dc\u05d5\u05b9\u05dd \u05e2\u05d5\u05dc\u05dd .",
    "word_longer_than_encoder": f"Alice {LONG_WORD} Paris .",
    "mixed_scripts": "Alice \u6771\u4eac \u041c\u043e\u0441\u043a\u0432\u0430 "
                     "\u0928\u092e\u0938\u094d\u0924\u0947 Paris\u5317\u4eac\u041a\u0438\u0457\u0432 .",
    "preset_annotation": preset_doc,
}


def make_input(nlp: Language, case: str, cases=CASES) -> Union[str, Doc]:
    """A fresh input (the pipeline annotates docs in place)."""
    value = cases[case]
    return value(nlp) if callable(value) else value


def text_of(nlp: Language, case: str, cases=CASES) -> str:
    value = make_input(nlp, case, cases)
    return value.text if isinstance(value, Doc) else value


def annotation(doc: Doc) -> Tuple:
    """Everything the tagger writes on a doc."""
    return (
        [(e.start, e.end, e.label_) for e in doc.ents],
        [t.ent_iob_ for t in doc],
        [t.pos_ for t in doc],
        [t._.exit_layer for t in doc],
        doc._.early_exit,
    )


def check_doc(doc: Doc, text: str, task: str, n_layers: int) -> None:
    assert doc.text == text
    layers = [t._.exit_layer for t in doc]
    assert all(isinstance(layer, int) and 1 <= layer <= n_layers for layer in layers), layers
    assert doc._.exit_layers == layers
    if task == "ner":
        assert all(t.ent_iob_ in ("B", "I", "O") for t in doc)
    else:
        assert all(t.pos_ for t in doc)
    summary = doc._.early_exit
    assert 0.0 <= summary["flops"] <= summary["flops_full"]
    if len(doc):
        assert summary["exit_layer_mean"] == pytest.approx(sum(layers) / len(layers))


def run_matrix(nlp: Language, cases=CASES) -> Dict[str, Doc]:
    """All cases in ONE stream: batches of 3 mix them."""
    inputs = [make_input(nlp, case, cases) for case in cases]
    return dict(zip(cases, nlp.pipe(inputs, batch_size=3)))


@pytest.fixture(scope="module")
def matrix(pipelines) -> Dict[str, Dict[str, Doc]]:
    return {task: run_matrix(nlp) for task, nlp in pipelines.items()}


def test_matrix_preconditions(pipelines):
    """The cases test what they claim to."""
    tokenizer = pipelines["ner"].get_pipe(TAGGER).model.shims[0].tokenizer
    assert len(tokenizer.tokenize(LONG_WORD)) > 64  # max_position_embeddings
    assert len(CASES["20000_chars"]) == 20000
    assert tokenizer.tokenize(CASES["control_only"]) == []  # no token has a piece


@pytest.mark.parametrize("task", ["ner", "pos"])
def test_matrix_in_one_stream(pipelines, matrix, n_layers, task):
    nlp = pipelines[task]
    docs = matrix[task]
    for case, doc in docs.items():
        check_doc(doc, text_of(nlp, case), task, n_layers)
    layers = {t._.exit_layer for doc in docs.values() for t in doc}
    assert len(layers) > 1, f"precondition: tokens exit at different layers, got {layers}"
    assert len(docs["empty"]) == 0 and docs["empty"]._.exit_layers == []
    assert all(t.is_space for t in docs["whitespace_only"])
    # overwrite is false: annotation set before the tagger stays
    preset = docs["preset_annotation"]
    assert [(e.start, e.end, e.label_) for e in preset.ents if e.label_ == PRESET_ENT] == [
        (0, 2, PRESET_ENT), (5, 6, PRESET_ENT)
    ]
    if task == "pos":
        # a doc in which no token has a word piece: its non-space tokens are X
        assert {t.pos_ for t in docs["control_only"] if not t.is_space} == {"X"}
        assert [preset[3].pos_, preset[4].pos_] == [PRESET_POS, PRESET_POS]
        # the pos task leaves entities alone
        assert [t.ent_iob_ for t in preset] == [t.ent_iob_ for t in preset_doc(nlp)]


@pytest.mark.parametrize("task", ["ner", "pos"])
@pytest.mark.parametrize("case", list(CASES))
def test_matrix_case_alone(pipelines, matrix, n_layers, task, case):
    """Each case alone: valid, and what it got in the mixed stream."""
    nlp = pipelines[task]
    doc = next(nlp.pipe([make_input(nlp, case)]))
    check_doc(doc, text_of(nlp, case), task, n_layers)
    assert annotation(doc) == annotation(matrix[task][case])


@pytest.mark.parametrize("task", ["ner", "pos"])
def test_matrix_with_overwrite(pipelines, n_layers, task):
    nlp = pipelines[task]
    tagger = nlp.get_pipe(TAGGER)
    tagger.cfg["overwrite"] = True
    try:
        docs = run_matrix(nlp)
    finally:
        tagger.cfg["overwrite"] = False
    for case, doc in docs.items():
        check_doc(doc, text_of(nlp, case), task, n_layers)
    preset = docs["preset_annotation"]
    if task == "ner":
        assert {e.label_ for e in preset.ents} <= set(tagger.labels)
    else:
        assert all(t.pos_ in tagger.classes for t in preset)
        assert [(e.start, e.end, e.label_) for e in preset.ents] == [(0, 2, PRESET_ENT), (5, 6, PRESET_ENT)]


@pytest.fixture(scope="module")
def wordpiece_bert(tmp_path_factory) -> Path:
    """A tiny BERT whose vocab has multi-character pieces in several scripts."""
    pieces = ["walk", "talk", "##ing", "##ed", "\u041c\u043e\u0441\u043a", "##\u0432\u0430",
              "\u0928\u092e", "##\u0938\u094d\u0924\u0947", "\u0645\u0631\u062d\u0628\u0627",
              "\u05e9\u05dc", "##\u05d5\u05dd", "\U0001F44D", "\U0001F3FD", "\u6771", "\u4eac"]
    return write_tiny_bert(tmp_path_factory.mktemp("wordpiece_bert"), corpus_words() + pieces)


def test_matrix_with_multi_character_pieces(wordpiece_bert, n_layers):
    """The scripts of the matrix as real pieces, not [UNK]."""
    nlp = train(wordpiece_bert, "pos", steps=60)
    tokenizer = nlp.get_pipe(TAGGER).model.shims[0].tokenizer
    text = ("walking talked \u041c\u043e\u0441\u043a\u0432\u0430 \u0928\u092e\u0938\u094d\u0924\u0947 "
            "\u0645\u0631\u062d\u0628\u0627 \u05e9\u05dc\u05d5\u05dd \U0001F44D\U0001F3FD \u6771\u4eac .")
    pieces = tokenizer.tokenize(text)
    assert "[UNK]" not in pieces
    continuations = {
        "##ing", "##ed", "##\u0432\u0430", "##\u0938\u094d\u0924\u0947", "##\u05d5\u05dd", "##\U0001F3FD"
    }
    assert continuations <= set(pieces)
    cases = {**CASES, "pieces": text}
    docs = run_matrix(nlp, cases)
    for case in cases:
        check_doc(docs[case], text_of(nlp, case, cases), "pos", n_layers)
        alone = next(nlp.pipe([make_input(nlp, case, cases)]))
        assert annotation(alone) == annotation(docs[case]), case


# --- the same results everywhere --------------------------------------------------------


def fifty_texts() -> List[str]:
    """The matrix's texts (a 3,000-character doc for the long one) and more."""
    texts = [value for value in CASES.values() if isinstance(value, str) and len(value) < 20000]
    texts.append(long_text(3000))
    texts += [text for text, _ in NER_DATA + POS_DATA]
    while len(texts) < 50:
        a, b = NER_DATA[len(texts) % 6][0], POS_DATA[len(texts) % 5][0]
        texts.append(f"{a} {b}" if len(texts) % 2 else f"{b}\n{a}")
    return texts[:50]


def results(docs) -> List[Tuple]:
    return [annotation(doc) for doc in docs]


@pytest.mark.parametrize("task", ["ner", "pos"])
def test_multiprocessing_gives_the_single_process_results(pipelines, monkeypatch, task):
    nlp = pipelines[task]
    texts = fifty_texts()
    single = results(nlp.pipe(texts, batch_size=4))
    layers = {layer for result in single for layer in result[3]}
    assert len(layers) > 1, layers
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert results(nlp.pipe(texts, batch_size=4, n_process=2)) == single


@pytest.mark.parametrize("task", ["ner", "pos"])
def test_thread_count_does_not_change_results(pipelines, task):
    nlp = pipelines[task]
    texts = fifty_texts()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = results(nlp.pipe(texts, batch_size=8))
        torch.set_num_threads(2)
        two = results(nlp.pipe(texts, batch_size=8))
    finally:
        torch.set_num_threads(threads)
    assert two == one


@pytest.mark.parametrize("task", ["ner", "pos"])
def test_repeated_runs_and_from_disk_are_identical(pipelines, tmp_path, task):
    nlp = pipelines[task]
    texts = fifty_texts()
    first = results(nlp.pipe(texts, batch_size=8))
    assert results(nlp.pipe(texts, batch_size=8)) == first
    nlp.to_disk(tmp_path / "pipeline")
    restored = load_model_from_config(nlp.config, auto_fill=True).from_disk(tmp_path / "pipeline")
    assert restored.get_pipe(TAGGER).exit_settings == nlp.get_pipe(TAGGER).exit_settings
    assert results(restored.pipe(texts, batch_size=8)) == first
    assert results(restored.pipe(texts, batch_size=8)) == first


# --- no autograd state at inference ---------------------------------------------------------


def record_grad_state(module: torch.nn.Module) -> Tuple[List[Tuple[str, bool, bool]], Callable[[], None]]:
    """Forward hooks on `module` and all its submodules recording (name,
    torch.is_grad_enabled(), whether any output tensor requires grad)."""
    records: List[Tuple[str, bool, bool]] = []

    def tensors(value):
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            for item in value:
                yield from tensors(item)
        elif hasattr(value, "__dataclass_fields__"):
            for field in value.__dataclass_fields__:
                yield from tensors(getattr(value, field))

    def hook(name):
        def record(_module, _inputs, output):
            records.append(
                (name, torch.is_grad_enabled(), any(t.requires_grad for t in tensors(output)))
            )
        return record

    handles = [sub.register_forward_hook(hook(name or "encoder")) for name, sub in module.named_modules()]
    return records, lambda: [handle.remove() for handle in handles]


@pytest.mark.parametrize("task", ["ner", "pos"])
def test_inference_keeps_no_autograd_state(pipelines, task):
    nlp = pipelines[task]
    encoder = nlp.get_pipe(TAGGER).model.shims[0].encoder
    records, remove = record_grad_state(encoder)
    try:
        list(nlp.pipe(fifty_texts()[:12], batch_size=4))
        nlp("Alice lives in Paris .", component_cfg={TAGGER: {"exit_mode": "off"}})
        inference = list(records)
        # the hooks do see autograd when it is on: a training step
        records.clear()
        text, gold = (NER_DATA if task == "ner" else POS_DATA)[0]
        key = "entities" if task == "ner" else "pos"
        nlp.get_pipe(TAGGER).update([Example.from_dict(nlp.make_doc(text), {key: gold})])
        training = list(records)
    finally:
        remove()
        for param in encoder.parameters():
            param.grad = None  # the update had no optimizer: drop its gradients
    names = {name for name, _, _ in inference}
    # the layers, off-ramps and embeddings ran (inference calls forward_batches,
    # so the hooks see the submodules, not the encoder's own forward)
    assert {"offramps.0.linear", "transformer.embeddings"} <= names
    assert any(name.startswith("transformer.encoder.layer.0.") for name in names)
    assert all(not grad and not requires for _, grad, requires in inference), [
        r for r in inference if r[1] or r[2]
    ][:3]
    assert any(grad and requires for _, grad, requires in training)


def test_long_streams_release_free_memory_at_the_set_interval(pipelines, monkeypatch):
    """nlp.pipe gives freed heap memory back every RELEASE_EVERY_DOCS docs,
    counted over calls (memory.py), and annotates exactly as without it."""
    from spacy_earlyexit.corpus import memory

    nlp = pipelines["pos"]
    texts = fifty_texts()[:23]
    monkeypatch.setattr(memory, "RELEASE_EVERY_DOCS", 0)
    monkeypatch.setattr(memory, "RELEASE_ON_GROWTH", 0.0)  # the growth guard has tests of its own
    expected = [[t.pos_ for t in doc] for doc in nlp.pipe(texts, batch_size=4)]
    calls = []
    monkeypatch.setattr(memory, "release_free_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(memory, "RELEASE_EVERY_DOCS", 8)
    monkeypatch.setattr(memory, "_docs_since_release", 0)
    assert [[t.pos_ for t in doc] for doc in nlp.pipe(texts, batch_size=4)] == expected
    assert len(calls) == 2  # after docs 8 and 16 (batches of 4)
    # counted over calls: 7 docs are left over; of three calls of 3 docs, the
    # first reaches 10 and releases, the other two leave 6
    for start in (0, 3, 6):
        assert [[t.pos_ for t in doc] for doc in nlp.pipe(texts[start:start + 3])] == expected[start:start + 3]
    assert len(calls) == 3
    assert memory._docs_since_release == 6


def test_memory_measures_work_on_glibc():
    import platform

    from spacy_earlyexit.corpus import memory

    on_glibc = platform.libc_ver()[0] == "glibc"
    assert memory.release_free_memory() is on_glibc
    assert memory.limit_heap_blocks() is (on_glibc and memory.MMAP_THRESHOLD > 0)


# --- corrupt or mismatched saved pipelines ------------------------------------------------


@pytest.fixture(scope="module")
def saved_pos(pipelines, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("saved_pos") / "pipeline"
    pipelines["pos"].to_disk(folder)
    return folder


def broken_copy(saved: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "broken"
    shutil.copytree(saved, copy)
    return copy


Weights = Dict[str, torch.Tensor]


def rewrite_weights(folder: Path, change: Callable[[Weights], Weights]) -> None:
    """Replace the safetensors weights inside the model file (thinc msgpack
    holding the shim's msgpack) with change(weights)."""
    model_file = folder / TAGGER / "model"
    model_msg = srsly.msgpack_loads(model_file.read_bytes())
    shim_msg = srsly.msgpack_loads(model_msg["shims"][0][0])
    shim_msg["weights"] = save_safetensors(change(load_safetensors(shim_msg["weights"])))
    model_msg["shims"][0][0] = srsly.msgpack_dumps(shim_msg)
    model_file.write_bytes(srsly.msgpack_dumps(model_msg))


def load_error(folder: Path) -> str:
    with pytest.raises((ValueError, OSError)) as error:
        spacy.load(folder)
    return str(error.value)


def test_loading_the_intact_copy_works(saved_pos, tmp_path, pipelines):
    """The baseline of the cases below: an unbroken copy loads and agrees."""
    folder = broken_copy(saved_pos, tmp_path)
    rewrite_weights(folder, lambda weights: weights)
    texts = fifty_texts()[:10]
    assert results(spacy.load(folder).pipe(texts)) == results(pipelines["pos"].pipe(texts))


def test_missing_weights_file(saved_pos, tmp_path):
    folder = broken_copy(saved_pos, tmp_path)
    (folder / TAGGER / "model").unlink()
    message = load_error(folder)
    assert str(folder / TAGGER / "model") in message and "lacks" in message


def test_truncated_weights_file(saved_pos, tmp_path):
    folder = broken_copy(saved_pos, tmp_path)
    model_file = folder / TAGGER / "model"
    data = model_file.read_bytes()
    model_file.write_bytes(data[: len(data) * 2 // 3])
    message = load_error(folder)
    assert str(model_file) in message and "truncated" in message


def test_weights_of_another_shape(saved_pos, tmp_path, tmp_path_factory):
    """Weights of a tiny BERT with hidden size 48 under the saved config's 32."""
    other_bert = write_tiny_bert(tmp_path_factory.mktemp("bert_48"), corpus_words(), hidden=48)
    other = train(other_bert, "pos", steps=0)
    other_weights = other.get_pipe(TAGGER).model.shims[0].encoder.state_dict()
    folder = broken_copy(saved_pos, tmp_path)
    rewrite_weights(folder, lambda _: {k: v.contiguous() for k, v in other_weights.items()})
    message = load_error(folder)
    vocab_size = len((other_bert / "vocab.txt").read_text().split())
    assert str(folder / TAGGER / "model") in message
    assert "transformer.embeddings.word_embeddings.weight" in message
    assert f"[{vocab_size}, 48]" in message and f"[{vocab_size}, 32]" in message


@pytest.mark.parametrize("dtype", [torch.float16, torch.int64])
def test_weights_of_the_wrong_dtype(saved_pos, tmp_path, dtype):
    """torch would cast these silently (integer weights!) in load_state_dict."""
    folder = broken_copy(saved_pos, tmp_path)
    rewrite_weights(folder, lambda weights: {k: v.to(dtype) for k, v in weights.items()})
    message = load_error(folder)
    assert str(folder / TAGGER / "model") in message
    assert str(dtype) in message and "torch.float32" in message


def test_weights_with_missing_and_extra_tensors(saved_pos, tmp_path):
    folder = broken_copy(saved_pos, tmp_path)

    def drop_and_add(weights):
        weights = dict(weights)
        del weights["offramps.1.linear.bias"]
        weights["offramps.9.linear.bias"] = torch.zeros(3)
        return weights

    rewrite_weights(folder, drop_and_add)
    message = load_error(folder)
    assert str(folder / TAGGER / "model") in message
    assert "missing tensor(s): offramps.1.linear.bias" in message
    assert "unexpected tensor(s): offramps.9.linear.bias" in message


def test_unknown_task_in_config(saved_pos, tmp_path):
    folder = broken_copy(saved_pos, tmp_path)
    config = folder / "config.cfg"
    config.write_text(config.read_text().replace('task = "pos"', 'task = "chunking"'))
    message = load_error(folder)
    assert "'chunking'" in message
    assert all(task in message for task in ("ner", "pos", "tag"))


def test_config_task_that_differs_from_the_trained_one(saved_pos, tmp_path):
    """Without the check the pos weights would be read as NER classes."""
    folder = broken_copy(saved_pos, tmp_path)
    config = folder / "config.cfg"
    config.write_text(config.read_text().replace('task = "pos"', 'task = "ner"'))
    message = load_error(folder)
    assert "'ner'" in message and "'pos'" in message and str(folder / TAGGER / "cfg") in message


def test_labels_that_do_not_match_the_weights(saved_pos, tmp_path):
    folder = broken_copy(saved_pos, tmp_path)
    cfg_file = folder / TAGGER / "cfg"
    cfg = srsly.read_json(cfg_file)
    cfg["labels"] = cfg["labels"][:3]
    srsly.write_json(cfg_file, cfg)
    message = load_error(folder)
    assert str(folder / TAGGER) in message
    assert "4 pos classes" in message  # 3 labels + SPACE
    assert f"{len(POS_LABELS) + 1} outputs" in message


def test_missing_cfg_file(saved_pos, tmp_path):
    folder = broken_copy(saved_pos, tmp_path)
    (folder / TAGGER / "cfg").unlink()
    assert str(folder / TAGGER / "cfg") in load_error(folder)

