"""deploy/prometheus with the real promtool: the rules, their unit tests, a Prometheus
configuration made of the shipped scrape jobs, and the exposition of a real ``smtpfront serve``."""

from __future__ import annotations

import re
import smtplib
import socket
import subprocess
import time
from pathlib import Path

import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from smtpfront.queue_metrics import QUEUE_GAUGES, STATS_TIMEOUT, QueueCollector

from ..conftest import RedisServer, free_port
from .support import DEPLOY, TIMEOUT, http_get, serve, terminate, tool, wait_ready

PROMETHEUS = DEPLOY / "prometheus"


def promtool(*args: str, stdin: bytes | None = None, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool", "prometheus"), *args], input=stdin.decode() if stdin else None,
                          capture_output=True, text=True, timeout=60, cwd=cwd)


def test_rules_are_valid() -> None:
    done = promtool("check", "rules", "rules.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_rules_pass_their_unit_tests() -> None:
    done = promtool("test", "rules", "rules.test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_unit_test() -> None:
    rules = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule}
    tests = yaml.safe_load((PROMETHEUS / "rules.test.yml").read_text())
    tested = {case["alertname"] for test in tests["tests"] for case in test.get("alert_rule_test", [])
              if case.get("exp_alerts")}
    assert alerts == tested


def test_a_configuration_with_the_scrape_jobs_is_valid(tmp_path: Path) -> None:
    scrape = yaml.safe_load((PROMETHEUS / "scrape.yml").read_text())
    jobs = [job["job_name"] for job in scrape["scrape_configs"]]
    assert all(re.fullmatch(r"smtpfront.*", job) for job in jobs)  # what SmtpfrontDown's up{job=~…} matches
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
        "rule_files": [str(PROMETHEUS / "rules.yml")],
        "scrape_configs": scrape["scrape_configs"],
    }))
    done = promtool("check", "config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 31 rules found" in done.stdout, done.stdout


def test_a_real_scrape_passes_promtool_check_metrics(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    log = tmp_path / "serve.log"
    args = ["--listen", f"127.0.0.1:{port}", "--queue", "null:", "--workers", "1", "--no-tls",
            "--metrics-listen", f"127.0.0.1:{metrics_port}", "--log-format", "plain"]
    with serve(args, log) as server:
        wait_ready(server, metrics_port, log)
        with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as smtp:
            smtp.sendmail("alice@example.org", ["bob@example.net"], b"Subject: scrape\r\n\r\nHi.\r\n")
        deadline = time.monotonic() + TIMEOUT  # per-message metrics are written once a second
        while True:
            status, text = http_get(metrics_port, "/metrics")
            assert status == 200
            if b'smtpfront_messages_total{outcome="accepted"} 1.0' in text or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert terminate(server, log) == 0
    assert b'smtpfront_messages_total{outcome="accepted"} 1.0' in text
    done = promtool("check", "metrics", stdin=text)
    assert done.returncode == 0 and done.stdout == done.stderr == "", done.stdout + done.stderr


def queue_samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode()) for s in family.samples
            if s.name.startswith("smtpfront_queue_") and s.name.removeprefix("smtpfront_")
            in QUEUE_GAUGES}


def test_the_master_exports_the_queue_backlog_from_redis(redis_server: RedisServer, tmp_path: Path) -> None:
    """A real serve on a real redis-server: length, lag, pending, oldest age and dead letters
    as ``smtpfront queue stats`` reads them, at each scrape."""
    port, metrics_port, log = free_port(), free_port(), tmp_path / "serve.log"
    args = ["--listen", f"127.0.0.1:{port}", "--queue", redis_server.url, "--workers", "1", "--no-tls",
            "--metrics-listen", f"127.0.0.1:{metrics_port}", "--log-format", "plain"]
    stream = [("stream", "smtpfront:inbound")]
    group = (("group", "smtpfront"), ("stream", "smtpfront:inbound"))
    with serve(args, log) as server:
        wait_ready(server, metrics_port, log)
        with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as smtp:
            for n in range(3):
                smtp.sendmail("alice@example.org", ["bob@example.net"], b"Subject: %d\r\n\r\nHi.\r\n" % n)
        with redis.Redis.from_url(redis_server.url) as client:
            client.xgroup_create("smtpfront:inbound", "smtpfront", "0")
            client.xreadgroup("smtpfront", "c1", {"smtpfront:inbound": ">"}, count=1)  # one delivered, not acked
            client.xadd("smtpfront:inbound:dead", {"origin_id": "1-0", "reason": "test"})
        status, full = http_get(metrics_port, "/metrics")
        assert status == 200
        values = queue_samples(full)
        assert values[("smtpfront_queue_length", tuple(stream))] == 3
        assert values[("smtpfront_queue_group_lag", group)] == 2
        assert values[("smtpfront_queue_group_pending", group)] == 1
        assert values[("smtpfront_queue_group_consumers", group)] == 1
        assert values[("smtpfront_queue_dead_letters", tuple(stream))] == 1
        assert 0 < values[("smtpfront_queue_oldest_seconds", tuple(stream))] < 600
        assert values[("smtpfront_queue_stats_up", ())] == 1 and values[("smtpfront_queue_redis_memory_bytes", ())] > 0
        redis_server.stop()  # Redis away: the scrape still answers, at once, saying so
        started = time.monotonic()
        status, text = http_get(metrics_port, "/metrics")
        assert status == 200 and time.monotonic() - started < STATS_TIMEOUT + 5
        away = queue_samples(text)
        assert away[("smtpfront_queue_stats_up", ())] == 0
        assert [name for name, _ in away if name not in ("smtpfront_queue_stats_up", "smtpfront_queue_stats_seconds")] \
            == []
        assert terminate(server, log) == 0
    done = promtool("check", "metrics", stdin=full)
    assert done.returncode == 0 and done.stdout == done.stderr == "", done.stdout + done.stderr


def test_a_silent_redis_costs_a_scrape_the_timeout_only() -> None:
    """A Redis that accepts connections and never answers: the collector gives up after its
    timeout (the master's scrape thread is not held) and says so with stats_up 0."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshakes; nobody reads
        collector = QueueCollector(f"redis://127.0.0.1:{silent.getsockname()[1]}/0", "smtpfront:inbound", timeout=0.5)
        started = time.monotonic()
        families = {family.name: family for family in collector.collect()}
        took = time.monotonic() - started
    assert took < 0.5 + 3, took  # the timeout, plus the bounded close
    assert families["smtpfront_queue_stats_up"].samples[0].value == 0
    assert "smtpfront_queue_length" not in families
