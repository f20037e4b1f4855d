#!/usr/bin/env bash
# Reproduce the bundled test models models/digits/1 (and 2, calibrated) with our own training CLI on real data
# (scikit-learn's handwritten digits). Pass --force to replace an existing version 1.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh "train,dev"
.venv/bin/training make-digits data/digits
.venv/bin/training fit --config recipes/digits.toml --data data/digits --output runs/digits
.venv/bin/training export runs/digits/best.pt --name digits --version 1 --models-dir models \
  --data data/digits --int8 --no-calibrate "$@"
# version 2: the same graph calibrated on its held-out photos (views, temperatures, thresholds)
.venv/bin/training calibrate digits --version 1 --to-version 2 --models-dir models \
  --data data/digits --abstain-at 0.99 --force
