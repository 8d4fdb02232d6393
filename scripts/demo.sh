#!/usr/bin/env bash
# `make demo`: the tiny North model trained end to end on the CPU, then its HF export answering a toy task.
#   SFT  python -m north_lightning fit --config configs/tiny/sft.yaml  (bundled toy agent conversations)
#   HF   the export (config.json + safetensors + tokenizer) loaded by transformers, greedy completion
# RUN_DIR=... puts the run elsewhere (default runs/demo); extra arguments go to the SFT `fit` command
# (e.g. `bash scripts/demo.sh --trainer.max_steps 10`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
RUN_DIR=${RUN_DIR:-runs/demo}
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
start=$(date +%s)

echo "== SFT: tiny North model (8.6M params, 16 experts) on the bundled toy agent conversations, CPU"
"$PY" -m north_lightning fit --config configs/tiny/sft.yaml --trainer.default_root_dir "$RUN_DIR/sft" "$@"

echo "== HF export: transformers loads $RUN_DIR/sft/hf and completes a held-out task (greedy)"
"$PY" - "$RUN_DIR/sft/hf" <<'PY'
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging

logging.disable_progress_bar()
hf_dir = sys.argv[1]
tok = AutoTokenizer.from_pretrained(hf_dir)
model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
tools = [{"type": "function", "function": {"name": "bash", "description": "Run a shell command in the task container and return its output.",
          "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}}]
messages = [{"role": "system", "content": "You are a terminal agent. Solve the task with the bash tool."},
            {"role": "user", "content": "Write the sum of 12 and 30 to /app/result.txt."}]
prompt = tok.apply_chat_template(messages, tools=tools, add_generation_prompt=True, return_tensors="pt", return_dict=True)
out = model.generate(**prompt, max_new_tokens=48, do_sample=False, eos_token_id=tok.eos_token_id)
print(f"{type(model).__name__} from {hf_dir}")
print("user:      Write the sum of 12 and 30 to /app/result.txt.")
print("assistant:", tok.decode(out[0, prompt["input_ids"].shape[1]:]))
PY

echo "== demo finished in $(( $(date +%s) - start )) s"
echo "   metrics:   $(ls -d "$RUN_DIR"/sft/logs/version_* | tail -1)/metrics.csv"
echo "   HF export: $RUN_DIR/sft/hf  (NorthForCausalLM.from_pretrained / transformers / vLLM)"
