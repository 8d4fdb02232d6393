"""Shared test settings. Fixtures that belong to one component live in that component's test folder."""

import os

import torch

# Deterministic, small-thread CPU runs: the CI machine has 2 cores shared with dockerd and vLLM.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
