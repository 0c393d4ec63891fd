#!/bin/bash
# usage: train.sh TASK(segment|ner) STEPS: the zh stage 1 of benchmarks/chinese/plain_offramps/train.sh
# (same config, steps, schedule, seed, dev300 scored every 250 steps) with context off-ramps on
# every layer (one character either side, 384 GELU units).
set -e
# run from anywhere, with the project installed (README); corpora from `spacy project run zh`
cd "$(dirname "$0")/../.." && export HF_HUB_OFFLINE=1
T=$1; S=$2
if [ $T = segment ]; then C=zh_pku; else C=zh_msra; fi
[ -e corpus/$C/dev300.spacy ] || python -c "import sys; from spacy.tokens import DocBin; import spacy; nlp = spacy.blank('zh'); docs = list(DocBin().from_disk(sys.argv[1]).get_docs(nlp.vocab))[:300]; DocBin(docs=docs, store_user_data=True).to_disk(sys.argv[2])" corpus/$C/dev.spacy corpus/$C/dev300.spacy
M=--components.earlyexit_tagger.model
/usr/bin/time -v python -m spacy train configs/zh_${T}_joint.cfg --output training/zh_ctx_${T}/joint \
  --paths.train corpus/$C/train.spacy --paths.dev corpus/$C/dev300.spacy --paths.backbone assets/multilingual-e5-small \
  --training.max_epochs 0 --training.max_steps $S --training.optimizer.learn_rate.total_steps $S \
  --training.eval_frequency 250 --system.seed 0 --initialize.before_init.threads 1 \
  $M.offramp_context_layers all $M.offramp_context 1 $M.offramp_hidden 384
