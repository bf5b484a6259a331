#!/usr/bin/env bash
# Sets up a fresh machine for the pipeline (default) or for the tests (--test):
# a virtual environment in .venv with the package and its pinned dependencies, the real
# Fashion-MNIST from Debian when it is missing, and (for --test) a real SLURM + munge.
set -euo pipefail
cd "$(dirname "$0")/.."

want_tests=0
[ "${1:-}" = "--test" ] && want_tests=1

SUDO=""
[ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"

apt_install() {
  # install Debian packages; refresh the package lists only if the first try fails
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1 || {
    $SUDO apt-get update >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "$@" >/dev/null
  }
}

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PY"
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import teddy, torch, torchvision, torch_pruning, snakemake, pytest, importlinter" 2>/dev/null; then
  echo "setup: installing Python dependencies (torch from local disk, about 2 minutes)"
  .venv/bin/pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/pip install -q -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import teddy, torch, torchvision, torch_pruning, snakemake, pytest, importlinter"
fi

if [ "$want_tests" = 0 ] && [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "setup: installing the real Fashion-MNIST (Debian package dataset-fashion-mnist)"
  apt_install dataset-fashion-mnist
fi

if [ "$want_tests" = 1 ]; then
  bash tests/slurm/install_slurm.sh || true
fi
echo "setup: done"
