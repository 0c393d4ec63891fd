#!/bin/bash
# usage: post.sh TASK(segment|ner): test scores of the context stage 1 (full test files, per off-ramp),
# then a sweep on dev300 of it against the plain stage 1 of benchmarks/chinese/plain_offramps
# (training/zh_TASK/joint/model-best), interleaved in one process, and the setting `choose` takes
# at >= 2x measured wall-clock.
set -e
cd "$(dirname "$0")/../.." && export HF_HUB_OFFLINE=1
T=$1; OUT=benchmarks/chinese
if [ $T = segment ]; then C=zh_pku; TESTS="corpus/zh_pku/test.spacy corpus/zh_ud/test.spacy"
  GRID="--exit-modes token --thresholds 0.1,0.2,0.3,0.4 --windows 0,1,2"
else C=zh_msra; TESTS="corpus/zh_msra/test.spacy"
  GRID="--exit-modes sentence,token --thresholds 0.05,0.1,0.2,0.3 --windows 0,1 --entity-margins off,1"; fi
for test in $TESTS; do
  python -m spacy evaluate training/zh_ctx_$T/joint/model-best $test \
    --output $OUT/test_$(basename $(dirname $test))_context.json 2>&1 | tail -n 4
done
python -m spacy_earlyexit sweep --pipeline plain=training/zh_$T/joint/model-best \
  --pipeline context=training/zh_ctx_$T/joint/model-best --dev corpus/$C/dev300.spacy --output $OUT/${T}_sweep \
  $GRID --repetitions 2 --batch-size 1024 --threads 1 --no-progress
python -m spacy_earlyexit choose $OUT/${T}_sweep.json --from context --source training/zh_ctx_$T/joint/model-best \
  --output training/zh_ctx_$T/chosen --target-speedup 2.0 --speedup-key wall_speedup --record $OUT/${T}_operating_point.json
for test in $TESTS; do
  python -m spacy evaluate training/zh_ctx_$T/chosen $test \
    --output $OUT/test_$(basename $(dirname $test))_context_chosen.json 2>&1 | tail -n 4
done
