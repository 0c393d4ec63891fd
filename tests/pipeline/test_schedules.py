"""The corpus-sized learning-rate schedule (warm-up and linear decay over
epochs x words / words per batch)."""
import itertools

import pytest
import spacy
from spacy.tokens import Doc, DocBin
from thinc.api import Config, registry, warmup_linear

from spacy_earlyexit.pipeline.schedules import corpus_words, steps_for


def write_corpus(path, lengths):
    vocab = spacy.blank("en").vocab
    DocBin(docs=[Doc(vocab, words=["w"] * n) for n in lengths]).to_disk(path)


def test_steps_follow_the_corpus(tmp_path) -> None:
    write_corpus(tmp_path / "train.spacy", [10, 20, 30])
    assert corpus_words(tmp_path / "train.spacy") == 60
    assert steps_for(60, 2, 25) == 5  # ceil(120 / 25)
    config = Config().from_str(f"""
[schedule]
@schedules = "spacy_earlyexit.warmup_linear_epochs.v1"
corpus = "{tmp_path / 'train.spacy'}"
epochs = 2
words_per_batch = 12
initial_rate = 1.0
warmup_share = 0.2
""")
    schedule = registry.resolve(config)["schedule"]
    rates = list(itertools.islice(schedule, 12))
    # 120 / 12 = 10 steps, 2 of them warm-up: thinc's warmup_linear(1, 2, 10)
    assert rates == pytest.approx(list(itertools.islice(warmup_linear(1.0, 2, 10), 12)))
    assert rates[2] == pytest.approx(1.0) and rates[10] == pytest.approx(0.0)


def test_missing_corpus_is_named(tmp_path) -> None:
    with pytest.raises(ValueError, match="no training corpus"):
        corpus_words(tmp_path / "nothing.spacy")


def test_fixed_steps_override_the_corpus() -> None:
    config = Config().from_str("""
[schedule]
@schedules = "spacy_earlyexit.warmup_linear_epochs.v1"
corpus = null
epochs = 0
words_per_batch = 12
initial_rate = 1.0
total_steps = 8
warmup_steps = 3
""")
    rates = list(itertools.islice(registry.resolve(config)["schedule"], 10))
    assert rates == pytest.approx(list(itertools.islice(warmup_linear(1.0, 3, 8), 10)))
    config["schedule"]["total_steps"] = 0
    with pytest.raises(ValueError, match="max_epochs"):
        registry.resolve(config)
