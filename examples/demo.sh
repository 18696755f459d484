#!/usr/bin/env bash
# The README's main job: train a small MLP on the bundled MNIST (about a minute on two
# CPU cores), then certify its generalization with `pacbound certify`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PB=.venv/bin/pacbound
RUN=runs/demo

echo "== 1. Train a 784-600-10 MLP on MNIST (init weights saved before training) =="
$PY examples/train_mnist_mlp.py --out "$RUN" --hidden 600 --epochs 2

echo
echo "== 2. Certify it: Gaussian posterior around the weights, prior centred at the init =="
$PB certify "$RUN/final.safetensors" --arch mlp --arch-kwargs '{"hidden": [600], "num_classes": 10}' \
    --init "$RUN/init.safetensors" --data examples/data/mnist \
    --heldout examples/data/mnist --heldout-split test \
    --output "$RUN/report.json" --save-posterior "$RUN/posterior.safetensors" --fail-if-vacuous

echo
echo "Report: $RUN/report.json   Posterior: $RUN/posterior.safetensors"
