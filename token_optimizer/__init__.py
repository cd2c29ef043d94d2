"""token-optimizer: keeps long AI-agent sessions cheap and coherent.

A host-neutral core (:mod:`token_optimizer.runtime`) driven by thin host
adapters (:mod:`token_optimizer.hosts`) for OpenClaw and Hermes Agent.
"""

__version__ = "0.1.0"
