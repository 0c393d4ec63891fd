"""The earlyexit_tagger component: learning, the encoder against Hugging Face,
scores, exit layers, errors, the loss against numpy, frozen training, BILUO
repair and the overwrite setting."""
import json
from pathlib import Path
from typing import Dict, List, Optional

import numpy
import pytest
import spacy
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from spacy.language import Language
from spacy.scorer import Scorer
from spacy.tokens import Doc, Span
from spacy.training import Example, offsets_to_biluo_tags
from spacy.util import fix_random_seed, registry

from helpers.tiny_bert import PLAIN_OFFRAMPS, NER_DATA, POS_DATA


TASK_DATA_KEYS = {"ner": "entities", "pos": "pos", "tag": "tags"}
HEADLINE = {"ner": "ents_f", "pos": "pos_acc", "tag": "tag_acc"}


def make_nlp(bert: Path, task: str = "ner", model: Optional[Dict] = None, **config) -> Language:
    """A blank English pipeline with an earlyexit_tagger on `bert`."""
    nlp = spacy.blank("en")
    model_config = {**PLAIN_OFFRAMPS, "name": str(bert), **(model or {})}
    nlp.add_pipe("earlyexit_tagger", config={"task": task, "model": model_config, **config})
    return nlp


def make_examples(nlp: Language, task: str) -> List[Example]:
    """NER_DATA for "ner"; POS_DATA as pos_ ("pos") or as tag_ ("tag")."""
    data = NER_DATA if task == "ner" else POS_DATA
    return [Example.from_dict(nlp.make_doc(text), {TASK_DATA_KEYS[task]: gold}) for text, gold in data]


def n_layers_of(bert: Path) -> int:
    """The layer count from the Hugging Face config (not from the component)."""
    return json.loads((bert / "config.json").read_text())["num_hidden_layers"]


def train_until_perfect(nlp: Language, examples: List[Example], keys: List[str], max_steps: int = 400):
    """Adam at lr 1e-3, up to `max_steps` updates; stop once every key is 1.0."""
    fix_random_seed(0)
    optimizer = nlp.initialize(lambda: examples)
    optimizer.learn_rate = 1e-3
    scores: Dict = {}
    for step in range(1, max_steps + 1):
        nlp.update(examples, sgd=optimizer)
        if step % 50 == 0:
            scores = nlp.evaluate(examples)
            if all(scores.get(key) == 1.0 for key in keys):
                break
    return scores


def layer_keys(task: str, n_layers: int) -> List[str]:
    headline = HEADLINE[task]
    return [headline] + [f"{headline}_layer_{layer}" for layer in range(1, n_layers + 1)]


@pytest.fixture(scope="module")
def trained(tiny_bert):
    """One pipeline per task, trained until every off-ramp is perfect."""
    pipelines = {}

    def get(task: str):
        if task not in pipelines:
            nlp = make_nlp(tiny_bert, task)
            examples = make_examples(nlp, task)
            keys = layer_keys(task, n_layers_of(tiny_bert))
            pipelines[task] = (nlp, examples, train_until_perfect(nlp, examples, keys))
        return pipelines[task]

    return get


# --- learning -----------------------------------------------------------------


@pytest.mark.parametrize("task", ["ner", "pos", "tag"])
def test_every_offramp_learns_the_training_data(trained, tiny_bert, task):
    _, _, scores = trained(task)
    keys = layer_keys(task, n_layers_of(tiny_bert))
    assert {key: scores.get(key) for key in keys} == {key: 1.0 for key in keys}


def test_trained_ner_reproduces_gold_entities(trained):
    nlp, _, _ = trained("ner")
    for text, gold in NER_DATA:
        doc = nlp(text)
        assert [(e.start_char, e.end_char, e.label_) for e in doc.ents] == gold


@pytest.mark.parametrize("task,attr", [("pos", "pos_"), ("tag", "tag_")])
def test_trained_tagger_reproduces_gold_labels(trained, task, attr):
    nlp, _, _ = trained(task)
    for text, gold in POS_DATA:
        assert [getattr(t, attr) for t in nlp(text)] == gold


# --- the encoder against the Hugging Face reference -----------------------------


def test_encoder_hidden_states_match_hugging_face(tiny_bert):
    from transformers import AutoTokenizer, BertModel

    from spacy_earlyexit.layers.wordpieces import max_pieces_of, tokenize_docs
    from spacy_earlyexit.model import EarlyExitEncoder

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert), use_fast=True)
    encoder = EarlyExitEncoder(BertModel.from_pretrained(str(tiny_bert)), n_classes=5).eval()
    reference = BertModel.from_pretrained(str(tiny_bert), attn_implementation="eager").eval()
    nlp = spacy.blank("en")
    # different lengths so that the batch has padding; an unknown word too
    texts = ["Carol and Alice met Bob in Berlin .", "Paris is big .", "hello zzqx world"]
    docs = [nlp(text) for text in texts]
    get_spans = registry.span_getters.get("spacy-transformers.doc_spans.v1")()
    pieces = tokenize_docs(docs, get_spans, tokenizer, max_pieces_of(tokenizer, reference.config))
    batch = pieces.encoder_batch(range(pieces.n_spans), tokenizer.pad_token_id)
    real = batch.real_mask()
    assert not bool(real.all()), "the batch should contain padding"
    with torch.no_grad():
        ours = encoder(batch, output_hidden_states=True).hidden_states
        theirs = reference(
            input_ids=batch.input_ids, attention_mask=real.long(), output_hidden_states=True
        ).hidden_states
    assert len(ours) == len(theirs) == n_layers_of(tiny_bert) + 1
    for layer, (mine, hf) in enumerate(zip(ours, theirs)):
        diff = (mine[real] - hf[real]).abs().max().item()
        assert diff < 1e-5, f"hidden state {layer} differs by {diff}"
    # the pieces are the tokenizer's own encoding of each text, with [CLS]/[SEP]
    for row, text in enumerate(texts):
        expected = tokenizer(text)["input_ids"]
        assert batch.input_ids[row, : len(expected)].tolist() == expected
        assert int(batch.lengths[row]) == len(expected)


# --- scores and exit layers -----------------------------------------------------


def test_ner_scores_present_and_match_spacy_scorer(trained):
    nlp, examples, _ = trained("ner")
    scores = nlp.evaluate(examples)
    for key in ("ents_p", "ents_r", "ents_f", "ents_per_type", "exit_layer_mean", "flops_speedup"):
        assert key in scores
    predicted = [Example(doc, eg.reference) for doc, eg in zip(nlp.pipe(eg.text for eg in examples), examples)]
    reference = Scorer.score_spans(predicted, "ents")
    for key in ("ents_p", "ents_r", "ents_f"):
        assert scores[key] == pytest.approx(reference[key])
    assert set(scores["ents_per_type"]) == {"PER", "LOC"}


@pytest.mark.parametrize("task", ["pos", "tag"])
def test_token_scores_present_and_match_spacy_scorer(trained, task):
    nlp, examples, _ = trained(task)
    tagger = nlp.get_pipe("earlyexit_tagger")
    # damage one token per doc so that the accuracy is not trivially 1.0
    docs = []
    for doc in nlp.pipe(eg.text for eg in examples):
        setattr(doc[0], f"{task}_", "X")
        docs.append(doc)
    predicted = [Example(doc, eg.reference) for doc, eg in zip(docs, examples)]
    scores = tagger.score(predicted)
    key = HEADLINE[task]
    n_tokens = sum(len(eg.reference) for eg in examples)
    assert scores[key] == pytest.approx((n_tokens - len(examples)) / n_tokens)
    assert scores[key] == pytest.approx(Scorer.score_token_attr(predicted, task)[key])
    assert "exit_layer_mean" in scores and "flops_speedup" in scores


def test_exit_off_means_every_token_at_the_last_layer(trained, tiny_bert):
    nlp, examples, _ = trained("ner")
    n_layers = n_layers_of(tiny_bert)
    assert nlp.get_pipe("earlyexit_tagger").exit_settings.exit_mode == "off"
    for text, _ in NER_DATA + POS_DATA:
        doc = nlp(text)
        assert [t._.exit_layer for t in doc] == [n_layers] * len(doc)
        assert doc._.exit_layers == [n_layers] * len(doc)
        assert doc._.early_exit["exit_layer_mean"] == n_layers
        assert doc._.early_exit["flops_speedup"] == 1.0
    scores = nlp.evaluate(examples)
    assert scores["exit_layer_mean"] == n_layers
    assert scores["flops_speedup"] == 1.0


def test_threshold_one_exits_everything_at_layer_one(trained, tiny_bert):
    """Threshold 1 (documented: everything exits at layer 1): every layer of a
    span costs the same at full depth, so the analytic speed-up is L."""
    nlp, examples, _ = trained("ner")
    tagger = nlp.get_pipe("earlyexit_tagger")
    n_layers = n_layers_of(tiny_bert)
    tagger.configure_exit(exit_mode="token", threshold=1.0)
    try:
        scores = nlp.evaluate(examples)
        doc = nlp("Alice lives in Paris .")
    finally:
        tagger.configure_exit(exit_mode="off", threshold=0.1)
    assert doc._.exit_layers == [1] * len(doc)
    assert scores["exit_layer_mean"] == 1.0
    assert scores["flops_speedup"] == pytest.approx(n_layers)
    # the per-layer scores are at full depth whatever the exit setting
    assert scores[f"ents_f_layer_{n_layers}"] == 1.0


def test_scorer_aggregates_over_tokens_and_flops(trained):
    """exit_layer_mean: mean over all tokens; flops_speedup: total full-depth
    cost over total cost (not a mean of per-doc ratios)."""
    nlp, examples, _ = trained("ner")
    docs = list(
        nlp.pipe(
            [eg.text for eg in examples],
            component_cfg={"earlyexit_tagger": {"exit_mode": "token", "threshold": 0.3, "window": 1}},
        )
    )
    layers = [t._.exit_layer for doc in docs for t in doc]
    assert len(set(layers)) > 1, "precondition: mixed exits"
    full = sum(doc._.early_exit["flops_full"] for doc in docs)
    spent = sum(doc._.early_exit["flops"] for doc in docs)
    scores = nlp.get_pipe("earlyexit_tagger").scorer(
        [Example(doc, eg.reference) for doc, eg in zip(docs, examples)], task="ner"
    )
    assert scores["exit_layer_mean"] == pytest.approx(sum(layers) / len(layers))
    assert scores["flops_speedup"] == pytest.approx(full / spent)


@pytest.mark.parametrize(
    "exit_settings",
    [
        # thresholds that give a mix of exit layers with the trained tiny model
        {"exit_mode": "token", "threshold": 0.3, "window": 1},
        {"exit_mode": "token", "threshold": 0.25, "window": 2, "threshold_multipliers": [1.0, 1.2, 1.4]},
        {"exit_mode": "sentence", "threshold": 0.35},
        {"exit_mode": "sentence", "threshold": 0.2, "sentence_score": "mean"},
    ],
)
def test_results_do_not_depend_on_the_batch(trained, exit_settings):
    """Batch size and the other docs of a batch (padding, packing, dropped
    spans) change nothing."""
    nlp, _, _ = trained("ner")
    texts = [t for t, _ in NER_DATA + POS_DATA] + ["", " ".join(t for t, _ in NER_DATA) * 2, "hello"]

    def run(texts: List[str], batch_size: int):
        # spaCy adds batch_size to the component's settings dict: a fresh one per call
        docs = nlp.pipe(texts, batch_size=batch_size, component_cfg={"earlyexit_tagger": dict(exit_settings)})
        return [([(e.start, e.end, e.label_) for e in d.ents], d._.exit_layers, d._.early_exit) for d in docs]

    one_by_one = run(texts, 1)
    assert len({layer for _, layers, _ in one_by_one for layer in layers}) > 1, "precondition: mixed exits"
    assert run(texts, 100) == one_by_one
    assert run(texts[::-1], 3)[::-1] == one_by_one


# --- configuration errors ---------------------------------------------------------


def test_unknown_task_lists_the_options(tiny_bert):
    with pytest.raises(ValueError) as error:
        make_nlp(tiny_bert, "chunking")
    message = str(error.value)
    assert "chunking" in message
    for option in ("ner", "pos", "tag"):
        assert option in message


def test_unknown_loss_weights_lists_the_options(tiny_bert):
    with pytest.raises(ValueError) as error:
        make_nlp(tiny_bert, "ner", loss_weights="square")
    for option in ("square", "depth", "uniform", "last"):
        assert option in str(error.value)


def test_pos_labels_that_are_not_upos_are_refused(tiny_bert):
    nlp = make_nlp(tiny_bert, "pos")
    tagger = nlp.get_pipe("earlyexit_tagger")
    examples = make_examples(nlp, "pos")
    with pytest.raises(ValueError, match="'NN'.*'VBZ'|'VBZ'.*'NN'"):
        tagger.initialize(lambda: examples, nlp=nlp, labels=["NN", "VBZ", "NOUN"])
    with pytest.raises(ValueError, match="NNP"):
        tagger.add_label("NNP")
    assert tagger.add_label("PROPN") == 1  # a UPOS tag is fine


def test_tag_task_accepts_any_tag_set(tiny_bert):
    nlp = make_nlp(tiny_bert, "tag")
    tagger = nlp.get_pipe("earlyexit_tagger")
    tagger.initialize(lambda: make_examples(nlp, "tag"), nlp=nlp, labels=["NN", "VBZ"])
    assert tagger.labels == ("NN", "VBZ")


def test_labels_added_before_initialize_are_kept(tiny_bert):
    """As in spaCy's own components: add_label, then initialize, keeps the label."""
    nlp = make_nlp(tiny_bert, "ner")
    tagger = nlp.get_pipe("earlyexit_tagger")
    assert tagger.add_label("MISC") == 1
    assert tagger.add_label("MISC") == 0
    nlp.initialize(lambda: make_examples(nlp, "ner"))
    assert tagger.labels == ("LOC", "MISC", "PER")
    assert tagger.classes == ["O"] + [f"{p}-{label}" for label in ("LOC", "MISC", "PER") for p in "BILU"]
    assert tagger.model.shims[0].encoder.n_classes == 13


def test_initialize_without_examples_after_add_label(tiny_bert):
    nlp = make_nlp(tiny_bert, "pos")
    tagger = nlp.get_pipe("earlyexit_tagger")
    for label in ("NOUN", "VERB"):
        tagger.add_label(label)
    nlp.initialize()
    assert tagger.labels == ("NOUN", "VERB")
    assert {t.pos_ for t in nlp("hello world")} <= {"NOUN", "VERB", "SPACE"}


# --- the loss against numpy ---------------------------------------------------------

LOSS_WEIGHTS_L3 = {
    "depth": [1 / 6, 2 / 6, 3 / 6],
    "uniform": [1 / 3, 1 / 3, 1 / 3],
    "last": [0.0, 0.0, 1.0],
}


@pytest.fixture(scope="module")
def pos_tagger_for_loss(tiny_bert):
    """A pos tagger (initialized) and examples with one missing gold label."""
    nlp = make_nlp(tiny_bert, "pos")
    fix_random_seed(0)
    nlp.initialize(lambda: make_examples(nlp, "pos"))
    text, tags = POS_DATA[0]
    partial = list(tags)
    partial[2] = ""  # missing: must not count
    examples = [
        Example.from_dict(nlp.make_doc(text), {"pos": partial}),
        Example.from_dict(nlp.make_doc(POS_DATA[2][0]), {"pos": POS_DATA[2][1]}),
    ]
    return nlp.get_pipe("earlyexit_tagger"), examples


@pytest.mark.parametrize("scheme", ["depth", "uniform", "last"])
def test_loss_matches_numpy_weighted_cross_entropy(pos_tagger_for_loss, scheme):
    from spacy_earlyexit.layers.data_classes import TokenOutputs

    tagger, examples = pos_tagger_for_loss
    classes = tagger.classes
    gold = [tag for eg in examples for tag in (t.pos_ for t in eg.reference)]
    n_tokens, n_layers, n_classes = len(gold), 3, len(classes)
    rng = numpy.random.default_rng(0)
    logits = rng.normal(0, 3, size=(n_layers, n_tokens, n_classes)).astype("float32")
    active = numpy.ones((n_layers, n_tokens), dtype=bool)
    active[1:, 0] = False  # token 0 exited after layer 1
    active[2, 6] = False  # token 6 exited after layer 2
    own = [numpy.ones(len(eg.reference), dtype=bool) for eg in examples]
    own[1][1] = False  # a token without its own output (borrowed): no loss
    outputs = TokenOutputs(
        labels=[numpy.zeros(len(o), "int64") for o in own],
        exit_layers=[numpy.full(len(o), 3, "int64") for o in own],
        has_output=own,
        costs=[(0.0, 0.0)] * len(examples),
        layer_logits=logits,
        layer_active=active,
    )
    tagger.cfg["loss_weights"] = scheme
    try:
        loss, d_logits = tagger.get_loss(examples, outputs)
    finally:
        tagger.cfg["loss_weights"] = "depth"

    # independent reference: sum_l w_l * sum_{i known, own, active at l} CE_{l,i} / n_known
    own_flat = numpy.concatenate(own)
    known = numpy.array([bool(g) for g in gold]) & own_flat
    assert known.sum() == n_tokens - 2
    weights = numpy.asarray(LOSS_WEIGHTS_L3[scheme])
    expected = 0.0
    for layer in range(n_layers):
        for i in range(n_tokens):
            if known[i] and active[layer, i]:
                z = logits[layer, i].astype("float64")
                log_p = z - z.max() - numpy.log(numpy.exp(z - z.max()).sum())
                expected -= weights[layer] * log_p[classes.index(gold[i])] / known.sum()
    assert loss == pytest.approx(expected, rel=1e-5)

    # the gradient against torch autograd of the same formula
    z = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([classes.index(g) if g else 0 for g in gold])
    ce = torch.nn.functional.cross_entropy(
        z.reshape(-1, n_classes), targets.repeat(n_layers), reduction="none"
    ).reshape(n_layers, n_tokens)
    mask = torch.tensor(active & known[None, :], dtype=torch.float64)
    total = (torch.tensor(weights)[:, None] * mask * ce).sum() / known.sum()
    total.backward()
    assert total.item() == pytest.approx(expected, rel=1e-9)
    numpy.testing.assert_allclose(d_logits, z.grad.numpy(), atol=1e-6)


def test_loss_refuses_a_label_unknown_at_initialize(pos_tagger_for_loss):
    tagger, examples = pos_tagger_for_loss
    nlp = spacy.blank("en")
    unseen = Example.from_dict(nlp.make_doc("hello world"), {"pos": ["INTJ", "NOUN"]})
    with pytest.raises(ValueError, match="INTJ"):
        tagger.update([unseen])


# --- frozen encoder ------------------------------------------------------------------


def _weights(nlp: Language) -> Dict[str, numpy.ndarray]:
    encoder = nlp.get_pipe("earlyexit_tagger").model.shims[0].encoder
    return {name: value.detach().clone().numpy() for name, value in encoder.state_dict().items()}


def _changed_after_updates(nlp: Language, steps: int = 3):
    """(encoder parameters that changed, off-ramp parameters that changed)."""
    examples = make_examples(nlp, "ner")
    fix_random_seed(0)
    optimizer = nlp.initialize(lambda: examples)
    before = _weights(nlp)
    for _ in range(steps):
        nlp.update(examples, sgd=optimizer)
    after = _weights(nlp)
    changed = {name for name in before if not numpy.array_equal(before[name], after[name])}
    encoder = {n for n in before if n.startswith("transformer.") and "position_ids" not in n}
    offramps = {n for n in before if n.startswith("offramps.")}
    return changed & encoder, changed & offramps, encoder, offramps


@pytest.mark.parametrize(
    "model_config", [{"freeze_encoder": True}, {"encoder_learn_rate_scale": 0.0}], ids=["freeze", "lr0"]
)
def test_frozen_encoder_keeps_its_weights(tiny_bert, model_config):
    nlp = make_nlp(tiny_bert, "ner", model=model_config)
    changed_encoder, changed_offramps, _, offramps = _changed_after_updates(nlp)
    assert changed_encoder == set()
    assert changed_offramps == offramps


def test_encoder_trains_by_default(tiny_bert):
    """The control for the frozen cases: the same updates move the encoder."""
    nlp = make_nlp(tiny_bert, "ner")
    changed_encoder, changed_offramps, encoder, offramps = _changed_after_updates(nlp)
    assert changed_offramps == offramps
    # every layer's weights move (embeddings of unused pieces may not)
    assert {n for n in encoder if ".layer." in n} <= changed_encoder


# --- NER decoding repairs invalid sequences ----------------------------------------


@pytest.mark.parametrize(
    "classes,expected",
    [
        (["B-X", "I-X", "L-X"], [(0, 3, "X")]),
        (["U-X", "O", "U-Y"], [(0, 1, "X"), (2, 3, "Y")]),
        (["I-X", "L-X"], [(0, 2, "X")]),  # I without B starts an entity
        (["O", "L-X", "O"], [(1, 2, "X")]),  # L alone
        (["B-X", "B-Y"], [(0, 1, "X"), (1, 2, "Y")]),  # open entity closed by the next
        (["B-X", "U-X", "L-X"], [(0, 1, "X"), (1, 2, "X"), (2, 3, "X")]),  # U inside
        (["B-X", "I-Y", "L-Y"], [(0, 1, "X"), (1, 3, "Y")]),  # label changes
        (["B-X", "I-X"], [(0, 2, "X")]),  # left open at the end
        (["B-X", "O", "I-X"], [(0, 1, "X"), (2, 3, "X")]),
        (["B-X", None, "L-X"], [(0, 1, "X"), (2, 3, "X")]),  # None counts as O
        (["B-", "garbage", "Q-X", "-"], []),  # not BILUO
        ([], []),
    ],
)
def test_decode_biluo_repairs(classes, expected):
    from spacy_earlyexit.pipeline.tasks import decode_biluo

    assert decode_biluo(classes) == expected


BLANK_VOCAB = spacy.blank("en").vocab
BILUO_CLASSES = ["O", None, "B-X", "I-X", "L-X", "U-X", "B-Y", "I-Y", "L-Y", "U-Y", "I-", "Z-X"]


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.sampled_from(BILUO_CLASSES), max_size=30))
def test_decode_biluo_never_fails_on_any_sequence(classes):
    from spacy_earlyexit.pipeline.tasks import decode_biluo

    entities = decode_biluo(classes)
    previous_end = 0
    for start, end, label in entities:
        assert previous_end <= start < end <= len(classes)
        previous_end = end
        # an entity's tokens all carry its label
        assert all((classes[i] or "O").partition("-")[2] == label for i in range(start, end))
    # every token with an entity class is in an entity, no other token is
    covered = {i for start, end, _ in entities for i in range(start, end)}
    tagged = {
        i for i, c in enumerate(classes) if c and c[0] in "BILU" and c[1:2] == "-" and len(c) > 2
    }
    assert covered == tagged
    # the spans can be set on a doc
    doc = Doc(BLANK_VOCAB, words=["w"] * len(classes))
    doc.set_ents([Span(doc, s, e, label=lab) for s, e, lab in entities])


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.tuples(st.integers(1, 4), st.integers(0, 3), st.sampled_from(["X", "Y"])), max_size=8))
def test_decode_biluo_inverts_spacy_encoding(layout):
    """Valid sequences (encoded by spaCy from random spans) decode exactly."""
    from spacy_earlyexit.pipeline.tasks import decode_biluo

    words, entities, position = [], [], 0
    for gap, length, label in layout:
        words.extend(["o"] * gap)
        position += gap
        if length:
            entities.append((position, position + length, label))
            words.extend(["e"] * length)
            position += length
    doc = Doc(BLANK_VOCAB, words=words, spaces=[True] * len(words))
    offsets = [(doc[s].idx, doc[e - 1].idx + 1, label) for s, e, label in entities]
    assert decode_biluo(offsets_to_biluo_tags(doc, offsets)) == entities


# --- overwrite --------------------------------------------------------------------


def test_ner_overwrite_false_keeps_existing_entities(trained):
    nlp, _, _ = trained("ner")
    tagger = nlp.get_pipe("earlyexit_tagger")
    assert tagger.cfg["overwrite"] is False
    doc = nlp.make_doc("Alice lives in Paris .")
    doc.ents = [Span(doc, 3, 4, label="PER")]  # wrong on purpose
    doc = nlp(doc)
    assert [(e.start, e.end, e.label_) for e in doc.ents] == [(0, 1, "PER"), (3, 4, "PER")]
    # a kept entity that overlaps a predicted one wins; the prediction is dropped
    doc = nlp.make_doc("Alice lives in Paris .")
    doc.ents = [Span(doc, 2, 4, label="MISC")]
    doc = nlp(doc)
    assert [(e.start, e.end, e.label_) for e in doc.ents] == [(0, 1, "PER"), (2, 4, "MISC")]


def test_ner_overwrite_true_replaces_entities(trained):
    nlp, _, _ = trained("ner")
    tagger = nlp.get_pipe("earlyexit_tagger")
    tagger.cfg["overwrite"] = True
    try:
        doc = nlp.make_doc("Alice lives in Paris .")
        doc.ents = [Span(doc, 1, 4, label="MISC")]
        doc = nlp(doc)
    finally:
        tagger.cfg["overwrite"] = False
    assert [(e.start, e.end, e.label_) for e in doc.ents] == [(0, 1, "PER"), (3, 4, "LOC")]


@pytest.mark.parametrize("task,attr", [("pos", "pos_"), ("tag", "tag_")])
def test_token_overwrite_setting(trained, task, attr):
    nlp, _, _ = trained(task)
    tagger = nlp.get_pipe("earlyexit_tagger")
    text, gold = POS_DATA[0]

    def run() -> List[str]:
        doc = nlp.make_doc(text)
        setattr(doc[1], attr, "NOUN")  # gold: VERB
        setattr(doc[3], attr, "X")  # gold: PROPN
        return [getattr(t, attr) for t in nlp(doc)]

    assert run() == [gold[0], "NOUN", gold[2], "X", gold[4]]
    tagger.cfg["overwrite"] = True
    try:
        assert run() == gold
    finally:
        tagger.cfg["overwrite"] = False
