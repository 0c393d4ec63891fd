"""The data of one encoder call: a padded batch of spans with its word
alignment (EncoderBatch), and what the encoder gives back (EncoderOutput)."""
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch


@dataclass
class EncoderBatch:
    """Word-piece input for a batch of S spans padded to T pieces, with W words.

    input_ids: [S, T] long, padded with the tokenizer's pad id.
    lengths: [S] long, real pieces per span (padding is on the right).
    word_span: [W] long, the span of each word.
    word_slot: [W] long, the word's position among its span's words.
    word_piece: [W] long, position (0..T-1) of the piece that represents the
        word (its first word piece).
    piece_word: [S, T] long, the word that owns each piece (its pieces exit
        with it), or -1 for pieces of no word ([CLS], [SEP], padding).
    piece_case: [S, T] long, the case class of each piece's word (1..K,
        word_case.py in layers/), 0 for pieces of no word; None when the
        encoder has no case embedding.
    """

    input_ids: torch.Tensor
    lengths: torch.Tensor
    word_span: torch.Tensor
    word_slot: torch.Tensor
    word_piece: torch.Tensor
    piece_word: torch.Tensor
    piece_case: Optional[torch.Tensor] = None

    @property
    def n_spans(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def n_words(self) -> int:
        return int(self.word_span.shape[0])

    def real_mask(self) -> torch.Tensor:
        """[S, T] bool: real (non-padding) pieces."""
        positions = torch.arange(self.input_ids.shape[1], device=self.input_ids.device)
        return positions[None, :] < self.lengths[:, None]

    def to(self, device: torch.device) -> "EncoderBatch":
        moved: Dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            moved[name] = None if value is None else value.to(device)
        return EncoderBatch(**moved)


@dataclass
class EncoderOutput:
    """What one forward pass gives, per word.

    exit_layer: [W] long, 1-based layer at which each word exited.
    labels: [W] long, argmax of the off-ramp at the exit layer.
    exit_logits: [W, C] float, that off-ramp's logits.
    layer_logits: [L, W, C] float, every layer's logits (zeros where a word was
        no longer active), when requested.
    layer_active: [L, W] bool, whether a word was active at each layer, when
        layer_logits was requested.
    hidden_states: L + 1 tensors [S, T, d] (embeddings, then each layer), when
        requested.
    """

    exit_layer: torch.Tensor
    labels: torch.Tensor
    exit_logits: torch.Tensor
    layer_logits: Optional[torch.Tensor] = None
    layer_active: Optional[torch.Tensor] = None
    hidden_states: Optional[List[torch.Tensor]] = None
