"""aiosmtpd that reads every message and discards it (a peer for loadtest/compare.py).

usage: python loadtest/peers/aiosmtpd_sink.py PORT [--uvloop]
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from aiosmtpd.smtp import SMTP


class Discard:
    """aiosmtpd has read the whole body into ``envelope.content`` by now; drop it."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        envelope.content = b""
        return "250 2.0.0 Ok: discarded"


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(Discard(), hostname="aiosmtpd.test"), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    main = serve(int(sys.argv[1]))
    if "--uvloop" in sys.argv[2:]:
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)
