"""Cost of authentication per request: first sight of a token vs a cached one.

    python bench/auth.py [--n 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import aiohttp

from gateway.devkeys import mint_token
from gateway.pipeline.auth import AuthSettings, AuthStage, build_verifier


async def main(n: int) -> None:
    home = Path(tempfile.mkdtemp(prefix="gateway-bench-auth-"))
    tokens = [mint_token(home, tier="public", sub=f"user-{i}") for i in range(n)]
    async with aiohttp.ClientSession() as session:
        verifier = build_verifier(AuthSettings(), home, session)
        await verifier.start()
        stage = AuthStage(verifier)
        headers = [[f"Bearer {t}"] for t in tokens]
        started = time.perf_counter()
        for h in headers:
            await stage.authenticate(h, False)
        first = (time.perf_counter() - started) / n
        started = time.perf_counter()
        for h in headers:
            await stage.authenticate(h, False)
        cached = (time.perf_counter() - started) / n
        await verifier.close()
    print(f"EdDSA token, first sight: {first * 1e6:.0f} us   cached: {cached * 1e6:.1f} us "
          f"(n={n})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    asyncio.run(main(parser.parse_args().n))
