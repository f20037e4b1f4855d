#!/usr/bin/env bash
# Install everything (first run only: torch + dev tools) and run the test suite. Extra arguments go
# to pytest, e.g. scripts/test.sh -k grpc
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh "train,dev"
# The /ui browser tests drive chromium + chromedriver: system packages, installed when missing.
[ "${TTA_SERVE_SKIP_BROWSER_TESTS:-}" = 1 ] || scripts/install_browser.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
