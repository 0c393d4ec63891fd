"""The PyTorch shim: optimizer hook-up and safe (de)serialization.

Weights are stored as safetensors, the Hugging Face config as JSON data and
the tokenizer as its files: loading never unpickles anything and never runs
remote code.
"""
import functools
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import srsly
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from thinc.api import PyTorchShim, get_torch_default_device
from thinc.util import torch2xp, xp2torch

from ..model import EarlyExitEncoder
from ..model.offramp import OffRampHeads
from ..model.precision import (
    bfloat16_speedup, check_precision, resolve_precision, slow_on_this_cpu, transformer_precision,
)
from ..model.quantization import precision_of, quantize_layers
from .loading import without_pooler

ENCODER_PREFIX = "transformer."
WORD_EMBEDDINGS_PREFIX = "transformer.embeddings.word_embeddings."
EMBEDDINGS_PREFIX = "transformer.embeddings."
LAYER_PATTERN = re.compile(r"^transformer\.encoder\.layers?\.(\d+)\.")
POOLER_PREFIX = "transformer.pooler."
#: the case embedding (EarlyExitEncoder.case_embedding) trains at the
#: off-ramps' rate, and is frozen with the encoder
CASE_PREFIX = "case_embedding."
MODEL_DATA_FORMAT = 1


def saved_precision(encoder: EarlyExitEncoder) -> str:
    """The precision of the encoder's weights as they are saved: "int8"
    (quantized layers), "bfloat16" or "float32"."""
    if precision_of(encoder.layers) == "int8":
        return "int8"
    return transformer_precision(encoder.transformer)


class ModelDataError(ValueError):
    """Saved model data that cannot be loaded; the message says what is wrong."""


class EarlyExitShim(PyTorchShim):
    """Holds the EarlyExitEncoder and its tokenizer.

    encoder_learn_rate_scale multiplies the optimizer's learning rate for the
    encoder's parameters (the off-ramps use it unscaled); freeze_encoder keeps
    the encoder's parameters fixed. freeze_embeddings keeps the word-embedding
    matrix fixed (no gradient is computed for it; with a 250k-piece vocabulary
    its dense update dominates a CPU step). layer_lr_decay < 1 gives layer i
    (1-based, of L) the encoder rate x decay^(L - i) and the embeddings
    x decay^L (layer-wise rates: lower layers move less).
    """

    def __init__(
        self,
        model: Optional[EarlyExitEncoder] = None,
        tokenizer: Any = None,
        encoder_learn_rate_scale: float = 1.0,
        freeze_encoder: bool = False,
        precision: str = "float32",
        freeze_embeddings: bool = False,
        layer_lr_decay: float = 1.0,
    ) -> None:
        check_precision(precision)
        super().__init__(model)
        #: the precision the config asks for (model.precision): "float32",
        #: "bfloat16", "int8" or "auto"
        self.precision = precision
        #: the precision the loaded encoder runs in (model/precision.py);
        #: None before there is an encoder
        self.runtime_precision: Optional[str] = None
        self.tokenizer = tokenizer
        self.encoder_learn_rate_scale = encoder_learn_rate_scale
        self.freeze_encoder = freeze_encoder
        self.freeze_embeddings = freeze_embeddings
        self.layer_lr_decay = layer_lr_decay
        #: self-sampling's frozen stage-1 model (training only, not saved)
        self.self_sampling_reference: Any = None

    @property
    def encoder(self) -> EarlyExitEncoder:
        if self._model is None:
            raise ValueError(
                "the earlyexit_tagger model is not initialized: call nlp.initialize() "
                "(or load a trained pipeline) before using it"
            )
        return self._model

    def learn_rate_scale(self, name: str) -> Optional[float]:
        """The optimizer-rate multiplier of the parameter `name` (a name of
        EarlyExitEncoder.named_parameters()), or None if it is frozen."""
        if name.startswith(CASE_PREFIX):
            return None if self.freeze_encoder else 1.0
        if not name.startswith(ENCODER_PREFIX):
            return 1.0
        if self.freeze_encoder:
            return None
        if self.freeze_embeddings and name.startswith(WORD_EMBEDDINGS_PREFIX):
            return None
        scale = self.encoder_learn_rate_scale
        if self.layer_lr_decay == 1.0:
            return scale
        n_layers = self.encoder.n_layers
        match = LAYER_PATTERN.match(name)
        if match is not None:
            return scale * self.layer_lr_decay ** (n_layers - 1 - int(match.group(1)))
        if name.startswith(EMBEDDINGS_PREFIX):
            return scale * self.layer_lr_decay**n_layers
        return scale

    def set_trainable(self) -> None:
        """requires_grad on the transformer's parameters as learn_rate_scale
        says (frozen parameters get no gradient at all). The off-ramps are
        left as they are (a callback may freeze some: train_offramps_only)."""
        for name, param in self.encoder.named_parameters():
            if name.startswith(ENCODER_PREFIX) or name.startswith(CASE_PREFIX):
                param.requires_grad_(self.learn_rate_scale(name) is not None)

    def finish_update(self, optimizer) -> None:
        for name, param in self._model.named_parameters():
            if param.grad is None:
                continue
            scale = self.learn_rate_scale(name)
            if scale is not None:
                weights, _ = optimizer(
                    (self.id, name),
                    torch2xp(param.data),
                    torch2xp(param.grad),
                    lr_scale=scale,
                )
                # Copy into the parameter's own storage: assigning param.data a
                # tensor made from the optimizer's array view would chain a new
                # view (and whatever it keeps alive) onto every step.
                with torch.no_grad():
                    param.copy_(xp2torch(weights, device=param.device).view_as(param))
            param.grad = None

    def to_bytes(self) -> bytes:
        encoder = self.encoder
        with tempfile.TemporaryDirectory() as folder:
            self.tokenizer.save_pretrained(folder)
            tokenizer_files = {
                path.name: path.read_bytes() for path in Path(folder).iterdir() if path.is_file()
            }
        state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
        msg = {
            "format": MODEL_DATA_FORMAT,
            "hf_config": encoder.transformer.config.to_dict(),
            "n_classes": encoder.n_classes,
            "offramp_dropout": encoder.offramp_dropout,
            "case_classes": encoder.case_classes,
            "offramp_heads": encoder.offramp_heads.to_dict(),
            "precision": saved_precision(encoder),
            "tokenizer": tokenizer_files,
            "weights": save_safetensors(state),
        }
        return srsly.msgpack_dumps(msg)

    def from_bytes(self, bytes_data: bytes) -> "EarlyExitShim":
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        try:
            msg: Dict[str, Any] = srsly.msgpack_loads(bytes_data)
        except Exception as error:  # noqa: BLE001 - any decoding failure means a corrupt file
            raise ModelDataError(
                f"the earlyexit_tagger model data is corrupt or truncated ({error})"
            ) from error
        fields = ("hf_config", "n_classes", "tokenizer", "weights")
        missing = [k for k in fields if k not in msg] if isinstance(msg, dict) else []
        if not isinstance(msg, dict) or missing:
            raise ModelDataError(
                f"the earlyexit_tagger model data lacks {', '.join(missing) or 'its fields'}; "
                "was it saved by spacy-earlyexit?"
            )
        if msg.get("format", MODEL_DATA_FORMAT) != MODEL_DATA_FORMAT:
            raise ModelDataError(
                f"the model data has format {msg['format']!r}, this spacy-earlyexit reads "
                f"format {MODEL_DATA_FORMAT}: it was saved by another version"
            )
        hf_config = dict(msg["hf_config"])
        model_type = hf_config.pop("model_type", None)
        if model_type is None:
            raise ModelDataError("the saved transformer config names no model_type")
        try:
            config = AutoConfig.for_model(model_type, **hf_config)
            transformer = without_pooler(AutoModel.from_config, config)
            encoder = EarlyExitEncoder(
                transformer, int(msg["n_classes"]), float(msg.get("offramp_dropout", 0.1)),
                case_classes=int(msg.get("case_classes", 0)),
                offramp_heads=OffRampHeads(**msg.get("offramp_heads", {})),
            )
        except (ValueError, TypeError, KeyError) as error:
            raise ModelDataError(
                f"the saved transformer config (model_type {model_type!r}) cannot be built: {error}"
            ) from error
        saved = msg.get("precision", "float32")
        shape = encoder.shape
        measure = functools.partial(bfloat16_speedup, shape.hidden_size, shape.intermediate_size)
        try:
            runtime = resolve_precision(
                self.precision, saved, device_type=get_torch_default_device().type,
                cuda_bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
                measure_bfloat16=measure,
            )
        except ValueError as error:
            raise ModelDataError(str(error)) from error
        if saved == "int8":
            try:
                quantize_layers(encoder.layers, copy_weights=False)
            except (ValueError, RuntimeError) as error:
                raise ModelDataError(f"the int8 weights cannot be loaded: {error}") from error
        try:
            state = load_safetensors(msg["weights"])
        except Exception as error:  # noqa: BLE001
            raise ModelDataError(
                f"the earlyexit_tagger weights are corrupt or truncated ({error})"
            ) from error
        if saved == "bfloat16":  # weights saved from a bfloat16 run: exact in float32
            state = {name: value.float() if value.dtype == torch.bfloat16 else value for name, value in state.items()}
        expected = encoder.state_dict()
        if not any(name.startswith(POOLER_PREFIX) for name in expected):
            # saved by a version that kept the (unused) pooler
            state = {name: value for name, value in state.items() if not name.startswith(POOLER_PREFIX)}
        problems = state_problems(expected, state)
        if problems:
            shown = "; ".join(problems[:5])
            if len(problems) > 5:
                shown += f"; and {len(problems) - 5} more"
            raise ModelDataError(
                f"the saved weights do not fit the saved model configuration ({model_type}, "
                f"hidden size {encoder.hidden_size}, {encoder.n_layers} layers, "
                f"{encoder.n_classes} classes): {shown}"
            )
        encoder.load_state_dict(state, strict=True)
        if runtime == "bfloat16":
            encoder.transformer.to(torch.bfloat16)
        with tempfile.TemporaryDirectory() as folder:
            for name, data in msg["tokenizer"].items():
                (Path(folder) / Path(name).name).write_bytes(data)
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(folder, use_fast=True)
            except (OSError, ValueError, TypeError) as error:
                raise ModelDataError(
                    f"the saved tokenizer files ({', '.join(sorted(msg['tokenizer']))}) "
                    f"cannot be loaded: {error}"
                ) from error
        encoder.eval()
        encoder.to(get_torch_default_device())
        self._model = encoder
        self.runtime_precision = runtime
        if (
            self.precision == "bfloat16" and self.device.type == "cpu"
            and slow_on_this_cpu("bfloat16", measure_bfloat16=measure)
        ):
            warnings.warn(
                "the earlyexit_tagger runs in bfloat16, which is slower than float32 on this CPU (no "
                "AMX units, and its bfloat16 products measure slower than float32's): set precision "
                "= \"auto\" or \"float32\" in the model config",
                UserWarning,
                stacklevel=2,
            )
        return self


def state_problems(expected: Dict[str, torch.Tensor], saved: Dict[str, torch.Tensor]) -> List[str]:
    """What keeps `saved` from loading into a model whose state_dict is
    `expected`: missing and unexpected tensors, shapes, dtypes (torch would
    cast a wrong dtype silently, e.g. integers into float weights)."""
    problems: List[str] = []
    missing = [name for name in expected if name not in saved]
    unexpected = sorted(name for name in saved if name not in expected)
    if missing:
        problems.append(f"{len(missing)} missing tensor(s): {_some(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s): {_some(unexpected)}")
    for name, want in expected.items():
        got = saved.get(name)
        if got is None:
            continue
        if tuple(got.shape) != tuple(want.shape):
            problems.append(f"{name} has shape {list(got.shape)}, the configuration needs {list(want.shape)}")
        elif got.dtype != want.dtype:
            problems.append(f"{name} has dtype {got.dtype}, the model needs {want.dtype}")
    return problems


def _some(names: List[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
