#!/bin/bash
# usage: s2.sh NAME CONFIG STAGE1 TRAIN DEV STEPS EVAL [extra]
NAME=$1; CFG=$2; S1=$3; TRAIN=$4; DEV=$5; STEPS=$6; EVAL=$7; shift 7
cd /work/wt-zh
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 PYTHONPATH=/work/wt-zh
exec /work/main/.venv/bin/python -m spacy train $CFG --code /work/runs/zh/register.py --output /work/runs/zh/training/$NAME \
  --paths.train $TRAIN --paths.dev $DEV --paths.stage1 $S1 --training.max_epochs 0 \
  --training.max_steps $STEPS --training.eval_frequency $EVAL "$@"
