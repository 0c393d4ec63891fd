"""The packed path really skips work (wall clock, ratios in one process).

Timings are interleaved and the medians of 3 repetitions are compared, with
bounds well below the analytic speed-ups so that a busy machine does not
make the tests flaky.
"""
import statistics
import time
from typing import Callable, List, Tuple

import numpy
import pytest
import spacy
import torch
from spacy.training import Example

from helpers.tiny_bert import PLAIN_OFFRAMPS, NER_DATA, corpus_words
from spacy_earlyexit.model import EncoderBatch, span_cost

pytestmark = pytest.mark.timing  # wall-clock ratios, generous bounds

PIPE = "earlyexit_tagger"


@pytest.fixture(scope="module")
def nlp12(tiny_bert_12):
    torch.manual_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe(PIPE, config={"task": "ner", "model": {**PLAIN_OFFRAMPS, "name": str(tiny_bert_12)}})
    examples = [Example.from_dict(nlp.make_doc(text), {"entities": ents}) for text, ents in NER_DATA]
    nlp.initialize(lambda: examples)
    return nlp


def docs_of_words(n_docs: int, n_words: int, seed: int = 0) -> List[str]:
    rng = numpy.random.default_rng(seed)
    words = corpus_words()
    return [" ".join(rng.choice(words, size=n_words)) for _ in range(n_docs)]


def interleaved_medians(runs: List[Callable[[], object]], repetitions: int = 3) -> List[float]:
    """Median seconds of each callable, timed in turn `repetitions` times."""
    seconds: List[List[float]] = [[] for _ in runs]
    for _ in range(repetitions):
        for index, run in enumerate(runs):
            start = time.perf_counter()
            run()
            seconds[index].append(time.perf_counter() - start)
    return [statistics.median(s) for s in seconds]


def test_exit_at_layer_one_is_much_faster_than_full_depth(nlp12) -> None:
    texts = docs_of_words(200, 30)

    def pipe(cfg: dict) -> List:
        return list(nlp12.pipe(texts, component_cfg={PIPE: dict(cfg)}))

    full_cfg = {"exit_mode": "off"}
    fast_cfg = {"exit_mode": "token", "threshold": 1.0}
    full_docs, fast_docs = pipe(full_cfg), pipe(fast_cfg)  # warm-up and checks
    assert {t._.exit_layer for d in full_docs for t in d} == {12}
    assert {t._.exit_layer for d in fast_docs for t in d} == {1}
    assert all(len(d) == 30 for d in full_docs)
    full_s, fast_s = interleaved_medians([lambda: pipe(full_cfg), lambda: pipe(fast_cfg)])
    assert full_s / fast_s >= 3.0, (full_s, fast_s)


def test_packed_path_skips_exited_tokens_inside_running_spans(nlp12) -> None:
    """One word per span runs all 12 layers, the others exit at layer 1, so no
    span finishes early and only the packed per-token computation can save
    time: it must beat the masked path (which computes every piece) on the
    same batch. The analytic speed-up of this case is about 3x."""
    tagger = nlp12.get_pipe(PIPE)
    encoder = tagger.model.shims[0].encoder
    generator = torch.Generator().manual_seed(0)
    n_spans, n_words = 64, 30
    length = n_words + 2
    input_ids = torch.randint(5, encoder.transformer.config.vocab_size, (n_spans, length), generator=generator)
    word_span = torch.arange(n_spans).repeat_interleave(n_words)
    word_slot = torch.arange(n_words).repeat(n_spans)
    piece_word = torch.full((n_spans, length), -1, dtype=torch.long)
    piece_word[:, 1:-1] = torch.arange(n_spans * n_words).view(n_spans, n_words)
    batch = EncoderBatch(
        input_ids=input_ids,
        lengths=torch.full((n_spans,), length),
        word_span=word_span,
        word_slot=word_slot,
        word_piece=word_slot + 1,
        piece_word=piece_word,
    )
    exits = torch.ones(n_spans * n_words, dtype=torch.long)
    exits[word_slot == n_words // 2] = encoder.n_layers

    def forward() -> Tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            out = encoder(batch, forced_exit_layer=exits)
        return out.exit_layer, out.exit_logits

    assert encoder.packed
    packed_exit, packed_logits = forward()
    encoder.packed = False
    try:
        masked_exit, masked_logits = forward()
        packed_s, masked_s = interleaved_medians([_with_packed(encoder, True, forward), _with_packed(encoder, False, forward)])
    finally:
        encoder.packed = True
    assert packed_exit.tolist() == masked_exit.tolist() == exits.tolist()
    torch.testing.assert_close(packed_logits, masked_logits, atol=1e-4, rtol=1e-4)
    shape = encoder.shape
    cost, full = span_cost(shape, [1] * n_words, 2, exits[:n_words].tolist())
    assert full / cost > 2.5  # the analytic speed-up of this case
    assert masked_s / packed_s >= 1.5, (masked_s, packed_s, full / cost)


def _with_packed(encoder, packed: bool, run: Callable[[], object]) -> Callable[[], object]:
    def timed() -> object:
        encoder.packed = packed
        return run()

    return timed
