#!/usr/bin/env bash
# GPU checks for a lent GPU machine (CUDA torch, Lightning and transformers preinstalled, no internet):
# the `gpu` tests and the three GPU benchmarks, in under 8 minutes (time limits 190 + 120 + 110 + 50 s; a bench
# stopped by its limit still prints what it measured, with interrupted=1). `make test-gpu` runs this.
# Optional prebuilt wheels (flash-attn-4, megablocks + stanford-stk + grouped_gemm, ...) placed in wheels/ are
# installed first, always with --no-deps so the machine's CUDA torch is never replaced (liger-kernel for the
# Liger loss test: its test skips, naming the install, when the package is absent).
#
# DRY_RUN=1 (no GPU needed; PY defaults to .venv/bin/python): installs nothing and checks every step's imports
# and argument parsing: the gpu tests are collected (not run), and each bench runs its CPU dry run (tiny shapes,
# the same code paths except the CUDA kernels; megablocks asked for, so its lazy import is exercised too).
set -uo pipefail
cd "$(dirname "$0")/.."
DRY_RUN=${DRY_RUN:-0}
if [ "$DRY_RUN" = 1 ] && [ -x .venv/bin/python ]; then PY=${PY:-.venv/bin/python}; fi
PY=${PY:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # bench scripts import the package from the checkout too

if [ "$DRY_RUN" != 1 ]; then
  # our package on top of the existing CUDA torch (no build isolation: there is no index to fetch setuptools from)
  "$PY" -m pip install --no-deps --no-build-isolation -q -e . || echo "!! editable install failed; using PYTHONPATH"
  if compgen -G "wheels/*.whl" > /dev/null; then
    "$PY" -m pip install --no-deps --no-build-isolation -q wheels/*.whl || echo "!! some wheels in wheels/ failed"
  fi
fi

"$PY" - <<'PYEOF'
import importlib.util, torch
print(f"torch {torch.__version__} cuda {torch.version.cuda} device "
      f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'NONE'}")
for mod in ("flash_attn.cute", "flash_attn", "torch.nn.attention.varlen", "megablocks", "grouped_gemm",
            "liger_kernel"):
    try:
        found = importlib.util.find_spec(mod) is not None
    except ModuleNotFoundError:
        found = False
    print(f"  {mod:<28} {'present' if found else 'absent'}")
PYEOF

status=0
run() {
  local limit=$1; shift
  echo "== $* (limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@"
  local rc=$?
  echo "== rc=$rc in $((SECONDS - t0))s: $*"
  [ "$rc" -eq 0 ] || status=1
}
if [ "$DRY_RUN" = 1 ]; then
  echo "== DRY_RUN=1: collecting the gpu tests and running each bench's CPU dry run"
  run 120 "$PY" -m pytest -m gpu tests/gpu -q --collect-only -p no:cacheprovider
  run 120 "$PY" bench/attention.py --device cpu --sizes 128,256 --iters 1
  run 120 "$PY" bench/train_mfu.py --device cpu --layers 1 --seq 128 --iters 1
  run 120 "$PY" bench/moe_block.py --device cpu --tokens 64 --hidden 128 --ffn 32 --experts 8 --top-k 2 \
    --backends torch,grouped,megablocks
  exit $status
fi
run 190 "$PY" -m pytest -m gpu tests/gpu -q -rs -p no:cacheprovider
run 120 "$PY" bench/attention.py --device cuda
run 110 "$PY" bench/train_mfu.py --device cuda
run 50 "$PY" bench/moe_block.py --device cuda  # torch, grouped, megablocks (or megablocks=unavailable(...))
exit $status
