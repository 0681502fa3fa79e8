"""``smtpfront consume``: deliver the Redis queue into a Maildir or a command, as a service.

Configuration is ``serve``'s (:func:`smtpfront.config.load_config`): ``--config FILE`` (or
``SMTPFRONT_CONFIG``) < the ``SMTPFRONT_*`` environment < the flags. It reads ``queue`` and
``redis.stream`` (what ``serve`` writes: ``SMTPFRONT_QUEUE``, ``SMTPFRONT_REDIS__STREAM``),
``consumer.*`` and ``logging.*``. The variables earlier versions of ``consume`` read
(:data:`DEPRECATED_ENV`: ``SMTPFRONT_STREAM``, ``SMTPFRONT_GROUP`` …) still work, each with a
warning naming its replacement; the replacement wins when both are set.

Concurrency: ``--workers N`` (``consumer.workers``, 16) deliveries in flight at once, in one
process and one event loop: entries are read (or claimed) as slots free up, each delivered on
its own, and those finished meanwhile acknowledged together. The handlers wait on I/O (a Maildir's fsyncs run in
an executor; ``--exec`` runs each delivery in a child process), so one process keeps N of
them busy with one Redis connection and one set of metrics; for more CPU, run more
consumers (replicas) in the same group.

SIGTERM or SIGINT: no new entries are read; the deliveries in hand finish, are acknowledged
(or left pending, or dead-lettered, as their outcome says) and the command exits 0. What was
read by the ``XREADGROUP`` waiting at that moment (at most ``block_ms``) is delivered too.
Nothing is cut short: a delivery is never half done, and one that is killed (SIGKILL past a
grace period) stays pending and is delivered again (at least once).

``--metrics-listen HOST:PORT`` (``consumer.metrics_listen``) serves ``/metrics`` (see
:mod:`smtpfront.consumer_metrics`), ``/healthz`` (200 while the process runs) and ``/readyz``
(503 once stopping). Bad input exits 2 with one line on standard error; a metrics address
that cannot be bound exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

from . import metrics
from .config import REDIS_SCHEMES, Config, ConfigError, env_name, load_config, parse_address
from .consumer import Consumer, Handler, Observer, exec_handler, maildir_handler
from .logs import setup_logging

__all__ = ["DEPRECATED_ENV", "add_parser", "environment", "run"]

log = logging.getLogger("smtpfront.consume")

# What consume read before it read serve's configuration -> the key that replaces it.
DEPRECATED_ENV: Mapping[str, str] = {
    "SMTPFRONT_STREAM": "redis.stream", "SMTPFRONT_GROUP": "consumer.group", "SMTPFRONT_CONSUMER_NAME": "consumer.name",
    "SMTPFRONT_MAX_DELIVERIES": "consumer.max_deliveries", "SMTPFRONT_CLAIM_IDLE_MS": "consumer.claim_idle_ms",
    "SMTPFRONT_BLOCK_MS": "consumer.block_ms", "SMTPFRONT_EXEC_TIMEOUT": "consumer.exec_timeout",
}


def add_parser(sub: Any) -> None:
    """Add ``consume`` to the ``smtpfront`` subcommands (every flag is a configuration key)."""
    consume = sub.add_parser("consume", help="deliver queued mail from a Redis stream to a Maildir or a command")
    consume.add_argument("--config", default=os.environ.get("SMTPFRONT_CONFIG"), metavar="FILE",
                         help="TOML configuration, as for serve ([consumer], queue, redis.stream)")
    consume.add_argument("--queue", help="redis://HOST:PORT/DB (or rediss://…, unix://…, redis+sentinel://…, "
                                         "redis+cluster://…/?shards=N); default: the configuration's queue")
    consume.add_argument("--stream", help="redis.stream (smtpfront:inbound)")
    consume.add_argument("--group", help="consumer.group (smtpfront)")
    consume.add_argument("--name", help="consumer.name (hostname-pid)")
    consume.add_argument("--workers", type=int, metavar="N", help="consumer.workers: deliveries in flight at once (16)")
    consume.add_argument("--max-deliveries", type=int, help="deliveries before an entry goes to STREAM:dead (5)")
    consume.add_argument("--claim-idle-ms", type=int, help="retry entries pending this long, a crashed consumer's "
                                                           "too (60000)")
    consume.add_argument("--forget-idle-ms", type=int, help="remove group members idle this long with nothing "
                                                            "pending (consumers gone), 0: never (3600000)")
    consume.add_argument("--block-ms", type=int, help="longest wait for new entries; bounds the time SIGTERM "
                                                      "takes (5000)")
    consume.add_argument("--exec-timeout", type=float, help="--exec: seconds before the command is killed and "
                                                            "retried later (60)")
    consume.add_argument("--metrics-listen", metavar="HOST:PORT", help="serve /metrics, /healthz, /readyz here "
                                                                       "(default: off)")
    consume.add_argument("--no-fsync", action="store_true", help="--maildir: do not fsync")
    consume.add_argument("--log-level", help="DEBUG, INFO (default), WARNING, ERROR")
    consume.add_argument("--log-format", choices=["json", "plain"], help="json (default) or plain")
    target = consume.add_mutually_exclusive_group(required=True)
    target.add_argument("--maildir", metavar="DIR", help="deliver into this Maildir")
    target.add_argument("--exec", nargs=argparse.REMAINDER, metavar="CMD",
                        help="pipe each message into CMD ARGS... (last option; exit 75 retries, other failures "
                             "dead-letter)")


def environment(env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """``env`` with each deprecated variable copied to its replacement (unless that is set),
    and a warning per deprecated variable found."""
    out, notes = dict(env), []
    for old, key in DEPRECATED_ENV.items():
        if old in env:
            new = env_name(key)
            notes.append(f"{old} is deprecated: set {new} ({key}, which serve reads too)"
                         + (f"; {new} is set and wins" if new in env else ""))
            out.setdefault(new, env[old])
    return out, notes


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    return {
        "queue": args.queue, "redis.stream": args.stream, "consumer.group": args.group, "consumer.name": args.name,
        "consumer.workers": args.workers, "consumer.max_deliveries": args.max_deliveries,
        "consumer.claim_idle_ms": args.claim_idle_ms, "consumer.forget_idle_ms": args.forget_idle_ms,
        "consumer.block_ms": args.block_ms,
        "consumer.exec_timeout": args.exec_timeout, "consumer.metrics_listen": args.metrics_listen,
        "logging.level": args.log_level, "logging.format": args.log_format,
    }


def _fail(message: str) -> int:
    print(f"smtpfront consume: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Run ``smtpfront consume``; returns the exit status (2: bad input)."""
    env, notes = environment(os.environ)
    try:
        config = load_config(args.config, env=env, overrides=_overrides(args))
    except (ConfigError, OSError) as exc:
        return _fail(f"configuration: {exc}")
    if config.queue.partition("://")[0] not in REDIS_SCHEMES:
        return _fail(f"the queue {config.queue!r} is not a Redis queue: give --queue redis://HOST:PORT/DB "
                     "(or redis+sentinel://…, redis+cluster://…), or set queue in the configuration")
    if args.exec is not None and not args.exec:
        return _fail("--exec: no command given")
    setup_logging(config.logging.level, json=config.logging.format == "json")
    for note in notes:
        log.warning(note)
    c = config.consumer
    handler: Handler = (exec_handler(args.exec, timeout=c.exec_timeout) if args.exec
                        else maildir_handler(args.maildir, fsync=not args.no_fsync))
    import uvloop

    return int(uvloop.run(_consume(config, handler)))


async def _consume(config: Config, handler: Handler) -> int:
    c = config.consumer
    stopping = asyncio.Event()
    observer: Observer | None = None
    health: metrics.HealthServer | None = None
    if c.metrics_listen is not None:
        from prometheus_client import CollectorRegistry, disable_created_metrics

        disable_created_metrics()  # type: ignore[no-untyped-call]  # counters without their _created twins, as serve's
        registry = CollectorRegistry()
        from .consumer_metrics import ConsumerMetrics

        observer = ConsumerMetrics(registry, c.workers)
        host, port = parse_address(c.metrics_listen)
        health = metrics.HealthServer(host, port, ready=lambda: not stopping.is_set(), registry=registry)
        try:
            health.start()
        except OSError as exc:  # the address is taken or not ours: not bad input, exit 1
            print(f"smtpfront consume: --metrics-listen: {exc.strerror or exc}", file=sys.stderr)
            return 1
    try:
        try:
            consumer = Consumer(
                config.queue, stream=config.redis.stream, group=c.group, name=c.name, batch=c.workers,
                block_ms=c.block_ms, claim_idle_ms=c.claim_idle_ms, max_deliveries=c.max_deliveries,
                forget_idle_ms=c.forget_idle_ms, observer=observer,
            )
        except ValueError as exc:
            return _fail(f"--queue: {exc}")

        def stop() -> None:
            if not stopping.is_set():
                log.info("stopping: no new entries; finishing the deliveries in hand")
            stopping.set()
            consumer.stop()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        log.info("consuming", extra={"stream": config.redis.stream, "group": c.group, "consumer": consumer.name,
                                     "workers": c.workers})
        await consumer.run(handler)
        log.info("stopped")
        return 0
    finally:
        if health is not None:
            health.stop()
