"""Simulator settings: the defaults the gateway's embedded backend starts with."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.sim import SimSettings


def test_defaults_and_immutability() -> None:
    settings = SimSettings()
    assert settings.models == ("sim-llama-3-8b-instruct",)
    assert (settings.ttft_s, settings.tokens_per_second, settings.max_model_len,
            settings.seed) == (0.0, 0.0, 8192, 0)
    assert settings.guard_models == () and settings.served == settings.models
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.seed = 1  # type: ignore[misc]


def test_served_lists_every_model_once_guards_last() -> None:
    settings = SimSettings(models=("a", "g"), guard_models=("g", "h"))
    assert settings.served == ("a", "g", "h")
    assert SimSettings(models=(), guard_models=("h",)).served == ("h",)
