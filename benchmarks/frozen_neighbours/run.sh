#!/bin/bash
# The three readings of the same exits on MSRA dev300 (context stage 1, plain stage 1, context
# stage 2 of benchmarks/chinese/stage2.sh), and the entity-rule margins on English UNER.
set -e
cd "$(dirname "$0")/../.." && export HF_HUB_OFFLINE=1
OUT=benchmarks/frozen_neighbours
for m in context:training/zh_ctx_ner/joint/model-best plain:training/zh_ner/joint/model-best \
         context_stage2:training/zh_ctx_ner/selfsample600/model-last; do
  python benchmarks/tools/frozen_neighbours.py ${m#*:} corpus/zh_msra/dev300.spacy \
    --setting '{"exit_mode":"token","threshold":0.05,"window":0}' \
    --setting '{"exit_mode":"token","threshold":0.05,"window":1}' \
    --setting '{"exit_mode":"token","threshold":0.2,"window":1,"entity_exit":true,"entity_margin":6}' \
    --out $OUT/msra_${m%%:*}.json
done
# UNER test, first 1,000 docs: the context pipelines of benchmarks/context_offramps/run.sh
python -m spacy_earlyexit sweep --pipeline minilm_ctx=training/heads/uner_ctx6_mlp/model-last \
  --pipeline e5_ctx=training/heads/uner_e5_ctx/model-last --dev corpus/uner/test.spacy --output $OUT/uner_margins \
  --exit-modes token --thresholds 0.02,0.05,0.1,0.2 --windows 0,1 --later-factors 1 --entity-margins off,1,2,3 \
  --repetitions 2 --limit 1000 --threads 1 --no-progress
