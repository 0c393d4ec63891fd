"""The PyTorch shim: optimizer hook-up and safe (de)serialization.

Weights are stored as safetensors, the Hugging Face config as JSON data and
the tokenizer as its files: loading never unpickles anything and never runs
remote code.
"""
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

import srsly
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from thinc.api import PyTorchShim, get_torch_default_device
from thinc.util import torch2xp, xp2torch

from ..model import EarlyExitEncoder

ENCODER_PREFIX = "transformer."


class EarlyExitShim(PyTorchShim):
    """Holds the EarlyExitEncoder and its tokenizer.

    encoder_learn_rate_scale multiplies the optimizer's learning rate for the
    encoder's parameters (the off-ramps use it unscaled); freeze_encoder keeps
    the encoder's parameters fixed.
    """

    def __init__(
        self,
        model: Optional[EarlyExitEncoder] = None,
        tokenizer: Any = None,
        encoder_learn_rate_scale: float = 1.0,
        freeze_encoder: bool = False,
    ) -> None:
        super().__init__(model)
        self.tokenizer = tokenizer
        self.encoder_learn_rate_scale = encoder_learn_rate_scale
        self.freeze_encoder = freeze_encoder

    @property
    def encoder(self) -> EarlyExitEncoder:
        if self._model is None:
            raise ValueError(
                "the earlyexit_tagger model is not initialized: call nlp.initialize() "
                "(or load a trained pipeline) before using it"
            )
        return self._model

    def finish_update(self, optimizer) -> None:
        for name, param in self._model.named_parameters():
            if param.grad is None:
                continue
            is_encoder = name.startswith(ENCODER_PREFIX)
            if not (is_encoder and self.freeze_encoder):
                scale = self.encoder_learn_rate_scale if is_encoder else 1.0
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
            "format": 1,
            "hf_config": encoder.transformer.config.to_dict(),
            "n_classes": encoder.n_classes,
            "offramp_dropout": encoder.offramps[0].dropout.p if len(encoder.offramps) else 0.0,
            "tokenizer": tokenizer_files,
            "weights": save_safetensors(state),
        }
        return srsly.msgpack_dumps(msg)

    def from_bytes(self, bytes_data: bytes) -> "EarlyExitShim":
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        try:
            msg: Dict[str, Any] = srsly.msgpack_loads(bytes_data)
        except Exception as error:  # noqa: BLE001 - any decoding failure means a corrupt file
            raise ValueError(
                f"the earlyexit_tagger model data is corrupt or truncated ({error})"
            ) from error
        missing = [k for k in ("hf_config", "n_classes", "tokenizer", "weights") if k not in msg]
        if not isinstance(msg, dict) or missing:
            raise ValueError(
                f"the earlyexit_tagger model data lacks {', '.join(missing) or 'its fields'}; "
                "was it saved by spacy-earlyexit?"
            )
        hf_config = dict(msg["hf_config"])
        model_type = hf_config.pop("model_type", None)
        if model_type is None:
            raise ValueError("the saved transformer config names no model_type")
        config = AutoConfig.for_model(model_type, **hf_config)
        transformer = AutoModel.from_config(config)
        encoder = EarlyExitEncoder(
            transformer, int(msg["n_classes"]), float(msg.get("offramp_dropout", 0.1))
        )
        try:
            state = load_safetensors(msg["weights"])
        except Exception as error:  # noqa: BLE001
            raise ValueError(f"the earlyexit_tagger weights are corrupt or truncated ({error})") from error
        try:
            encoder.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ValueError(
                f"the saved weights do not fit the saved model configuration: {error}"
            ) from error
        with tempfile.TemporaryDirectory() as folder:
            for name, data in msg["tokenizer"].items():
                (Path(folder) / Path(name).name).write_bytes(data)
            self.tokenizer = AutoTokenizer.from_pretrained(folder, use_fast=True)
        encoder.eval()
        encoder.to(get_torch_default_device())
        self._model = encoder
        return self
