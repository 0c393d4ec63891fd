"""Graft: the context off-ramps of the lowest K layers of a heads-only pipeline (trained on a
frozen copy of the stage-1 encoder) onto the stage-1 pipeline; the layers above keep stage 1's
plain off-ramps. Exact, because with a frozen encoder each off-ramp trains on its own layer's loss."""
import sys, torch, spacy
from spacy_earlyexit.model.offramp import OffRampHeads
stage1, heads, k, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
nlp = spacy.load(stage1)
donor = spacy.load(heads)
enc = nlp.get_pipe("earlyexit_tagger").model.shims[0].encoder
denc = donor.get_pipe("earlyexit_tagger").model.shims[0].encoder
assert nlp.get_pipe("earlyexit_tagger").classes == donor.get_pipe("earlyexit_tagger").classes
for (n, a), (m, b) in zip(enc.transformer.state_dict().items(), denc.transformer.state_dict().items()):
    assert n == m and torch.equal(a, b), n
h = denc.offramp_heads
enc.offramp_heads = OffRampHeads(k, h.context, h.hidden)
for i in range(k):
    enc.offramps[i] = denc.offramps[i]
nlp.to_disk(out)
print("grafted", k, "context off-ramps")
