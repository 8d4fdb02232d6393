"""SFT training step tokens/s: our `NorthForCausalLM` vs transformers' `Cohere2MoeForCausalLM`, same weights.

Both run a plain torch loop on the same batch (forward, masked next-token loss, backward, AdamW step); the
transformers model is loaded with `from_pretrained` from our export of the same tiny config (so it picks its
default attention and experts implementations, as a user would get). Our model computes the loss with its
chunked head (`token_logprobs`, never the full [S, V] logits) and its router aux loss is on; transformers'
computes full logits + cross-entropy. Before timing, the two losses on the batch are checked to agree (our
model runs with transformers' sliding-window convention for that check; the cost is the same).

Iterations alternate between the two models and the median step time is reported, so that a noisy, shared
CPU slows both alike.

Last line: `speedup_vs_hf=... tokens_per_s=... hf_tokens_per_s=... tokens=...`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def build(args: argparse.Namespace):
    from transformers import Cohere2MoeForCausalLM

    from north_lightning.model import NorthConfig, NorthForCausalLM

    torch.manual_seed(0)
    config = NorthConfig.preset(args.preset, window_convention="transformers", experts_backend=args.experts_backend)
    ours = NorthForCausalLM(config)
    with tempfile.TemporaryDirectory() as tmp:
        ours.save_pretrained(tmp)
        hf = Cohere2MoeForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    ours.train()
    hf.train()
    return config, ours, hf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--experts-backend", default="grouped", choices=["torch", "grouped"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config, ours, hf = build(args)
    gen = torch.Generator().manual_seed(1)
    input_ids_BS = torch.randint(16, config.vocab_size, (args.batch, args.seq), generator=gen)
    targets_BS = torch.full_like(input_ids_BS, -100)
    targets_BS[:, :-1] = input_ids_BS[:, 1:]  # what HF's `labels=input_ids` trains on (shift inside)
    n_targets = int((targets_BS != -100).sum())

    def ours_loss() -> torch.Tensor:
        logp_BS, _ = ours.token_logprobs(input_ids_BS, targets_BS)
        return -logp_BS.sum() / n_targets, ours.moe_aux_loss()

    def hf_loss() -> torch.Tensor:
        return hf(input_ids=input_ids_BS, labels=input_ids_BS).loss

    with torch.no_grad():
        ce_ours, ce_hf = ours_loss()[0].item(), hf_loss().item()
    print(f"loss check: ours {ce_ours:.6f} transformers {ce_hf:.6f}")
    if abs(ce_ours - ce_hf) > 1e-3:
        raise SystemExit(f"the two models disagree on the loss ({ce_ours} vs {ce_hf}): timing would be meaningless")

    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-4)
    opt_hf = torch.optim.AdamW(hf.parameters(), lr=1e-4)

    def step_ours() -> None:
        ce, aux = ours_loss()
        (ce + aux).backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    def step_hf() -> None:
        hf_loss().backward()
        opt_hf.step()
        opt_hf.zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {"ours": [], "hf": []}
    for i in range(args.iters + 1):  # the first round is warm-up
        for name, step in (("ours", step_ours), ("hf", step_hf)):
            t0 = time.perf_counter()
            step()
            if i:
                times[name].append(time.perf_counter() - t0)
    tokens = args.batch * args.seq
    t_ours, t_hf = statistics.median(times["ours"]), statistics.median(times["hf"])
    print(f"ours: {t_ours * 1e3:.1f} ms/step  transformers: {t_hf * 1e3:.1f} ms/step  ({tokens} tokens/step, "
          f"{args.preset}, {args.threads} threads, experts={args.experts_backend})")
    print(f"speedup_vs_hf={t_hf / t_ours:.2f} tokens_per_s={tokens / t_ours:.0f} hf_tokens_per_s={tokens / t_hf:.0f} "
          f"tokens={tokens}")


if __name__ == "__main__":
    main()
