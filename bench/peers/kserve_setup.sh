#!/usr/bin/env bash
# KServe's Python model server in its own venv (the registry's `kserve` pins conflict with ours).
#
#   bash bench/peers/kserve_setup.sh            # creates/updates $KSERVE_VENV; prints its python
#
# The venv ($KSERVE_VENV, default .cache/kserve-venv, git-ignored) holds kserve, onnxruntime,
# numpy and Pillow; our torch-free service.imaging comes from the checkout via PYTHONPATH (the
# bench sets it), so the peer preprocesses exactly as we do. Nothing in CI needs this venv.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv="${KSERVE_VENV:-$(pwd)/.cache/kserve-venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  echo "kserve_setup.sh: creating $venv" >&2
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >&2
fi
if ! "$venv/bin/python" -c "import kserve, onnxruntime, PIL, numpy" 2>/dev/null; then
  echo "kserve_setup.sh: pip install kserve onnxruntime pillow numpy" >&2
  "$venv/bin/pip" install -q "kserve==${KSERVE_VERSION:-0.21.0}" onnxruntime pillow numpy >&2
fi
"$venv/bin/python" -c "import kserve, onnxruntime; print('kserve', kserve.__version__ if hasattr(kserve, '__version__') else '?', 'onnxruntime', onnxruntime.__version__)" >&2
echo "$venv/bin/python"
