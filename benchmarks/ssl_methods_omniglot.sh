#!/usr/bin/env bash
# Short CPU runs of the issue-16 self-supervised methods on Omniglot (results/unsupervised_omniglot.md): each preset's
# 20,000-step schedule compressed to STEPS steps (step-counted phases scaled alike), then few-shot evaluation on the
# fixed test episodes. Usage: STEPS=250 OUT=runs/ssl16 [EXTRA="key=value ..."] bash benchmarks/ssl_methods_omniglot.sh
# [METHOD ...] (METHOD: a preset name under omniglot/, e.g. dino or dino_vit)
set -euo pipefail
cd "$(dirname "$0")/.."
M=${METASSL:-.venv/bin/metassl}
STEPS=${STEPS:-250}
OUT=${OUT:-runs/ssl16}
export OMP_NUM_THREADS=1
for m in "${@:-mocov3 nnclr dino swav jigsaw mae}"; do
  for name in $m; do
    s=$((STEPS * 1)); k() { echo $((STEPS * $1 / 20000)); }
    case $name in
      dino|dino_vit) X="optim.warmup_steps=$(k 3200) learner.teacher_temp_warmup_steps=$(k 3200) learner.freeze_last_layer_steps=$(k 320)";;
      swav) X="optim.warmup_steps=$(k 500) learner.queue_start_steps=$(k 1000) learner.freeze_prototypes_steps=$(k 320)";;
      mae|mocov3_vit) X="optim.warmup_steps=$(k 2000)";;
      *) X="optim.warmup_steps=$(k 500)";;
    esac
    R=$OUT/$name
    # shellcheck disable=SC2086
    $M train omniglot/$name train.steps=$s $X train.threads=1 train.progress=false train.val_every=0 train.report=false ${EXTRA:-} --run-dir $R
    $M eval $R --ways 5 --shots 1 5 --queries 15 --episodes 600 --seed 0 --json > $R.eval5.json
    $M eval $R --ways 20 --shots 1 --queries 15 --episodes 600 --seed 0 --batch-episodes 10 --json > $R.eval20.json
  done
done
