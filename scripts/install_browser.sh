#!/usr/bin/env bash
# Install the headless browser the /ui tests drive (tests/http/test_ui_browser.py): Debian's
# chromium and chromium-driver. Does nothing when both are already on PATH. Needs apt-get and root
# (or sudo); elsewhere it says what to install and fails, so the browser tests never skip silently.
set -euo pipefail
if command -v chromedriver >/dev/null && { command -v chromium >/dev/null || command -v chromium-browser >/dev/null; }; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "install_browser.sh: no apt-get here; install chromium and its chromedriver yourself" \
       "(or set TTA_SERVE_SKIP_BROWSER_TESTS=1 to skip the /ui browser tests)" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  if ! command -v sudo >/dev/null; then
    echo "install_browser.sh: run as root (or with sudo) to apt-get install chromium chromium-driver" >&2
    exit 1
  fi
  sudo="sudo"
fi
echo "installing chromium and chromium-driver (apt-get) for the /ui browser tests" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
