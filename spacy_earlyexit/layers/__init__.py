"""The thinc layer: spaCy docs to the torch EarlyExitEncoder and back
(word pieces, span batches, token mapping, the PyTorch shim, loading)."""
