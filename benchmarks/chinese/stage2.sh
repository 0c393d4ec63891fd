#!/bin/bash
# usage: stage2.sh: self-sampling (configs/zh_ner_selfsample.cfg, 200 steps at 3e-4 as in
# benchmarks/chinese/plain_offramps/post.sh) on the MSRA context stage 1, its test score, and a
# sweep of stage 1 against stage 2 on dev300 with `choose` at >= 2x wall-clock.
set -e
cd "$(dirname "$0")/../.." && export HF_HUB_OFFLINE=1
OUT=benchmarks/chinese
python -m spacy train configs/zh_ner_selfsample.cfg --output training/zh_ctx_ner/selfsample \
  --paths.train corpus/zh_msra/train.spacy --paths.dev corpus/zh_msra/dev300.spacy \
  --paths.stage1 training/zh_ctx_ner/joint/model-best --training.max_epochs 0 --training.max_steps 200 \
  --training.optimizer.learn_rate 0.0003 --system.seed 0 --initialize.before_init.threads 1 2>&1 | tail -n 12
python -m spacy evaluate training/zh_ctx_ner/selfsample/model-last corpus/zh_msra/test.spacy \
  --output $OUT/test_zh_msra_context_stage2.json 2>&1 | tail -n 4
python -m spacy_earlyexit sweep --pipeline stage1=training/zh_ctx_ner/joint/model-best \
  --pipeline stage2=training/zh_ctx_ner/selfsample/model-last --dev corpus/zh_msra/dev300.spacy \
  --output $OUT/ner_stage2_sweep --exit-modes sentence,token --thresholds 0.05,0.1,0.2,0.3 --windows 1 \
  --entity-margins off,1 --repetitions 2 --batch-size 1024 --threads 1 --no-progress
python -m spacy_earlyexit choose $OUT/ner_stage2_sweep.json --from stage2 \
  --source training/zh_ctx_ner/selfsample/model-last --output training/zh_ctx_ner/chosen_stage2 \
  --target-speedup 2.0 --speedup-key wall_speedup --record $OUT/ner_stage2_operating_point.json
python -m spacy evaluate training/zh_ctx_ner/chosen_stage2 corpus/zh_msra/test.spacy \
  --output $OUT/test_zh_msra_context_stage2_chosen.json 2>&1 | tail -n 4
# a longer stage 2: 600 steps, then stage 1 against it on dev300 (windows 0 and 1) and its test score
python -m spacy train configs/zh_ner_selfsample.cfg --output training/zh_ctx_ner/selfsample600 \
  --paths.train corpus/zh_msra/train.spacy --paths.dev corpus/zh_msra/dev300.spacy \
  --paths.stage1 training/zh_ctx_ner/joint/model-best --training.max_epochs 0 --training.max_steps 600 \
  --training.eval_frequency 200 --training.optimizer.learn_rate 0.0003 --system.seed 0 --initialize.before_init.threads 1
python -m spacy_earlyexit sweep --pipeline stage1=training/zh_ctx_ner/joint/model-best \
  --pipeline stage2_600=training/zh_ctx_ner/selfsample600/model-last --dev corpus/zh_msra/dev300.spacy \
  --output $OUT/ner_stage2_600_sweep --exit-modes sentence,token --thresholds 0.05,0.1,0.2 --windows 0,1 \
  --entity-margins off,1 --repetitions 2 --batch-size 1024 --threads 1 --no-progress
python -m spacy evaluate training/zh_ctx_ner/selfsample600/model-last corpus/zh_msra/test.spacy \
  --output $OUT/test_zh_msra_context_stage2_600.json
