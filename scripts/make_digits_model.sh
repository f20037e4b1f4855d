#!/usr/bin/env bash
# Reproduce the bundled test model models/digits/1 with our own training CLI on real data
# (scikit-learn's handwritten digits). Pass --force to replace an existing version 1.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh "train,dev"
.venv/bin/training make-digits data/digits
.venv/bin/training fit --config recipes/digits.toml --data data/digits --output runs/digits
.venv/bin/training export runs/digits/best.pt --name digits --version 1 --models-dir models \
  --data data/digits --int8 "$@"
