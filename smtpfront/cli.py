"""The command line: ``smtpfront serve | consume | queue | check-config | version``.

``serve`` runs the pre-fork master (``--workers`` uvloop processes sharing the port through
SO_REUSEPORT), writing each accepted message to the queue named by ``--queue``:

    maildir:DIR             the embedded default (maildir:./spool): tmp/ → fsync → new/
    redis://HOST:PORT/DB    production: one Redis stream entry per message (rediss:// for TLS)
    redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE[/DB]
                            the master Sentinel names for SERVICE (rediss+sentinel:// for TLS)
    redis+cluster://HOST:PORT[,HOST:PORT...]/?shards=N
                            Redis Cluster: N shard streams STREAM:{0}..STREAM:{N-1} (default
                            16; rediss+cluster:// for TLS); ``consume`` takes the same URL
    null:                   read and discard (benchmarks only)

``queue`` (stats, list, show, dead list/retry/purge) is :mod:`smtpfront.queuetool`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys
from collections.abc import Sequence

from . import core, metrics, queuetool
from ._version import __version__
from .assembly import build_sink
from .config import REDIS_SCHEMES, Config, ConfigError, load_config, parse_address, render
from .config import warnings as config_warnings
from .core.data import ACCELERATED
from .logs import setup_logging
from .sink.base import SinkError
from .supervisor.arbiter import Arbiter
from .supervisor.instance import InstanceError, InstanceLock
from .supervisor.worker import worker_main

__all__ = ["main"]

log = logging.getLogger("smtpfront.cli")


def _env(name: str, default: str) -> str:
    return os.environ.get(f"SMTPFRONT_{name}", default)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (every flag also reads an SMTPFRONT_* environment variable)."""
    parser = argparse.ArgumentParser(prog="smtpfront", description="SMTP/LMTP receiving front end")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="accept mail and queue it (the pre-fork daemon)")
    serve.add_argument("--config", default=os.environ.get("SMTPFRONT_CONFIG"), metavar="FILE",
                       help="TOML configuration (see deploy/smtpfront.toml); flags override it")
    serve.add_argument("--listen", action="append", metavar="HOST:PORT",
                       help="listen here (repeatable; default 127.0.0.1:2525)")
    serve.add_argument("--queue", help="redis://HOST:PORT/DB, maildir:DIR (default maildir:./spool) or null:")
    serve.add_argument("--workers", type=int, help="worker processes (default: the number of CPUs)")
    serve.add_argument("--hostname", help="name in the greeting and Received headers")
    serve.add_argument("--tls-cert", help="PEM certificate chain")
    serve.add_argument("--tls-key", help="PEM private key")
    serve.add_argument("--no-tls", action="store_true", help="do not offer STARTTLS")
    serve.add_argument("--lmtp", action="store_true", help="speak LMTP (RFC 2033)")
    serve.add_argument("--size", type=int, help="maximum message size in octets (26214400)")
    serve.add_argument("--max-clients", type=int, help="connections per worker, 0 = unlimited")
    serve.add_argument("--no-fsync", action="store_true", help="maildir: do not fsync (a crash may lose mail)")
    serve.add_argument("--graceful-timeout", type=float, help="seconds open transactions get on SIGTERM (30)")
    serve.add_argument("--heartbeat-timeout", type=float, help="seconds before a silent worker is replaced (30)")
    serve.add_argument("--metrics-listen", metavar="HOST:PORT",
                       help="/metrics, /healthz, /readyz (default 127.0.0.1:9101)")
    serve.add_argument("--log-level", help="DEBUG, INFO (default), WARNING, ERROR")
    serve.add_argument("--log-format", choices=["json", "plain"], help="json (default) or plain")
    check = sub.add_parser("check-config", help="validate a configuration and print the effective one")
    check.add_argument("file", nargs="?", help="TOML configuration (environment variables apply too)")
    consume = sub.add_parser("consume", help="deliver queued mail from a Redis stream to a Maildir or a command")
    consume.add_argument("--queue", default=_env("QUEUE", ""),
                         help="redis://HOST:PORT/DB (or rediss://…, unix://…, redis+sentinel://…, "
                              "redis+cluster://…/?shards=N)")
    consume.add_argument("--stream", default=_env("STREAM", "smtpfront:inbound"), help="(smtpfront:inbound)")
    consume.add_argument("--group", default=_env("GROUP", "smtpfront"), help="consumer group (smtpfront)")
    consume.add_argument("--name", default=_env("CONSUMER_NAME", "") or None, help="consumer name (hostname-pid)")
    consume.add_argument("--max-deliveries", type=int, default=int(_env("MAX_DELIVERIES", "5")),
                         help="deliveries before an entry goes to STREAM:dead (5)")
    consume.add_argument("--claim-idle-ms", type=int, default=int(_env("CLAIM_IDLE_MS", "60000")),
                         help="retry entries pending this long, a crashed consumer's too (60000)")
    consume.add_argument("--forget-idle-ms", type=int, default=int(_env("FORGET_IDLE_MS", "3600000")),
                         help="remove group members idle this long with nothing pending, 0: never (3600000)")
    consume.add_argument("--block-ms", type=int, default=int(_env("BLOCK_MS", "5000")),
                         help="longest wait for new entries; bounds the time SIGTERM takes (5000)")
    consume.add_argument("--exec-timeout", type=float, default=float(_env("EXEC_TIMEOUT", "60")),
                         help="--exec: seconds before the command is killed and retried later (60)")
    consume.add_argument("--no-fsync", action="store_true", help="--maildir: do not fsync")
    consume.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))
    consume.add_argument("--log-format", choices=["json", "plain"], default=_env("LOG_FORMAT", "json"))
    target = consume.add_mutually_exclusive_group(required=True)
    target.add_argument("--maildir", metavar="DIR", help="deliver into this Maildir")
    target.add_argument("--exec", nargs=argparse.REMAINDER, metavar="CMD",
                        help="pipe each message into CMD ARGS... (last option; exit 75 retries, other failures "
                             "dead-letter)")
    queuetool.add_parser(sub)
    sub.add_parser("version", help="print the version")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    """The flags given on the command line, as configuration keys (None: not given)."""
    return {
        "listen": args.listen, "queue": args.queue, "workers": args.workers, "hostname": args.hostname,
        "tls.cert_file": args.tls_cert, "tls.key_file": args.tls_key,
        "listeners.tls": "none" if args.no_tls else None, "listeners.mode": "lmtp" if args.lmtp else None,
        "limits.message_size": args.size, "listeners.max_clients": args.max_clients,
        "maildir.fsync": False if args.no_fsync else None, "supervisor.graceful_timeout": args.graceful_timeout,
        "supervisor.heartbeat_timeout": args.heartbeat_timeout, "logging.level": args.log_level,
        "metrics.listen": args.metrics_listen,
        "logging.format": args.log_format,
    }


def _load(args: argparse.Namespace) -> Config:
    try:
        return load_config(args.config, env=os.environ, overrides=_overrides(args))
    except (ConfigError, OSError) as exc:
        raise SystemExit(f"smtpfront: configuration: {exc}") from None


def serve(args: argparse.Namespace) -> int:
    """Run the pre-fork master: ``workers`` processes, each with its own SO_REUSEPORT sockets."""
    config = _load(args)
    setup_logging(config.logging.level, json=config.logging.format == "json")
    # The daemon's lines carry no caller, thread or process fields: skip computing them for
    # every record (the logging docs' "Optimization" flags; a stack walk per line otherwise).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    try:
        build_sink(config)  # a queue this worker cannot serve fails here, before any fork
    except (SinkError, ValueError) as exc:
        raise SystemExit(f"smtpfront: --queue: {exc}") from None
    instance = InstanceLock()  # held until the master exits; its workers inherit it
    try:
        for listener in config.listeners:
            instance.acquire(listener.host, listener.port)
    except InstanceError as exc:
        instance.release()
        raise SystemExit(f"smtpfront: {exc}") from None
    for warning in config_warnings(config):
        log.warning(warning)
    if not core.compiled():
        log.warning("the protocol core is not compiled (installed without a C compiler, or with "
                    "SMTPFRONT_PURE_PYTHON=1): it runs interpreted, about half as fast")
    elif stale := core.stale_modules():
        log.warning("compiled core modules are older than their source (%s): reinstall to compile "
                    "the edits; the old code runs", ", ".join(stale))
    if not ACCELERATED:
        log.warning("smtpfront.core._scan is not built (no C compiler at install): the DATA "
                    "bare-line-ending check runs in Python, about five times slower")
    current = [config]

    def reload_check() -> None:  # SIGHUP: the new generation reads the file again
        current[0] = load_config(args.config, env=os.environ, overrides=_overrides(args))

    directory = metrics.prepare()  # before any fork: every worker writes its metric files here
    restarts = metrics.metrics().worker_restarts

    def reaped(pid: int, unexpected: bool) -> None:
        metrics.worker_gone(pid)
        if unexpected:
            restarts.inc()

    arbiter = Arbiter(
        worker_main=lambda context: worker_main(current[0], context), workers=config.workers,
        graceful_timeout=config.supervisor.graceful_timeout, heartbeat_timeout=config.supervisor.heartbeat_timeout,
        respawn_backoff=config.supervisor.respawn_backoff, respawn_backoff_max=config.supervisor.respawn_backoff_max,
        reload_check=reload_check, on_reaped=reaped,
    )
    host, port = parse_address(config.metrics.listen)
    health = metrics.HealthServer(
        host, port, ready=lambda: arbiter.ready() and metrics.queue_reachable(), master_gauges=arbiter.gauges
    )
    try:
        health.start()
    except OSError as exc:
        raise SystemExit(f"smtpfront: {exc.strerror or exc}") from None
    log.info("metrics", extra={"address": f"{host}:{health.port}"})
    agent = _agent_check(config, arbiter)
    try:
        return arbiter.run()
    finally:
        instance.release()
        health.stop()
        if agent is not None:
            agent.stop()
        shutil.rmtree(directory, ignore_errors=True)


def _agent_check(config: Config, arbiter: Arbiter) -> metrics.AgentCheckServer | None:
    """HAProxy's agent check, when configured: weight from free capacity, drain when stopping."""
    if config.metrics.agent_check_listen is None:
        return None
    limits = [item.max_clients for item in config.listeners]
    per_worker = 0 if 0 in limits else sum(limits)  # 0: some listener is unlimited

    def status() -> str:
        return metrics.agent_status(ready=arbiter.ready(), draining=arbiter.draining,
                                    active=metrics.active_connections(), capacity=per_worker * arbiter.workers)

    host, port = parse_address(config.metrics.agent_check_listen)
    agent = metrics.AgentCheckServer(host, port, status)
    try:
        agent.start()
    except OSError as exc:
        raise SystemExit(f"smtpfront: {exc.strerror or exc}") from None
    log.info("agent check", extra={"address": f"{host}:{agent.port}"})
    return agent


def check_config(args: argparse.Namespace) -> int:
    """Validate a configuration; print the effective one (secrets masked)."""
    try:
        config = load_config(args.file, env=os.environ)
    except (ConfigError, OSError) as exc:
        print(f"smtpfront: configuration: {exc}", file=sys.stderr)
        return 2
    for warning in config_warnings(config):
        print(f"smtpfront: warning: {warning}", file=sys.stderr)
    print(render(config, mask_secrets=True), end="")
    return 0


async def consume(args: argparse.Namespace) -> int:
    """Deliver queued messages until SIGTERM/SIGINT, then finish the batch and exit."""
    from .consumer import Consumer, Handler, exec_handler, maildir_handler

    if args.queue.partition("://")[0] not in REDIS_SCHEMES:
        raise SystemExit(f"--queue {args.queue!r}: consume wants redis://HOST:PORT/DB, redis+sentinel://… "
                         "or redis+cluster://…")
    if args.exec is not None and not args.exec:
        raise SystemExit("--exec: no command given")
    handler: Handler = (
        exec_handler(args.exec, timeout=args.exec_timeout) if args.exec
        else maildir_handler(args.maildir, fsync=not args.no_fsync)
    )
    try:
        consumer = Consumer(
            args.queue, stream=args.stream, group=args.group, name=args.name, block_ms=args.block_ms,
            claim_idle_ms=args.claim_idle_ms, max_deliveries=args.max_deliveries, forget_idle_ms=args.forget_idle_ms,
        )
    except ValueError as exc:
        raise SystemExit(f"--queue: {exc}") from None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, consumer.stop)
    log.info("consuming", extra={"stream": args.stream, "group": args.group, "consumer": consumer.name})
    await consumer.run(handler)
    log.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``smtpfront`` command."""
    args = build_parser().parse_args(argv)
    if args.command == "version":
        print(f"{__version__} (compiled core: {'yes' if core.compiled() else 'no'}, "
              f"compiled scan: {'yes' if ACCELERATED else 'no'})")
        return 0
    if args.command == "consume":
        setup_logging(args.log_level, json=args.log_format == "json")
        import uvloop

        return int(uvloop.run(consume(args)))
    if args.command == "check-config":
        return check_config(args)
    if args.command == "queue":
        return queuetool.run(args)
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
