# Sourced by the device scripts (bench/device_serving.sh, bench/device_training.sh): the
# project's python, the results folder ($OUT, or bench/results), a step banner with the time and
# the load, and the GPU as nvidia-smi sees it. Each script then sets `status=1` on a failed step.
py=.venv/bin/python
out="${OUT:-bench/results}"
mkdir -p "$out"
step() { echo "=== $* ($(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg))"; }
status=0

step "GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || status=1
