"""The entity exit rule (ExitSettings.entity_exit, exit_policy.EntityTokenExit).

Grid level: decisions on constructed uncertainty grids written out by hand
(entity spans, boundaries, windows, the stricter entity threshold, exited
neighbours), and on random grids against a loop-by-loop reference written
here. Encoder level: threshold 0 is mode off, threshold 1 exits everything at
layer 1, the entity grid the rule sees is the argmax of the latest off-ramp
(frozen for exited words), and results do not depend on the batch.
Pipeline level: the NER task marks B/I/L/U classes, a POS pipeline refuses
the setting, per-doc results do not depend on the batch.
"""
from typing import List

import numpy
import pytest
import spacy
import torch
from spacy.training import Example

from spacy_earlyexit.model import ExitSettings
from spacy_earlyexit.model.exit_policy import EntityTokenExit, TokenExit, exit_rule
from spacy_earlyexit.model.self_sampling import simulate_token_exits

from helpers.encoders import N_CLASSES, N_LAYERS, build_batch, make_encoder, random_bert, random_spans
from helpers.tiny_bert import PLAIN_OFFRAMPS, NER_DATA, POS_DATA, corpus_words

# "Barack Obama visited New York today ."
WORDS = torch.ones(1, 7, dtype=torch.bool)
ENTITY = torch.tensor([[1, 1, 0, 1, 1, 0, 0]], dtype=torch.bool)
UNCERTAINTY = torch.tensor([[0.01, 0.30, 0.01, 0.02, 0.01, 0.01, 0.01]])


def decide(uncertainty=UNCERTAINTY, entity=ENTITY, words=WORDS, active=None, threshold=0.1, window=0,
           margin=1, scale=1.0, includes_exited=False) -> List[int]:
    active = words.clone() if active is None else active
    rule = EntityTokenExit([threshold], window, includes_exited, margin, scale)
    return rule.exits(0, uncertainty, active, words, entity).long()[0].tolist()


# --------------------------------------------------------------------------
# constructed grids, expected decisions written by hand
# --------------------------------------------------------------------------
def test_plain_tokee_lets_an_entity_leave_in_pieces() -> None:
    plain = TokenExit([0.1], 0).exits(0, UNCERTAINTY, WORDS, WORDS).long()[0].tolist()
    assert plain == [1, 0, 1, 1, 1, 1, 1]  # "Barack" leaves, "Obama" stays


def test_entity_and_its_neighbours_wait_for_the_unsure_word() -> None:
    # margin 1: Barack Obama (+visited) and New York (+visited, +today) touch
    # at "visited": one group 0..5 whose largest uncertainty is 0.30
    assert decide() == [0, 0, 0, 0, 0, 0, 1]


def test_margin_zero_keeps_each_entity_whole_only() -> None:
    assert decide(margin=0) == [0, 0, 1, 1, 1, 1, 1]


def test_margin_two_reaches_further() -> None:
    uncertainty = torch.tensor([[0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.3]])
    entity = torch.tensor([[0, 0, 0, 0, 1, 0, 0]], dtype=torch.bool)
    assert decide(uncertainty, entity, margin=0) == [1, 1, 1, 1, 1, 1, 0]
    assert decide(uncertainty, entity, margin=1) == [1, 1, 1, 1, 1, 1, 0]
    assert decide(uncertainty, entity, margin=2) == [1, 1, 0, 0, 0, 0, 0]


def test_separate_entities_exit_separately() -> None:
    uncertainty = torch.tensor([[0.01, 0.3, 0.01, 0.01, 0.01, 0.02, 0.01]])
    entity = torch.tensor([[0, 1, 0, 0, 0, 1, 0]], dtype=torch.bool)
    # groups {0,1,2} (unsure) and {4,5,6} (sure); word 3 is in neither
    assert decide(uncertainty, entity) == [0, 0, 0, 1, 1, 1, 1]


def test_stricter_threshold_for_entity_words() -> None:
    # scale 0.1: New (0.02 -> 0.2) and York (0.01 -> 0.1) no longer pass 0.1
    assert decide(margin=0, scale=0.1) == [0, 0, 1, 0, 0, 1, 1]
    # O words are not scaled: an O-only row is plain TOKEE
    none = torch.zeros_like(ENTITY)
    assert decide(entity=none, scale=0.1) == [1, 0, 1, 1, 1, 1, 1]


def test_window_spreads_within_and_around_groups() -> None:
    uncertainty = torch.tensor([[0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.3]])
    entity = torch.tensor([[0, 1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    # window 1: word 5 sees 0.3; group {0,1,2} sees only small values
    assert decide(uncertainty, entity, window=1) == [1, 1, 1, 1, 1, 0, 0]
    # window 2 carries word 6's 0.3 to word 4 as well
    assert decide(uncertainty, entity, window=2) == [1, 1, 1, 1, 0, 0, 0]
    entity = torch.tensor([[0, 0, 0, 1, 0, 0, 0]], dtype=torch.bool)
    # group {2,3,4}: word 4's window (k=2) reaches word 6
    assert decide(uncertainty, entity, window=2) == [1, 1, 0, 0, 0, 0, 0]


def test_exited_words_do_not_hold_back_unless_counted() -> None:
    active = torch.tensor([[1, 0, 1, 1, 1, 1, 1]], dtype=torch.bool)  # Obama exited
    assert decide(active=active) == [1, 0, 1, 1, 1, 1, 1]
    assert decide(active=active, includes_exited=True) == [0, 0, 0, 0, 0, 0, 1]


def test_padding_never_exits_nor_counts() -> None:
    words = torch.tensor([[1, 1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    uncertainty = torch.tensor([[0.01, 0.01, 0.01, 0.9, 0.9, 0.9, 0.9]])
    entity = torch.tensor([[0, 0, 1, 1, 1, 0, 0]], dtype=torch.bool)  # garbage in padding
    assert decide(uncertainty, entity, words, window=2) == [1, 1, 1, 0, 0, 0, 0]


def test_threshold_zero_and_one_on_grids() -> None:
    rng = numpy.random.default_rng(0)
    uncertainty = torch.from_numpy(rng.random((5, 9))).float()
    uncertainty[0, 0] = 1.0
    entity = torch.from_numpy(rng.random((5, 9)) < 0.4)
    words = torch.from_numpy(rng.random((5, 9)) < 0.8)
    for scale in (1.0, 0.3):
        assert decide(uncertainty, entity, words, threshold=0.0, window=1, scale=scale) == [0] * 9
        rule = EntityTokenExit([1.0], 2, False, 1, scale)
        assert torch.equal(rule.exits(0, uncertainty, words, words, entity), words)
        zero = EntityTokenExit([0.0], 2, False, 1, scale)
        assert not zero.exits(0, uncertainty, words, words, entity).any()


# --------------------------------------------------------------------------
# random grids against a loop reference
# --------------------------------------------------------------------------
def reference_exits(uncertainty, active, words, entity, window, threshold, margin, scale, includes_exited):
    """The rule as its docstring says, one word at a time."""
    u, act, real, ent = (numpy.asarray(x) for x in (uncertainty, active, words, entity))
    n_spans, width = u.shape
    result = numpy.zeros((n_spans, width), dtype=bool)
    for s in range(n_spans):
        counted = real[s] if includes_exited else act[s]
        score = []
        for i in range(width):
            values = [
                u[s, j] / scale if ent[s, j] else u[s, j]
                for j in range(max(0, i - window), min(width, i + window + 1)) if counted[j]
            ]
            score.append(max(values) if values else -numpy.inf)
        grouped = [
            bool(real[s, i]) and any(real[s, j] and ent[s, j] for j in range(max(0, i - margin), min(width, i + margin + 1)))
            for i in range(width)
        ]
        final = list(score)
        i = 0
        while i < width:
            if not grouped[i]:
                i += 1
                continue
            end = i
            while end < width and grouped[end]:
                end += 1
            top = max(score[i:end])
            final[i:end] = [top] * (end - i)
            i = end
        for i in range(width):
            result[s, i] = bool(act[s, i]) and (threshold >= 1.0 or final[i] < threshold)
    return result


@pytest.mark.parametrize("seed", range(6))
def test_random_grids_match_reference(seed) -> None:
    rng = numpy.random.default_rng(seed)
    n_spans, width = 6, 12
    words = numpy.zeros((n_spans, width), dtype=bool)
    for s in range(n_spans):
        words[s, : rng.integers(1, width + 1)] = True
    active = words & (rng.random((n_spans, width)) < 0.8)
    entity = rng.random((n_spans, width)) < 0.35
    uncertainty = rng.random((n_spans, width)).astype("float32") * 0.5
    for window, margin, scale, includes, threshold in (
        (0, 1, 1.0, False, 0.2), (1, 1, 1.0, False, 0.3), (2, 0, 0.5, False, 0.35),
        (1, 2, 0.7, True, 0.4), (0, 3, 1.0, True, 0.25),
    ):
        expected = reference_exits(uncertainty, active, words, entity, window, threshold, margin, scale, includes)
        rule = EntityTokenExit([threshold], window, includes, margin, scale)
        got = rule.exits(0, torch.from_numpy(uncertainty), torch.from_numpy(active),
                         torch.from_numpy(words), torch.from_numpy(entity)).numpy()
        numpy.testing.assert_array_equal(got, expected)


def test_per_span_windows_and_thresholds() -> None:
    """Self-sampling gives each span its own window and threshold."""
    rng = numpy.random.default_rng(7)
    uncertainty = rng.random((4, 10)).astype("float32") * 0.5
    entity = rng.random((4, 10)) < 0.3
    words = numpy.ones((4, 10), dtype=bool)
    windows, thresholds = [0, 1, 2, 1], [0.2, 0.3, 0.45, 0.1]
    rule = EntityTokenExit([torch.tensor(thresholds)[:, None]], torch.tensor(windows), False, 1, 1.0)
    got = rule.exits(0, torch.from_numpy(uncertainty), torch.from_numpy(words), torch.from_numpy(words),
                     torch.from_numpy(entity)).numpy()
    for s in range(4):
        expected = reference_exits(uncertainty[s:s + 1], words[s:s + 1], words[s:s + 1], entity[s:s + 1],
                                   windows[s], thresholds[s], 1, 1.0, False)
        numpy.testing.assert_array_equal(got[s:s + 1], expected)


def test_simulated_exits_keep_exited_predictions() -> None:
    """simulate_token_exits with the entity rule: an exited word keeps the
    entity flag of its exit layer (as at inference)."""
    # layer 1: word 0 is O and sure, exits with word 1 (sure O);
    # layer 2: word 0 would now be an entity, but it has left already
    uncertainty = torch.tensor([[[0.01, 0.01, 0.5]], [[0.01, 0.01, 0.01]], [[0.01, 0.01, 0.01]]])
    entity = torch.tensor([[[0, 0, 0]], [[1, 0, 0]], [[1, 0, 0]]], dtype=torch.bool)
    words = torch.ones(1, 3, dtype=torch.bool)
    layers = simulate_token_exits(uncertainty, words, torch.tensor([0]), torch.tensor([0.1]),
                                  entity=entity, entity_margin=1)
    assert layers.tolist() == [[1, 1, 2]]
    # an entity at word 1 from layer 1 on: words 0..2 wait for word 2
    entity = torch.tensor([[[0, 1, 0]]] * 3, dtype=torch.bool)
    layers = simulate_token_exits(uncertainty, words, torch.tensor([0]), torch.tensor([0.1]),
                                  entity=entity, entity_margin=1)
    assert layers.tolist() == [[2, 2, 2]]


# --------------------------------------------------------------------------
# encoder level
# --------------------------------------------------------------------------
ENTITY_CLASSES = torch.tensor([False, True, True, False, True])  # of N_CLASSES
SPANS = [[1, 2, 1, 1, 3, 1, 1], [1, 1, 0, 2, 1], [3], [1] * 12, [2, 1, 2, 1, 1, 1]]


@pytest.fixture(scope="module")
def encoder():
    return make_encoder(random_bert(), sharpen=4.0)


def run(encoder, batch, settings, **kwargs):
    with torch.no_grad():
        return encoder(batch, settings, entity_classes=ENTITY_CLASSES, **kwargs)


def test_entity_threshold_zero_is_mode_off(encoder) -> None:
    batch = build_batch(SPANS, seed=1)
    off = run(encoder, batch, ExitSettings())
    for margin, scale in ((1, 1.0), (0, 0.5), (2, 0.2)):
        zero = run(encoder, batch, ExitSettings(
            exit_mode="token", threshold=0.0, window=1, entity_exit=True, entity_margin=margin,
            entity_threshold_scale=scale,
        ))
        assert zero.exit_layer.tolist() == off.exit_layer.tolist() == [N_LAYERS] * batch.n_words
        assert zero.labels.tolist() == off.labels.tolist()
        torch.testing.assert_close(zero.exit_logits, off.exit_logits)


def test_entity_threshold_one_exits_at_layer_one(encoder) -> None:
    batch = build_batch(SPANS, seed=1)
    full = run(encoder, batch, ExitSettings(), return_layer_logits=True)
    one = run(encoder, batch, ExitSettings(exit_mode="token", threshold=1.0, window=2, entity_exit=True,
                                           entity_margin=2, entity_threshold_scale=0.3))
    assert one.exit_layer.tolist() == [1] * batch.n_words
    torch.testing.assert_close(one.exit_logits, full.layer_logits[0], atol=1e-5, rtol=1e-5)


def test_rule_sees_the_latest_prediction_of_every_word(encoder, monkeypatch) -> None:
    """The entity grid handed to the rule: entity_classes[argmax] of the
    word's off-ramp at this layer, or at its exit layer once exited."""
    batch = build_batch(SPANS, seed=2)
    seen = []
    original = EntityTokenExit.exits

    def recording(self, layer_index, uncertainty, active, words, entity=None):
        seen.append((layer_index, entity.clone(), active.clone()))
        return original(self, layer_index, uncertainty, active, words, entity)

    monkeypatch.setattr(EntityTokenExit, "exits", recording)
    settings = ExitSettings(exit_mode="token", threshold=0.5, window=0, entity_exit=True)
    out = run(encoder, batch, settings, return_layer_logits=True)
    assert len(set(out.exit_layer.tolist())) >= 2
    spans, slots = batch.word_span, batch.word_slot
    for layer_index, entity, active in seen:
        last = torch.minimum(out.exit_layer - 1, torch.tensor(layer_index))
        logits = out.layer_logits[last, torch.arange(batch.n_words)]
        expected = ENTITY_CLASSES[logits.argmax(dim=-1)]
        assert entity[spans, slots].tolist() == expected.tolist()
        assert active[spans, slots].tolist() == (out.exit_layer > layer_index).tolist()


@pytest.mark.parametrize("seed", range(3))
def test_entity_exit_does_not_depend_on_the_batch(encoder, seed) -> None:
    spans = random_spans(seed, n_spans=6)
    batch = build_batch(spans, seed=seed)
    settings = ExitSettings(exit_mode="token", threshold=0.45, window=1, entity_exit=True)
    together = run(encoder, batch, settings)
    layers = set(together.exit_layer.tolist())
    start = 0
    for index, span in enumerate(spans):
        # build_batch draws ids per batch: give the single span the batch's ids
        single = build_batch([span], seed=seed)
        single.input_ids[0, : int(batch.lengths[index])] = batch.input_ids[index, : int(batch.lengths[index])]
        alone = run(encoder, single, settings)
        n = alone.exit_layer.shape[0]
        assert alone.exit_layer.tolist() == together.exit_layer[start:start + n].tolist()
        assert alone.labels.tolist() == together.labels[start:start + n].tolist()
        start += n
    assert len(layers) >= 2


def test_entity_exit_without_entity_classes_is_refused(encoder) -> None:
    batch = build_batch(SPANS, seed=1)
    with pytest.raises(ValueError, match="entity task"):
        with torch.no_grad():
            encoder(batch, ExitSettings(exit_mode="token", entity_exit=True))
    with pytest.raises(ValueError, match="one flag per class"):
        with torch.no_grad():
            encoder(batch, ExitSettings(exit_mode="token", entity_exit=True), entity_classes=torch.ones(2, dtype=torch.bool))


@pytest.mark.parametrize("changes, name", [
    ({"entity_margin": -1}, "entity_margin"), ({"entity_margin": 1.5}, "entity_margin"),
    ({"entity_threshold_scale": 0.0}, "entity_threshold_scale"),
    ({"entity_threshold_scale": 1.5}, "entity_threshold_scale"), ({"entity_exit": "yes"}, "entity_exit"),
])
def test_entity_settings_validation(changes, name) -> None:
    with pytest.raises(ValueError, match=name):
        ExitSettings(**changes)


def test_exit_rule_builds_the_entity_rule() -> None:
    rule = exit_rule(ExitSettings(exit_mode="token", threshold=0.2, window=1, entity_exit=True,
                                  entity_margin=2, entity_threshold_scale=0.5), 3)
    assert isinstance(rule, EntityTokenExit) and rule.needs_entity
    assert (rule.margin, rule.entity_scale, rule.window, list(rule.thresholds)) == (2, 0.5, 1, [0.2] * 3)
    assert not exit_rule(ExitSettings(exit_mode="sentence", entity_exit=True), 3).needs_entity


# --------------------------------------------------------------------------
# pipeline level
# --------------------------------------------------------------------------
PIPE = "earlyexit_tagger"


def make_nlp(model_path, task: str):
    torch.manual_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe(PIPE, config={"task": task, "model": {**PLAIN_OFFRAMPS, "name": str(model_path)}})
    if task == "ner":
        examples = [Example.from_dict(nlp.make_doc(text), {"entities": ents}) for text, ents in NER_DATA]
    else:
        examples = [Example.from_dict(nlp.make_doc(text), {"pos": tags}) for text, tags in POS_DATA]
    nlp.initialize(lambda: examples)
    with torch.no_grad():
        for ramp in nlp.get_pipe(PIPE).model.shims[0].encoder.offramps:
            ramp.linear.weight.mul_(4.0)
    return nlp


def test_ner_task_marks_entity_classes(tiny_bert) -> None:
    nlp = make_nlp(tiny_bert, "ner")
    tagger = nlp.get_pipe(PIPE)
    flags = tagger.task.entity_classes(tagger.classes)
    assert dict(zip(tagger.classes, flags)) == {
        "O": False, "B-LOC": True, "I-LOC": True, "L-LOC": True, "U-LOC": True,
        "B-PER": True, "I-PER": True, "L-PER": True, "U-PER": True,
    }


def test_pipeline_entity_exit_is_batch_invariant_and_saved(tiny_bert, tmp_path) -> None:
    nlp = make_nlp(tiny_bert, "ner")
    rng = numpy.random.default_rng(0)
    words = corpus_words()
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 20)))) for _ in range(25)]
    cfg = lambda: {PIPE: {"exit_mode": "token", "threshold": 0.6, "window": 1, "entity_exit": True}}  # noqa: E731

    def annotations(docs):
        return [([t._.exit_layer for t in d], [(e.start, e.end, e.label_) for e in d.ents]) for d in docs]

    one = annotations(nlp.pipe(texts, batch_size=1, component_cfg=cfg()))
    many = annotations(nlp.pipe(texts, batch_size=64, component_cfg=cfg()))
    assert one == many
    assert len({layer for layers, _ in one for layer in layers}) >= 2
    tagger = nlp.get_pipe(PIPE)
    tagger.configure_exit(exit_mode="token", threshold=0.6, window=1, entity_exit=True, entity_margin=2)
    nlp.to_disk(tmp_path / "p")
    loaded = spacy.load(tmp_path / "p").get_pipe(PIPE).exit_settings
    assert (loaded.entity_exit, loaded.entity_margin) == (True, 2)


def test_pos_pipeline_refuses_entity_exit(tiny_bert) -> None:
    nlp = make_nlp(tiny_bert, "pos")
    with pytest.raises(ValueError, match="entity"):
        nlp("Alice lives in Paris .", component_cfg={PIPE: {"exit_mode": "token", "entity_exit": True}})
