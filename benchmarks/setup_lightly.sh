#!/usr/bin/env bash
# lightly in its own virtual environment, for benchmarks/bench_ssl.py only (metassl never imports it).
#
#   bash benchmarks/setup_lightly.sh             # create benchmarks/.venv-lightly: torch 2.14.1 + torchvision 0.29.1 + lightly
#   bash benchmarks/setup_lightly.sh --wheels    # only download lightly and its pure-Python dependencies (not torch,
#                                                # not torchvision) into benchmarks/.wheels-lightly
#   bash benchmarks/setup_lightly.sh --offline   # on a machine that HAS torch + torchvision (e.g. a GPU machine the
#                                                # wheels were carried to, no network): a venv that sees the system
#                                                # site-packages, lightly installed from benchmarks/.wheels-lightly
#
# Why a separate environment: lightly needs torchvision, and PyPI's torchvision wheels are built against the CUDA
# build of torch; they do not import beside the CPU-only torch of the main environment (.venv). So this venv gets
# its own torch (torch==2.14.1, a ~5.5 GB CUDA build that also runs on a CPU) with the matching torchvision 0.29.1,
# and lightly on top. bench_ssl.py runs the lightly side as a subprocess with this venv's python
# (benchmarks/lightly_worker.py), so the two sides never share a process. On this CPU machine the torch versions then
# differ (2.13 in .venv, 2.14.1 here); bench_ssl.py prints both.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${LIGHTLY_VENV:-$HERE/.venv-lightly}"
WHEELS="${LIGHTLY_WHEELS:-$HERE/.wheels-lightly}"
BASE_PYTHON="${BASE_PYTHON:-python3}"
MODE="${1:-all}"
# lightly's own dependencies besides torch/torchvision/numpy/tqdm (pure Python)
DEPS=(lightly==1.6.0 hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 pytorch-lightning==2.6.6
      lightning-utilities==0.15.3 torchmetrics==1.9.0)  # the versions pip resolved in the full install here

case "$MODE" in
  all)
    [ -x "$VENV/bin/python" ] || "$BASE_PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip wheel
    "$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1" lightly
    ;;
  --wheels)
    mkdir -p "$WHEELS"
    "$BASE_PYTHON" -m pip wheel -q --no-deps -w "$WHEELS" "${DEPS[@]}"  # builds the sdist-only antlr4 runtime
    ls -l "$WHEELS"
    exit 0
    ;;
  --offline)
    [ -x "$VENV/bin/python" ] || "$BASE_PYTHON" -m venv --system-site-packages "$VENV"
    "$VENV/bin/python" -m pip install -q --no-index --find-links "$WHEELS" --no-deps "$WHEELS"/*.whl
    ;;
  *) echo "usage: $0 [--wheels|--offline]" >&2; exit 2 ;;
esac
"$VENV/bin/python" -W ignore -c 'import torch, torchvision, lightly; print("lightly", lightly.__version__, "torch", torch.__version__, "torchvision", torchvision.__version__)'
echo "lightly environment: $VENV"
