#!/bin/bash
# e5 POS stage 1, 3 epochs (README's 3-epoch recipe: pos_joint_e5.cfg, 1,230 steps, dev every 410),
# with the encoder's learning rate at 0.5x and 2x the shipped scale (encoder_learn_rate_scale 0.2 of
# the 1e-3 peak). Run with the project installed (README), corpus/pos/{train,dev}.spacy from
# `spacy project run convert` and e5 at assets/multilingual-e5-small (`python scripts/fetch_backbone.py
# assets/multilingual-e5-small --name multilingual-e5-small`). One torch thread each, two
# runs side by side (about 50 minutes per run when the other core had the other run only).
set -e
cd "$(dirname "$0")/../../.." && export HF_HUB_OFFLINE=1
OUT=benchmarks/pos_e5/encoder_lr
for scale in 0.1 0.4; do
  python -m spacy train configs/pos_joint_e5.cfg --output training/e5_pos_lr/enc_$scale \
    --paths.train corpus/pos/train.spacy --paths.dev corpus/pos/dev.spacy --paths.backbone assets/multilingual-e5-small \
    --training.max_epochs 3 --training.optimizer.learn_rate.total_steps 1230 --training.optimizer.learn_rate.warmup_steps 120 \
    --training.eval_frequency 410 --system.seed 0 --initialize.before_init.threads 1 \
    --components.earlyexit_tagger.model.encoder_learn_rate_scale $scale
done
# every off-ramp, gold tokenization (the 0.4 run was stopped after its first dev score)
python benchmarks/tools/layer_accuracy.py training/e5_pos_lr/enc_0.1/model-last corpus/pos/dev.spacy --out $OUT/enc_lr_0.1_layers.json
