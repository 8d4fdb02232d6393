"""SFTModule: loss normalisation (incl. gradient accumulation), schedule, config building, logged metrics."""

from __future__ import annotations

import copy
import math

import lightning as L
import pytest
import torch

from north_lightning.assets import ASSETS_DIR
from north_lightning.datamodules.jsonl import IGNORE_INDEX, JsonlChatDataModule, PackedChatStream
from north_lightning.model import NorthConfig, NorthForCausalLM
from north_lightning.modules import SFTModule
from north_lightning.model.config import build_north_config
from north_lightning.modules.sft import warmup_cosine

# A smaller-than-tiny model (same shape rules) so each test trains in a second or two on the CPU.
SMALL = {"preset": "tiny", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2,
         "num_key_value_heads": 1, "head_dim": 32, "num_experts": 4, "num_experts_per_tok": 2,
         "expert_intermediate_size": 32, "dense_intermediate_size": 64}


def _datamodule(batch_size: int = 2, seq_len: int = 300) -> JsonlChatDataModule:
    return JsonlChatDataModule(str(ASSETS_DIR / "demo_chat.jsonl"), seq_len=seq_len, batch_size=batch_size, seed=0)


def _trainer(**kw) -> L.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1)
    return L.Trainer(**{**defaults, **kw})


def test_build_north_config_sources(tmp_path) -> None:
    assert build_north_config("tiny") == NorthConfig.preset("tiny")
    cfg = build_north_config(SMALL, config_overrides={"router_aux_loss_coef": 0.0})
    assert cfg.hidden_size == 64 and cfg.vocab_size == 4096 and cfg.router_aux_loss_coef == 0.0
    NorthForCausalLM(cfg).save_pretrained(tmp_path / "hf")
    from_hf = build_north_config("ignored", init_from=str(tmp_path / "hf"))
    assert from_hf.to_hf_dict() == cfg.to_hf_dict()
    with pytest.raises(ValueError, match="unknown NorthConfig preset 'huge'"):
        build_north_config("huge")
    with pytest.raises(TypeError, match="hidden_size"):
        build_north_config({"preset": "tiny", "hidden_size": "wide"})
    with pytest.raises(FileNotFoundError, match="no config.json"):
        build_north_config("tiny", init_from=str(tmp_path))


def test_init_from_loads_the_weights(tmp_path) -> None:
    src = NorthForCausalLM(build_north_config(SMALL))
    src.save_pretrained(tmp_path)
    module = SFTModule(init_from=str(tmp_path))
    module.configure_model()
    for (name, a), (_, b) in zip(src.state_dict().items(), module.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_warmup_cosine_schedule() -> None:
    assert warmup_cosine(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert warmup_cosine(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(500, 10, 100, 0.1) == pytest.approx(0.1)


def test_loss_is_token_mean_over_trainable_tokens() -> None:
    torch.manual_seed(0)
    module = SFTModule(SMALL, config_overrides={"router_aux_loss_coef": 0.0})
    module.configure_model()
    dm = _datamodule()
    dm.setup("fit")
    batch = PackedChatStream(dm.train_docs, dm.seq_len, 2, 0, dm.pad_id).batch(0)
    loss = module.training_step(batch, 0)
    logits_BSV = module.model(batch["input_ids"], batch["position_ids"], batch["document_ids"])
    reference = torch.nn.functional.cross_entropy(logits_BSV.flatten(0, 1), batch["targets"].flatten(),
                                                  ignore_index=IGNORE_INDEX)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)


def test_gradient_accumulation_normalises_by_window_tokens() -> None:
    """With accumulate_grad_batches=2 the gradient equals that of (sum of NLL over both micro-batches) /
    (their total trainable tokens) + the mean aux loss, not the mean of per-micro-batch means."""
    torch.manual_seed(0)
    module = SFTModule(SMALL, lr=1e-3, warmup_steps=1)
    dm = _datamodule(seq_len=256)  # rows whose micro-batches hold different numbers of trainable tokens
    captured: dict[str, dict[str, torch.Tensor]] = {}

    class Capture(L.Callback):
        def on_train_start(self, trainer, pl_module):
            captured["init"] = copy.deepcopy(pl_module.model.state_dict())

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            captured["grad"] = {n: p.grad.clone() for n, p in pl_module.model.named_parameters()}

    _trainer(max_steps=1, accumulate_grad_batches=2, callbacks=[Capture()]).fit(module, dm)

    reference = NorthForCausalLM(module.config)
    reference.load_state_dict(captured["init"])
    reference.train()
    stream = PackedChatStream(dm.train_docs, dm.seq_len, 2, 0, dm.pad_id, accumulate=2)
    b0, b1 = stream.batch(0), stream.batch(1)
    n0, n1 = [(b["targets"] != IGNORE_INDEX).sum() for b in (b0, b1)]
    assert n0 != n1  # otherwise the test could not tell the two normalisations apart
    total = 0.0
    for b in (b0, b1):
        logp, _ = reference.token_logprobs(b["input_ids"], b["targets"], b["position_ids"], b["document_ids"])
        total = total + (-logp.sum() / (n0 + n1) + reference.moe_aux_loss() / 2)
    total.backward()
    for name, p in reference.named_parameters():
        torch.testing.assert_close(captured["grad"][name], p.grad, rtol=1e-4, atol=1e-7, msg=name)


def test_logged_metrics_and_lr_schedule() -> None:
    torch.manual_seed(0)
    module = SFTModule(SMALL, lr=2e-3, warmup_steps=2, min_lr_ratio=0.5)
    seen: list[dict[str, float]] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append({k: float(v) for k, v in trainer.callback_metrics.items()})

    _trainer(max_steps=4, callbacks=[Record()], gradient_clip_val=1.0).fit(module, _datamodule())
    for key in ("train/loss", "train/tokens_per_s", "train/lr", "moe/aux_loss", "moe/expert_load_cv"):
        assert key in seen[-1], key
    assert seen[-1]["moe/aux_loss"] > 0 and seen[-1]["moe/expert_load_cv"] >= 0
    assert seen[0]["train/loss"] == pytest.approx(math.log(4096), rel=0.1)  # starts near uniform
    # lr as used by each step: warmup 1e-3, 2e-3, then cosine from 2e-3 to 1e-3 over the remaining 2 steps.
    assert [round(s["train/lr"], 6) for s in seen] == [0.001, 0.002, 0.002, 0.0015]


def test_rng_states_round_trip_through_a_weights_only_checkpoint() -> None:
    import io
    import random

    import numpy as np

    module = SFTModule(SMALL)
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    expected = (np.random.rand(), random.random(), torch.rand(1).item())
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=True)  # what Lightning does on resume
    np.random.rand(5), random.random(), torch.rand(3)  # move every generator on
    module.on_load_checkpoint(restored)
    assert (np.random.rand(), random.random(), torch.rand(1).item()) == expected
