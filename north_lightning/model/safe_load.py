"""Reading torch checkpoints without running code from them.

A `.ckpt` is a pickle: `torch.load(weights_only=False)` on it runs whatever its author put in, so write access to
a run directory would be code execution in the trainer. Every checkpoint we read goes through torch's restricted
unpickler (`weights_only=True`) with one explicit allow-list: what our checkpoints hold besides tensors and plain
Python values, i.e. numpy arrays of the `np.random.get_state()` kind (checkpoints written before the RNG states
were stored as tensors). Nothing else is allowed; a checkpoint that needs more fails to load with a clear error.
"""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch


def checkpoint_safe_globals() -> list[Any]:
    """The non-tensor types our checkpoints may hold: a numpy array rebuilt from its dtype and raw bytes."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed the module
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32)),
            type(np.dtype(np.int64)), type(np.dtype(np.float64))]


@contextmanager
def safe_checkpoint_globals() -> Generator[None, None, None]:
    """Within: `torch.load(weights_only=True)` (ours, or Lightning's resume) accepts the allow-list."""
    with torch.serialization.safe_globals(checkpoint_safe_globals()):
        yield


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> Any:
    """`torch.load` of a checkpoint file with the restricted unpickler and our allow-list."""
    with safe_checkpoint_globals():
        return torch.load(path, map_location=map_location, weights_only=True)
