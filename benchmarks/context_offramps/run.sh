#!/bin/bash
# Context off-ramps (EarlyExitTransformer.v3 offramp_context_layers / offramp_context /
# offramp_hidden): the runs behind README's "Context off-ramps". Run with the project installed
# (README), MiniLM at assets/minilm (`python scripts/fetch_backbone.py assets/minilm`),
# ../shared/data beside the project, and for the e5 part the e5 POS stage 1 of
# benchmarks/pos_e5/train.sh. Two jobs ran at a time on the 2 cores.
set -e
cd "$(dirname "$0")/../.." && export HF_HUB_OFFLINE=1
OUT=benchmarks/context_offramps
# corpora: Universal NER EWT (train on its dev file less 200 sentences, score on its test file)
# and WNUT-16 (1,915 tweets to train, 479 held out)
python scripts/convert.py ../shared/data/uner_en_ewt/en_ewt-ud-dev.iob2 corpus/uner/train.spacy \
  --dev-output corpus/uner/dev.spacy --dev-share 0.1 --seed 0
python scripts/convert.py ../shared/data/uner_en_ewt/en_ewt-ud-test.iob2 corpus/uner/test.spacy
python scripts/fetch_wnut.py assets/wnut16/ner.txt
python scripts/convert.py assets/wnut16/ner.txt corpus/wnut/train.spacy \
  --dev-output corpus/wnut/dev.spacy --dev-share 0.2 --seed 0
M=--components.earlyexit_tagger.model
PLAIN="$M.offramp_context_layers 0"
ner() {  # NAME CORPUS SEED SETTINGS...: configs/ner_joint.cfg (5 epochs, MiniLM), then the scores
  name=$1 corpus=$2 seed=$3; shift 3
  python -m spacy train configs/ner_joint.cfg --output training/heads/$name --paths.train corpus/$corpus/train.spacy \
    --paths.dev corpus/$corpus/dev.spacy --paths.backbone assets/minilm --system.seed $seed \
    --initialize.before_init.threads 1 "$@"
  test=corpus/$corpus/test.spacy; [ -e $test ] || test=corpus/$corpus/dev.spacy
  python -m spacy evaluate training/heads/$name/model-last $test --output training/heads/$name/test_scores.json
}
ner uner_plain uner 0 $PLAIN
ner uner_ctx uner 0 $M.offramp_context_layers 3 $M.offramp_hidden 384
ner uner_ctx6_lin uner 0 $M.offramp_hidden 0
ner uner_ctx6_lin_s1 uner 1 $M.offramp_hidden 0
ner uner_ctx6_h128 uner 0 $M.offramp_hidden 128
ner uner_ctx6_mlp uner 0            # ner_joint.cfg as shipped: "all", context 1, 384 units
ner uner_ctx6_mlp_s1 uner 1
ner wnut_plain wnut 0 $PLAIN
ner wnut_ctx6_mlp wnut 0
# exits, UNER test, 3 interleaved repetitions, one thread, idle machine
python -m spacy_earlyexit sweep --pipeline plain=training/heads/uner_plain/model-last \
  --pipeline context=training/heads/uner_ctx6_mlp/model-last --dev corpus/uner/test.spacy --output $OUT/uner_sweep \
  --exit-modes token --thresholds 0.05,0.1,0.2 --windows 0,1 --entity-margins off,1 --repetitions 3 --threads 1 --no-progress
# e5 POS (12 layers): which head do the trained states support? (probe on frozen states)
python benchmarks/context_offramps/head_probe.py training/pos_e5_6ep/joint/model-best corpus/pos/train.spacy \
  corpus/pos/dev.spacy --threads 1 --out $OUT/e5_pos_head_probe.json
# then context off-ramps (384 units) on its layers 1-3, fresh, trained one epoch on the frozen encoder
python benchmarks/context_offramps/with_context_offramps.py training/pos_e5_6ep/joint/model-best training/heads/e5_pos_ctx_init \
  --layers 3 --context 1 --hidden 384
python -m spacy train configs/pos_continue_e5.cfg --output training/heads/e5_pos_ctx --paths.train corpus/pos/train.spacy \
  --paths.dev corpus/pos/dev.spacy --paths.stage1 training/heads/e5_pos_ctx_init --system.seed 0 \
  --training.max_steps 800 --training.optimizer.learn_rate.total_steps 800 \
  --training.optimizer.learn_rate.warmup_steps 40 --training.optimizer.learn_rate.initial_rate 0.001 \
  --training.eval_frequency 400 --initialize.before_init.threads 2
python benchmarks/tools/layer_accuracy.py training/heads/e5_pos_ctx/model-last corpus/pos/dev.spacy --out $OUT/e5_pos_context_heads_layers.json
# one repetition (timings taken while another job ran: accuracy and FLOPs exact, wall-clock indicative)
python -m spacy_earlyexit sweep --pipeline stage1=training/pos_e5_6ep/joint/model-best --pipeline context=training/heads/e5_pos_ctx/model-last \
  --dev corpus/pos/dev.spacy --output $OUT/e5_pos_sweep_1rep --exit-modes token --thresholds 0.02,0.03,0.05,0.1 --windows 0,1 \
  --later-factors 1/2/4/8 --max-layers 6,all --repetitions 1 --threads 1 --no-progress
# stage 2 on the context pipeline, and its exits against stage 1 (one repetition)
python -m spacy train configs/ner_selfsample.cfg --output training/heads/uner_ctx6_mlp_ss --paths.train corpus/uner/train.spacy \
  --paths.dev corpus/uner/dev.spacy --paths.stage1 training/heads/uner_ctx6_mlp/model-last --system.seed 0 \
  --initialize.before_init.threads 1
python -m spacy evaluate training/heads/uner_ctx6_mlp_ss/model-last corpus/uner/test.spacy
python -m spacy_earlyexit sweep --pipeline stage1=training/heads/uner_ctx6_mlp/model-last \
  --pipeline stage2=training/heads/uner_ctx6_mlp_ss/model-last --dev corpus/uner/test.spacy \
  --output $OUT/uner_stage2_sweep_1rep --exit-modes token --thresholds 0.1,0.2,0.3,0.4 --windows 1 \
  --entity-margins off,1 --repetitions 1 --threads 1 --no-progress
# multilingual-e5-small (configs/ner_joint_e5.cfg: 8 layers; context off-ramps as shipped now)
python -m spacy train configs/ner_joint_e5.cfg --output training/heads/uner_e5_ctx --paths.train corpus/uner/train.spacy \
  --paths.dev corpus/uner/dev.spacy --paths.backbone assets/multilingual-e5-small --system.seed 0 \
  --initialize.before_init.threads 1
python -m spacy evaluate training/heads/uner_e5_ctx/model-last corpus/uner/test.spacy --output $OUT/e5_uner_context_test_scores.json
# its exits on the first 1,000 test docs, with MiniLM's context pipeline timed alongside at full depth
# (2 interleaved repetitions, one thread; the other core ran the zh jobs of benchmarks/chinese/)
python -m spacy_earlyexit sweep --pipeline e5_context=training/heads/uner_e5_ctx/model-last --dev corpus/uner/test.spacy \
  --output $OUT/e5_uner_sweep --exit-modes token --thresholds 0.05,0.1,0.2 --windows 0,1 --entity-margins off,1 \
  --repetitions 2 --limit 1000 --threads 1 --no-progress --reference minilm_context=training/heads/uner_ctx6_mlp/model-last
# lower thresholds and wider windows (the first sweep's settings all lose more than 0.5)
python -m spacy_earlyexit sweep --pipeline e5_context=training/heads/uner_e5_ctx/model-last --dev corpus/uner/test.spacy \
  --output $OUT/e5_uner_sweep_low --exit-modes token --thresholds 0.005,0.01,0.02 --windows 1,2 --entity-margins off,1 \
  --repetitions 2 --limit 1000 --threads 1 --no-progress
# joint training with sampled exits from the start: ner_joint.cfg with ner_selfsample.cfg's
# [training.before_update] (self-sampling with the entity rule from step 0), two seeds, and its
# exits against stage 1 (2 interleaved repetitions, one thread, the WNUT run below on the other core)
python - <<'PY'
from spacy.util import load_config
joint = load_config("configs/ner_joint.cfg", interpolate=False)
joint["training"]["before_update"] = load_config("configs/ner_selfsample.cfg", interpolate=False)["training"]["before_update"]
joint.to_disk("training/heads/ner_joint_sampled.cfg", interpolate=False)
PY
ner_sampled() {  # NAME SEED
  python -m spacy train training/heads/ner_joint_sampled.cfg --output training/heads/$1 --paths.train corpus/uner/train.spacy \
    --paths.dev corpus/uner/dev.spacy --paths.backbone assets/minilm --system.seed $2 --initialize.before_init.threads 1
  python -m spacy evaluate training/heads/$1/model-last corpus/uner/test.spacy --output training/heads/$1/test_scores.json
}
ner_sampled uner_ctx6_mlp_joint_sampled 0
ner_sampled uner_ctx6_mlp_joint_sampled_s1 1
python -m spacy_earlyexit sweep --pipeline stage1=training/heads/uner_ctx6_mlp/model-last \
  --pipeline joint_sampled=training/heads/uner_ctx6_mlp_joint_sampled/model-last --dev corpus/uner/test.spacy \
  --output $OUT/uner_joint_sampled_sweep --exit-modes token --thresholds 0.05,0.1,0.2,0.3 --windows 1 \
  --entity-margins off,1 --repetitions 2 --threads 1 --no-progress
# the shipped recipe's exits on WNUT-16 (its 479 held-out tweets; 3 interleaved repetitions, one
# thread, idle machine; settings chosen on the same tweets they are scored on: optimistic)
python -m spacy_earlyexit sweep --pipeline context=training/heads/wnut_ctx6_mlp/model-last --dev corpus/wnut/dev.spacy \
  --output $OUT/wnut_sweep --exit-modes token --thresholds 0.05,0.1,0.2,0.3 --windows 0,1 --entity-margins off,1 \
  --repetitions 3 --threads 1 --no-progress
python -m spacy_earlyexit sweep --pipeline context=training/heads/wnut_ctx6_mlp/model-last --dev corpus/wnut/dev.spacy \
  --output $OUT/wnut_sweep_low --exit-modes token --thresholds 0.005,0.01,0.02 --windows 1,2 --entity-margins off,1 \
  --repetitions 3 --threads 1 --no-progress
# stage 2 on the WNUT pipeline, then both side by side
python -m spacy train configs/ner_selfsample.cfg --output training/heads/wnut_ctx6_mlp_ss --paths.train corpus/wnut/train.spacy \
  --paths.dev corpus/wnut/dev.spacy --paths.stage1 training/heads/wnut_ctx6_mlp/model-last --system.seed 0 \
  --initialize.before_init.threads 1
python -m spacy evaluate training/heads/wnut_ctx6_mlp_ss/model-last corpus/wnut/dev.spacy
python -m spacy_earlyexit sweep --pipeline stage1=training/heads/wnut_ctx6_mlp/model-last \
  --pipeline stage2=training/heads/wnut_ctx6_mlp_ss/model-last --dev corpus/wnut/dev.spacy --output $OUT/wnut_stage2_sweep \
  --exit-modes token --thresholds 0.005,0.01,0.02,0.05 --windows 1,2 --later-factors 1,4 --repetitions 3 --threads 1 --no-progress
