#!/usr/bin/env bash
# Issue 23's device check, one script under 8 minutes on one GPU (never needed by CI): the
# cifar10 v2 recipe (recipes/cifar10.toml) on CUDA with the data on the device -- the 45,000
# training photos are decoded and presized once, then held on the GPU as one uint8 tensor, and
# the batch augmentation (alternating flip, translate) runs there -- and its time to the
# reference's accuracy (airbench94 on our photos: 90.80% with TTA, 89.79% plain; airbench's own
# anchor is 94% in 3.3 s on an A100, on lossless data).
#   1. the GPU, torch and ORT as seen;
#   2. the recipe as it is (mixed precision "auto" = bf16 on CUDA), timed, with the per-epoch
#      held-out curve; bench.time_to_accuracy prints the time each epoch reached and the time
#      to --target;
#   3. the same with train.compile = "on" (torch.compile measured on the GPU: on this project's
#      2-core CPU it lost, 0.95x images/s, so the recipe keeps it off), if time is left.
#
#   bash bench/device_training.sh [DATA_DIR]   # default data/cifar10/train; results in $OUT
#
# Needs the project installed (.venv with the train extra: `bash scripts/setup.sh train,dev` on
# a machine with the registry; the device machine has none) and the photos unpacked
# (tar xzf cifar10-train.tar.gz -C data/cifar10).
set -uo pipefail
cd "$(dirname "$0")/.."
data="${1:-data/cifar10/train}"
source bench/device_common.sh  # py, out, step, status; the GPU banner
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

for variant in eager compile; do
  run="$out/cifar10-gpu-$variant"
  extra=()
  [[ "$variant" == compile ]] && extra=(--set 'train.compile="on"')
  step "recipes/cifar10.toml v2 on CUDA ($variant)"
  timeout 200 .venv/bin/training fit --config recipes/cifar10.toml --data "$data" \
    --output "$run" --device cuda "${extra[@]}" 2>&1 | tail -25 || status=1
  step "time to the reference's accuracy ($variant)"
  timeout 60 "$py" -m bench.time_to_accuracy "$run" --skip-reference --data "$data" \
    2>&1 | tail -20 || status=1
  cp "$run/metrics.json" "$out/device-training-$variant-metrics.json" 2>/dev/null
done

step "done (status $status)"
exit "$status"
