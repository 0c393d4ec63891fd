"""Loading a checkpoint with a pooler prints no warning about the pooler the
encoder leaves out; other unused weights are still reported."""
import logging

from spacy_earlyexit.layers.loading import UnusedPoolerFilter, load_pretrained


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("transformers.modeling_utils", logging.WARNING, __file__, 1, message, None, None)


def test_only_pooler_reports_are_dropped():
    pooler_only = record(
        "Some weights of the model checkpoint at x were not used when initializing BertModel: "
        "['pooler.dense.bias', 'pooler.dense.weight']\n- This IS expected ..."
    )
    other = record(
        "Some weights of the model checkpoint at x were not used when initializing BertModel: "
        "['pooler.dense.bias', 'cls.predictions.bias']"
    )
    unrelated = record("Some weights of BertModel were not initialized from the model checkpoint")
    keep = UnusedPoolerFilter()
    assert not keep.filter(pooler_only)
    assert keep.filter(other) and keep.filter(unrelated)


def test_loading_a_checkpoint_with_a_pooler_is_quiet(tiny_bert, caplog):
    from safetensors.torch import load_file

    weights = next(tiny_bert.glob("*.safetensors"), None)
    if weights is not None:  # the fixture's checkpoint has the pooler the encoder drops
        assert any(name.startswith("pooler.") for name in load_file(str(weights)))
    with caplog.at_level(logging.WARNING, logger="transformers"):
        load_pretrained(str(tiny_bert), {}, {})
    assert not [r for r in caplog.records if "were not used" in r.getMessage()]
