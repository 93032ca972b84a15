"""/openapi.json is kept in sync with the router, and validates as OpenAPI 3."""

from __future__ import annotations

import aiohttp

from gateway.openapi import document
from tests.conftest import Server


def test_document_paths_match_the_router(gateway: Server) -> None:
    routed = {(r.method.lower(), r.resource.canonical) for r in gateway.app.router.routes()
              if r.resource is not None and r.method != "HEAD"}
    documented = {(method, path) for path, ops in document()["paths"].items() for method in ops}
    assert routed == documented


async def test_served_document_is_valid_openapi(gateway: Server,
                                                http: aiohttp.ClientSession) -> None:
    from openapi_spec_validator import validate

    async with http.get(gateway.url + "/openapi.json") as resp:
        served = await resp.json()
    assert served == document()
    validate(served)
