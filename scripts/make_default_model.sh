#!/usr/bin/env bash
# Train and publish the bundled default model models/cifar10/2 with our own training CLI on
# CIFAR-10's training photos (an image folder: <class>/*.jpg), recipes/cifar10.toml.
#   scripts/make_default_model.sh DATA_DIR [extra `training export` flags, e.g. --force]
#   scripts/make_default_model.sh train DATA_DIR      # the training only (resumable)
#   scripts/make_default_model.sh export DATA_DIR [export flags]  # publish a finished run
# e.g. tar xzf cifar10-train.tar.gz -C data/cifar10 && scripts/make_default_model.sh data/cifar10/train
# The run folder is runs/cifar10-v2 (RUN=... to change it; runs/ is not in git). A training that
# was cut off continues where it stopped with RESUME=1.
# No --int8: ONNX Runtime 1.31's dynamic quantiser fails on this graph (a shape-inference
# conflict in its Gemm rewrite).
# 45,000 photos train, 5,000 (10%, seeded) are held out; the published epoch is the last one,
# not one chosen on them (train.select = "last"), so model.json's accuracy is an honest
# held-out figure. metrics.json in the run folder records the training's wall and CPU time,
# images/s, the load average and the machine; export copies them into model.json.
set -euo pipefail
cd "$(dirname "$0")/.."
step=all
if [[ "${1:-}" == train || "${1:-}" == export ]]; then step="$1"; shift; fi
data="${1:?usage: scripts/make_default_model.sh [train|export] DATA_DIR [export flags]}"
shift
run="${RUN:-runs/cifar10-v2}"
bin="${BIN:-.venv/bin}"  # BIN=/path/to/venv/bin to use an existing environment
[[ -n "${BIN:-}" ]] || scripts/setup.sh "train,dev"
if [[ "$step" != export ]]; then
  resume=()
  [[ "${RESUME:-0}" == 1 ]] && resume=(--resume)
  "$bin/training" fit --config recipes/cifar10.toml --data "$data" --output "$run" "${resume[@]}"
fi
if [[ "$step" != train ]]; then
  "$bin/training" export "$run/best.pt" --name cifar10 --version 2 --models-dir models \
    --data "$data" "$@"
fi
