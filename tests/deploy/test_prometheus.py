"""deploy/prometheus with the real promtool: the rules, their unit tests, a Prometheus
configuration made of the shipped scrape jobs, and the exposition of a real ``smtpfront serve``."""

from __future__ import annotations

import re
import smtplib
import subprocess
import time
from pathlib import Path

import yaml

from ..conftest import free_port
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
    assert "SUCCESS: 20 rules found" in done.stdout, done.stdout


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
