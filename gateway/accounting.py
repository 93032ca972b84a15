"""What happens when a request ends: its audit record and its one log line.

Admin calls by an authenticated caller are audited too (`record_admin`), allowed or
refused: who read the audit log, reloaded the policy or traced a text.

Called before the last byte of a response goes out (the observe middleware for JSON
responses and refusals, the stream relay before `[DONE]` or the error event), so a client
that saw the end of its response has a committed audit record (with `audit.acknowledge:
queued`, a queued one: the answer does not wait for the commit).
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from gateway.audit import AUDIT, AUDIT_KEYS
from gateway.audit.build import build_record
from gateway.audit.record import AuditRecord
from gateway.context import (
    LIFECYCLE,
    PIPELINE,
    PRINCIPAL,
    REQUEST_ID,
    SETTINGS,
    RequestContext,
)
from gateway.errors import AuditUnavailable
from gateway.logs import request_log_fields

log = logging.getLogger("gateway.request")


async def record_request(app: web.Application, ctx: RequestContext, status: int) -> bool:
    """Audit the request (its log line is `log_request`'s, once the answer is sent). False
    when its record was not committed and `audit.on_error` is fail_closed: the caller
    must not complete the response."""
    if ctx.audited:
        return True
    ctx.audited = True
    ctx.status = status  # a stream that broke after its 200 ends with the error's status
    keys = app[AUDIT_KEYS]
    pipeline = app[PIPELINE].current
    verdict = ctx.verdict
    tier_opt_in = ctx.tier_spec is not None and ctx.tier_spec.store_prompts
    action: str = verdict.action if verdict is not None else "none"
    categories = verdict.categories if verdict is not None else ()
    if ctx.output_action != "none":  # output moderation found something in the answer
        categories = tuple(dict.fromkeys((*categories, *ctx.output_categories)))
        if ctx.output_action == "block" or action in ("none", "allow"):
            action = ctx.output_action
    record = build_record(
        ctx, status=status, keys=keys,
        action=action,
        scores=verdict.scores if verdict is not None else None,
        categories=categories,
        limit=ctx.limit, watermark_key_id=ctx.watermark_key_id,
        policy_version=pipeline.version,
        policy_hash=pipeline.policy.digest if pipeline.policy is not None else "",
        store_prompt=app[SETTINGS].audit.store_prompts and tier_opt_in)
    ctx.key_id = record.key_id
    settings = app[SETTINGS].audit
    try:
        # Alone in flight, the record may be committed on the loop: nobody else waits.
        committed = await app[AUDIT].submit(record, wait=settings.acknowledge == "committed",
                                            inline=app[LIFECYCLE].in_flight <= 1)
    except asyncio.CancelledError:
        # The client left while the record was committed: the record is still written
        # (AuditLog.submit).
        raise
    withheld = not committed and settings.on_error == "fail_closed"
    if withheld:
        ctx.status = status = AuditUnavailable.status
    return not withheld


def log_request(ctx: RequestContext, status: int) -> None:
    """The request's one log line, once it is audited (and, where it could be, answered)."""
    if not log.isEnabledFor(logging.INFO):  # the fields cost more than the check
        return
    duration = time.perf_counter() - ctx.started
    log.info("request", extra=request_log_fields(ctx, status, duration, key_id=ctx.key_id))


async def record_admin(app: web.Application, request: web.Request, route: str,
                       status: int) -> None:
    """The audit record of an admin call whose token was valid: `route` is the admin path,
    the decision `forbidden` for a token without the admin scope, else `admin`."""
    principal = request[PRINCIPAL]
    pipeline = app[PIPELINE].current
    policy = pipeline.policy
    await app[AUDIT].submit(AuditRecord(
        request_id=request[REQUEST_ID], time=time.time(),
        key_id=app[AUDIT_KEYS].key_id(principal.sub),
        tier=principal.tier if policy is not None and principal.tier in policy.tiers else "-",
        model="", route=route, status=status,
        decision="forbidden" if status == 403 else "admin",
        policy_version=pipeline.version, policy_hash=policy.digest if policy else ""))
