#!/bin/bash
# usage: post.sh TASK(segment|ner): stage 2, sweep, choose, test scores
set -e
# run from anywhere, with the project installed (README); corpora from `spacy project run zh`
cd "$(dirname "$0")/../../.." && export HF_HUB_OFFLINE=1
T=$1
if [ $T = segment ]; then C=zh_pku; EM=""; else C=zh_msra; EM="--entity-margins off,1"; fi
M=metrics/zh_$T; mkdir -p $M
date
/usr/bin/time -v python -m spacy train configs/zh_${T}_selfsample.cfg --output training/zh_$T/selfsample \
  --paths.train corpus/$C/train.spacy --paths.dev corpus/$C/dev300.spacy --paths.stage1 training/zh_$T/joint/model-best \
  --training.max_epochs 0 --training.max_steps ${SS_STEPS:-200} --training.optimizer.learn_rate 0.0003 \
  --system.seed 0 --initialize.before_init.threads 1 2>&1 | tail -n 40
date
python -m spacy_earlyexit sweep --pipeline stage1=training/zh_$T/joint/model-best --pipeline stage2=training/zh_$T/selfsample/model-last \
  --dev corpus/$C/dev300.spacy --output $M/sweep --exit-modes sentence,token --thresholds 0.05,0.1,0.2,0.3 --windows 0,1 \
  --later-factors 1,4/16 $EM --repetitions 2 --batch-size 1024 --threads 1 --no-progress
date
python -m spacy_earlyexit choose $M/sweep.json --from stage2 --source training/zh_$T/selfsample/model-last \
  --output training/zh_$T/chosen --target-speedup 2.0 --speedup-key wall_speedup --record $M/operating_point.json
date
if [ $T = segment ]; then TESTS="corpus/zh_pku/test.spacy corpus/zh_ud/test.spacy"; else TESTS="corpus/zh_msra/test.spacy"; fi
for test in $TESTS; do n=$(basename $(dirname $test)); for p in joint/model-best selfsample/model-last chosen; do
  python -m spacy evaluate training/zh_$T/$p $test --output $M/test_${n}_$(echo $p | tr / _).json 2>&1 | tail -n 4
done; done
date
