#!/usr/bin/env bash
# Set up if needed, then pretrain the tiny MAE on Fashion-MNIST (6-7 minutes on 2 recent CPU cores, 12-14 on older AVX2-only ones: README "Measured").
# Writes runs/demo/: recipe.yaml, meta.json, metrics.jsonl, tensorboard/, checkpoints/,
# loss_curve.png, reconstructions.png.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/mim train examples/fashion_mnist_mae.yaml --overwrite "$@"
