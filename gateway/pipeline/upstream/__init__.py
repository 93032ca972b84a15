"""Upstream: the vLLM backends, their health, and relaying their answers."""
