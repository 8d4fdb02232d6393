"""`data prepare` at scale: throughput, and a rank's memory and setup time that do not grow with the corpus.

Generates a synthetic corpus of harness-agnostic agent trajectories (bash steps with outputs) plus single-turn
answers at two sizes (`--small`, `--large`, default 12,500 and 50,000 trajectories: 4x apart), prepares both
(`--num-proc` processes), then in a fresh process per size builds the SFT datamodule on the prepared shards,
runs `setup` and draws 200 batches, recording its peak RSS and its setup time. The same rendering, filters,
template, masking and tokenizer are also run on the large corpus as `datasets.map(num_proc=...)` (records as
JSON lines in a `datasets.Dataset`), timed in the same run.

    .venv/bin/python bench/data_prepare.py [--small 12500 --large 50000 --num-proc 2]

Last line: `tokens_per_s=... rss_peak_mb_small=... rss_peak_mb_large=... rss_ratio=... setup_ratio=...
prepare_vs_datasets_map=...` (targets: rss_ratio <= 1.2, rss under 2 GiB, setup_ratio <= 1.5,
prepare_vs_datasets_map >= 1.0: prepare's whole run, packing and writing included, against map's tokenising).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SEQ_LEN = 4096
WORDS = "the a file line error test value config path run check output build fix read write list count sum".split()


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_corpus(path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            if i % 10 < 7:  # agentic
                steps = []
                for s in range(rng.randint(1, 4)):
                    cmd = f"grep -n {rng.choice(WORDS)} /app/{rng.choice(WORDS)}_{s}.txt | head -{rng.randint(1, 9)}"
                    steps.append({"thought": _text(rng, rng.randint(5, 25)), "calls": [{"name": "bash", "arguments": {"command": cmd}}],
                                  "observations": [{"output": _text(rng, rng.randint(10, 120)), "exit_code": 0}]})
                steps.append({"thought": "Done.", "calls": [{"name": "submit", "arguments": {}}], "observations": []})
                rec = {"id": f"agent-{seed}-{i}", "task": _text(rng, rng.randint(15, 60)), "source": "synthetic_agent",
                       "domain": "agentic", "verified": True, "steps": steps}
            else:
                rec = {"id": f"chat-{seed}-{i}", "task": _text(rng, rng.randint(10, 40)), "source": "synthetic_code",
                       "domain": "code", "verified": True, "response": _text(rng, rng.randint(30, 200))}
            f.write(json.dumps(rec) + "\n")


def mixture(corpus: Path) -> dict:
    return {"name": corpus.stem, "components": [
        {"name": "agent", "paths": [str(corpus)], "harness": "swe_agent", "share": 0.7, "source": "synthetic_agent",
         "harness_args": {"workdir": "/app"}},
        {"name": "code", "paths": [str(corpus)], "harness": "chat", "share": 0.3, "source": "synthetic_code"}]}


CHILD = r"""
import json, resource, sys, time
from north_lightning.datamodules.sft import SFTDataModule
args = json.loads(sys.argv[1])
setup_s = float("inf")
for _ in range(5):  # a rank's setup: build the datamodule, check and open the index (best of 5)
    t0 = time.perf_counter()
    dm = SFTDataModule(args["mixture"], seq_len=args["seq_len"], batch_size=1, data_dir=args["data_dir"], prepared=args["prepared"])
    dm.setup("fit")
    setup_s = min(setup_s, time.perf_counter() - t0)
it = iter(dm.train_dataloader())
tokens = sum(int((next(it)["targets"] != -100).sum()) for _ in range(200))
print(json.dumps({"setup_s": setup_s, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "trained": tokens}))
"""


def measure_rank(mix: dict, data_dir: str, prepared: str) -> dict:
    arg = json.dumps({"mixture": mix, "seq_len": SEQ_LEN, "data_dir": data_dir, "prepared": prepared})
    out = subprocess.run([sys.executable, "-c", CHILD, arg], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _map_batch(batch: dict) -> dict:
    """datasets.map body: the same records → filter → render → template → tokens + mask as prepare does."""
    from north_lightning.datamodules.filters import COMMON_CONTROL_STRINGS, check_messages
    from north_lightning.datamodules.prepare_config import stable_seed
    from north_lightning.datamodules.tokenize import chat_tokens_batch, control_strings
    from north_lightning.formats.harnesses import get_harness
    from north_lightning.formats.records import Trajectory

    global _STATE
    if "_STATE" not in globals():
        from transformers import AutoTokenizer

        from north_lightning.assets import tiny_tokenizer_path

        tok = AutoTokenizer.from_pretrained(tiny_tokenizer_path())
        _STATE = {"tok": tok, "agent": get_harness("swe_agent", workdir="/app"), "code": get_harness("chat"),
                  "controls": tuple(sorted(set(COMMON_CONTROL_STRINGS) | set(control_strings(tok))))}
    st = _STATE
    convs, keep = [], []
    for line in batch["line"]:
        rec = Trajectory.from_dict(json.loads(line), "bench")
        name = "agent" if rec.source == "synthetic_agent" else "code"
        harness = st[name]
        seed = stable_seed(0, name, rec.id, 0)
        msgs = harness.render(rec, seed=seed)
        if check_messages(harness, rec, msgs, ("invalid_tool_calls", "whitespace", "special_tokens", "citations"), st["controls"]):
            continue
        convs.append((msgs, rec.tools or harness.tools_for(seed)))
        keep.append(rec.id)
    enc = chat_tokens_batch(st["tok"], convs)
    return {"id": keep, "input_ids": [e[0].tolist() for e in enc], "mask": [e[1].astype("uint8").tolist() for e in enc]}


def datasets_map_seconds(corpus: Path, num_proc: int, cache: Path) -> float:
    import datasets

    lines = corpus.read_text().splitlines()
    ds = datasets.Dataset.from_dict({"line": lines})
    t0 = time.perf_counter()
    out = ds.map(_map_batch, batched=True, batch_size=256, num_proc=num_proc, remove_columns=["line"],
                 cache_file_name=str(cache / "map.arrow"), load_from_cache_file=False)
    assert len(out) > 0
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=12_500)
    parser.add_argument("--large", type=int, default=50_000)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--workdir", help="keep the corpus and shards here (default: a temporary directory)")
    args = parser.parse_args()
    from north_lightning.datamodules.prepare import PrepareConfig, prepare
    from north_lightning.datamodules.shards import ShardIndex

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = {}
        for label, n in (("small", args.small), ("large", args.large)):
            corpus = work / f"corpus_{label}_{n}.jsonl"
            if not corpus.exists():
                write_corpus(corpus, n, seed=n)
            mix = mixture(corpus)
            cfg = PrepareConfig(mix, seq_len=SEQ_LEN, out_dir=str(work / "prepared"), num_proc=args.num_proc)
            t0 = time.perf_counter()
            shard = prepare(cfg)
            seconds = time.perf_counter() - t0
            index = ShardIndex.load(shard)
            tokens = int(index.row_stats[:, -1].sum())
            rank = measure_rank(mix, cfg.out_dir, str(shard))
            results[label] = {"n": n, "prepare_s": seconds, "tokens": tokens, "rows": index.rows(), **rank}
            print(f"{label}: trajectories={n} rows={index.rows()} tokens={tokens} prepare_s={seconds:.1f} "
                  f"setup_s={rank['setup_s']:.3f} rss_peak_mb={rank['rss_mb']:.0f}", flush=True)
        map_s = datasets_map_seconds(work / f"corpus_large_{args.large}.jsonl", args.num_proc, work)
        print(f"datasets.map(num_proc={args.num_proc}) on the large corpus: {map_s:.1f}s", flush=True)
    s, big = results["small"], results["large"]
    print(f"tokens_per_s={big['tokens'] / big['prepare_s']:.0f} rss_peak_mb_small={s['rss_mb']:.0f} "
          f"rss_peak_mb_large={big['rss_mb']:.0f} rss_ratio={big['rss_mb'] / s['rss_mb']:.3f} "
          f"setup_ratio={big['setup_s'] / s['setup_s']:.3f} prepare_vs_datasets_map={map_s / big['prepare_s']:.3f}")


if __name__ == "__main__":
    main()
