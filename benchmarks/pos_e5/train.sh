#!/bin/bash
# e5 POS, stage 1 for 6 epochs (issue #15), stage 2 on it, per-layer dev accuracy,
# and the MiniLM stage 1 of README's recipe as the reference.
# Run with the project installed (README), corpus/pos/{train,dev}.spacy from
# `spacy project run convert`, and both backbones fetched:
#   python scripts/fetch_backbone.py assets/minilm
#   python scripts/fetch_backbone.py assets/multilingual-e5-small --name multilingual-e5-small
set -e
cd "$(dirname "$0")/../.." && export HF_HUB_OFFLINE=1
OUT=benchmarks/pos_e5
# stage 1: pos_joint_e5.cfg, 6 epochs of ~500-word batches (2,460 steps), dev every 410 steps
/usr/bin/time -v python -m spacy train configs/pos_joint_e5.cfg --output training/pos_e5_6ep/joint \
  --paths.train corpus/pos/train.spacy --paths.dev corpus/pos/dev.spacy --paths.backbone assets/multilingual-e5-small \
  --training.max_epochs 6 --training.optimizer.learn_rate.total_steps 2460 --training.optimizer.learn_rate.warmup_steps 120 \
  --training.eval_frequency 410 --system.seed 0 --initialize.before_init.threads 2
# stage 2: pos_selfsample_e5.cfg as shipped (60 steps)
/usr/bin/time -v python -m spacy train configs/pos_selfsample_e5.cfg --output training/pos_e5_6ep/selfsample \
  --paths.train corpus/pos/train.spacy --paths.dev corpus/pos/dev.spacy --paths.stage1 training/pos_e5_6ep/joint/model-best \
  --system.seed 0
# control: the same 60 steps with every span at full depth (ordinary fine-tuning at stage 2's rate)
python -m spacy train configs/pos_selfsample_e5.cfg --output training/pos_e5_6ep/selfsample_full \
  --paths.train corpus/pos/train.spacy --paths.dev corpus/pos/dev.spacy --paths.stage1 training/pos_e5_6ep/joint/model-best \
  --system.seed 0 --training.before_update.self_sampling.full_depth_share 1.0 --training.before_update.self_sampling.aggressive_share 0.0
# MiniLM stage 1, README's recipe (3 epochs)
/usr/bin/time -v python -m spacy train configs/pos_joint.cfg --output training/pos_minilm/joint \
  --paths.train corpus/pos/train.spacy --paths.dev corpus/pos/dev.spacy --paths.backbone assets/minilm \
  --system.seed 0 --initialize.before_init.threads 1
# every off-ramp at full depth, gold tokenization
python benchmarks/tools/layer_accuracy.py training/pos_e5_6ep/joint/model-best corpus/pos/dev.spacy --out $OUT/stage1_layers.json
python benchmarks/tools/layer_accuracy.py training/pos_e5_6ep/selfsample/model-last corpus/pos/dev.spacy --out $OUT/stage2_layers.json
python benchmarks/tools/layer_accuracy.py training/pos_e5_6ep/selfsample_full/model-last corpus/pos/dev.spacy --out $OUT/stage2_control_full_depth_layers.json
python benchmarks/tools/layer_accuracy.py training/pos_minilm/joint/model-best corpus/pos/dev.spacy --out $OUT/minilm_stage1_layers.json
# every setting once, on all of dev (its timings were taken while the MiniLM training ran on the other core)
python -m spacy_earlyexit sweep --pipeline stage1=training/pos_e5_6ep/joint/model-best --pipeline stage2=training/pos_e5_6ep/selfsample/model-last \
  --dev corpus/pos/dev.spacy --output $OUT/sweep_all_settings --exit-modes token --thresholds 0.02,0.03,0.05,0.1 --windows 0,1 \
  --later-factors 1/2/4/8,1 --max-layers 6,all --repetitions 1 --threads 1 --no-progress
# the settings near the targets, idle machine, 5 interleaved repetitions, MiniLM's full depth timed alongside
python -m spacy_earlyexit sweep --pipeline stage1=training/pos_e5_6ep/joint/model-best \
  --dev corpus/pos/dev.spacy --output $OUT/sweep_vs_minilm --exit-modes token --thresholds 0.02,0.03 --windows 0,1 \
  --later-factors 1/2/4/8 --max-layers 6,all --repetitions 5 --threads 1 --no-progress \
  --reference minilm=training/pos_minilm/joint/model-best
# do loss weights or distillation lift the first off-ramps? 200 more steps of
# configs/pos_continue_e5.cfg from a copy of stage 1 whose component cfg gets SETTINGS (JSON)
continue_with() {  # NAME SETTINGS
  S=training/pos_e5_6ep/stage1_$1
  rm -rf $S && cp -r training/pos_e5_6ep/joint/model-best $S
  python -c "import json, sys; p = sys.argv[1]; c = json.load(open(p)); c.update(json.loads(sys.argv[2])); json.dump(c, open(p, 'w'), indent=2)" \
    $S/earlyexit_tagger/cfg "$2"
  python -m spacy train configs/pos_continue_e5.cfg --output training/pos_e5_6ep/continue_$1 \
    --paths.train corpus/pos/train.spacy --paths.dev corpus/pos/dev.spacy --paths.stage1 $S --system.seed 0
  python benchmarks/tools/layer_accuracy.py training/pos_e5_6ep/continue_$1/model-last corpus/pos/dev.spacy --out $OUT/continue200_$1_layers.json
}
continue_with depth '{}'
continue_with uniform '{"loss_weights": "uniform"}'
continue_with distill '{"loss_weights": "uniform", "distillation": 0.5, "distillation_temperature": 2.0}'
# the three continuations in token mode (one repetition: compare accuracy at matched FLOPs, not the timings)
python -m spacy_earlyexit sweep --pipeline depth=training/pos_e5_6ep/continue_depth/model-last \
  --pipeline uniform=training/pos_e5_6ep/continue_uniform/model-last --pipeline distill=training/pos_e5_6ep/continue_distill/model-last \
  --dev corpus/pos/dev.spacy --output $OUT/sweep_continue200 --exit-modes token --thresholds 0.02,0.03,0.05 --windows 0 \
  --later-factors 1/2/4/8 --max-layers all --repetitions 1 --threads 2 --no-progress
