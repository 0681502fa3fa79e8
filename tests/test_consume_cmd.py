"""``smtpfront consume`` as a service, the real command against a real redis-server: it reads
``serve``'s configuration (file < environment < flags, the old variables with a warning),
serves its metrics, stops gracefully on SIGTERM and keeps ``--workers N`` deliveries in flight.

Every wait is bounded; a handler that must wait for the test waits for a file, never a clock.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from smtpfront.consume_cmd import environment

from .conftest import RedisServer, free_port
from .deploy.support import http_get, tool
from .test_consumer import fields

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 20.0


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPFRONT_")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


@contextmanager
def consume(args: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """``smtpfront consume ARGS`` as a real subprocess; killed on exit if it still runs."""
    proc = subprocess.Popen([sys.executable, "-m", "smtpfront", "consume", *args], cwd=ROOT,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env or clean_env())
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT)


def wait(what: str, check: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not check():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{what}: not in time (exit {proc.poll()})\n{log.read_text(errors='replace')}")
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes], log: Path) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"consume did not stop\n{log.read_text(errors='replace')}") from None


def delivered(maildir: Path) -> int:
    new = maildir / "new"
    return len(list(new.iterdir())) if new.is_dir() else 0


def xadd(server: RedisServer, stream: str, queue_id: str = "Q1") -> None:
    with redis.Redis.from_url(server.url) as client:
        client.xadd(stream, fields(queue_id=queue_id))  # type: ignore[arg-type]


def groups(server: RedisServer, stream: str) -> list[str]:
    with redis.Redis.from_url(server.url) as client:
        return sorted(g["name"].decode() for g in client.xinfo_groups(stream))


# -- issue 15 item 2: serve's configuration --------------------------------------------------------

def test_reads_the_stream_variable_serve_reads(redis_server: RedisServer, tmp_path: Path) -> None:
    """SMTPFRONT_REDIS__STREAM (serve's) names the stream; earlier, consume read only SMTPFRONT_STREAM."""
    maildir, log = tmp_path / "Maildir", tmp_path / "consume.log"
    env = clean_env(SMTPFRONT_QUEUE=redis_server.url, SMTPFRONT_REDIS__STREAM="mail:in")
    with consume(["--maildir", str(maildir), "--block-ms", "200", "--log-format", "plain"], log, env) as proc:
        xadd(redis_server, "mail:in")
        wait("delivery from mail:in", lambda: delivered(maildir) == 1, proc, log)
        assert stop(proc, log) == 0
    assert "deprecated" not in log.read_text()


def test_file_then_environment_then_flags(redis_server: RedisServer, tmp_path: Path) -> None:
    maildir, log = tmp_path / "Maildir", tmp_path / "consume.log"
    config = tmp_path / "smtpfront.toml"
    config.write_text(f'queue = "{redis_server.url}"\n[redis]\nstream = "from:file"\n'
                      '[consumer]\ngroup = "billing"\nblock_ms = 200\n')
    env = clean_env(SMTPFRONT_CONFIG=str(config), SMTPFRONT_REDIS__STREAM="from:env")
    with consume(["--maildir", str(maildir), "--stream", "from:flag", "--log-format", "plain"], log, env) as proc:
        xadd(redis_server, "from:flag")
        wait("delivery from the flag's stream", lambda: delivered(maildir) == 1, proc, log)
        assert stop(proc, log) == 0
    assert groups(redis_server, "from:flag") == ["billing"]  # the file's group
    with redis.Redis.from_url(redis_server.url) as client:
        assert not client.exists("from:file") and not client.exists("from:env")


def test_the_old_variables_still_work_with_a_warning(redis_server: RedisServer, tmp_path: Path) -> None:
    maildir, log = tmp_path / "Maildir", tmp_path / "consume.log"
    env = clean_env(SMTPFRONT_QUEUE=redis_server.url, SMTPFRONT_STREAM="old:in", SMTPFRONT_GROUP="old-group",
                    SMTPFRONT_BLOCK_MS="200")
    with consume(["--maildir", str(maildir), "--log-format", "plain"], log, env) as proc:
        xadd(redis_server, "old:in")
        wait("delivery from old:in", lambda: delivered(maildir) == 1, proc, log)
        assert stop(proc, log) == 0
    assert groups(redis_server, "old:in") == ["old-group"]
    text = log.read_text()
    assert "SMTPFRONT_STREAM is deprecated: set SMTPFRONT_REDIS__STREAM" in text, text
    assert "SMTPFRONT_GROUP is deprecated: set SMTPFRONT_CONSUMER__GROUP" in text, text


def test_a_new_variable_wins_over_its_old_name() -> None:
    env, notes = environment({"SMTPFRONT_STREAM": "old", "SMTPFRONT_REDIS__STREAM": "new", "SMTPFRONT_BLOCK_MS": "9"})
    assert env["SMTPFRONT_REDIS__STREAM"] == "new" and env["SMTPFRONT_CONSUMER__BLOCK_MS"] == "9"
    assert notes == [
        "SMTPFRONT_STREAM is deprecated: set SMTPFRONT_REDIS__STREAM (redis.stream, which serve reads too); "
        "SMTPFRONT_REDIS__STREAM is set and wins",
        "SMTPFRONT_BLOCK_MS is deprecated: set SMTPFRONT_CONSUMER__BLOCK_MS (consumer.block_ms, which serve reads too)",
    ]


@pytest.mark.parametrize(("args", "env", "said"), [
    (["--queue", "redis://127.0.0.1:1/0", "--workers", "0"], {}, "consumer.workers: "),
    (["--queue", "maildir:./spool"], {}, "is not a Redis queue"),
    ([], {}, "is not a Redis queue"),  # no queue anywhere: serve's default is a Maildir
    (["--queue", "redis://127.0.0.1:1/0"], {"SMTPFRONT_CONSUMER__CLAIM_IDLE_MS": "soon"}, "consumer.claim_idle_ms"),
    (["--queue", "redis://127.0.0.1:1/0"], {"SMTPFRONT_CONSUMER__GRUOP": "x"}, "SMTPFRONT_CONSUMER__GROUP"),
    (["--config", "/nonexistent/smtpfront.toml"], {}, "configuration: "),
    (["--queue", "redis://127.0.0.1:1/0", "--metrics-listen", "nowhere"], {}, "consumer.metrics_listen"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], env: dict[str, str], said: str) -> None:
    done = subprocess.run([sys.executable, "-m", "smtpfront", "consume", *args, "--maildir", str(tmp_path / "M")],
                          cwd=ROOT, env=clean_env(**env), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("smtpfront consume: ") and said in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_a_taken_metrics_address_exits_1_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        done = subprocess.run([sys.executable, "-m", "smtpfront", "consume", "--queue", "redis://127.0.0.1:1/0",
                               "--metrics-listen", address, "--maildir", str(tmp_path / "M")],
                              cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert f"smtpfront consume: --metrics-listen: cannot serve metrics on {address}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


# -- issue 14 item 4: metrics, graceful stop, --workers -------------------------------------------

def scrape(port: int) -> dict[str, float]:
    status, text = http_get(port, "/metrics")
    if status != 200:  # not serving yet
        return {}
    return {sample.name: sample.value for family in text_string_to_metric_families(text.decode())
            for sample in family.samples if not sample.labels or sample.name.endswith("_count")}


# The body goes nowhere; the queue id decides the outcome: ok acknowledges, temp (exit 75)
# stays pending for a retry, anything else is a permanent failure (dead letter).
OUTCOMES = 'cat >/dev/null; case "$SMTPFRONT_QUEUE_ID" in ok) exit 0;; temp) exit 75;; *) exit 1;; esac'


def test_metrics_count_each_outcome_and_pass_promtool(redis_server: RedisServer, tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "consume.log"
    args = ["--queue", redis_server.url, "--block-ms", "200", "--metrics-listen", f"127.0.0.1:{port}",
            "--workers", "4", "--log-format", "plain", "--exec", "sh", "-c", OUTCOMES]
    with consume(args, log) as proc:
        wait("/healthz", lambda: http_get(port, "/healthz")[0] == 200, proc, log)
        for queue_id in ("ok", "temp", "bad"):
            xadd(redis_server, "smtpfront:inbound", queue_id)
        expected = {"smtpfront_consumer_delivered_total": 1.0, "smtpfront_consumer_retried_total": 1.0,
                    "smtpfront_consumer_dead_lettered_total": 1.0, "smtpfront_consumer_handler_seconds_count": 3.0}
        wait("the three outcomes", lambda: {k: scrape(port).get(k) for k in expected} == expected, proc, log)
        values = scrape(port)
        assert values["smtpfront_consumer_inflight"] == 0 and values["smtpfront_consumer_workers"] == 4
        assert http_get(port, "/readyz")[0] == 200
        text = http_get(port, "/metrics")[1]
        assert stop(proc, log) == 0
    done = subprocess.run([tool("promtool", "prometheus"), "check", "metrics"], input=text, capture_output=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout == done.stderr == b"", done.stdout + done.stderr
    with redis.Redis.from_url(redis_server.url) as client:
        assert client.xlen("smtpfront:inbound:dead") == 1
        assert client.xpending("smtpfront:inbound", "smtpfront")["pending"] == 1  # temp, for later


# Each delivery announces itself with DIR/<queue id>.started, then waits (bounded) for
# DIR/release before it writes its body to DIR/<queue id>.
HELD = ('touch "$0/$SMTPFRONT_QUEUE_ID.started"; i=0; while [ ! -e "$0/release" ] && [ $i -lt 400 ]; '
        'do sleep 0.05; i=$((i+1)); done; cat > "$0/$SMTPFRONT_QUEUE_ID.tmp" && mv "$0/$SMTPFRONT_QUEUE_ID.tmp" '
        '"$0/$SMTPFRONT_QUEUE_ID"')


def blocked_readers(server: RedisServer) -> list[dict[str, object]]:
    with redis.Redis.from_url(server.url) as client:
        return [c for c in client.client_list() if "b" in str(c.get("flags", ""))]


def test_sigterm_finishes_the_delivery_in_hand(redis_server: RedisServer, tmp_path: Path) -> None:
    out, port, log = tmp_path / "out", free_port(), tmp_path / "consume.log"
    out.mkdir()
    args = ["--queue", redis_server.url, "--block-ms", "200", "--metrics-listen", f"127.0.0.1:{port}",
            "--log-format", "plain", "--exec", "sh", "-c", HELD, str(out)]
    with consume(args, log) as proc:
        xadd(redis_server, "smtpfront:inbound", "held")
        wait("the delivery started", lambda: (out / "held.started").exists(), proc, log)
        proc.send_signal(signal.SIGTERM)
        wait("/readyz 503 while stopping", lambda: http_get(port, "/readyz")[0] == 503, proc, log)
        # A read waiting when the signal came ends within block_ms (what it returns is delivered
        # too); after it, nothing is read: an entry added now is left for the next consumer.
        wait("no read waiting", lambda: not blocked_readers(redis_server), proc, log)
        xadd(redis_server, "smtpfront:inbound", "late")
        assert proc.poll() is None  # still busy with the delivery in hand
        (out / "release").touch()
        assert proc.wait(timeout=TIMEOUT) == 0, log.read_text()
    assert (out / "held").read_bytes() == fields()[b"body"]  # whole, not cut short
    with redis.Redis.from_url(redis_server.url) as client:
        assert client.xpending("smtpfront:inbound", "smtpfront")["pending"] == 0  # acknowledged
        [(_, left)] = client.xrange("smtpfront:inbound")
    assert b'"id":"late"' in left[b"envelope"] and not (out / "late.started").exists()
    assert "stopping: no new entries; finishing the deliveries in hand" in log.read_text()


@pytest.mark.parametrize("workers", [1, 3])
def test_workers_is_the_number_of_deliveries_in_flight(redis_server: RedisServer, tmp_path: Path,
                                                       workers: int) -> None:
    out, port, log = tmp_path / "out", free_port(), tmp_path / "consume.log"
    out.mkdir()
    args = ["--queue", redis_server.url, "--block-ms", "200", "--metrics-listen", f"127.0.0.1:{port}",
            "--workers", str(workers), "--log-format", "plain", "--exec", "sh", "-c", HELD, str(out)]
    with consume(args, log) as proc:
        for n in range(4):
            xadd(redis_server, "smtpfront:inbound", f"m{n}")
        wait(f"{workers} deliveries in flight", lambda: scrape(port).get("smtpfront_consumer_inflight") == workers,
             proc, log)
        time.sleep(0.5)  # no more start meanwhile (this bound is the test's, not a race's)
        assert len(list(out.glob("*.started"))) == workers
        (out / "release").touch()
        wait("all four delivered", lambda: scrape(port).get("smtpfront_consumer_delivered_total") == 4, proc, log)
        assert stop(proc, log) == 0
    assert sorted(p.name for p in out.iterdir() if "." not in p.name and p.name != "release") == \
        ["m0", "m1", "m2", "m3"]


def test_a_slow_delivery_holds_one_slot_only(redis_server: RedisServer, tmp_path: Path) -> None:
    """--workers 2: while one delivery waits, the other slot keeps delivering and acknowledging."""
    out, port, log = tmp_path / "out", free_port(), tmp_path / "consume.log"
    out.mkdir()
    slow_only = ('if [ "$SMTPFRONT_QUEUE_ID" = slow ]; then i=0; while [ ! -e "$0/release" ] && [ $i -lt 400 ]; '
                 'do sleep 0.05; i=$((i+1)); done; fi; cat > "$0/$SMTPFRONT_QUEUE_ID"')
    args = ["--queue", redis_server.url, "--block-ms", "200", "--metrics-listen", f"127.0.0.1:{port}",
            "--workers", "2", "--log-format", "plain", "--exec", "sh", "-c", slow_only, str(out)]
    with consume(args, log) as proc:
        wait("/healthz", lambda: http_get(port, "/healthz")[0] == 200, proc, log)
        for queue_id in ("slow", "q1", "q2", "q3"):
            xadd(redis_server, "smtpfront:inbound", queue_id)
        wait("three delivered past the slow one",
             lambda: scrape(port).get("smtpfront_consumer_delivered_total") == 3, proc, log)
        assert scrape(port)["smtpfront_consumer_inflight"] == 1 and not (out / "slow").exists()
        with redis.Redis.from_url(redis_server.url) as client:
            assert client.xpending("smtpfront:inbound", "smtpfront")["pending"] == 1  # the others acknowledged
        (out / "release").touch()
        wait("the slow one delivered", lambda: scrape(port).get("smtpfront_consumer_delivered_total") == 4, proc, log)
        assert stop(proc, log) == 0
    assert sorted(p.name for p in out.iterdir()) == ["q1", "q2", "q3", "release", "slow"]
