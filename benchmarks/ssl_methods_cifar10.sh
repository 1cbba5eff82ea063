#!/usr/bin/env bash
# Short CPU runs of the self-supervised methods on CIFAR-10 (results/ssl_cifar10.md, issue 16): each preset's
# schedule compressed to STEPS steps (step-counted phases scaled alike), batch BATCH with the learning rate scaled
# linearly from the preset's batch (lightly's rule), ResNet-18 at WIDTH (ViT presets keep their width), one thread.
# Then kNN (k = 200, T = 0.1) and linear probe on fixed subsets (10,000 train / 2,000 test images) and 5-way few-shot.
# Usage: STEPS=400 BATCH=128 WIDTH=16 OUT=runs/ssl_cifar [EXTRA="key=value ..."] \
#        bash benchmarks/ssl_methods_cifar10.sh [train|eval] METHOD...
set -euo pipefail
cd "$(dirname "$0")/.."
M=${METASSL:-.venv/bin/metassl}
STEPS=${STEPS:-400}; BATCH=${BATCH:-128}; WIDTH=${WIDTH:-16}; OUT=${OUT:-runs/ssl_cifar}
export OMP_NUM_THREADS=1
what=$1; shift
PY=${PYTHON:-.venv/bin/python}
k() { $PY -c "print(max(1 if $1 else 0, round($STEPS * $1 / $2)))"; }  # a preset's step count scaled to STEPS
keys() {  # preset values of dotted keys, space-separated
  $PY -c "import sys; from metassl.config import load_raw; d = load_raw(sys.argv[1])
print(*[(lambda v: [v := v.get(p, {}) for p in k.split('.')][-1])(d) for k in sys.argv[2:]])" "$@"; }
for name in "$@"; do
  R=$OUT/$name
  if [ "$what" = train ]; then
    read -r steps batch lr warm < <(keys cifar10/$name train.steps tasks.batch_size optim.lr optim.warmup_steps)
    lr=$($PY -c "print($lr * $BATCH / $batch)")
    X="optim.warmup_steps=$(k "$warm" "$steps")"
    case $name in
      dino|dino_vit) phases="learner.teacher_temp_warmup_steps learner.freeze_last_layer_steps";;
      swav) phases="learner.freeze_prototypes_steps";;
      *) phases="";;
    esac
    # the preset's own step-counted phases, each scaled by STEPS / the preset's steps
    for key in $phases; do X="$X $key=$(k "$(keys cifar10/$name "$key")" "$steps")"; done
    case $name in *vit|mae) W="";; *) W="model.width=$WIDTH";; esac
    # shellcheck disable=SC2086
    $M train cifar10/$name train.steps=$STEPS tasks.batch_size=$BATCH optim.lr=$lr $W $X train.device=cpu \
      learner.amp=none train.knn_every=0 train.checkpoint_every=$STEPS train.threads=1 train.progress=false \
      train.report=false ${EXTRA:-} --run-dir "$R"
  else
    $M eval "$R" --protocol knn --max-train 10000 --max-test 2000 --device cpu --json --out "$R.knn.json"
    $M eval "$R" --protocol linear --max-train 10000 --max-test 2000 --device cpu --json --out "$R.linear.json"
    $M eval "$R" --ways 5 --shots 1 5 --episodes 600 --seed 0 --device cpu --json --out "$R.fewshot.json"
  fi
done
