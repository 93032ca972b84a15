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

from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.pipeline.output import FilterChain, OutputFilter


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


@dataclass(frozen=True, slots=True)
class Pipeline:
    stages: tuple[RequestStage, ...]
    output_filters: tuple[Callable[[RequestContext], OutputFilter], ...] = ()
    version: str = "builtin"

    async def check(self, ctx: RequestContext) -> Decision:
        for stage in self.stages:
            decision = await stage.check(ctx)
            if not decision.allowed:
                return decision
        return ALLOW

    def output_chain(self, ctx: RequestContext) -> FilterChain | None:
        """A fresh chain per response choice, or None when no filter applies."""
        if not self.output_filters:
            return None
        return FilterChain(tuple(make(ctx) for make in self.output_filters))
