"""GET /admin/v1/audit: the decision log for admins, newest first, one page at a time.

Query parameters (all optional): since, until (epoch seconds, ISO 8601, or a duration
such as 24h meaning that long ago), tier, decision, key_id, request_id (the join to what
`gateway watermark detect` and the ledger report; clients choose request ids, so compare
the key too), limit (1-1000, default 100), cursor (the `next_cursor` of the previous
page). Unknown parameters are refused so a typo never silently widens the result.
"""

from __future__ import annotations

import time

import orjson
from aiohttp import web
from multidict import MultiMapping

# The module, not the name: gateway.admin may import this module to mount the route.
import gateway.admin as admin
from gateway.audit import AUDIT
from gateway.audit.log import MAX_PAGE
from gateway.audit.store import QueryFilter
from gateway.audit.timespec import parse_time
from gateway.errors import BadRequest
from gateway.protocol import expect_handler

_PARAMS = frozenset({"since", "until", "tier", "decision", "key_id", "request_id", "limit",
                     "cursor"})
DEFAULT_PAGE = 100


async def audit_query_handler(request: web.Request) -> web.Response:
    await admin.require_admin(request)
    flt, limit, cursor = parse_query(request.query, time.time())
    try:
        records, next_cursor = await request.app[AUDIT].query(flt, limit=limit, cursor=cursor)
    except ValueError:
        raise BadRequest("cursor is not one this endpoint issued", param="cursor",
                         code="invalid_cursor") from None
    body = {"records": [r.as_json() for r in records], "next_cursor": next_cursor}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def parse_query(query: MultiMapping[str], now: float) -> tuple[QueryFilter, int, str | None]:
    """The filter, page size and cursor a request asks for; BadRequest names the param."""
    for name in query:
        if name not in _PARAMS:
            raise BadRequest(f"unknown parameter {name!r}; known: {', '.join(sorted(_PARAMS))}",
                             param=name)
        if len(query.getall(name)) > 1:  # which one wins would be a guess
            raise BadRequest(f"parameter {name!r} is given more than once", param=name)
    times: dict[str, float | None] = {}
    for name in ("since", "until"):
        raw = query.get(name)
        try:
            times[name] = parse_time(raw, now) if raw else None
        except ValueError as exc:
            raise BadRequest(str(exc), param=name) from None
    if times["since"] is not None and times["until"] is not None and \
            times["since"] >= times["until"]:
        raise BadRequest("since must be before until (durations count back from now)",
                         param="since")
    raw_limit = query.get("limit", str(DEFAULT_PAGE))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_PAGE:
        raise BadRequest(f"limit must be an integer from 1 to {MAX_PAGE}", param="limit")
    flt = QueryFilter(since=times["since"], until=times["until"],
                      tier=query.get("tier") or None, decision=query.get("decision") or None,
                      key_id=query.get("key_id") or None,
                      request_id=query.get("request_id") or None)
    return flt, int(raw_limit), query.get("cursor") or None


def add_audit_routes(app: web.Application) -> None:
    app.router.add_get("/admin/v1/audit", audit_query_handler, expect_handler=expect_handler)
