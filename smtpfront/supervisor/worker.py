"""A worker process: built from the configuration after the fork, then serving until told to stop.

Each worker has its own uvloop event loop, its own sink (its own Redis connection) and its
own listening sockets (``SO_REUSEPORT``), one per configured listener (e.g. 25 with
STARTTLS, 465 implicit TLS, 587 submission, an LMTP port): the ones its slot's earlier worker
handed to the master where the address is unchanged, new ones elsewhere; it hands them all
over in turn. It beats its heartbeat once a second once it listens, stops on SIGTERM (drain)
or SIGQUIT (now), ignores SIGINT (the master decides), and exits with
:data:`WORKER_BOOT_ERROR` when it cannot start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from ..aio.server import WorkerServer
from ..assembly import assemble, trace
from ..config import Config
from ..logs import setup_logging
from ..sink.base import SinkError
from .arbiter import WORKER_BOOT_ERROR, WorkerContext

__all__ = ["worker_main"]

log = logging.getLogger(__name__)


def worker_main(config: Config, context: WorkerContext) -> int:
    """The child's entry point, after the fork: logging, then its own event loop."""
    setup_logging(config.logging.level, json=config.logging.format == "json", worker=context.number)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the master decides
    import uvloop

    return int(uvloop.run(_serve(config, context)))


async def _serve(config: Config, context: WorkerContext) -> int:
    try:
        built = assemble(config, sockets=context.sockets, reuse_port=True)
        sink = built.sink
        start = getattr(sink, "start", None)
        if start is not None:
            await start()
        server = WorkerServer(built.listeners, built.hooks, sink, built.events, trace)
        await server.start()
    except (SinkError, OSError, ValueError) as exc:
        log.error("worker cannot start: %s", exc)
        return WORKER_BOOT_ERROR
    for item in config.listeners:
        log.info("listening", extra={"address": item.address, "mode": item.mode, "tls": item.tls})
    try:
        context.hand_over([sock.fileno() for sock in server.sockets])
    except OSError as exc:  # the master is gone: nothing to keep them for
        log.warning("cannot hand the listening sockets to the master: %s", exc)
    stop = asyncio.Event()
    quick = False
    loop = asyncio.get_running_loop()

    def quit_now() -> None:
        nonlocal quick
        quick = True
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGQUIT, quit_now)

    async def heartbeat() -> None:
        while not stop.is_set():
            context.heartbeat.notify()
            if os.getppid() != context.ppid:  # the master is gone: do not linger as an orphan
                log.error("master process gone; stopping")
                stop.set()
            await asyncio.sleep(1.0)

    beat = loop.create_task(heartbeat())
    await stop.wait()
    log.info("stopping: draining open sessions")
    # The master SIGKILLs a worker graceful_timeout after its SIGTERM: the drain ends a little
    # earlier, so the sessions it ends are counted and flushed before that (aio/tally.py).
    drain = config.supervisor.graceful_timeout
    await server.close(timeout=0.0 if quick else drain - min(1.0, drain / 10))
    await sink.close()
    beat.cancel()
    log.info("stopped")
    return 0
