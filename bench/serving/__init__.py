"""Serving benchmark: our gRPC and HTTP servers against the raw runtime and three peers.

In one run, on one machine, with one load client (bench.loadgen), for each model:

1. raw ONNX Runtime on pre-processed float arrays, batch 1, k (TTA views), 8 and 32 -- the limit;
   with the core's session options and with ONNX Runtime's defaults, the best counted;
2. the inference core alone, in-process (decode + preprocess + dynamic batcher + infer);
3. servers under closed-loop load at concurrency 1, 8, 32: ours over gRPC and HTTP (batching on
   and off, single view and TTA), the plain grpcio, plain BentoML and KServe peers -- images/s,
   p50/p95/p99 latency and the peak RSS of the server's process tree.

    .venv/bin/python -m bench.serving --key-comparison 3   # the goals, interleaved (~12 min)
    .venv/bin/python -m bench.serving --key-comparison 1 --quick --models cifar10  # ~3 min
    .venv/bin/python -m bench.serving                      # every table (~15 minutes)
    .venv/bin/python -m bench.serving --models cifar10 --quick --photos data/cifar10/train

Models: cifar10 (the bundled default, real CIFAR-10 JPEGs; 12 MP phone JPEGs for the 12 MP
goal) and a random-weight xresnet50 at 224 px (photo-sized JPEGs). Peers beside ours: raw
ONNX Runtime (+ the decode time), the plain grpcio and plain BentoML servers (bench/peers), and
KServe's Python model server (bench/peers/kserve_model.py, in its own venv made by
bench/peers/kserve_setup.sh on first use; ``--no-kserve`` leaves it out). Ours and KServe are
also measured over the Open Inference Protocol on both wires.

Prints markdown tables and a targets table, writes bench/results/serving-*.json.

Modules: ``settings`` (the run's options, durations), ``runtime`` (raw ONNX Runtime, the core
alone), ``servers`` (starting and loading each server), ``key`` (the interleaved comparison),
``report`` (targets, tables), ``__main__`` (the command line).
"""
