#!/usr/bin/env bash
# The main job: install (first run only) and serve the bundled default model over gRPC (:50051)
# and HTTP (:3000). Extra arguments go to `tta-serve`. No TLS and no tokens here (a local start;
# the start-up line says so): add --tls-cert/--tls-key and --token-file (docs/deploy.md).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/tta-serve "$@"
