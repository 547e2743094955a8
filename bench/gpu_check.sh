#!/usr/bin/env bash
# One-shot GPU check of export/runtime (issue 3). Run from anywhere on the GPU machine:
#   bash bench/gpu_check.sh            # ~2-4 min on an H100; figures in $OUT/gpu_check.txt if $OUT is set
#   bash bench/gpu_check.sh --dry-run  # on a CPU-only machine: exercises the script itself
# If a .whl folder was carried (bench/fetch_gpu_wheels.sh), its wheels are installed to /tmp/site first.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || echo "nvidia-smi: not available"
# hard stop well inside the 6-minute allowance even if a section hangs
timeout -k 10 330 python3 bench/gpu_check.py "$@"
rc=$?
[ $rc -eq 124 ] && echo "gpu_check.py hit the 330 s limit" | tee -a "${OUT:-/tmp}/gpu_check.txt"
exit $rc
