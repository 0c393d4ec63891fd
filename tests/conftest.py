"""Fixtures: tiny random BERTs built locally (no network); see helpers/."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path

import pytest
import torch

# One intra-op thread: tiny models gain nothing from more, and on a loaded
# 2-core machine spinning OpenMP threads make each step ~10x slower.
torch.set_num_threads(1)

from helpers.tiny_bert import corpus_words, write_tiny_bert


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), corpus_words())


@pytest.fixture(scope="session")
def tiny_bert_12(tmp_path_factory) -> Path:
    """12 layers, wider: for the packed-path speed check."""
    return write_tiny_bert(
        tmp_path_factory.mktemp("tiny_bert_12"), corpus_words(), n_layers=12, hidden=256, max_position=512
    )
