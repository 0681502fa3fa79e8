"""deploy/grafana/smtpfront.json and deploy/prometheus/rules.yml name only metrics smtpfront exports.

The exported names come from the code: a subprocess builds ``smtpfront.metrics.Metrics()``
after ``prepare()`` and the consumer's ``ConsumerMetrics`` and lists each metric's exposition
names, plus the master's gauges and the queue's (``queue_metrics.QUEUE_GAUGES``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .support import DEPLOY, tool

DASHBOARD = DEPLOY / "grafana" / "smtpfront.json"
RULES = DEPLOY / "prometheus" / "rules.yml"
NAME = re.compile(r"\bsmtpfront_[a-z0-9_]+")

EXPORTED = """
import json, shutil
from prometheus_client import CollectorRegistry
from smtpfront import metrics
from smtpfront.consumer_metrics import ConsumerMetrics
from smtpfront.queue_metrics import QUEUE_GAUGES
directory = metrics.prepare()
suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
names = ["smtpfront_" + name for name in [*metrics.MASTER_GAUGES, *QUEUE_GAUGES]]
for metric in [*vars(metrics.Metrics()).values(), *vars(ConsumerMetrics(CollectorRegistry(), 1)).values()]:
    for family in metric.describe():
        names += [family.name + suffix for suffix in suffixes[family.type]]
shutil.rmtree(directory)
print(json.dumps(sorted(names)))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    env = {**os.environ, "TMPDIR": str(tmp_path_factory.mktemp("metrics"))}
    done = subprocess.run([sys.executable, "-c", EXPORTED], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    names = set(json.loads(done.stdout))
    # A sanity check of the derivation itself, on names the README documents.
    assert {"smtpfront_messages_total", "smtpfront_dot_to_reply_seconds_bucket", "smtpfront_queue_up",
            "smtpfront_workers_ready", "smtpfront_queue_oldest_seconds",
            "smtpfront_consumer_delivered_total", "smtpfront_consumer_handler_seconds_bucket"} <= names
    return names


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_the_dashboard_is_valid_json_with_the_expected_sections() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "smtpfront" and dashboard["schemaVersion"] >= 30
    rows = [panel["title"] for panel in dashboard["panels"] if panel["type"] == "row"]
    assert rows == ["Overview", "Throughput", "Replies", "Latency", "Queue", "Connections", "Workers", "Consumers"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for query in dashboard_queries():
        assert set(re.findall(r"\$(\w+)", query)) <= variables | {"__rate_interval"}, query


def test_the_dashboard_names_only_exported_metrics(exported: set[str]) -> None:
    used = {name for query in dashboard_queries() for name in NAME.findall(query)}
    assert used, "no smtpfront_* metric found in the dashboard"
    assert used <= exported, f"not exported: {sorted(used - exported)}"
    families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}
    for family in ("smtpfront_messages_total", "smtpfront_replies_total", "smtpfront_dot_to_reply_seconds",
                   "smtpfront_queue_backlog", "smtpfront_connections_active", "smtpfront_workers_ready",
                   "smtpfront_queue_length", "smtpfront_queue_oldest_seconds", "smtpfront_queue_dead_letters",
                   "smtpfront_consumer_delivered_total", "smtpfront_consumer_inflight"):
        assert family in families  # throughput, reply codes, latency, queue, connections, workers


def test_the_rules_name_only_exported_metrics(exported: set[str]) -> None:
    rules = yaml.safe_load(RULES.read_text())
    used = {name for group in rules["groups"] for rule in group["rules"] for name in NAME.findall(rule["expr"])}
    assert used, "no smtpfront_* metric found in rules.yml"
    assert used <= exported, f"not exported: {sorted(used - exported)}"


def test_every_dashboard_query_parses_as_promql(tmp_path: Path) -> None:
    """Each query, with the dashboard's variables filled in, as a recording rule for promtool."""
    fill = {"$__rate_interval": "5m", "$consumer_job": ".*", "$consumer_instance": ".*", "$job": ".*",
            "$instance": ".*"}
    rules = []
    for i, query in enumerate(dashboard_queries()):
        for variable, value in fill.items():
            query = query.replace(variable, value)
        rules.append({"record": f"dashboard:query{i}", "expr": query})
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run([tool("promtool", "prometheus"), "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_readme_explains_every_metric_and_alert(exported: set[str]) -> None:
    readme = (DEPLOY.parent / "README.md").read_text()
    region = readme[readme.index("<!-- operations:begin -->"):readme.index("<!-- operations:end -->")]
    histograms = {name.removesuffix("_bucket") for name in exported if name.endswith("_bucket")}
    samples = {h + suffix for h in histograms for suffix in ("_bucket", "_sum", "_count")}
    families = histograms | (exported - samples)
    assert [name for name in sorted(families) if f"`{name}`" not in region and f"`{name}{{" not in region] == []
    rules = yaml.safe_load(RULES.read_text())
    alerts = [rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
    assert [alert for alert in alerts if f"`{alert}`" not in region] == []
