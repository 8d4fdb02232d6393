"""RLModule's train/sampler logprob-mismatch metric: logged once per policy version, on the first batch holding
rollouts sampled entirely by that version, with the optimizer steps since its export (the asynchronous sampler's
new rollouts reach the trainer a few steps after the export)."""

import csv

import lightning as L
import torch
from torch.utils.data import DataLoader

from north_lightning.datamodules.rl import pack_rollouts
from north_lightning.model import NorthConfig, NorthForCausalLM
from north_lightning.modules.rl import RLModule

CFG = dict(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
           head_dim=16, num_experts=4, num_experts_per_tok=2, expert_intermediate_size=16,
           dense_intermediate_size=32, first_k_dense=1, sliding_window=8, max_position_embeddings=64)
# policy version that sampled each step's rollouts, with an export (version + 1) after steps 2 and 4
BATCH_VERSIONS = [0, 0, 0, 1, 1, 2]
EXPORT_AFTER = {2: 1, 4: 2}


def _batch(version: int, sampler_logprobs: list[float]) -> dict:
    rollout = {"task_id": f"v{version}", "versions": [version], "segments": [
        {"token_ids": [1, 5, 6], "logprobs": None, "trainable": False},
        {"token_ids": [7, 8, 9, 10], "logprobs": sampler_logprobs, "trainable": True}]}
    batch = pack_rollouts([(rollout, 1.0)], row_tokens=16, pad_id=0)
    batch["num_tokens"] = torch.tensor(4.0)
    return batch


class _Exports(L.Callback):
    """Sets the module's policy version as the sampler callbacks do after an export (no engine here)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step in EXPORT_AFTER:
            pl_module.policy_version = EXPORT_AFTER[trainer.global_step]
            pl_module.last_export_step = trainer.global_step


def test_mismatch_logged_once_per_version_on_its_first_batch(tmp_path):
    torch.manual_seed(0)
    model = NorthForCausalLM(NorthConfig(**CFG))
    init = tmp_path / "init"
    model.save_pretrained(init)
    # the sampler's logprobs of version 0 are the initial model's own: a pure mismatch of ~0
    probe = _batch(0, [0.0] * 4)
    with torch.no_grad():
        logp, _ = model.token_logprobs(probe["input_ids"], probe["targets"], position_ids=probe["position_ids"],
                                       document_ids=probe["document_ids"])
    exact = logp[probe["targets"] != -100].tolist()
    batches = [_batch(v, exact) for v in BATCH_VERSIONS]

    module = RLModule(model=CFG, init_from=str(init), lr=1e-3)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=len(batches), logger=L.pytorch.loggers.CSVLogger(tmp_path),
                        callbacks=[_Exports()], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, log_every_n_steps=1)
    trainer.fit(module, DataLoader(batches, batch_size=None))

    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    logged = {int(r["step"]): (float(r["rl/logprob_mismatch_max"]), float(r["rl/logprob_mismatch_lag_steps"]))
              for r in rows if r.get("rl/logprob_mismatch_max")}
    # version 0 on step 0 (lag 0), version 1 first seen on step 3 (exported after step 2: lag 1), version 2 on step 5
    assert sorted(logged) == [0, 3, 5], logged
    assert logged[0][0] < 1e-5  # same weights, same tokens: only float noise
    assert logged[3][1] == 1 and logged[5][1] == 1
    assert logged[3][0] > 1e-4  # the policy moved after step 0, so the stale "sampler" logprobs differ
    assert module.mismatch_logged_version == 2
