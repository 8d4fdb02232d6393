"""HF checkpoint interop: sharded safetensors + `config.json` that transformers and vLLM both load.

On disk we write the per-expert layout every engine understands (`mlp.experts.E.{gate,up,down}_proj.weight`,
vLLM's loader expects it); on load we also accept transformers-v5's fused layout (`mlp.experts.gate_up_proj`
[E, 2F, D], `mlp.experts.down_proj` [E, D, F]), which is also our in-memory layout. Anything missing, unexpected
or mis-shaped is an error listing the tensors: a checkpoint is never partly random-initialised.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from north_lightning.model.config import NorthConfig

if TYPE_CHECKING:
    from north_lightning.model.transformer import NorthForCausalLM

INDEX_NAME = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json", "generation_config.json")
_EXPERT_RE = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


def hf_tensors(name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """One of our tensors under vLLM's on-disk names: fused experts split per expert (views, no copy: each
    expert's slice of `[E, 2F, D]` / `[E, D, F]` is contiguous), anything else as it is."""
    tensor = tensor.detach()
    if name.endswith(".experts.gate_up_proj"):
        prefix, F_ = name[: -len(".gate_up_proj")], tensor.shape[1] // 2
        out = []
        for e in range(tensor.shape[0]):
            out += [(f"{prefix}.{e}.gate_proj.weight", tensor[e, :F_].contiguous()),
                    (f"{prefix}.{e}.up_proj.weight", tensor[e, F_:].contiguous())]
        return out
    if name.endswith(".experts.down_proj"):
        prefix = name[: -len(".down_proj")]
        return [(f"{prefix}.{e}.down_proj.weight", tensor[e].contiguous()) for e in range(tensor.shape[0])]
    return [(name, tensor.contiguous())]


def to_hf_state_dict(model: NorthForCausalLM) -> dict[str, torch.Tensor]:
    """Our parameters under vLLM's on-disk names (fused experts split per expert; no lm_head when tied)."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        out.update(hf_tensors(name, tensor))
    return out


def from_hf_state_dict(hf: dict[str, torch.Tensor], config: NorthConfig) -> dict[str, torch.Tensor]:
    """Fuse per-expert tensors into our [E, ...] parameters (the fused v5 layout passes through). Raises on
    incomplete expert sets; other missing/unexpected names are reported by `load_pretrained`."""
    out: dict[str, torch.Tensor] = {}
    per_expert: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    for name, tensor in hf.items():
        match = _EXPERT_RE.match(name)
        if match:
            prefix, e, proj = match.group(1), int(match.group(2)), match.group(3)
            per_expert.setdefault(prefix, {}).setdefault(e, {})[proj] = tensor
        elif name == "lm_head.weight" and config.tie_word_embeddings:
            embed = hf.get("model.embed_tokens.weight")
            if embed is None or not torch.equal(embed, tensor):
                raise ValueError("checkpoint: tie_word_embeddings=true but lm_head.weight differs from model.embed_tokens.weight")
        else:
            out[name] = tensor
    for prefix, experts in per_expert.items():
        incomplete = [f"{prefix}.{e}.{p}_proj.weight" for e in range(config.num_experts) for p in ("gate", "up", "down")
                      if p + "_proj" not in experts.get(e, {})]
        extra = sorted(e for e in experts if not 0 <= e < config.num_experts)
        if incomplete or extra:
            raise ValueError(f"checkpoint: expert tensors missing {incomplete[:8]}{'...' if len(incomplete) > 8 else ''}"
                             f"{f' and experts out of range {extra}' if extra else ''}")
        ordered = [experts[e] for e in range(config.num_experts)]
        _check_expert_shapes(prefix, ordered, config)
        out[f"{prefix}.gate_up_proj"] = torch.stack([torch.cat([x["gate_proj"], x["up_proj"]]) for x in ordered])
        out[f"{prefix}.down_proj"] = torch.stack([x["down_proj"] for x in ordered])
    return out


def _check_expert_shapes(prefix: str, experts: list[dict[str, torch.Tensor]], config: NorthConfig) -> None:
    F_, D = config.expert_intermediate_size, config.hidden_size
    want = {"gate_proj": (F_, D), "up_proj": (F_, D), "down_proj": (D, F_)}
    bad = [f"{prefix}.{e}.{p}.weight {tuple(t.shape)} != {want[p]}" for e, x in enumerate(experts)
           for p, t in x.items() if tuple(t.shape) != want[p]]
    if bad:
        raise ValueError(f"checkpoint: mis-shaped expert tensors: {bad[:8]}")


def open_safetensors(file: str | Path) -> Any:
    """`safe_open` whose error names the file: a truncated or corrupt shard among many says which one."""
    try:
        return safe_open(str(file), framework="pt")
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{file}: not a readable safetensors file ({err})") from err


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, for a moment, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def read_safetensors_dir(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory: sharded (index json) or a single model.safetensors."""
    index = path / INDEX_NAME
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").exists():
        shards = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{path}: neither {INDEX_NAME} nor model.safetensors found")
    tensors: dict[str, torch.Tensor] = {}
    for shard in shards:
        if not (path / shard).exists():
            raise FileNotFoundError(f"{path / INDEX_NAME}: lists shard {shard}, which does not exist")
        with open_safetensors(path / shard) as f:
            try:
                for key in f.keys():
                    tensors[key] = f.get_tensor(key)
            except SafetensorError as err:
                raise ValueError(f"{path / shard}: not a readable safetensors file ({err})") from err
    return tensors


def load_pretrained(cls: type[NorthForCausalLM], path: str | Path, **config_overrides: Any) -> NorthForCausalLM:
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{config_file}: not found")
    try:
        config = NorthConfig.from_hf_dict(json.loads(config_file.read_text()), **config_overrides)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{config_file}: {exc}") from exc
    state = from_hf_state_dict(read_safetensors_dir(path), config)
    with torch.device("meta"):
        model = cls(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = sorted(f"{k} {tuple(state[k].shape)} != {tuple(expected[k])}" for k in set(expected) & set(state)
                        if state[k].shape != expected[k])
    if missing or unexpected or mis_shaped:
        raise ValueError(f"{path}: checkpoint does not match the config: missing={missing} unexpected={unexpected} "
                         f"mis_shaped={mis_shaped}")
    dtypes = {t.dtype for t in state.values()}
    model.load_state_dict({k: v.to(torch.float32) if len(dtypes) > 1 else v for k, v in state.items()},
                          strict=True, assign=True)
    return model


def save_pretrained(model: NorthForCausalLM, path: str | Path, tokenizer_dir: str | Path | None = None,
                    max_shard_bytes: int = 5 * 2**30) -> None:
    """Write config.json, sharded safetensors + index, and the tokenizer files (when `tokenizer_dir` is given)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = to_hf_state_dict(model)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.cpu()
        size += nbytes
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path / file), metadata={"format": "pt"})
        os.chmod(path / file, 0o666 & ~_umask())  # safetensors creates 0600; the rest of the export is umask's
        for name, tensor in shard.items():
            weight_map[name] = file
            total += tensor.numel() * tensor.element_size()
    finish_hf_dir(path, model.config, weight_map, total, next(iter(tensors.values())).dtype,
                  tokenizer_dir=tokenizer_dir)


def finish_hf_dir(path: Path, config: NorthConfig, weight_map: dict[str, str], total: int, dtype: torch.dtype,
                  tokenizer_dir: str | Path | None = None) -> None:
    """After the safetensors files: the index, config.json (with the weights' dtype) and the tokenizer files."""
    (path / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    hf_config = config.to_hf_dict()
    hf_config["dtype"] = str(dtype).removeprefix("torch.")
    (path / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    if tokenizer_dir is not None:
        copied = [f for f in TOKENIZER_FILES if (Path(tokenizer_dir) / f).exists()]
        if "tokenizer.json" not in copied and "tokenizer.model" not in copied:
            raise FileNotFoundError(f"{tokenizer_dir}: no tokenizer.json / tokenizer.model to copy")
        for f in copied:
            shutil.copy2(Path(tokenizer_dir) / f, path / f)
