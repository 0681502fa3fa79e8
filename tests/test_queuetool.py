"""``smtpfront queue`` run as a real command against a real redis-server and a real Redis
Cluster, on mail written by the real sink and dead-lettered by the real consumer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import redis
from redis.cluster import ClusterNode, RedisCluster

from smtpfront.consumer import Message, PermanentError

from .conftest import RedisClusterNodes, RedisServer
from .sink.test_redis_large import body_of, consume
from .test_acked_gone import produce

ROOT = Path(__file__).resolve().parent.parent
STREAM = "smtpfront:inbound"
DEAD = f"{STREAM}:dead"


def queue(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SMTPFRONT_")}
    return subprocess.run([sys.executable, "-m", "smtpfront", "queue", *args], cwd=ROOT, capture_output=True,
                          timeout=60, env={**environ, "PYTHONPATH": str(ROOT), **(env or {})}, check=False)


def as_json(*args: str, env: dict[str, str] | None = None) -> Any:
    done = queue(*args, "--json", env=env)
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)


async def refuse(message: Message) -> None:
    raise PermanentError("550 no such mailbox")


def test_stats_list_show(redis_server: RedisServer) -> None:
    env = {"SMTPFRONT_QUEUE": redis_server.url}  # the same environment as serve's
    large = body_of(300_000, seed=1)
    with redis.Redis.from_url(redis_server.url) as client:
        ids = produce(redis_server.url, [body_of(2_000, seed=0), large, body_of(3_000, seed=2)])
        client.xgroup_create(STREAM, "smtpfront", "0")
        client.xreadgroup("smtpfront", "worker-1", {STREAM: ">"}, count=1)  # one pending, two undelivered
        stats = as_json("stats", env=env)
    assert (stats["length"], stats["dead_letters"]) == (3, 0)
    [group] = stats["streams"][0]["groups"]
    assert (group["name"], group["lag"], group["pending"]) == ("smtpfront", 2, 1)
    assert group["consumers"] == [{"name": "worker-1", "pending": 1, "idle_ms": group["consumers"][0]["idle_ms"]}]
    assert stats["oldest_unacknowledged_seconds"] >= 0 and stats["used_memory"] > 300_000
    listed = as_json("list", env=env)
    assert [item["id"] for item in listed] == ids
    assert [item["large"] for item in listed] == [False, True, False]
    assert listed[1]["from"] == "a@example.org" and listed[1]["to"] == ["b@example.net"]
    assert all("body" not in item for item in listed)
    shown = queue("show", ids[1], env=env)
    assert shown.returncode == 0 and shown.stdout.endswith(large), shown.stderr  # reassembled from chunk keys
    assert shown.stdout.startswith(f"id: {ids[1]}\n".encode())
    text = queue("stats", "--queue", redis_server.url)  # the flag instead of the environment
    assert text.returncode == 0 and b"group smtpfront: lag 2, pending 1 (worker-1 1)" in text.stdout


def test_dead_letters_retry_and_purge(redis_server: RedisServer, tmp_path: Path) -> None:
    config = tmp_path / "smtpfront.toml"
    config.write_text(f'queue = "{redis_server.url}"\n')  # the same file serve reads
    flags = ["--config", str(config)]
    large = body_of(300_000, seed=5)
    with redis.Redis.from_url(redis_server.url) as client:
        [entry] = produce(redis_server.url, [large])
        consume(redis_server.url, lambda got: client.xlen(DEAD) == 1, handler=refuse)
        [letter] = as_json("dead", "list", *flags)
        assert letter["origin_id"] == entry and "550 no such mailbox" in letter["reason"] and letter["large"]
        keys = list(client.scan_iter(match=f"{STREAM}:body:*"))
        assert len(keys) == 2 and client.xlen(STREAM) == 0

        assert as_json("dead", "retry", letter["id"], *flags) == {"retried": 1}
        assert client.xlen(DEAD) == 0 and all(client.exists(k) for k in keys)  # the body went back with it
        [(_, fields)] = client.xrange(STREAM)
        assert fields[b"retries"] == b"1" and b"reason" not in fields
        assert queue("dead", "retry", letter["id"], *flags).returncode == 2  # it is no dead letter any more
        got = consume(redis_server.url, lambda got: len(got) == 1)
        assert got[0].body.endswith(large) and client.xlen(STREAM) == 0 and not any(client.exists(k) for k in keys)

        produce(redis_server.url, [body_of(300_000, seed=6), body_of(1_000, seed=7)])
        consume(redis_server.url, lambda got: client.xlen(DEAD) == 2, handler=refuse)
        assert as_json("dead", "purge", "--older-than", "3600", *flags) == {"purged": 0}
        assert as_json("dead", "purge", "--all", *flags) == {"purged": 2}
        assert client.xlen(DEAD) == 0 and list(client.scan_iter(match=f"{STREAM}:body:*")) == []


def test_in_a_cluster(redis_cluster: RedisClusterNodes) -> None:
    url = redis_cluster.url(3)
    env = {"SMTPFRONT_QUEUE": url}
    large = body_of(300_000, seed=9)
    ids = produce(url, [body_of(1_000, seed=n) for n in range(5)] + [large])
    assert all("/" in i for i in ids)
    stats = as_json("stats", env=env)
    assert stats["length"] == 6 and len(stats["streams"]) == 3
    listed = as_json("list", env=env)
    assert sorted(item["id"] for item in listed) == sorted(ids)
    shown = queue("show", ids[-1], env=env)
    assert shown.returncode == 0 and shown.stdout.endswith(large)
    nodes = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", port) for port in redis_cluster.ports])
    try:
        consume(url, lambda got: sum(nodes.xlen(f"{STREAM}:{{{i}}}:dead") for i in range(3)) == 6, handler=refuse)
        assert as_json("stats", env=env)["dead_letters"] == 6
        assert as_json("dead", "retry", "--all", env=env) == {"retried": 6}
        got = consume(url, lambda got: len(got) == 6)
        assert any(m.body.endswith(large) for m in got)
        after = as_json("stats", env=env)
        assert (after["length"], after["dead_letters"]) == (0, 0)
        assert list(nodes.scan_iter(match=f"{STREAM}:*:body:*")) == []
    finally:
        nodes.close()


def test_bad_input_is_a_clear_error(redis_server: RedisServer, tmp_path: Path) -> None:
    env = {"SMTPFRONT_QUEUE": redis_server.url}
    cases = [
        (["show", "1-1"], env, b"no entry 1-1"),
        (["show", "yesterday"], env, b"is not an entry id"),
        (["show", "3/1-1"], env, b"no shard 3"),
        (["dead", "purge", "--older-than", "-5"], env, b"--older-than"),
        (["list", "--limit", "0"], env, b"--limit"),
        (["stats", "--queue", "maildir:./spool"], {}, b"is not a Redis queue"),
        (["stats"], {}, b"is not a Redis queue"),  # the default queue is maildir:./spool
        (["stats", "--config", str(tmp_path / "missing.toml")], env, b"configuration"),
    ]
    for args, environ, said in cases:
        done = queue(*args, env=environ)
        assert (done.returncode, said in done.stderr) == (2, True), (args, done.stderr)
        assert b"Traceback" not in done.stderr
    down = queue("stats", "--queue", "redis://127.0.0.1:1/0")
    assert down.returncode == 1 and b"Traceback" not in down.stderr and b"redis:" in down.stderr
