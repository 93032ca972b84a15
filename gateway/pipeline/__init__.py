"""The request's path through the gateway, as an ordered tuple of stages.

Request stage seam: `async def check(ctx) -> Decision`. A stage refuses by returning a
denying Decision (rendered as an OpenAI error); it raises only on failure.
Output filter seam: see `gateway.pipeline.output`.
The Pipeline is built once (from settings and, later, policy files), never mutated,
and replaced whole on reload.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gateway.context import Principal, RequestContext
from gateway.errors import GatewayError
from gateway.pipeline.output import FilterChain, OutputFilter
from gateway.policy.spec import PolicySpec


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    error: GatewayError | None = None
    label: str = "allow"  # bounded: becomes the `decision` metric label


ALLOW = Decision(True)


def deny(error: GatewayError, label: str) -> Decision:
    return Decision(False, error, label)


class RequestStage(Protocol):
    name: str

    async def check(self, ctx: RequestContext) -> Decision:
        """Inspect (and possibly amend) ctx; return ALLOW or a denying Decision."""
        ...


class Authenticator(Protocol):
    """Runs before the body is read: headers only, so strangers cost no parsing."""

    async def authenticate(self, authorization: list[str], query_has_token: bool) -> Principal:
        """The caller's Principal; raises gateway.errors.Unauthorized."""
        ...


@dataclass(frozen=True, slots=True)
class Pipeline:
    auth: Authenticator
    stages: tuple[RequestStage, ...]
    output_filters: tuple[Callable[[RequestContext], OutputFilter | None], ...] = ()
    # For the model's reasoning and tool-call arguments: no watermark (relay.py).
    side_filters: tuple[Callable[[RequestContext], OutputFilter | None], ...] = ()
    policy: PolicySpec | None = None
    version: str = "builtin"

    async def check(self, ctx: RequestContext) -> Decision:
        """The first refusal, else the last notable allowance (e.g. "flag"), else ALLOW."""
        outcome = ALLOW
        for stage in self.stages:
            decision = await stage.check(ctx)
            if not decision.allowed:
                return decision
            if decision.label != "allow":
                outcome = decision
        return outcome

    def output_chain(self, ctx: RequestContext) -> FilterChain | None:
        """A fresh chain per response choice, or None when no filter applies."""
        filters = tuple(f for make in self.output_filters if (f := make(ctx)) is not None)
        return FilterChain(filters) if filters else None

    def side_chain(self, ctx: RequestContext) -> FilterChain | None:
        """A fresh chain per reasoning or tool-call text, or None when no filter applies."""
        filters = tuple(f for make in self.side_filters if (f := make(ctx)) is not None)
        return FilterChain(filters) if filters else None


class PipelineRef:
    """The one mutable reference: reload builds a new Pipeline and swaps it here."""

    __slots__ = ("_current",)

    def __init__(self, pipeline: Pipeline | None) -> None:
        self._current = pipeline

    @property
    def current(self) -> Pipeline:
        assert self._current is not None, "pipeline used before the policy loaded"
        return self._current

    @current.setter
    def current(self, pipeline: Pipeline) -> None:
        self._current = pipeline
