"""ClassifyRuntime: builds per policy; config errors keep the old pipeline on reload."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from gateway.metrics import Metrics
from gateway.pipeline.classify import ClassifyStage
from gateway.pipeline.classify.runtime import ClassifyConfigError, ClassifyRuntime
from gateway.pipeline.upstream.http import UpstreamHTTP
from gateway.policy.loader import load_policy
from tests.pipeline.classify.conftest import POLICY


def _with(**changes: Any) -> Any:
    return dataclasses.replace(POLICY, classifiers=dataclasses.replace(
        POLICY.classifiers, **changes))


async def test_stage_and_filters(metrics: Metrics) -> None:
    runtime = ClassifyRuntime(metrics)
    await runtime.start(load_model=False)
    stage = runtime.stage(POLICY)
    assert isinstance(stage, ClassifyStage) and stage.name == "classify"
    check = runtime.output_check(POLICY)
    assert check is not None and check.width <= 512
    await runtime.close()


async def test_guard_needs_an_http_client() -> None:
    policy = _with(guard=dataclasses.replace(POLICY.classifiers.guard, enabled=True,
                                             url="http://127.0.0.1:9", model="g"))
    with pytest.raises(ClassifyConfigError, match="HTTP client"):
        ClassifyRuntime().build_chain(policy)
    http = UpstreamHTTP(connect_timeout_s=1.0, keepalive_s=4.0)
    chain = ClassifyRuntime(http=http).build_chain(policy)
    assert "guard" in chain.names
    await http.close()


def test_stage_needs_metrics() -> None:
    with pytest.raises(ClassifyConfigError, match="metrics"):
        ClassifyRuntime().stage(POLICY)


def test_moderation_can_be_off_or_limited() -> None:
    off = _with(moderation=dataclasses.replace(POLICY.classifiers.moderation, enabled=False))
    assert ClassifyRuntime().output_check(off) is None


def test_head_path_in_policy(policy_dir: Path) -> None:
    from gateway.pipeline.classify.head import default_head_path

    (policy_dir / "myhead.json").write_text(default_head_path().read_text())
    path = policy_dir / "classifiers.yaml"
    path.write_text(path.read_text().replace("    optional: true\n",
                                             "    optional: true\n    head: myhead.json\n", 1))
    policy = load_policy(policy_dir)
    assert policy.classifiers.embedding.head == str((policy_dir / "myhead.json").resolve())


async def test_broken_head_is_a_config_error(tmp_path: Path) -> None:
    pytest.importorskip("numpy")
    from gateway.pipeline.classify.embedding import missing

    reason = missing()
    if reason is not None:
        pytest.skip(reason)
    bad = tmp_path / "head.json"
    bad.write_text("{}")
    policy = _with(embedding=dataclasses.replace(POLICY.classifiers.embedding, head=str(bad)))
    runtime = ClassifyRuntime()
    runtime.embedder.ready = True  # pretend loaded: the head is checked at build time
    with pytest.raises(ClassifyConfigError, match="head"):
        runtime.build_chain(policy)


async def test_int8_without_an_int8_engine_is_a_config_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A torch that cannot run int8 linear layers (no quantised engine for the CPU) refuses
    the policy that asks for them, naming the key: else every batch would fail its trace."""
    from gateway.pipeline.classify import embedding
    from gateway.pipeline.classify import runtime as runtime_module

    reason = embedding.missing()
    if reason is not None:
        pytest.skip(reason)
    assert embedding.int8_unavailable() is None  # this machine's torch runs them
    int8 = _with(embedding=dataclasses.replace(POLICY.classifiers.embedding, int8=True))
    runtime = ClassifyRuntime()
    runtime.embedder.ready = True  # pretend loaded: the setting is checked at build time
    runtime.build_chain(int8)
    monkeypatch.setattr(runtime_module, "int8_unavailable",
                        lambda: "this machine's torch cannot run int8 linear layers: no engine")
    with pytest.raises(ClassifyConfigError, match=r"classifiers\.embedding\.int8: .*no engine"):
        runtime.build_chain(int8)
    runtime.build_chain(POLICY)  # float32 does not need one
