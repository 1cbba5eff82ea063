#!/bin/bash
# Issue 19 results (results/multidomain.md): short CPU runs (one thread) of ProtoNet, Matching Networks and SimCLR,
# then Meta-Dataset's protocol on within-domain and held-out data sets; the table is built by multidomain_table.py.
#   STEPS=250 EPISODES=100 OUT=/tmp/md bash benchmarks/multidomain.sh
set -e
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 METASSL_SYSTEM_MALLOC=1
R=${OUT:-runs/multidomain}
S=${STEPS:-250}
E=${EPISODES:-100}
T="train.threads=1 train.report=false train.progress=false train.log_every=50 train.checkpoint_every=250 seed=0"
mkdir -p $R/eval
train() { name=$1; shift; [ -f $R/$name/checkpoints/latest ] || .venv/bin/metassl train "$@" $T --run-dir $R/$name; }
train md_protonet multidomain/protonet_omniglot_double_mnist train.steps=$S
train md_protonet_5w multidomain/protonet_omniglot_double_mnist_5w train.steps=$S
train om_protonet multidomain/protonet_omniglot_double_mnist "data.datasets=[omniglot]" train.steps=$S
train md_matchingnet multidomain/matchingnet_omniglot_double_mnist train.steps=$S
train om_simclr omniglot/simclr train.steps=150 train.val_every=0 optim.warmup_steps=15
for run in md_protonet md_protonet_5w om_protonet md_matchingnet om_simclr; do
  .venv/bin/metassl eval $R/$run --protocol metadataset --datasets omniglot,double_mnist,mnist,triple_mnist,cifar10 \
    --episodes $E --seed 0 --per-episode --json --out $R/eval/$run.json > /dev/null
done
.venv/bin/python benchmarks/multidomain_table.py $R
