#!/bin/bash
# usage: train.sh NAME CONFIG TRAIN DEV STEPS EVAL_FREQ [extra overrides...]
NAME=$1; CFG=$2; TRAIN=$3; DEV=$4; STEPS=$5; EVAL=$6; shift 6
cd /work/wt-zh
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 PYTHONPATH=/work/wt-zh
exec /work/main/.venv/bin/python -m spacy train $CFG --code /work/runs/zh/register.py --output /work/runs/zh/training/$NAME \
  --paths.train $TRAIN --paths.dev $DEV --paths.backbone /work/e5_hf \
  --training.max_steps $STEPS --training.optimizer.learn_rate.total_steps $STEPS --training.eval_frequency $EVAL "$@"
