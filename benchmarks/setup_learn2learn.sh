#!/usr/bin/env bash
# learn2learn 0.2.0 in its own virtual environment, for benchmarks/bench_maml.py only (metassl never imports it).
#
#   bash benchmarks/setup_learn2learn.sh             # download + build the wheels, then install them
#   bash benchmarks/setup_learn2learn.sh --wheels    # only download + build the wheels into benchmarks/.wheels-l2l
#   bash benchmarks/setup_learn2learn.sh --offline   # only install from benchmarks/.wheels-l2l (no network:
#                                                    # e.g. on a GPU machine the wheels were carried to)
#
# Why a build: learn2learn 0.2.0 ships only an sdist whose Cython-generated .c files do not compile on Python >= 3.11,
# so the .c files are deleted and regenerated from the .pyx sources with a current Cython. Its `import` pulls in
# gym (0.26.2, which needs gym_notices and cloudpickle), requests, and torchvision (the release matching the
# installed torch). PyPI's torchvision wheels are linked against CUDA torch: with a CPU-only torch they do not load,
# so they are installed only where torch has CUDA; on a CPU-only torch bench_maml.py's learn2learn worker stands in
# an empty `torchvision` module (learn2learn needs it only for its data sets and vision models, unused here).
#
# torch itself is NOT installed here: the venv gets a .pth file pointing at the main environment's site-packages
# (benchmarks/../.venv, or $MAIN_PYTHON), so learn2learn and metassl run on the very same torch build.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
VENV="${L2L_VENV:-$HERE/.venv-l2l}"
WHEELS="${L2L_WHEELS:-$HERE/.wheels-l2l}"
MAIN_PYTHON="${MAIN_PYTHON:-$ROOT/.venv/bin/python}"
MODE="${1:-all}"

[ -x "$MAIN_PYTHON" ] || { echo "main environment python $MAIN_PYTHON not found (set MAIN_PYTHON)" >&2; exit 1; }
TORCH_VERSION="$("$MAIN_PYTHON" -c 'import torch; print(torch.__version__.split("+")[0])')"
# torchvision 0.(minor+15) goes with torch 2.minor (e.g. 0.28 with 2.13)
TV_VERSION="$("$MAIN_PYTHON" -c "v='$TORCH_VERSION'.split('.'); print(f'0.{int(v[1]) + 15}.*')")"
echo "main python: $MAIN_PYTHON (torch $TORCH_VERSION; torchvision $TV_VERSION for learn2learn's import)"

make_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$MAIN_PYTHON" -m venv "$VENV"
  fi
  local site
  site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  "$MAIN_PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$site/_main_env.pth"
}

build_wheels() {
  mkdir -p "$WHEELS"
  make_venv
  local py="$VENV/bin/python" work
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  "$py" -m pip install -q "cython>=3" "setuptools<81" wheel
  "$py" -m pip download -q learn2learn==0.2.0 --no-deps --no-binary :all: -d "$work"
  tar -xzf "$work"/learn2learn-0.2.0.tar.gz -C "$work"
  local src="$work/learn2learn-0.2.0"
  rm -rf "$src/.eggs" "$src"/learn2learn/data/*.c "$src"/*.egg-info
  (cd "$src" && "$VENV/bin/cython" -3 learn2learn/data/*.pyx)
  # setup.py compiles the regenerated .c files (it only runs Cython itself for develop/build_ext)
  (cd "$src" && "$py" -m pip wheel -q --no-build-isolation --no-deps . -w "$WHEELS")
  "$py" -m pip wheel -q --no-deps gym==0.26.2 -w "$WHEELS"
  "$py" -m pip download -q --no-deps gym_notices cloudpickle "torchvision==$TV_VERSION" -d "$WHEELS"
  "$py" -m pip download -q requests -d "$WHEELS"
  ls -l "$WHEELS"
}

install_wheels() {
  make_venv
  local py="$VENV/bin/python"
  local cuda
  cuda="$("$py" -c 'import torch; print(int(torch.version.cuda is not None))')"
  local wheels=()
  for w in "$WHEELS"/*.whl; do
    case "$(basename "$w")" in torchvision-*) [ "$cuda" = 1 ] && wheels+=("$w") ;; *) wheels+=("$w") ;; esac
  done
  [ "$cuda" = 1 ] || "$py" -m pip uninstall -q -y torchvision 2>/dev/null || true
  "$py" -m pip install -q --no-index --no-deps "${wheels[@]}"
  (cd "$HERE" && "$py" -W ignore -c 'import maml_worker; print("learn2learn", maml_worker.import_learn2learn().__version__)')
}

case "$MODE" in
  all) build_wheels; install_wheels ;;
  --wheels) build_wheels ;;
  --offline) install_wheels ;;
  *) echo "usage: $0 [--wheels|--offline]" >&2; exit 2 ;;
esac
echo "learn2learn environment: $VENV"
