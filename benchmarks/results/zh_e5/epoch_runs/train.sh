#!/bin/bash
# usage: train.sh TASK(segment|ner) STEPS
set -e
cd /work/main && . .venv/bin/activate && export HF_HUB_OFFLINE=1
T=$1; S=$2
if [ $T = segment ]; then C=zh_pku; else C=zh_msra; fi
/usr/bin/time -v python -m spacy train configs/zh_${T}_joint.cfg --output training/zh_${T}/joint \
  --paths.train corpus/$C/train.spacy --paths.dev corpus/$C/dev300.spacy --paths.backbone assets/multilingual-e5-small \
  --training.max_epochs 0 --training.max_steps $S --training.optimizer.learn_rate.total_steps $S \
  --training.eval_frequency 250 --system.seed 0 --initialize.before_init.threads 1
