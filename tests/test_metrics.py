"""Multiprocess metrics and the master's HTTP endpoint.

`prepare` sets a process-wide environment variable and prometheus_client caches its value
class, so each scenario runs in a fresh interpreter (``python -c``) that prints JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORK_SCENARIO = """
import json, os, shutil, socket, urllib.error, urllib.request
from smtpfront import metrics as m

directory = m.prepare()
ready = [True]
gauges = {"workers": 2.0, "workers_ready": 1.0, "draining": 0.0}
server = m.HealthServer("127.0.0.1", 0, lambda: ready[0], master_gauges=lambda: gauges)
server.start()
m.metrics().worker_restarts.inc()  # the master's own counter

def get(path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()

def child(queue_up):
    x = m.metrics()
    x.messages.labels("accepted").inc()
    x.connections.inc()
    x.connections_active.inc(3)
    x.queue_up.set(queue_up)
    x.message_size.observe(5000)
    x.replies.labels("DATA", "2xx").inc()
    os._exit(0)

out = {}
pids = []
for up in (1, 0):
    pid = os.fork()
    if pid == 0:
        child(up)
    pids.append(pid)
for pid in pids:
    os.waitpid(pid, 0)
out["before_gone"] = get("/metrics")[2]
for pid in pids:
    m.worker_gone(pid)
out["metrics"] = get("/metrics")
out["healthz"] = get("/healthz")
out["readyz_up"] = get("/readyz")
ready[0] = False
out["readyz_down"] = get("/readyz")
out["missing"] = get("/nope")
out["query"] = get("/healthz?x=1")[0]
out["port"] = server.port
server.stop()
server.stop()
try:
    socket.create_connection(("127.0.0.1", out["port"]), timeout=1).close()
    out["closed"] = False
except OSError:
    out["closed"] = True
shutil.rmtree(directory)
print(json.dumps(out))
"""


def run(script: str) -> Any:
    env = {k: v for k, v in os.environ.items() if k.upper() != "PROMETHEUS_MULTIPROC_DIR"}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def scenario() -> dict[str, Any]:
    result: dict[str, Any] = run(FORK_SCENARIO)
    return result


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_counters_are_summed_across_workers(scenario: dict[str, Any]) -> None:
    status, content_type, text = scenario["metrics"]
    assert status == 200
    assert content_type.startswith("text/plain; version=")
    got = samples(text)
    assert got[("smtpfront_messages_total", (("outcome", "accepted"),))] == 2.0
    assert got[("smtpfront_connections_total", ())] == 2.0
    assert got[("smtpfront_replies_total", (("class", "2xx"), ("verb", "DATA")))] == 2.0
    assert got[("smtpfront_workers", ())] == 2.0  # the master's gauges, read at scrape time
    assert got[("smtpfront_workers_ready", ())] == 1.0
    assert got[("smtpfront_draining", ())] == 0.0
    assert got[("smtpfront_worker_restarts_total", ())] == 1.0
    assert got[("smtpfront_message_size_bytes_bucket", (("le", "1024.0"),))] == 0.0
    assert got[("smtpfront_message_size_bytes_bucket", (("le", "16384.0"),))] == 2.0
    assert got[("smtpfront_message_size_bytes_count", ())] == 2.0


def test_live_gauges_follow_live_workers(scenario: dict[str, Any]) -> None:
    before = samples(scenario["before_gone"])
    assert before[("smtpfront_connections_active", ())] == 6.0
    assert before[("smtpfront_queue_up", ())] == 0.0  # one worker's queue is down; the master adds no 0
    after = samples(scenario["metrics"][2])
    assert ("smtpfront_connections_active", ()) not in after
    assert ("smtpfront_queue_up", ()) not in after


def test_metric_names_follow_conventions(scenario: dict[str, Any]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(scenario["metrics"][2])}
    assert all(name.startswith("smtpfront_") for name in families)
    counters = [f for f in families.values() if f.type == "counter"]
    assert {f.name for f in counters} >= {"smtpfront_messages", "smtpfront_connections", "smtpfront_replies"}
    for family in counters:
        assert all(s.name.endswith("_total") for s in family.samples)
    assert families["smtpfront_message_size_bytes"].type == "histogram"


def test_health_endpoints(scenario: dict[str, Any]) -> None:
    assert scenario["healthz"][0:3:2] == [200, "ok\n"]
    assert scenario["readyz_up"][0:3:2] == [200, "ready\n"]
    assert scenario["readyz_down"][0:3:2] == [503, "not ready\n"]
    assert scenario["missing"][0] == 404
    assert scenario["query"] == 200
    assert scenario["port"] > 0
    assert scenario["closed"] is True


def test_metrics_before_prepare_raises() -> None:
    out = run("""
        import json
        from smtpfront import metrics as m
        try:
            m.metrics()
        except RuntimeError as e:
            print(json.dumps(str(e)))
    """)
    assert "prepare()" in out


def test_prepare_empties_directory_and_fixes_early_import(tmp_path: Path) -> None:
    (tmp_path / "counter_1.db").write_bytes(b"stale")
    (tmp_path / "sub").mkdir()
    out = run(f"""
        import json, os
        import prometheus_client  # imported before prepare(): the value class must still switch
        from smtpfront import metrics as m
        d = m.prepare({str(tmp_path)!r})
        emptied = os.listdir(d)
        m.metrics().queue_errors.inc()
        print(json.dumps([d, os.environ["PROMETHEUS_MULTIPROC_DIR"], emptied, sorted(os.listdir(d))]))
    """)
    assert out[0] == out[1] == str(tmp_path)
    assert out[2] == []
    assert "counter_1.db" not in out[3] and any(name.startswith("counter_") for name in out[3])


def test_bind_error_is_clear() -> None:
    out = run("""
        import json, shutil, socket
        from smtpfront import metrics as m
        d = m.prepare()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            try:
                m.HealthServer("127.0.0.1", s.getsockname()[1], lambda: True).start()
            except OSError as e:
                print(json.dumps(str(e)))
        shutil.rmtree(d)
    """)
    assert "cannot serve metrics on 127.0.0.1:" in out


HELD_SCENARIO = """
import json
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.multiprocess import MultiProcessCollector
from smtpfront import metrics as m

m.prepare()
buckets = (0.001, 0.01, 0.1, 1.0)
direct = Histogram("direct_seconds", "d", buckets=buckets, registry=None)
later = Histogram("later_seconds", "l", buckets=buckets, registry=None)
held = m.HeldHistogram(later)
count_direct = Counter("direct_things", "d", registry=None)
count_later = m.Held(Counter("later_things", "l", registry=None))
values = [0.0005, 0.001, 0.0011, 0.01, 0.5, 1.0, 7.0, 0.0]
for v in values:
    direct.observe(v)
    held.observe(v)
    count_direct.inc(2)
    count_later.inc(2)
registry = CollectorRegistry()
MultiProcessCollector(registry)
before = {s.name: s.value for f in registry.collect() for s in f.samples if s.name.startswith("later")}
held.flush()
count_later.flush()
held.flush()  # nothing held: nothing added twice
registry = CollectorRegistry()
MultiProcessCollector(registry)
samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in registry.collect() for s in f.samples}
print(json.dumps({"before": before, "samples": [[k[0], k[1], v] for k, v in samples.items()]}))
"""


def test_held_metrics_flush_exactly_what_direct_updates_give() -> None:
    result = run(HELD_SCENARIO)
    assert not any(result["before"].values())  # nothing reaches the shared files until the flush
    samples = {(name, tuple(tuple(pair) for pair in labels)): value for name, labels, value in result["samples"]}
    direct = {(k[0].replace("direct", "x"), k[1]): v for k, v in samples.items() if k[0].startswith("direct")}
    later = {(k[0].replace("later", "x"), k[1]): v for k, v in samples.items() if k[0].startswith("later")}
    assert later == direct
    assert direct[("x_seconds_bucket", (("le", "0.001"),))] == 3  # 0.0, 0.0005, 0.001
    assert direct[("x_seconds_count", ())] == 8 and direct[("x_things_total", ())] == 16


def test_a_health_checker_that_resets_is_no_traceback(capsys: pytest.CaptureFixture[str],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """HAProxy resets its check connections: the endpoint's error hook stays quiet for that
    (socketserver's default printed a traceback to stderr per check) and logs other failures."""
    from smtpfront.metrics import _Server

    server = _Server.__new__(_Server)  # the hook reads nothing of the server
    for exc, logged in ((ConnectionResetError(104, "Connection reset by peer"), False), (ValueError("bug"), True)):
        caplog.clear()
        try:
            raise exc
        except Exception:
            server.handle_error(None, ("10.0.0.9", 40000))
        assert capsys.readouterr().err == ""
        assert any(r.levelname == "ERROR" for r in caplog.records) is logged
