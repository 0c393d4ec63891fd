import spacy, numpy, torch, sys
import spacy_earlyexit.pipeline.architectures
from spacy.tokens import DocBin
from spacy.training import Example
from spacy.util import fix_random_seed
torch.set_num_threads(1)
split = sys.argv[1]
nlp = spacy.blank("zh")
nlp.add_pipe("earlyexit_tagger", config={"task": "ner", "model": {"@architectures": "spacy_earlyexit.EarlyExitTransformer.v3", "name": "/work/e5_hf", "piece_split": split, "freeze_embeddings": True, "encoder_learn_rate_scale": 0.1, "get_spans": {"@span_getters": "spacy-transformers.strided_spans.v1", "window": 128, "stride": 96}}})
gold = [d for d in DocBin().from_disk("/work/runs/zh/corpus/msra/train_8k.spacy").get_docs(nlp.vocab) if d.ents][:8]
exs = [Example(nlp.make_doc(d.text), d) for d in gold]
fix_random_seed(0)
opt = nlp.initialize(lambda: exs)
opt.learn_rate = 1e-3
for step in range(1, 41):
    losses = nlp.update(exs, sgd=opt)
    if step % 10 == 0:
        print(step, losses, nlp.evaluate(exs)["ents_f"], flush=True)
