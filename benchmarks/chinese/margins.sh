#!/bin/bash
# The entity rule with wider margins on the MSRA context pipelines (stage 1 and the 600-step
# stage 2 of stage2.sh), dev300; `choose` at >= 2x measured wall-clock; test score of the choice.
set -e
cd "$(dirname "$0")/../.." && export HF_HUB_OFFLINE=1
OUT=benchmarks/chinese
# margins 1-3, each stage in its own sweep (the two ran side by side on the 2 cores)
python -m spacy_earlyexit sweep --pipeline joint=training/zh_ctx_ner/joint/model-best --dev corpus/zh_msra/dev300.spacy \
  --output $OUT/ner_margins_sweep_stage1_m123 --exit-modes token --thresholds 0.05,0.1,0.2 --windows 0,1 \
  --later-factors 1 --entity-margins 1,2,3 --repetitions 2 --threads 1 --no-progress
python -m spacy_earlyexit sweep --pipeline ss600=training/zh_ctx_ner/selfsample600/model-last --dev corpus/zh_msra/dev300.spacy \
  --output $OUT/ner_margins_sweep_stage2_m123 --exit-modes token --thresholds 0.05,0.1,0.2 --windows 0,1 \
  --later-factors 1 --entity-margins 1,2,3 --repetitions 2 --threads 1 --no-progress
# margins 2-6, both stages in one sweep (the other core ran the UNER sweep below)
python -m spacy_earlyexit sweep --pipeline stage1=training/zh_ctx_ner/joint/model-best \
  --pipeline stage2=training/zh_ctx_ner/selfsample600/model-last --dev corpus/zh_msra/dev300.spacy \
  --output $OUT/ner_margins_sweep --exit-modes token --thresholds 0.1,0.2,0.3 --windows 0,1 --later-factors 1 \
  --entity-margins 2,3,4,6 --repetitions 2 --threads 1 --no-progress
python -m spacy_earlyexit choose $OUT/ner_margins_sweep.json --from stage2 \
  --source training/zh_ctx_ner/selfsample600/model-last --output training/zh_ctx_ner/chosen_margin \
  --target-speedup 2.0 --speedup-key wall_speedup --record $OUT/ner_stage2_margin_operating_point.json
python -m spacy evaluate training/zh_ctx_ner/chosen_margin corpus/zh_msra/test.spacy \
  --output $OUT/test_zh_msra_context_stage2_margin_chosen.json
# stage 2 (600 steps) that simulates the entity rule (margin 4) in self-sampling, swept against
# the plain-TOKEE stage 2 (13 minutes of training while a CI run shared the cores)
python -m spacy train configs/zh_ner_selfsample.cfg --output training/zh_ctx_ner/selfsample600_e4 \
  --paths.train corpus/zh_msra/train.spacy --paths.dev corpus/zh_msra/dev300.spacy \
  --paths.stage1 training/zh_ctx_ner/joint/model-best --training.max_epochs 0 --training.max_steps 600 \
  --training.eval_frequency 200 --training.optimizer.learn_rate 0.0003 --system.seed 0 --initialize.before_init.threads 1 \
  --training.before_update.self_sampling.@misc spacy_earlyexit.SelfSampling.v3 \
  --training.before_update.self_sampling.entity_exit true --training.before_update.self_sampling.entity_margin 4
python -m spacy_earlyexit sweep --pipeline ss600=training/zh_ctx_ner/selfsample600/model-last \
  --pipeline ss600_e4=training/zh_ctx_ner/selfsample600_e4/model-last --dev corpus/zh_msra/dev300.spacy \
  --output $OUT/ner_stage2_entity_sampling_sweep --exit-modes token --thresholds 0.05,0.1,0.2 --windows 0,1 \
  --later-factors 1 --entity-margins off,1,3,6 --repetitions 2 --threads 1 --no-progress
# the same entity-rule grid on all 1,006 dev sentences (what the zh workflow's sweep reads), both
# stages in one sweep (the other core trained a model); dev300's margin-6 result did not hold there
python -m spacy_earlyexit sweep --pipeline stage1=training/zh_ctx_ner/joint/model-best \
  --pipeline stage2=training/zh_ctx_ner/selfsample600/model-last --dev corpus/zh_msra/dev.spacy \
  --output $OUT/ner_sweep_devfull --exit-modes token --thresholds 0.05,0.1,0.2 --windows 0,1 --later-factors 1 \
  --entity-margins off,1,3,6 --repetitions 2 --threads 1 --no-progress
