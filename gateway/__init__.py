"""gateway: a gated-inference proxy in front of vLLM."""

__version__ = "0.1.0"
