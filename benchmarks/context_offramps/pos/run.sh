#!/bin/bash
# Context off-ramps on the lowest layers of a trained POS pipeline (issue #15): every
# off-ramp retrained as a context off-ramp on the frozen stage-1 encoder (heads only),
# then the lowest K of them grafted onto the stage-1 pipeline (exact: with the encoder
# frozen each off-ramp trains on its own layer's loss alone), swept against stage 1.
# Run with the project installed (README), corpus/pos from `spacy project run convert`,
# the stage-1 pipelines of benchmarks/pos_e5/train.sh.
set -e
cd "$(dirname "$0")/../../.." && export HF_HUB_OFFLINE=1
R=benchmarks/context_offramps/pos; O=training/pos_ctx
python $R/export_encoder.py training/pos_e5_6ep/joint/model-best $O/e5_enc
python $R/export_encoder.py training/pos_minilm/joint/model-best $O/minilm_enc
# heads only (freeze_encoder), context off-ramps on every layer (one word either side, 384 GELU
# units): each backbone's stage-1 config with these model settings; MiniLM 2 epochs (820 steps,
# 13 CPU-minutes), e5 stopped after its first epoch (410 steps)
M=--components.earlyexit_tagger.model
for b in minilm e5; do
  if [ $b = e5 ]; then C=configs/pos_joint_e5.cfg; else C=configs/pos_joint.cfg; fi
  python -m spacy train $C --output $O/heads_$b --paths.train corpus/pos/train.spacy \
    --paths.dev corpus/pos/dev.spacy --paths.backbone $O/${b}_enc \
    $M.@architectures spacy_earlyexit.EarlyExitTransformer.v3 $M.freeze_encoder true \
    $M.offramp_context_layers all $M.offramp_context 1 $M.offramp_hidden 384 --training.max_epochs 2 \
    --training.optimizer.learn_rate.total_steps 820 --training.optimizer.learn_rate.warmup_steps 40 \
    --training.eval_frequency 410 --system.seed 0 --initialize.before_init.threads 1
done
python benchmarks/tools/layer_accuracy.py $O/heads_minilm/model-best corpus/pos/dev.spacy --out $R/heads_minilm_layers.json
python benchmarks/tools/layer_accuracy.py $O/heads_e5/model-best corpus/pos/dev.spacy --out $R/heads_e5_layers.json
python $R/graft.py training/pos_minilm/joint/model-best $O/heads_minilm/model-best 2 $O/graft_minilm_2
python $R/graft.py training/pos_e5_6ep/joint/model-best $O/heads_e5/model-best 4 $O/graft_e5_4
python benchmarks/tools/layer_accuracy.py $O/graft_minilm_2 corpus/pos/dev.spacy --out $R/graft_minilm_2_layers.json
python benchmarks/tools/layer_accuracy.py $O/graft_e5_4 corpus/pos/dev.spacy --out $R/graft_e5_4_layers.json
python -m spacy_earlyexit sweep --pipeline plain=training/pos_minilm/joint/model-best --pipeline ctx=$O/heads_minilm/model-best \
  --dev corpus/pos/dev.spacy --output $R/sweep_minilm --exit-modes token --thresholds 0.02,0.05,0.1,0.2 --windows 0,1 \
  --later-factors 1,4/16 --repetitions 1 --threads 1 --no-progress
python -m spacy_earlyexit sweep --pipeline plain=training/pos_minilm/joint/model-best --pipeline ctx2=$O/graft_minilm_2 \
  --dev corpus/pos/dev.spacy --output $R/sweep_minilm_graft --exit-modes token --thresholds 0.02,0.05,0.1 --windows 0,1 \
  --later-factors 1,4/16 --repetitions 2 --threads 1 --no-progress
python -m spacy_earlyexit sweep --pipeline stage1=training/pos_e5_6ep/joint/model-best --pipeline ctx4=$O/graft_e5_4 \
  --dev corpus/pos/dev.spacy --output $R/sweep_e5_graft --exit-modes token --thresholds 0.02,0.03,0.05 --windows 0,1 \
  --later-factors 1/2/4/8 --repetitions 2 --threads 1 --no-progress
