"""Give a trained pipeline context off-ramps on its lowest layers (fresh
weights), keep the other off-ramps and the encoder, and freeze the encoder
for the training that follows (the new heads then learn on the trained
states; spacy train with a config that sources OUTPUT).

    python benchmarks/context_offramps/with_context_offramps.py PIPELINE OUTPUT \
        --layers 3 --context 1 --hidden 384
"""
import argparse
from pathlib import Path

import spacy
import torch
from spacy.util import load_config

from spacy_earlyexit.model.offramp import OffRampHeads

PIPE = "earlyexit_tagger"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline")
    parser.add_argument("output")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--context", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    nlp = spacy.load(args.pipeline)
    model = nlp.get_pipe(PIPE).model
    encoder = model.shims[0].encoder
    heads = OffRampHeads(args.layers, args.context, args.hidden)
    fresh = heads.build(
        encoder.n_layers, encoder.hidden_size, encoder.n_classes, encoder.offramp_dropout
    )
    for index in range(args.layers, encoder.n_layers):
        fresh[index].load_state_dict(encoder.offramps[index].state_dict())
    encoder.offramps = fresh
    encoder.offramp_heads = heads
    model.attrs["offramp_heads"] = heads
    nlp.to_disk(args.output)
    config_path = Path(args.output) / "config.cfg"
    config = load_config(config_path)
    settings = config["components"][PIPE]["model"]
    settings["@architectures"] = "spacy_earlyexit.EarlyExitTransformer.v3"  # v2's arguments and more
    settings["freeze_encoder"] = True
    settings["offramp_context_layers"] = heads.context_layers
    settings["offramp_context"] = heads.context
    settings["offramp_hidden"] = heads.hidden
    config.to_disk(config_path)
    print(f"{args.output}: off-ramps {heads.to_dict()}, fresh on layers 1-{args.layers}, encoder frozen")


if __name__ == "__main__":
    main()
