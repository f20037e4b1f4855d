#!/usr/bin/env bash
# Issues 18 and 28's device check, one script under 8 minutes on one GPU (never needed by CI):
#   1. tests/gpu (CUDA provider really used, GPU answers equal CPU answers);
#   2. bench.serving on CUDA, interleaved rounds: our gRPC server against raw ONNX Runtime-CUDA
#      on the same model file, for the bundled cifar10 model (real CIFAR-10 JPEGs) and a
#      random-weight xresnet50 at 224 px (photo-sized JPEGs). Goal: ours >= 0.8x raw ORT-CUDA
#      at batch 32 for xresnet50. The JPEG decode runs on the CPU: the cifar10 rows print the
#      decode p50 beside raw ORT so a decode-bound result says by how much.
#
#   3. (issue 28) the front ends on a GPU: our HTTP /predict beside gRPC in the cifar10 rounds,
#      and bench.workers on cifar10/CUDA: one process against --workers N (N from the cores)
#      and N plain copies; "gRPC c=32 / raw ORT best" is the share of the GPU the front end
#      feeds.
#
#   bash bench/device_serving.sh            # results in $OUT (or bench/results), log on stdout
#
# Needs the project installed (.venv: `bash scripts/setup.sh train,dev` on a machine with the
# registry; the device machine has none) and, to skip exporting xresnet50 with torch there,
# bench/results/models/xresnet50 carried from a machine that made it.
set -uo pipefail
cd "$(dirname "$0")/.."
source bench/device_common.sh  # py, out, step, status; the GPU banner
"$py" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"

step "tests/gpu"
timeout 100 "$py" -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tail -15 || status=1

step "cifar10 on CUDA: ours gRPC and HTTP vs raw ORT-CUDA (+ the CPU decode)"
timeout 120 "$py" -m bench.serving --device cuda --models cifar10 --key-comparison 2 --quick \
  --no-kserve --only "ours gRPC" "ours HTTP" || status=1
cp bench/results/serving-key-latest.json "$out/device-serving-cifar10.json" 2>/dev/null

step "xresnet50-224 on CUDA: ours gRPC c=32 vs raw ORT-CUDA batch 32 (goal >= 0.8x)"
timeout 150 "$py" -m bench.serving --device cuda --models xresnet50 --key-comparison 2 --quick \
  --measure-s 8 || status=1
cp bench/results/serving-key-latest.json "$out/device-serving-xresnet50.json" 2>/dev/null

workers=$(( $(nproc) / 4 > 1 ? $(nproc) / 4 : 2 ))
step "cifar10 on CUDA: one process vs --workers $workers vs $workers copies (both wires)"
timeout 100 "$py" -m bench.workers --device cuda --model cifar10 --workers "$workers" \
  --rounds 1 --seconds 5 || status=1
cp bench/results/workers-latest.json "$out/device-workers-cifar10.json" 2>/dev/null

step "done (status $status)"
exit "$status"
