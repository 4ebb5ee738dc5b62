#!/usr/bin/env python3
"""Container healthcheck of an `edm worker`: healthy while this host's newest worker row has a heartbeat younger
than 90 s (the worker beats every 20 s). Reads EDM_DATABASE_URL; exit 0 healthy, 1 not. Imports only asyncpg, so
it costs a few milliseconds of CPU, not a whole `edm` start-up."""

import asyncio
import os
import re
import socket
import sys

import asyncpg

STALE_SECONDS = 90


async def age() -> float | None:
    url = re.sub(r"^postgres(?:ql)?(?:\+\w+)?://", "postgresql://", os.environ["EDM_DATABASE_URL"])
    url = re.sub(r"([?&])ssl=", r"\1sslmode=", url)  # EDM's URL takes asyncpg's `ssl`; a DSN takes `sslmode`
    conn = await asyncpg.connect(url, timeout=5, statement_cache_size=0)
    try:
        return await conn.fetchval(
            "SELECT extract(epoch FROM now() - max(last_heartbeat_at)) FROM workers WHERE hostname = $1",
            socket.gethostname(),
        )
    finally:
        await conn.close()


def main() -> int:
    try:
        seconds = asyncio.run(asyncio.wait_for(age(), 10))
    except Exception as exc:  # noqa: BLE001 - any failure is "unhealthy", with one line saying why
        print(f"unhealthy: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if seconds is None or seconds > STALE_SECONDS:
        print(f"unhealthy: no heartbeat from {socket.gethostname()} for {seconds} s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
