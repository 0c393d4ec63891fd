"""How much of stage 2's (self-sampling's) training signal reaches each layer.

Stage 2 counts a token's loss at layer l only while the token is still
active there. With exits simulated on a trained stage-1 model, most tokens
leave after the first layers, so the upper off-ramps (and the encoder's
upper layers, through them) are trained on a small, hard remainder of the
tokens. This script draws self-sampling settings per span as training does
and reports, per layer, the share of tokens still active and the loss weight
the layer gets relative to stage 1 (depth weights x active share).

    python benchmarks/pos_minilm/self_sampling_share.py PIPELINE TRAIN.spacy --limit 400 \
        --full-depth-share 0.1 --threshold-max 0.4 --draws 3 --out FILE.json
"""
import argparse
import json
from pathlib import Path

import numpy
import spacy
import torch
from spacy.tokens import DocBin

from spacy_earlyexit.layers.early_exit_transformer import _tokenize
from spacy_earlyexit.model.self_sampling import SelfSampling, full_depth_layer_logits, sample_exit_layers
from spacy_earlyexit.pipeline.loss import layer_loss_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline")
    parser.add_argument("corpus")
    parser.add_argument("--limit", type=int, default=400)
    parser.add_argument("--window-max", type=int, default=1)
    parser.add_argument("--threshold-max", type=float, default=0.4)
    parser.add_argument("--full-depth-share", type=float, nargs="+", default=[0.1])
    parser.add_argument("--aggressive-share", type=float, default=0.1)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--batch-docs", type=int, default=64)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    nlp = spacy.load(args.pipeline)
    model = nlp.get_pipe("earlyexit_tagger").model
    encoder = model.shims[0].encoder
    docs = list(DocBin().from_disk(args.corpus).get_docs(nlp.vocab))[: args.limit]
    batches = []
    for start in range(0, len(docs), args.batch_docs):
        pieces, pad_id = _tokenize(model, docs[start : start + args.batch_docs])
        batch = pieces.encoder_batch(range(pieces.n_spans), pad_id)
        batches.append((batch, full_depth_layer_logits(encoder, batch)))
    n_layers = encoder.n_layers
    weights = layer_loss_weights("depth", n_layers)
    result = {"pipeline": args.pipeline, "corpus": args.corpus, "n_docs": len(docs), "settings": []}
    for share in args.full_depth_share:
        sampling = SelfSampling(
            window_range=(0, args.window_max), threshold_range=(0.0, args.threshold_max),
            full_depth_share=share, aggressive_share=args.aggressive_share,
        )
        generator = torch.Generator().manual_seed(0)
        active = numpy.zeros(n_layers)
        n_words = 0
        for _ in range(args.draws):
            for batch, logits in batches:
                exits = sample_exit_layers(encoder, batch, sampling, generator, layer_logits=logits).numpy()
                active += numpy.asarray([(exits >= layer).sum() for layer in range(1, n_layers + 1)])
                n_words += len(exits)
        active_share = active / n_words
        result["settings"].append({
            "window_range": [0, args.window_max], "threshold_range": [0.0, args.threshold_max],
            "full_depth_share": share, "aggressive_share": args.aggressive_share,
            "active_share": active_share.round(4).tolist(),
            "loss_weight_share": (weights * active_share / (weights * active_share).sum()).round(4).tolist(),
            "stage1_loss_weight_share": weights.round(4).tolist(),
        })
        print(f"full_depth_share {share}: active share per layer "
              + " ".join(f"{v * 100:.1f}" for v in active_share))
        print("  loss weight share (stage 2) " + " ".join(
            f"{v * 100:.1f}" for v in weights * active_share / (weights * active_share).sum()))
        print("  loss weight share (stage 1) " + " ".join(f"{v * 100:.1f}" for v in weights))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
