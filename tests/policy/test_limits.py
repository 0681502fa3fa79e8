"""[client_limits]: per-client limits shared by every worker and every pod (Postfix's anvil), on
serve's wire: concurrent connections across two ``serve`` masters sharing one redis-server, the
rates at N-1, N and N+1, failed AUTH per hour, the IPv6 prefix, exempt networks, a store that
cannot be reached letting mail through (with its metric and one log line), and the host-local
store that Maildir uses."""

from __future__ import annotations

import asyncio
import shutil
import smtplib
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from smtpfront.config import ConfigError, load_config
from smtpfront.core.events import Address, MailParams
from smtpfront.hooks import Session
from smtpfront.policy.limits import ClientLimits, client_key
from smtpfront.policy.limits_local import LocalCounters

from ..aio.conftest import Client
from ..conftest import RedisClusterNodes, RedisServer, free_port
from .support import TIMEOUT, Served, retry

pytestmark = pytest.mark.wire

N = 3
SERVE = '''
    hostname = "mx.test"
    queue = "QUEUE"
    [[listeners]]
    address = "127.0.0.1:{port}"
    tls = "none"
    [auth]
    methods = ["PLAIN"]
    allow_insecure = true
    backend = "file"
    file = "{tmp}/passwd"
    failure_delay = 0.0
    [trust]
    xclient = ["127.0.0.1/32"]
    [client_limits]
    LIMITS
'''


class Two:
    """Serve masters started by a test, each in its own directory; stopped afterwards."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[Served] = []

    def __call__(self, limits: str, queue: str) -> Served:
        where = self.tmp / f"serve{len(self.started)}"
        where.mkdir()
        (where / "passwd").write_text("alice:{PLAIN}secret\n")
        server = Served(where, SERVE.replace("LIMITS", limits).replace("QUEUE", queue))
        self.started.append(server)
        return server.ready()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Two]:
    two = Two(tmp_path)
    yield two
    for server in two.started:
        server.stop()


def greeting(port: int) -> tuple[Client, bytes]:
    c = Client(port)
    return c, c.line()


def metric(server: Served, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics}/metrics", timeout=TIMEOUT) as response:
        text = response.read().decode()
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines() if line.startswith(name))


def _equal(got: float, expected: float) -> None:
    assert got == expected, (got, expected)


# -- connections, across two masters and one Redis --------------------------------------------------


def test_concurrent_connections_are_counted_across_two_serves_sharing_redis(
        serve: Two, redis_server: RedisServer) -> None:
    a = serve(f"connections = {N}", redis_server.url)
    b = serve(f"connections = {N}", redis_server.url)
    held = []
    try:
        for i, port in enumerate((a.port, b.port, a.port)):  # N - 1, then N: all greeted
            c, line = greeting(port)
            held.append(c)
            assert line.startswith(b"220 "), (i, line)
        for port in (b.port, a.port):  # N + 1, on either master
            c, line = greeting(port)
            with c:
                assert line == b"421 Error: too many connections from your address, try again later\r\n"
                assert c.closed()
        held.pop(0).cmd("QUIT")  # a session that ends gives its slot back, on every master

        def greeted() -> None:
            c, line = greeting(b.port)
            with c:
                assert line.startswith(b"220 "), line
                assert c.cmd("QUIT").code == 221
        retry(greeted)
        held.pop(0).close()  # a connection dropped without QUIT gives it back too
        retry(greeted)
    finally:
        for c in held:
            c.close()
    retry(lambda: _equal(metric(a, 'smtpfront_policy_rejections_total{reason="client_connections"}'), 1))

    def logged() -> None:  # one reject line, naming the reason
        assert [line for line in a.log.read_text().splitlines() if "reason=client_connections" in line]
    retry(logged)


def test_a_slot_a_killed_worker_kept_lapses(redis_server: RedisServer) -> None:
    """The TTL safety net: a slot never given back expires after ``hold`` seconds."""
    from smtpfront.sink.redis.limits import RedisCounters

    async def run() -> list[bool]:
        store = RedisCounters(redis_server.url)
        try:
            got = [await store.acquire("{192.0.2.1}:conn", f"w{i}", 2, 0.5) for i in range(3)]
            await asyncio.sleep(0.8)
            got.append(await store.acquire("{192.0.2.1}:conn", "w3", 2, 60))
            ttl = await store.client.pttl("smtpfront:limits:{192.0.2.1}:conn")
            assert 0 < ttl <= 60_000
            return got
        finally:
            await store.close()

    assert asyncio.run(run()) == [True, True, False, True]


# -- rates at N-1, N, N+1 -------------------------------------------------------------------------


def test_connection_rate(serve: Two, redis_server: RedisServer) -> None:
    a = serve(f"connection_rate = {N}", redis_server.url)
    redis.Redis(port=redis_server.port).flushall()  # forget the connection that saw serve ready
    for i in range(N):
        c, line = greeting(a.port)
        with c:
            assert line.startswith(b"220 "), (i, line)
    c, line = greeting(a.port)
    with c:
        assert line.startswith(b"421 ") and b"in a minute" in line
        assert c.closed()


def test_message_rate(serve: Two, redis_server: RedisServer) -> None:
    a = serve(f"message_rate = {N}", redis_server.url)
    b = serve(f"message_rate = {N}", redis_server.url)
    for i in range(N):  # the rate is the client's, whichever master it reaches
        with smtplib.SMTP("127.0.0.1", (a.port, b.port)[i % 2], timeout=TIMEOUT) as smtp:
            assert smtp.sendmail("s@example.org", ["r@example.com"], b"Subject: t\r\n\r\nx\r\n") == {}
    with smtplib.SMTP("127.0.0.1", a.port, timeout=TIMEOUT) as smtp:
        smtp.ehlo()
        assert smtp.mail("s@example.org") == (450, b"4.7.1 Error: too much mail from your address, try again later")
        assert smtp.noop()[0] == 250  # the session goes on: a temporary refusal of this message


def test_recipient_rate(serve: Two, redis_server: RedisServer) -> None:
    a = serve(f"recipient_rate = {N}", redis_server.url)
    with smtplib.SMTP("127.0.0.1", a.port, timeout=TIMEOUT) as smtp:
        smtp.ehlo()
        smtp.mail("s@example.org")
        replies = [smtp.rcpt(f"r{i}@example.com")[0] for i in range(N + 1)]
    assert replies == [250] * N + [452]
    retry(lambda: _equal(metric(a, 'smtpfront_policy_rejections_total{reason="client_recipient_rate"}'), 1))


def test_auth_failures_per_hour(serve: Two, redis_server: RedisServer) -> None:
    a = serve(f"auth_failures = {N}", redis_server.url)
    for i in range(N):  # N failures, each in a session of its own
        with smtplib.SMTP("127.0.0.1", a.port, timeout=TIMEOUT) as smtp:
            smtp.ehlo()
            with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
                smtp.login("alice", "wrong")
            assert failed.value.smtp_code == 535, i
    with Client(a.port) as c:
        c.greet()
        r = c.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==")  # the right password: still refused, the client is past it
        assert (r.code, r.enhanced) == (421, "4.7.0") and "authentication" in r.text
        assert c.closed()
    retry(lambda: _equal(metric(a, 'smtpfront_policy_rejections_total{reason="auth_failed"}'), N))
    retry(lambda: _equal(metric(a, 'smtpfront_policy_rejections_total{reason="client_auth_failures"}'), 1))


def test_judged_on_the_address_xclient_names_and_exempt_networks(serve: Two, redis_server: RedisServer) -> None:
    a = serve('message_rate = 1\nexempt = ["192.0.2.0/24"]', redis_server.url)

    def mail(address: str) -> int:
        with Client(a.port) as c:
            c.greet()
            assert c.cmd(f"XCLIENT ADDR={address}").code == 220
            c.ehlo()
            return c.cmd("MAIL FROM:<s@example.org>").code

    assert [mail("198.51.100.7"), mail("198.51.100.7"), mail("198.51.100.8")] == [250, 450, 250]
    assert [mail("192.0.2.5") for _ in range(3)] == [250] * 3  # exempt
    # IPv6: one /64 is one client.
    assert [mail("IPV6:2001:db8::1"), mail("IPV6:2001:db8::2"), mail("IPV6:2001:db8:0:1::1")] == [250, 450, 250]


# -- a store that cannot be reached lets mail through -----------------------------------------------


def test_an_unreachable_redis_lets_mail_through_and_says_so(serve: Two) -> None:
    dead = free_port()  # nothing listens there
    a = serve(f'connections = 1\nmessage_rate = 1\nredis = "redis://127.0.0.1:{dead}/0"', "maildir:{spool}")
    for _ in range(3):
        with smtplib.SMTP("127.0.0.1", a.port, timeout=TIMEOUT) as smtp, smtplib.SMTP(
                "127.0.0.1", a.port, timeout=TIMEOUT) as other:
            assert other.noop()[0] == 250  # two at once, though connections = 1
            assert smtp.sendmail("s@example.org", ["r@example.com"], b"Subject: t\r\n\r\nx\r\n") == {}
    assert len(a.queued()) == 3

    def counted() -> None:
        assert metric(a, "smtpfront_client_limits_errors_total") >= 3
    retry(counted)
    lines = [line for line in a.log.read_text().splitlines() if "counter store failed" in line]
    assert len(lines) == 1, lines  # one line a minute, not one per check


# -- Maildir: the host's workers share a file --------------------------------------------------------


def test_with_maildir_two_serves_on_one_host_share_the_state_file(serve: Two, tmp_path: Path) -> None:
    limits = f'connections = 2\nstate_file = "{tmp_path}/limits.sqlite"'
    a = serve(limits, "maildir:{spool}")
    b = serve(limits, "maildir:{spool}")
    first, line1 = greeting(a.port)
    second, line2 = greeting(b.port)
    try:
        assert line1.startswith(b"220 ") and line2.startswith(b"220 ")
        c, line = greeting(a.port)
        with c:
            assert line.startswith(b"421 ")
        first.close()

        def greeted() -> None:
            c, line = greeting(a.port)
            with c:
                assert line.startswith(b"220 "), line
        retry(greeted)
    finally:
        first.close()
        second.close()


def test_local_counters(tmp_path: Path) -> None:
    async def run() -> None:
        one, two = LocalCounters(str(tmp_path / "c.sqlite")), LocalCounters(str(tmp_path / "c.sqlite"))
        assert [await s.acquire("k", f"m{i}", 2, 0.3) for i, s in enumerate((one, two, one))] == [True, True, False]
        await one.release("k", "m0")
        assert await two.acquire("k", "m3", 2, 60)
        assert not await one.acquire("k", "m4", 2, 60)
        time.sleep(0.4)  # m1's hold lapses
        assert await one.acquire("k", "m5", 2, 60)
        assert [await s.add("r", 1, 0.3) for s in (one, two, one)] == [1, 2, 3]
        assert await two.add("r", 0, 0.3) == 3
        time.sleep(0.4)
        assert await one.add("r", 1, 60) == 1  # a new window
        await one.close()
        await two.close()

    asyncio.run(run())


def test_client_key() -> None:
    assert client_key("192.0.2.1", 64) == "192.0.2.1"
    assert client_key("::ffff:192.0.2.1", 64) == "192.0.2.1"
    assert client_key("2001:db8::1", 64) == client_key("IPv6:2001:db8::ffff", 64) == "2001:db8::/64"
    assert client_key("2001:db8::1", 128) == "2001:db8::1/128"
    assert client_key("/run/smtp.sock", 64) is None


@pytest.mark.parametrize(("options", "message"), [
    ({"connections": -1}, "connections"), ({"ipv6_prefix": 129}, "ipv6_prefix"), ({"exempt": ["x"]}, "exempt"),
])
def test_bad_options(tmp_path: Path, options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ClientLimits(state_file=str(tmp_path / "s"), **options)  # type: ignore[arg-type]


def test_config_keys() -> None:
    assert not load_config(None, env={}).client_limits.enabled
    with pytest.raises(ConfigError, match=r"client_limits\.ipv6_prefix"):
        load_config(None, env={}, overrides={"client_limits.ipv6_prefix": 129})
    with pytest.raises(ConfigError, match=r"client_limits\.redis"):
        load_config(None, env={}, overrides={"client_limits.redis": "maildir:/x"})


def test_the_counts_work_in_a_redis_cluster(redis_cluster: RedisClusterNodes) -> None:
    """A cluster URL: each script's one key is hash-tagged by client, so any node's slot serves it."""
    from smtpfront.sink.redis.limits import RedisCounters

    clients = [f"198.51.100.{i}" for i in range(12)]  # spread over the three masters' slots

    async def run() -> None:
        store = RedisCounters(redis_cluster.url())
        try:
            for client in clients:
                assert [await store.acquire(f"{{{client}}}:conn", f"m{i}", 2, 60) for i in range(3)] == [
                    True, True, False]
                await store.release(f"{{{client}}}:conn", "m0")
                assert await store.acquire(f"{{{client}}}:conn", "m3", 2, 60)
                assert [await store.add(f"{{{client}}}:mr", 1, 60) for _ in range(3)] == [1, 2, 3]
        finally:
            await store.close()

    asyncio.run(run())
    slots = {keyslot(f"smtpfront:limits:{{{c}}}:conn") for c in clients}
    assert len({slot * 3 // 16384 for slot in slots}) > 1  # the clients did land on more than one master


def keyslot(key: str) -> int:
    from redis.crc import key_slot

    return int(key_slot(key.encode()))


def test_session_budgets_from_serves_configuration(served: type[Served]) -> None:
    """[limits] idle_commands and messages_per_session reach serve's workers; each refusal counts by
    reason and writes one reject line."""
    server = served('''
        queue = "maildir:{spool}"
        [[listeners]]
        address = "127.0.0.1:{port}"
        tls = "none"
        [limits]
        idle_commands = 3
        messages_per_session = 2
    ''')
    with Client(server.port) as c:
        c.greet()  # EHLO, then two more
        assert [c.cmd("NOOP").code, c.cmd("RSET").code] == [250, 250]
        r = c.cmd("NOOP")
        assert (r.code, r.enhanced) == (421, "4.7.0") and c.closed()
    with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as smtp:
        for _ in range(2):
            assert smtp.sendmail("s@example.org", ["r@example.com"], b"Subject: t\r\n\r\nx\r\n") == {}
        # The 421 came right after the second 250: smtplib reads it as the next MAIL's reply.
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            smtp.sendmail("s@example.org", ["r@example.com"], b"Subject: t\r\n\r\nx\r\n")
        assert (refused.value.smtp_code, refused.value.smtp_error) == (
            421, b"4.7.0 Error: too many messages in one session, closing connection")
    assert len(server.queued()) == 2
    for reason in ("idle_commands", "messages_per_session"):
        name = f'smtpfront_policy_rejections_total{{reason="{reason}"}}'
        retry(lambda name=name: _equal(metric(server, name), 1))

    def logged() -> None:
        lines = server.log.read_text().splitlines()
        assert len([line for line in lines if "reason=idle_commands" in line]) == 1
        assert len([line for line in lines if "reason=messages_per_session" in line]) == 1
    retry(logged)


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed")
def test_swaks_meets_the_message_rate(serve: Two, redis_server: RedisServer) -> None:
    a = serve("message_rate = 2", redis_server.url)

    def swaks() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["swaks", "--server", f"127.0.0.1:{a.port}", "--timeout", "10", "--from", "s@example.org",
                               "--to", "r@example.com", "--helo", "client.test"],
                              capture_output=True, text=True, timeout=30, check=False)

    assert [swaks().returncode for _ in range(2)] == [0, 0]
    refused = swaks()
    assert refused.returncode != 0 and "450 4.7.1 Error: too much mail from your address" in refused.stdout


class _Hanging:
    """A store that never answers (a Redis behind a black hole)."""

    calls = 0

    async def acquire(self, key: str, member: str, limit: int, hold: float) -> bool:
        await self._hang()
        return True

    async def release(self, key: str, member: str) -> None:
        await self._hang()

    async def add(self, key: str, amount: int, window: float) -> int:
        await self._hang()
        return 0

    async def close(self) -> None:
        return None

    async def _hang(self) -> None:
        self.calls += 1
        await asyncio.sleep(3600)


def test_a_store_that_does_not_answer_is_waited_for_once_then_skipped_for_a_while() -> None:
    store, reported = _Hanging(), []
    limits = ClientLimits(message_rate=1, timeout=0.3, store=store, report=lambda: reported.append(1))
    session = Session(id="s1", client_address="198.51.100.1", client_port=1)

    async def run() -> list[float]:
        took = []
        for _ in range(3):
            started = time.monotonic()
            assert await limits.on_mail_from(session, Address("a", "example.org"), MailParams()) is None
            took.append(time.monotonic() - started)
        return took

    took = asyncio.run(run())
    assert took[0] >= 0.25 and max(took[1:]) < took[0]  # waited once, then let through at once
    assert store.calls == 1 and len(reported) == 3
