"""Save a trained pipeline's encoder (transformer + tokenizer) as a Hugging Face folder."""
import sys
import spacy
nlp = spacy.load(sys.argv[1])
shim = nlp.get_pipe("earlyexit_tagger").model.shims[0]
enc = shim.encoder
assert enc.case_embedding is None, "case embedding would be lost"
enc.transformer.save_pretrained(sys.argv[2])
shim.tokenizer.save_pretrained(sys.argv[2])
print(type(enc.transformer).__name__, enc.n_layers)
