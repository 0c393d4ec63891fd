"""Where token exit loses accuracy on a pipeline with context off-ramps.

    python benchmarks/tools/frozen_neighbours.py PIPELINE DEV.spacy [--limit N] [--out FILE.json] \
        --setting '{"exit_mode": "token", "threshold": 0.05, "window": 0}' [--setting ...]

For each exit setting, three scores of the same exits:
- real: the pipeline as it runs;
- neighbours at full depth: as real, but every context off-ramp reads its
  neighbours' states from a full-depth run of the same layer (the word's own
  state stays the real one), so exited neighbours are not read frozen;
- full depth at the exit layers: each word's label is the full-depth run's
  prediction of the off-ramp at the layer it exited at (nothing frozen: not
  the neighbours' states, nor the keys and values of exited pieces).
real -> neighbours at full depth is what frozen neighbour states cost the
context off-ramps; the rest, to "full depth at the exit layers", is what
frozen keys and values cost inside the encoder. A diagnostic: it patches
the encoder's internals for the run (benchmarks only, never the package).
"""
import argparse
import json
from pathlib import Path
from typing import Any, Dict, List

import spacy
import torch
from spacy.tokens import DocBin
from spacy.training import Example

import spacy_earlyexit.model.batch_run as batch_run
from spacy_earlyexit.model.exit_settings import ExitSettings
from spacy_earlyexit.model.offramp import ContextOffRamp

VARIANTS = ("real", "neighbours at full depth", "full depth at the exit layers")


class Patches:
    """Swaps the encoder's forward_batches and _BatchRun's off-ramp for the variants."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self.variant = "real"
        self.full_states: Dict[int, List[torch.Tensor]] = {}  # id(batch) -> states after each layer
        self.forward = encoder.forward_batches
        self.offramp_logits = batch_run._BatchRun._offramp_logits
        encoder.forward_batches = self.forward_batches
        patches = self

        def offramp_logits(run, layer_index, hidden, words):
            return patches.logits(run, layer_index, hidden, words)

        batch_run._BatchRun._offramp_logits = offramp_logits

    def forward_batches(self, batches, settings=None, forced=None, return_layer_logits=False,
                        output_hidden_states=False, entity_classes=None):
        exits = settings is not None and settings.exit_mode != "off"
        if not exits or self.variant == "real":
            return self.forward(batches, settings, forced, return_layer_logits, output_hidden_states, entity_classes)
        # the full-depth run gives what the variant replaces: states, or labels per layer
        states = self.variant == "neighbours at full depth"
        full = [self.forward([b], ExitSettings(), None, not states, states, entity_classes)[0] for b in batches]
        if states:
            self.full_states = {id(b): out.hidden_states for b, out in zip(batches, full)}
        try:
            outs = self.forward(batches, settings, forced, return_layer_logits, output_hidden_states, entity_classes)
        finally:
            self.full_states = {}
        if self.variant == "full depth at the exit layers":
            for out, reference in zip(outs, full):
                words = torch.arange(out.exit_layer.shape[0])
                out.labels = reference.layer_logits[out.exit_layer - 1, words].argmax(-1)
        return outs

    def logits(self, run, layer_index: int, hidden: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        ramp = run.encoder.offramps[layer_index]
        states_by_layer = self.full_states.get(id(run.batch))
        if states_by_layer is None or not isinstance(ramp, ContextOffRamp):
            return self.offramp_logits(run, layer_index, hidden, words)
        encoder, batch = run.encoder, run.batch
        d = encoder.hidden_size
        window = run.window_words[words]
        present = window >= 0
        known = torch.where(present, window, words[:, None].expand_as(window))
        full = states_by_layer[layer_index + 1]  # [S, T, d], the spans in their original rows
        neighbours = full[batch.word_span[known], batch.word_piece[known]]
        length = hidden.shape[1]
        piece = run.row_of_span[batch.word_span[words]] * length + batch.word_piece[words]
        own = hidden.reshape(-1, d).index_select(0, piece)[:, None]
        c = ramp.context
        states = torch.cat([neighbours[:, :c], own, neighbours[:, c + 1:]], dim=1)
        states = encoder.exit_states(states.reshape(-1, d)).reshape(*window.shape, d)
        return ramp(states * present[..., None].to(states.dtype))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline")
    parser.add_argument("dev")
    parser.add_argument("--setting", action="append", required=True, help="exit settings as JSON (repeatable)")
    parser.add_argument("--limit", type=int, default=0, help="first N dev docs (0: all)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    nlp = spacy.load(args.pipeline)
    tagger = nlp.get_pipe("earlyexit_tagger")
    patches = Patches(tagger.model.shims[0].encoder)
    gold = list(DocBin().from_disk(args.dev).get_docs(nlp.vocab))
    if args.limit:
        gold = gold[: args.limit]
    examples = [Example(nlp.make_doc(doc.text), doc) for doc in gold]
    key = tagger.task.score_keys[0]
    off = nlp.evaluate(examples, component_cfg={"earlyexit_tagger": {"exit_mode": "off"}})[key]
    print(f"full depth: {off * 100:.2f}")
    rows = []
    for setting in args.setting:
        row: Dict[str, Any] = {"setting": json.loads(setting)}
        for variant in VARIANTS:
            patches.variant = variant
            scores = nlp.evaluate(examples, component_cfg={"earlyexit_tagger": row["setting"]})
            row[variant] = scores[key]
            row.setdefault("flops_speedup", scores.get("flops_speedup"))
            print(f"{setting}  {variant}: {scores[key] * 100:.2f}", flush=True)
        rows.append(row)
    result = {"pipeline": args.pipeline, "dev": args.dev, "limit": args.limit, "key": key,
              "full_depth": off, "settings": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
