#!/usr/bin/env bash
# Train and publish the bundled default model models/cifar10/1 with our own training CLI on
# CIFAR-10's 50,000 training photos (an image folder: <class>/*.jpg).
#   scripts/make_default_model.sh DATA_DIR [extra `training export` flags, e.g. --force]
# e.g. tar xzf cifar10-train.tar.gz -C data/cifar10 && scripts/make_default_model.sh data/cifar10/train
# No --int8: ONNX Runtime 1.31's dynamic quantiser fails on this graph (a shape-inference
# conflict in its Gemm rewrite).
# 10% of the photos (seeded) are held out; the published epoch is the last one, not one chosen
# on them (train.select = "last"), so model.json's accuracy is an honest held-out figure.
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:?usage: scripts/make_default_model.sh DATA_DIR [export flags]}"
shift
scripts/setup.sh "train,dev"
.venv/bin/training fit --config recipes/cifar10.toml --data "$data" --output runs/cifar10
.venv/bin/training export runs/cifar10/best.pt --name cifar10 --version 1 --models-dir models \
  --data "$data" "$@"
