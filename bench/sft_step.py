"""SFT training step tokens/s: our `NorthForCausalLM` vs transformers' `Cohere2MoeForCausalLM`, same weights.

Both run a plain torch loop on the same packed SFT batch (the demo chat data through `JsonlChatDataModule`:
several conversations per row, targets only on assistant tokens): forward, masked next-token loss, backward,
AdamW step. The transformers model is loaded with `from_pretrained` from our export of the same tiny config (so it
picks its default attention and experts implementations, as a user would get) and gets the packed rows'
`position_ids`, from which it builds its packed-sequence masks, and `labels` with -100 where nothing is trained.
Ours computes the loss as `SFTModule` does (`masked_nll_sum`: the chunked head only on trainable positions)
with the router aux loss on; transformers computes full logits + cross-entropy. Before timing, the two losses on
one conversation are checked to agree (our model runs with transformers' sliding-window convention for that
check; the cost is the same).

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
    config = NorthConfig.preset(args.preset, window_convention="transformers", experts_backend=args.experts_backend,
                                attn_backend=args.attn_backend)
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
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--experts-backend", default="grouped", choices=["torch", "grouped"])
    parser.add_argument("--attn-backend", default="sdpa", choices=["sdpa"],
                        help="CPU training needs sdpa (FlexAttention has no CPU backward in torch 2.13)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config, ours, hf = build(args)
    from north_lightning.assets import ASSETS_DIR
    from north_lightning.datamodules.jsonl import IGNORE_INDEX, JsonlChatDataModule, PackedChatStream
    from north_lightning.modules.sft import masked_nll_sum

    dm = JsonlChatDataModule(str(ASSETS_DIR / "demo_chat.jsonl"), seq_len=args.seq, batch_size=args.batch)
    dm.setup("fit")
    batch = PackedChatStream(dm.train_docs, args.seq, args.batch, 0, dm.pad_id).batch(0)
    targets_BS = batch["targets"]
    labels_BS = torch.full_like(targets_BS, IGNORE_INDEX)  # HF shifts labels itself: labels[t] = targets[t-1]
    labels_BS[:, 1:] = targets_BS[:, :-1]
    trainable = float((targets_BS != IGNORE_INDEX).float().mean())

    def ours_loss() -> tuple[torch.Tensor, torch.Tensor]:
        nll_sum, n = masked_nll_sum(ours, batch)
        return nll_sum / n, ours.moe_aux_loss()

    def hf_loss() -> torch.Tensor:
        return hf(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=labels_BS).loss

    # Same function? Checked on one unpacked conversation: transformers' packed-sequence masks (derived from
    # position_ids) do not keep every layer within its document, so its loss on packed rows differs from the
    # contract's; its compute (dense attention over the row) is the same either way.
    doc = dm.train_docs[0]
    ids_1L, tgt_1L = torch.from_numpy(doc.input_ids)[None], torch.from_numpy(doc.targets)[None]
    lab_1L = torch.full_like(tgt_1L, IGNORE_INDEX)
    lab_1L[:, 1:] = tgt_1L[:, :-1]
    with torch.no_grad():
        nll_sum, n = masked_nll_sum(ours, {"input_ids": ids_1L, "targets": tgt_1L})
        ce_ours, ce_hf = (nll_sum / n).item(), hf(input_ids=ids_1L, labels=lab_1L).loss.item()
    print(f"loss check on one conversation: ours {ce_ours:.6f} transformers {ce_hf:.6f}")
    if abs(ce_ours - ce_hf) > 1e-3:
        raise SystemExit(f"the two models disagree on the loss ({ce_ours} vs {ce_hf}): timing would be meaningless")
    print(f"timed batch: {args.batch} x {args.seq} packed tokens, {trainable:.0%} of them trained")

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
          f"{args.preset}, {args.threads} threads, experts={args.experts_backend}, attention={args.attn_backend})")
    print(f"speedup_vs_hf={t_hf / t_ours:.2f} tokens_per_s={tokens / t_ours:.0f} hf_tokens_per_s={tokens / t_hf:.0f} "
          f"tokens={tokens} trainable_fraction={trainable:.2f}")


if __name__ == "__main__":
    main()
