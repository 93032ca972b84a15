"""Shared fixtures: the shipped policy, the embedding model (loaded once per session)."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.context import Principal, RequestContext
from gateway.metrics import Metrics
from gateway.pipeline.classify.embedding import Embedder, missing
from gateway.policy.loader import load_policy
from gateway.policy.spec import PolicySpec
from tests.conftest import ROOT

POLICY = load_policy(ROOT / "policies")


def chat_ctx(text: str, tier: str = "public", policy: PolicySpec = POLICY,
             **body: Any) -> RequestContext:
    """A context as the tier stage leaves it: tier resolved, body shaped."""
    ctx = RequestContext(request_id="r", route="chat", model="m",
                         body={"messages": [{"role": "user", "content": text}], **body},
                         principal=Principal(sub="s", tier=tier, expires_at=time.time() + 60))
    ctx.tier, ctx.tier_spec = tier, policy.tiers[tier]
    return ctx


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    """A writable copy of the shipped policies."""
    target = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", target)
    return target


@pytest.fixture(scope="session")
def embedder() -> Iterator[Embedder]:
    """The real model, loaded once; skipped without the `ml` extra (GATEWAY_REQUIRE_ML=1:
    failed instead)."""
    reason = missing()
    if reason is not None:
        if os.environ.get("GATEWAY_REQUIRE_ML") == "1":
            pytest.fail(f"GATEWAY_REQUIRE_ML=1 but {reason}")
        pytest.skip(reason)
    model = Embedder(threads=1)
    asyncio.run(model.start())
    assert model.ready, model.unavailable
    yield model
    asyncio.run(model.close())
