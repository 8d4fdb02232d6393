"""Rollout engines: vLLM in the trainer's process or a child (`inprocess.py`), `vllm serve` sampler nodes
(`server.py`), and how weights reach them (`weights.py`: export directory and version rule,
`weight_transfer.py`: NCCL). `batching.py` gathers concurrent turns into shared engine calls; `affinity.py`
keeps an episode's turns on one server for its prefix cache."""
