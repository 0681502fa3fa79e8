"""The command line: ``smtpfront serve | consume | version``.

``serve`` runs the pre-fork master (``--workers`` uvloop processes sharing the port through
SO_REUSEPORT), writing each accepted message to the queue named by ``--queue``:

    maildir:DIR             the embedded default (maildir:./spool): tmp/ → fsync → new/
    redis://HOST:PORT/DB    production: one Redis stream entry per message (rediss:// for TLS)
    null:                   read and discard (benchmarks only)
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence

from ._version import __version__
from .logs import setup_logging
from .server import SMTPServer
from .sink.base import Sink, SinkError
from .sink.maildir import MaildirSink
from .sink.null import NullSink
from .supervisor.arbiter import WORKER_BOOT_ERROR, Arbiter, WorkerContext

__all__ = ["main"]

log = logging.getLogger("smtpfront.cli")


def _env(name: str, default: str) -> str:
    return os.environ.get(f"SMTPFRONT_{name}", default)


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` → (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"--listen wants HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def make_sink(url: str, *, fsync: bool) -> Sink:
    """The sink a ``--queue`` URL names; a clear error for anything else."""
    scheme, _, rest = url.partition(":")
    if scheme == "maildir":
        return MaildirSink(rest or "./spool", fsync=fsync)
    if scheme == "null":
        return NullSink()
    if scheme in ("redis", "rediss"):
        from .sink.redis_streams import RedisStreamSink

        return RedisStreamSink(url)
    raise SystemExit(f"--queue {url!r}: unknown queue; use redis://HOST:PORT/DB, rediss://…, maildir:DIR or null:")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (every flag also reads an SMTPFRONT_* environment variable)."""
    parser = argparse.ArgumentParser(prog="smtpfront", description="SMTP/LMTP receiving front end")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="accept mail and queue it")
    serve.add_argument("--listen", type=parse_listen, default=parse_listen(_env("LISTEN", "127.0.0.1:2525")),
                       help="HOST:PORT to listen on (default 127.0.0.1:2525)")
    serve.add_argument("--queue", default=_env("QUEUE", "maildir:./spool"),
                       help="redis://HOST:PORT/DB, maildir:DIR (default maildir:./spool) or null:")
    serve.add_argument("--workers", type=int, default=int(_env("WORKERS", str(os.cpu_count() or 1))),
                       help="worker processes (default: the number of CPUs)")
    serve.add_argument("--graceful-timeout", type=float, default=float(_env("GRACEFUL_TIMEOUT", "30")),
                       help="seconds open transactions get on SIGTERM/SIGHUP (30)")
    serve.add_argument("--heartbeat-timeout", type=float, default=float(_env("HEARTBEAT_TIMEOUT", "30")),
                       help="seconds without a heartbeat before a stuck worker is replaced (30)")
    serve.add_argument("--hostname", default=_env("HOSTNAME", "") or None, help="name in greeting and Received")
    serve.add_argument("--tls-cert", default=_env("TLS_CERT", "") or None, help="PEM certificate chain")
    serve.add_argument("--tls-key", default=_env("TLS_KEY", "") or None, help="PEM private key")
    serve.add_argument("--no-tls", action="store_true", help="do not offer STARTTLS")
    serve.add_argument("--lmtp", action="store_true", help="speak LMTP (RFC 2033)")
    serve.add_argument("--size", type=int, default=int(_env("SIZE", str(25 * 1024 * 1024))),
                       help="maximum message size in octets")
    serve.add_argument("--max-clients", type=int, default=int(_env("MAX_CLIENTS", "0")), help="0 = unlimited")
    serve.add_argument("--no-fsync", action="store_true", help="maildir: do not fsync (a crash may lose mail)")
    serve.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))
    serve.add_argument("--log-format", choices=["json", "plain"], default=_env("LOG_FORMAT", "json"))
    consume = sub.add_parser("consume", help="deliver queued mail from a Redis stream to a Maildir or a command")
    consume.add_argument("--queue", default=_env("QUEUE", ""), help="redis://HOST:PORT/DB (or rediss://…)")
    consume.add_argument("--stream", default=_env("STREAM", "smtpfront:inbound"), help="(smtpfront:inbound)")
    consume.add_argument("--group", default=_env("GROUP", "smtpfront"), help="consumer group (smtpfront)")
    consume.add_argument("--name", default=_env("CONSUMER_NAME", "") or None, help="consumer name (hostname-pid)")
    consume.add_argument("--max-deliveries", type=int, default=int(_env("MAX_DELIVERIES", "5")),
                         help="deliveries before an entry goes to STREAM:dead (5)")
    consume.add_argument("--claim-idle-ms", type=int, default=int(_env("CLAIM_IDLE_MS", "60000")),
                         help="retry entries pending this long, a crashed consumer's too (60000)")
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
    sub.add_parser("version", help="print the version")
    return parser


def serve(args: argparse.Namespace) -> int:
    """Run the pre-fork master: ``--workers`` processes, each with its own SO_REUSEPORT socket."""
    host, port = args.listen
    make_sink(args.queue, fsync=not args.no_fsync)  # a bad --queue fails here, before any fork
    _check_bind(host, port)
    arbiter = Arbiter(
        worker_main=functools.partial(_worker_main, args), workers=args.workers,
        graceful_timeout=args.graceful_timeout, heartbeat_timeout=args.heartbeat_timeout,
    )
    return arbiter.run()


def _check_bind(host: str, port: int) -> None:
    """Fail with a clear message, in the master, when the address cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise SystemExit(f"smtpfront: cannot listen on {host}:{port}: {exc.strerror}") from None


def _worker_main(args: argparse.Namespace, context: WorkerContext) -> int:
    """A worker process, after the fork: its own logging, event loop and listening socket."""
    setup_logging(args.log_level, json=args.log_format == "json", worker=context.number)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the master decides
    import uvloop

    return int(uvloop.run(_serve_worker(args, context)))


async def _serve_worker(args: argparse.Namespace, context: WorkerContext) -> int:
    host, port = args.listen
    server = SMTPServer(
        host=host, port=port, sink=make_sink(args.queue, fsync=not args.no_fsync), name=args.hostname,
        size=args.size, max_clients=args.max_clients, lmtp=args.lmtp, tls=not args.no_tls,
        cert_file=args.tls_cert, key_file=args.tls_key, reuse_port=True,
        close_timeout=args.graceful_timeout,
    )
    try:
        await server.start()
    except (SinkError, OSError) as exc:
        log.error("worker cannot start: %s", exc)
        return WORKER_BOOT_ERROR
    log.info("listening", extra={"address": f"{host}:{server.port}", "queue": args.queue})
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
    await server.close(timeout=0.0 if quick else None)
    beat.cancel()
    log.info("stopped")
    return 0


async def consume(args: argparse.Namespace) -> int:
    """Deliver queued messages until SIGTERM/SIGINT, then finish the batch and exit."""
    from .consumer import Consumer, Handler, exec_handler, maildir_handler

    if not args.queue.startswith(("redis://", "rediss://", "unix://")):
        raise SystemExit(f"--queue {args.queue!r}: consume wants redis://HOST:PORT/DB")
    if args.exec is not None and not args.exec:
        raise SystemExit("--exec: no command given")
    handler: Handler = (
        exec_handler(args.exec, timeout=args.exec_timeout) if args.exec
        else maildir_handler(args.maildir, fsync=not args.no_fsync)
    )
    consumer = Consumer(
        args.queue, stream=args.stream, group=args.group, name=args.name, block_ms=args.block_ms,
        claim_idle_ms=args.claim_idle_ms, max_deliveries=args.max_deliveries,
    )
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
        print(__version__)
        return 0
    if args.command == "consume":
        setup_logging(args.log_level, json=args.log_format == "json")
        import uvloop

        return int(uvloop.run(consume(args)))
    if args.workers < 1:
        raise SystemExit("smtpfront: --workers must be at least 1")
    setup_logging(args.log_level, json=args.log_format == "json")
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
