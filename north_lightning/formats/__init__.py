"""The formats SFT and RL share: the canonical trajectory record (`records.py`) and the harnesses
(`harnesses/`), each of which renders a record into a harness's messages for SFT and parses a generated
assistant turn back into an action for RL. Nothing here imports the model, the trainer or the sandboxes."""
