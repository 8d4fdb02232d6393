#!/usr/bin/env bash
# Runs every CPU benchmark; each prints its figures as `name=value` pairs on its last line.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
status=0
for script in bench/moe_block.py bench/sft_step.py bench/packing.py bench/async_rl.py bench/weight_export.py bench/env_throughput.py bench/sandbox_disk.py; do
  [ -f "$script" ] || { echo "== $script missing"; status=1; continue; }
  echo "== $script"
  "$PY" "$script" || { echo "!! $script failed"; status=1; }
done
exit $status
