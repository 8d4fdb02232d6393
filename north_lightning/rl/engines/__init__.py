"""Rollout engines: vLLM stepped by our own loop thread with in-flight weight updates and per-token versions
(`stepped.py`; in a child process: `child.py`), the batched `vllm.LLM` engine for evaluation and synthesis
(`inprocess.py`), `vllm serve` sampler nodes (`server.py`), and how weights reach them (`weights.py`: export
directory and version rule, `weight_transfer.py`: NCCL). `batching.py` gathers concurrent turns into shared
engine calls for `inprocess.py`; `affinity.py` keeps an episode's turns on one server for its prefix cache."""
