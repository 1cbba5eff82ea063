#!/usr/bin/env bash
# Everything a lent GPU machine should measure, in one command that ends within 9 minutes (issue 22 part 4).
#
#   bash benchmarks/gpu_check.sh --prepare    # HERE, once, on the CPU machine: wheels + a data copy to carry (~25 MiB)
#   bash benchmarks/gpu_check.sh              # THERE: the device tool's `run`, with
#       carry: [".whl-gpu", "benchmarks/.gpu-data"]   command: bash benchmarks/gpu_check.sh
#   bash benchmarks/gpu_check.sh --dry-run    # HERE: every part on the CPU with tiny sizes, tables left untouched
#
# Parts (each under its own time limit; a part that fails or times out is reported and the next one runs):
#   1 sampling   ProtoNet / MAML task-batch train steps per second (bench_sampling.py -> results/sampling.md)
#   2 eval       600 fixed test episodes at fixed and measured episodes-per-call (bench_eval.py -> results/eval_speed.md)
#   3 maml       MAML meta-training speed, learn2learn 0.2.0 beside it when its wheel is carried (bench_maml.py ->
#                results/maml_speed.md)
#   4 simclr     SimCLR ResNet-18 CIFAR-10 step, lightly beside it (bench_ssl.py; its table goes to gpu_check.md)
#   5 ddp        several processes, one GPU each, when the machine has more than one (bench_distributed.py ->
#                results/distributed.md)
#   6 pipeline   a short full ProtoNet Omniglot run: train 2,000 steps, evaluate on the 600 fixed test episodes
# The summary (every part's status, seconds and figures, device, torch, date) goes to results/gpu_check.md and is
# printed; when $OUT is set (the device tool), the changed results files are copied there to come back.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
cd "$ROOT"
MODE="${1:-run}"
WHL="$ROOT/.whl-gpu"
DATA="$HERE/.gpu-data"

if [ "$MODE" = "--prepare" ]; then
  # Python 3.12 wheels for the GPU image (its python3 holds torch 2.11 + torchvision; see the device tool's KINDS.md):
  # lightly and its pure-Python needs. learn2learn 0.2.0 has C extensions and only an sdist: its wheel must be built
  # by a Python 3.12 (benchmarks/setup_learn2learn.sh --wheels with MAIN_PYTHON=python3.12) and put in .whl-gpu.
  mkdir -p "$WHL" "$DATA/omniglot/splits"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$WHL" \
    lightly==1.6.0 hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 || echo "lightly wheels: not fetched"
  SRC="${METASSL_DATA:-$ROOT/../shared/data}"
  cp "$SRC"/omniglot/images_{background,evaluation}.npz "$SRC"/omniglot/SHA256SUMS "$DATA/omniglot/" 2>/dev/null
  cp -r "$SRC"/omniglot/splits/. "$DATA/omniglot/splits/"
  cp -r "$SRC"/cifar10-jpeg "$DATA/" 2>/dev/null
  grep -qx '/.whl-gpu/' .git/info/exclude 2>/dev/null || echo '/.whl-gpu/' >> .git/info/exclude
  du -sh "$WHL" "$DATA"
  exit 0
fi

DRY=0; [ "$MODE" = "--dry-run" ] && DRY=1
PY="${PYTHON:-python3}"
if [ $DRY = 1 ]; then
  PY="$ROOT/.venv/bin/python"; DEVICE=cpu
  RES="$(mktemp -d)"; cp -r results/. "$RES/"   # tables are written into a copy, never into results/
  export METASSL_DATA="${METASSL_DATA:-$ROOT/../shared/data}"
else
  DEVICE=cuda; RES="$ROOT/results"
  [ -d "$DATA/omniglot" ] && export METASSL_DATA="$DATA"
  if ls "$WHL"/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHL"/*.whl \
      && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
LOG="$(mktemp -d)"
SUMMARY=()
T_ALL=$(date +%s)

part() {  # part NAME SECONDS command...: run under a time limit, keep its output, record status and time
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  echo "=== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" > "$LOG/$name.txt" 2>&1
  local rc=$? dt=$(( $(date +%s) - t0 ))
  tail -n 25 "$LOG/$name.txt"
  local status=ok; [ $rc = 124 ] && status="timed out"; [ $rc != 0 ] && [ $rc != 124 ] && status="failed (exit $rc)"
  SUMMARY+=("| $name | $status | $dt |")
}

if [ $DRY = 1 ]; then
  part sampling 300 "$PY" benchmarks/bench_sampling.py --device cpu --seconds 0.2 --out "$RES/sampling.md"
  part eval 300 "$PY" benchmarks/bench_eval.py --device cpu --rounds 1 --episodes 20 --out "$RES/eval_speed.md"
  part maml 300 "$PY" benchmarks/bench_maml.py --device cpu --shapes omniglot --steps 1 --warmup 0 --only "metassl vmap" \
    --out "$RES/maml_speed.md"
  part simclr 300 "$PY" benchmarks/bench_ssl.py --device cpu --batch-size 8 --precision fp32 --steps 1 --warmup 0 --repeats 1 \
    --no-lightly
  part ddp 300 "$PY" benchmarks/bench_distributed.py --device cpu --nproc 1 2 --configs protonet --seconds 2 \
    --no-comm --out "$RES/distributed.md"
  part pipeline 300 "$PY" -m metassl train omniglot/protonet_5w1s train.steps=5 train.threads=1 eval.episodes=20 \
    train.val_every=0 train.report=false --run-dir "$LOG/run" --eval
else
  part sampling 45 "$PY" benchmarks/bench_sampling.py --device cuda --seconds 2 --out "$RES/sampling.md"
  part eval 60 "$PY" benchmarks/bench_eval.py --device cuda --rounds 2 --sizes 50,10,1,0 --learners protonet,maml \
    --out "$RES/eval_speed.md"
  part maml 120 "$PY" benchmarks/bench_maml.py --device cuda --steps 20 --warmup 5 --timeout 100 \
    --out "$RES/maml_speed.md"
  LIGHTLY=(--no-lightly); "$PY" -c "import lightly" 2>/dev/null && LIGHTLY=(--lightly-python "$PY")
  part simclr 110 "$PY" benchmarks/bench_ssl.py --device cuda --batch-size 512 --precision fp32 bf16 \
    --workers 16 "${LIGHTLY[@]}" --lightly-timeout 60
  if [ "$NGPU" -gt 1 ]; then
    part ddp 90 "$PY" benchmarks/bench_distributed.py --device cuda --nproc 1 "$NGPU" --seconds 10 --out "$RES/distributed.md"
  else
    SUMMARY+=("| ddp | skipped: $NGPU GPU on this machine | 0 |")
  fi
  part pipeline 120 "$PY" -m metassl train omniglot/protonet_5w1s train.steps=2000 train.val_every=0 train.report=false \
    --run-dir "$LOG/run" --eval
fi

{
  echo "## $( [ $DRY = 1 ] && echo 'dry run on the CPU (tiny sizes; checks that every part runs)' || "$PY" -c "import torch; print(torch.cuda.get_device_name(0))" 2>/dev/null), $NGPU GPU(s)"
  echo
  echo "- command: \`bash benchmarks/gpu_check.sh $*\`; torch $("$PY" -c 'import torch; print(torch.__version__)'); $(date -u +%F); total $(( $(date +%s) - T_ALL )) s"
  echo
  echo "| part | status | seconds |"; echo "|---|---|---:|"
  printf '%s\n' "${SUMMARY[@]}"
  for f in simclr pipeline; do
    [ -f "$LOG/$f.txt" ] && { echo; echo "### $f output (last lines)"; echo; echo '```'; tail -n 15 "$LOG/$f.txt"; echo '```'; }
  done
} > "$LOG/summary.md"
if [ $DRY = 0 ]; then
  { [ -f "$RES/gpu_check.md" ] && cat "$RES/gpu_check.md" || echo "# GPU check (benchmarks/gpu_check.sh)"; echo; cat "$LOG/summary.md"; } > "$LOG/all.md"
  mv "$LOG/all.md" "$RES/gpu_check.md"
  [ -n "${OUT:-}" ] && cp results/*.md results/*.json "$OUT/" 2>/dev/null
fi
echo; cat "$LOG/summary.md"
[ $DRY = 1 ] && rm -rf "$RES"
exit 0
