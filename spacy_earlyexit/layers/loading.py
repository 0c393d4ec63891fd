"""Loading a Hugging Face encoder and its fast tokenizer, offline-friendly
and never running remote code."""
import ast
import logging
import re
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator

#: transformers' report of checkpoint weights that the model does not take
UNUSED_WEIGHTS = re.compile(r"were not used when initializing \w+: (\[[^\]]*\])")


class UnusedPoolerFilter(logging.Filter):
    """Drops transformers' "Some weights ... were not used" warning when the
    unused weights are only the pooler's, which the encoder leaves out on
    purpose (without_pooler); any other unused weight is still reported."""

    def filter(self, record: logging.LogRecord) -> bool:
        match = UNUSED_WEIGHTS.search(record.getMessage())
        if match is None:
            return True
        try:
            names = ast.literal_eval(match.group(1))
        except (ValueError, SyntaxError):
            return True
        return not (names and all(str(name).split(".")[0] == "pooler" for name in names))


@contextmanager
def quiet_unused_pooler() -> Iterator[None]:
    """Within the block, transformers does not warn about the dropped pooler."""
    logger = logging.getLogger("transformers.modeling_utils")
    pooler_filter = UnusedPoolerFilter()
    logger.addFilter(pooler_filter)
    try:
        yield
    finally:
        logger.removeFilter(pooler_filter)


def without_pooler(build: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """build(*args, add_pooling_layer=False, **kwargs) where the model class
    takes that argument (BERT, RoBERTa, XLM-R: the early-exit encoder has no
    use for a pooler, and a checkpoint without one would get a random one and
    a warning), else build(*args, **kwargs) (e.g. ELECTRA, which has none).
    A user's own add_pooling_layer in kwargs is kept."""
    if "add_pooling_layer" in kwargs:
        return build(*args, **kwargs)
    try:
        return build(*args, add_pooling_layer=False, **kwargs)
    except TypeError as error:
        if "add_pooling_layer" not in str(error):
            raise
        return build(*args, **kwargs)


def load_pretrained(name: str, tokenizer_config: Dict[str, Any], transformer_config: Dict[str, Any]):
    """Load a Hugging Face encoder and its fast tokenizer (never remote code)."""
    from transformers import AutoModel, AutoTokenizer

    for forbidden in ("trust_remote_code",):
        if tokenizer_config.get(forbidden) or transformer_config.get(forbidden):
            raise ValueError("spacy-earlyexit never runs remote code: remove trust_remote_code")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, use_fast=True, **tokenizer_config)
        with quiet_unused_pooler():
            transformer = without_pooler(AutoModel.from_pretrained, name, **transformer_config)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"could not load the transformer {name!r}: {error}\n"
            "Give a local folder with config.json, weights and tokenizer files, or a "
            "Hugging Face hub name; a hub name needs network access (this machine may "
            "be offline, e.g. HF_HUB_OFFLINE=1)."
        ) from error
    return tokenizer, transformer
