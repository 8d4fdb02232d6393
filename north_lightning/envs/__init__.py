"""Task environments: registry-free Docker images, sandboxes, terminal and SWE tools, tasks, verifiers.

Map of the package (each module says why it is built the way it is):
- `images`: the mmdebstrap base image and task images (public base names aliased to the local base)
- `sandbox`: `DockerSandbox`, limits, timeouts and guaranteed removal
- `tasks`: Harbor task directories and SWE-bench-style JSONL; `toy_tasks`: the seeded toy task generator,
  `toy_data`: SFT trajectories solving toy tasks (canonical records)
- `terminal` (tmux) and `swe_tools` (bash / str_replace_editor / submit): what the agent calls
- `session`: one episode's image + sandbox + tools + verifier; `verifier`: reward and per-test outcomes
- `response`: generated text -> message
The agent loop (`rl/rollout.py`) and the scripted stand-ins for a model (`rl/scripted_policy.py`) live in
`rl/`: environments know nothing of policies.
"""
