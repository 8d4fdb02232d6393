"""north_lightning: post-training North (Cohere2MoE) coding agents with Lightning.

Cascaded agentic SFT and asynchronous RLVR. See README.md for the two set-up commands.
"""

__version__ = "0.1.0"
