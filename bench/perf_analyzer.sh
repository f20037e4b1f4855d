#!/usr/bin/env bash
# NVIDIA's perf_analyzer (Triton's load tool) against our Open Inference Protocol servers.
#
#   bash bench/perf_analyzer.sh install        # fetch it into the cache; prints the command
#   bash bench/perf_analyzer.sh sweep [--quick] [--models-dir DIR] [--model NAME]
#        # starts `tta-serve grpc` and `tta-serve http`, sweeps concurrency 1..32 on both wires
#        # with encoded PNG and JPEG images (BYTES) and preprocessed pixels (FP32); prints the
#        # markdown table, writes bench/results/perf_analyzer-*.json
#   bash bench/perf_analyzer.sh run ARGS...    # perf_analyzer itself, e.g. -m digits -u HOST:PORT
#
# Install (cached in $PERF_ANALYZER_HOME, default .cache/perf_analyzer; x86-64 Linux):
# - the binary from tritonclient 2.48.0's wheel (the PyPI package `perf-analyzer` is only a
#   placeholder), pinned with its hash in bench/perf_analyzer.requirements.txt;
# - libcudart.so.12 from the pip package nvidia-cuda-runtime-cu12 (loaded at start, no GPU used);
# - libb64.so.0d from Debian/Ubuntu's libb64-0d: apt-get install as root, otherwise
#   apt-get download + dpkg-deb -x into the cache (no root needed).
# The command it prints (`$PERF_ANALYZER_HOME/bin/perf_analyzer`) sets LD_LIBRARY_PATH itself.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
home="${PERF_ANALYZER_HOME:-$repo/.cache/perf_analyzer}"
python="${PYTHON:-$repo/.venv/bin/python}"
[ -x "$python" ] || python="$(command -v python3)"

say() { echo "perf_analyzer.sh: $*" >&2; }

libb64_dir() {
  # The folder holding libb64.so.0d, or nothing when the system loader finds it already.
  local found policy
  found="$(ldconfig -p 2>/dev/null || true)"
  if [[ "$found" == *"libb64.so.0d "* ]]; then
    return 0
  fi
  if [ -f "$home/lib/libb64.so.0d" ]; then
    echo "$home/lib"
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    policy="$(apt-cache policy libb64-0d 2>/dev/null || true)"
    if [[ "$policy" != *"Candidate: "[0-9]* ]]; then
      say "apt-get update (libb64-0d is not in the package lists yet)"
      DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq >&2
    fi
    say "apt-get install libb64-0d"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
      --no-install-recommends libb64-0d >&2
    return 0
  fi
  if command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null; then
    say "apt-get download libb64-0d (not root: unpacked into $home/lib)"
    local tmp
    tmp="$(mktemp -d)"
    (cd "$tmp" && apt-get download libb64-0d >&2)
    dpkg-deb -x "$tmp"/libb64-0d_*.deb "$tmp/root"
    mkdir -p "$home/lib"
    cp "$tmp"/root/usr/lib/*/libb64.so.0d* "$home/lib/"
    rm -rf "$tmp"
    echo "$home/lib"
    return 0
  fi
  say "libb64.so.0d is missing and apt-get is not available; install libb64-0d (Debian/Ubuntu)"
  return 1
}

install() {
  if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
    say "perf_analyzer from tritonclient's wheel runs on x86-64 Linux only ($(uname -sm) here)"
    return 1
  fi
  local wrapper="$home/bin/perf_analyzer"
  if [ -x "$wrapper" ] && "$wrapper" --version >/dev/null 2>&1; then
    echo "$wrapper"
    return 0
  fi
  mkdir -p "$home/bin" "$home/libexec" "$home/lib"
  if [ ! -x "$home/libexec/perf_analyzer" ] || [ ! -f "$home/lib/libcudart.so.12" ]; then
    local wheels
    wheels="$(mktemp -d)"
    say "downloading tritonclient 2.48.0 and nvidia-cuda-runtime-cu12 (~17 MB, hash-pinned)"
    "$python" -m pip download -q --no-deps --only-binary=:all: --require-hashes \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
      -r bench/perf_analyzer.requirements.txt -d "$wheels" >&2
    "$python" - "$wheels" "$home" <<'EOF'
import glob, os, sys, zipfile
wheels, home = sys.argv[1], sys.argv[2]
(client,) = glob.glob(os.path.join(wheels, "tritonclient-2.48.0-*.whl"))
(cudart,) = glob.glob(os.path.join(wheels, "nvidia_cuda_runtime_cu12-*.whl"))
with zipfile.ZipFile(client) as z:
    data = z.read("tritonclient-2.48.0.data/data/bin/perf_analyzer")
with zipfile.ZipFile(cudart) as z:
    lib = z.read("nvidia/cuda_runtime/lib/libcudart.so.12")
for path, blob, mode in ((os.path.join(home, "libexec", "perf_analyzer"), data, 0o755),
                         (os.path.join(home, "lib", "libcudart.so.12"), lib, 0o644)):
    with open(path + ".part", "wb") as f:
        f.write(blob)
    os.chmod(path + ".part", mode)
    os.replace(path + ".part", path)
EOF
    rm -rf "$wheels"
  fi
  local extra
  extra="$(libb64_dir)"
  {
    echo '#!/usr/bin/env bash'
    echo '# perf_analyzer with the libraries bench/perf_analyzer.sh fetched (written by it)'
    echo "export LD_LIBRARY_PATH=\"$home/lib${extra:+:$extra}\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\""
    echo "exec \"$home/libexec/perf_analyzer\" \"\$@\""
  } > "$wrapper.part"
  chmod +x "$wrapper.part"
  mv "$wrapper.part" "$wrapper"
  if ! "$wrapper" --version >/dev/null 2>&1; then
    say "perf_analyzer does not start; missing libraries:"
    LD_LIBRARY_PATH="$home/lib${extra:+:$extra}" ldd "$home/libexec/perf_analyzer" \
      | grep 'not found' >&2 || true
    return 1
  fi
  say "installed: $wrapper"
  echo "$wrapper"
}

command="${1:-}"
[ $# -gt 0 ] && shift
case "$command" in
  install) install ;;
  run) wrapper="$(install)"; exec "$wrapper" "$@" ;;
  sweep) wrapper="$(install)"; exec "$python" -m bench.perf_analyzer --perf-analyzer "$wrapper" "$@" ;;
  *) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
