#!/usr/bin/env bash
# easyfsl 1.5.0 in its own virtual environment, for benchmarks/time_to_accuracy.py and benchmarks/protonet_speed.py
# only (metassl never imports it).
#
#   bash benchmarks/setup_easyfsl.sh             # download the wheels, then install them
#   bash benchmarks/setup_easyfsl.sh --wheels    # only download into benchmarks/.wheels-easyfsl
#   bash benchmarks/setup_easyfsl.sh --offline   # only install from benchmarks/.wheels-easyfsl (no network)
#
# easyfsl's TaskSampler imports easyfsl.datasets, which imports pandas and torchvision; tqdm is imported by its
# methods. torch is NOT installed here: the venv gets a .pth file pointing at the main environment's site-packages
# (benchmarks/../.venv, or $MAIN_PYTHON), so easyfsl and metassl run on the very same torch build (and numpy). PyPI's
# torchvision wheels are linked against CUDA torch and do not load beside a CPU-only torch, so none is installed:
# benchmarks/peers_protonet.py stands in an empty `torchvision` module (easyfsl needs it only for its data sets,
# transforms and ResNets, unused here: the benchmark gives easyfsl a Conv4 and a plain image-folder Dataset).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
VENV="${EASYFSL_VENV:-$HERE/.venv-easyfsl}"
WHEELS="${EASYFSL_WHEELS:-$HERE/.wheels-easyfsl}"
MAIN_PYTHON="${MAIN_PYTHON:-$ROOT/.venv/bin/python}"
MODE="${1:-all}"

[ -x "$MAIN_PYTHON" ] || { echo "main environment python $MAIN_PYTHON not found (set MAIN_PYTHON)" >&2; exit 1; }

make_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$MAIN_PYTHON" -m venv "$VENV"
  fi
  local site
  site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  "$MAIN_PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$site/_main_env.pth"
}

download_wheels() {
  mkdir -p "$WHEELS"
  make_venv
  "$VENV/bin/python" -m pip download -q --no-deps easyfsl==1.5.0 tqdm -d "$WHEELS"
  # easyfsl.datasets (imported by its TaskSampler) imports pandas; matplotlib is only for its plotting helpers
  "$VENV/bin/python" -m pip download -q pandas -d "$WHEELS"
  ls -l "$WHEELS"
}

install_wheels() {
  make_venv
  local py="$VENV/bin/python"
  "$py" -m pip install -q --no-index --no-deps $(ls "$WHEELS"/*.whl | grep -v '/numpy-')
  (cd "$HERE" && "$py" -W ignore -c 'import peers_protonet as p; print("easyfsl", p.import_easyfsl().__version__)')
}

case "$MODE" in
  all) download_wheels; install_wheels ;;
  --wheels) download_wheels ;;
  --offline) install_wheels ;;
  *) echo "usage: $0 [--wheels|--offline]" >&2; exit 2 ;;
esac
echo "easyfsl environment: $VENV"
