#!/usr/bin/env bash
# Create .venv and install the project with the pinned dependency set (constraints.txt).
# Usage: scripts/setup.sh [EXTRAS]   e.g. "train,dev" (default: serving only)
# Re-running is cheap: it reinstalls only when pyproject.toml, constraints.txt or EXTRAS change.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=".venv/.installed-$(cat pyproject.toml constraints.txt <(echo "$extras") | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  target="."
  [ -n "$extras" ] && target=".[$extras]"
  .venv/bin/python -m pip install -q -c constraints.txt -e "$target"
  touch "$stamp"
fi
