"""The Helm chart, rendered by the real Helm engine (helm_python, Helm's Go SDK), with the
values files in tests/deploy/values/.

Every rendered manifest is validated offline with kubernetes_validate (strict: unknown fields
fail) against the oldest Kubernetes the chart supports and the newest known. It has no schema
for the Prometheus Operator's ServiceMonitor (a CRD), so that one is checked against
SERVICE_MONITOR below: a hand-written subset of the CRD's monitoring.coreos.com/v1 schema
covering exactly the fields the chart writes, with unknown fields refused.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import subprocess
import sys
import tomllib
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from smtpfront import __version__, config
from smtpfront.cli import build_parser

from .support import CHART, DEPLOY, TIMEOUT, tool

VALUES = Path(__file__).parent / "values"
KUBE_VERSIONS = ("1.25", "1.37")  # Chart.yaml kubeVersion >=1.25; the newest schemas known
RELEASE, NAMESPACE = "mx", "mail"
FULLNAME = "mx-smtpfront"
# values file → workers per pod the chart must choose
WORKERS = {"defaults": 1, "tls": 1, "hpa": 2, "servicemonitor": 4, "existing-secrets": 1, "haproxy": 1,
           "consumer": 1}
SECRET = "from-a-secret"  # stands in for a secretKeyRef's value

DURATION = {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"}
LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
SERVICE_MONITOR = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"], "additionalProperties": False,
                     "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": LABELS}},
        "spec": {
            "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {"type": "object", "additionalProperties": False,
                             "properties": {"matchLabels": LABELS, "matchExpressions": {"type": "array"}}},
                "namespaceSelector": {"type": "object", "additionalProperties": False,
                                      "properties": {"any": {"type": "boolean"},
                                                     "matchNames": {"type": "array", "items": {"type": "string"}}}},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"port": {"type": "string"}, "path": {"type": "string"}, "interval": DURATION,
                                   "scrapeTimeout": DURATION, "scheme": {"enum": ["http", "https"]}}}},
            },
        },
    },
}


@dataclass
class Release:
    """One rendering: the values given, the manifests, NOTES.txt."""

    values: dict[str, Any]
    docs: list[dict[str, Any]]
    notes: str

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [doc for doc in self.all(kind) if doc["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
        return found[0]

    def container(self, deployment: str = FULLNAME) -> dict[str, Any]:
        (container,) = self.get("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
        return container


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def values(name: str) -> dict[str, Any]:
    """A values file, parsed by Helm's own YAML reader (what `helm install -f FILE` does)."""
    return helm.values_from_yaml((VALUES / f"{name}.yaml").read_text())


def render(chart: helm.Chart, name: str) -> Release:
    given = values(name)
    out = chart.render(given, name=RELEASE, namespace=NAMESPACE)
    docs = [doc for path, text in out.items() if not path.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text) if doc]
    return Release(given, docs, out["smtpfront/templates/NOTES.txt"])


def port_of(container: dict[str, Any], name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return int(port)


def pod_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet builds it: $(VAR) expanded, secrets stood in for."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "valueFrom" in item:
            env[item["name"]] = SECRET
        else:
            env[item["name"]] = re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                                       lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), item["value"])
    return env


def check_config(text: str, env: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    """``smtpfront check-config`` on the rendered file in the pod's environment → the effective config."""
    path = tmp_path / "smtpfront.toml"
    path.write_text(text)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SMTPFRONT_")}
    done = subprocess.run([sys.executable, "-m", "smtpfront", "check-config", str(path)], capture_output=True,
                          text=True, timeout=TIMEOUT * 3, env={**environ, **env})
    assert done.returncode == 0, f"{done.stderr}\n{text}"
    assert SECRET not in done.stdout  # masked
    return tomllib.loads(done.stdout)


CASES = sorted(WORKERS)


@pytest.mark.parametrize("name", CASES)
def test_every_manifest_is_valid(chart: helm.Chart, name: str) -> None:
    release = render(chart, name)
    kinds = {doc["kind"] for doc in release.docs}
    assert {"ConfigMap", "Deployment", "Service", "ServiceAccount", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    for doc in release.docs:
        what = f"{doc['kind']}/{doc['metadata']['name']}"
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), what
        assert len(doc["metadata"]["name"]) <= 63, what
        if doc["kind"] == "ServiceMonitor":
            jsonschema.validate(doc, SERVICE_MONITOR)
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(f"{what} (Kubernetes {version}): {'.'.join(map(str, exc.path))}: "
                                     f"{exc.message}") from None
        for container in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            for port in container.get("ports", []):
                assert re.fullmatch(r"[a-z0-9-]{1,15}", port["name"]), f"{what}: port name {port['name']}"


@pytest.mark.parametrize("name", CASES)
def test_the_configuration_passes_check_config_and_matches_ports_and_probes(
    chart: helm.Chart, name: str, tmp_path: Path
) -> None:
    release = render(chart, name)
    container = release.container()
    text = release.get("ConfigMap", FULLNAME)["data"]["smtpfront.toml"]
    effective = check_config(text, pod_env(container), tmp_path)
    assert effective["workers"] == WORKERS[name]

    # Each listener of the values is a [[listeners]] table, a container port and a Service port.
    listeners = release.values.get("listeners") or chart.values["listeners"]
    assert [config.parse_address(lst["address"])[1] for lst in effective["listeners"]] == \
        [port_of(container, lst["name"]) for lst in listeners] == [lst["port"] for lst in listeners]
    front = release.get("Service", FULLNAME)
    assert [(p["port"], p["targetPort"]) for p in front["spec"]["ports"]] == \
        [(lst["servicePort"], lst["name"]) for lst in listeners]
    pods = release.get("Service", f"{FULLNAME}-pods")
    assert pods["spec"]["clusterIP"] == "None"
    deployment_spec = release.get("Deployment", FULLNAME)["spec"]
    assert pods["spec"]["selector"] == deployment_spec["selector"]["matchLabels"]
    assert {p["targetPort"] for p in pods["spec"]["ports"]} <= {p["name"] for p in container["ports"]}

    # Probes ask the master's metrics port; the agent port is the configured one.
    metrics_port = config.parse_address(effective["metrics"]["listen"])[1]
    assert port_of(container, "metrics") == metrics_port
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    if "agent_check_listen" in effective["metrics"]:
        assert port_of(container, "agent") == config.parse_address(effective["metrics"]["agent_check_listen"])[1]

    # Shutdown: the preStop sleep, then the drain, both within the grace period.
    pod = deployment_spec["template"]["spec"]
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(sleep[1]) + effective["supervisor"]["graceful_timeout"]

    # Non-root, read-only root, TMPDIR (the metric files) on an emptyDir.
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts[pod_env(container)["TMPDIR"]]]
    assert volumes[mounts["/etc/smtpfront"]]["configMap"]["name"] == FULLNAME
    assert container["args"] == ["serve", "--config", "/etc/smtpfront/smtpfront.toml"]

    # The certificate files are in the mounted Secret.
    if release.values.get("tls", {}).get("enabled"):
        cert_dir = str(Path(effective["tls"]["cert_file"]).parent)
        assert str(Path(effective["tls"]["key_file"]).parent) == cert_dir
        secret = volumes[mounts[cert_dir]]["secret"]["secretName"]
        assert secret == (release.values["tls"].get("existingSecret") or f"{FULLNAME}-tls")
    else:
        assert "cert_file" not in effective["tls"]

    # The PodDisruptionBudget and the NetworkPolicy cover these pods and ports.
    pdb = release.get("PodDisruptionBudget", FULLNAME)
    assert pdb["spec"]["selector"]["matchLabels"] == deployment_spec["selector"]["matchLabels"]
    policy = release.get("NetworkPolicy", FULLNAME)
    assert policy["spec"]["podSelector"]["matchLabels"] == deployment_spec["selector"]["matchLabels"]
    allowed = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert allowed == {p["containerPort"] for p in container["ports"]}


@pytest.mark.parametrize("name", CASES)
def test_lint_is_clean(name: str) -> None:
    report = helm.lint(str(CHART), values(name), strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error
    assert problems == [] and report["errors"] == []


def test_defaults_keep_the_client_address_and_warn_about_self_signed_tls(chart: helm.Chart) -> None:
    release = render(chart, "defaults")
    front = release.get("Service", FULLNAME)["spec"]
    assert front["type"] == "LoadBalancer" and front["externalTrafficPolicy"] == "Local"
    assert not release.all("Secret") and not release.all("HorizontalPodAutoscaler")
    assert release.get("Deployment", FULLNAME)["spec"]["replicas"] == 2
    assert "self-signed" in release.notes


def test_notes_tell_how_to_send_a_test_message(chart: helm.Chart) -> None:
    notes = render(chart, "haproxy").notes
    assert f"kubectl -n {NAMESPACE} port-forward service/{FULLNAME} 2525:25" in notes
    assert "swaks --server 127.0.0.1:2525 --from alice@example.org --to bob@example.net" in notes
    assert "smtplib.SMTP(\"127.0.0.1\", 2525)" in notes and "XRANGE smtpfront:inbound" in notes


def test_helm_test_talks_smtp_to_the_public_service(chart: helm.Chart) -> None:
    release = render(chart, "haproxy")
    pod = release.get("Pod", f"{FULLNAME}-test-smtp")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    assert container["image"] == release.container()["image"]
    script = container["command"][-1]
    compile(script, "helm-test", "exec")
    assert f'smtplib.SMTP("{FULLNAME}", 25,' in script  # the public Service, the first listener's port
    assert "helm test mx -n mail" in release.notes


def test_chart_made_secrets_hold_the_values(chart: helm.Chart, tmp_path: Path) -> None:
    release = render(chart, "tls")
    tls = release.get("Secret", f"{FULLNAME}-tls")
    assert tls["type"] == "kubernetes.io/tls"
    assert base64.b64decode(tls["data"]["tls.crt"]).decode() == release.values["tls"]["cert"]
    assert base64.b64decode(tls["data"]["tls.key"]).decode() == release.values["tls"]["key"]
    redis = release.get("Secret", FULLNAME)
    assert base64.b64decode(redis["data"]["redis-password"]) == b"hunter2"
    container = release.container()
    assert "hunter2" not in release.get("ConfigMap", FULLNAME)["data"]["smtpfront.toml"]
    assert pod_env(container)["SMTPFRONT_QUEUE"] == f"redis://:{SECRET}@redis.mail.svc:6379/1"
    (ref,) = [e["valueFrom"]["secretKeyRef"] for e in container["env"] if e["name"] == "REDIS_PASSWORD"]
    assert ref == {"name": FULLNAME, "key": "redis-password"}


def test_existing_secrets_are_referenced_not_made(chart: helm.Chart) -> None:
    release = render(chart, "existing-secrets")
    assert not release.all("Secret")
    container = release.container()
    (ref,) = [e["valueFrom"]["secretKeyRef"] for e in container["env"] if e["name"] == "REDIS_PASSWORD"]
    assert ref == {"name": "redis-credentials", "key": "password"}
    assert pod_env(container)["SMTPFRONT_QUEUE"] == f"rediss://smtpfront:{SECRET}@redis.mail.svc:6380/0"
    volumes = release.get("Deployment", FULLNAME)["spec"]["template"]["spec"]["volumes"]
    assert {"name": "tls", "secret": {"secretName": "mx-example-com-tls"}} in volumes


def test_the_autoscaler_drives_the_deployment(chart: helm.Chart) -> None:
    release = render(chart, "hpa")
    hpa = release.get("HorizontalPodAutoscaler", FULLNAME)["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 12)
    assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == 60
    assert "replicas" not in release.get("Deployment", FULLNAME)["spec"]  # the autoscaler owns it
    pod = release.get("Deployment", FULLNAME)["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 10 + 60 + 10


def test_the_servicemonitor_scrapes_the_metrics_port_of_the_pods(chart: helm.Chart) -> None:
    release = render(chart, "servicemonitor")
    monitor = release.get("ServiceMonitor", FULLNAME)
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    wanted = monitor["spec"]["selector"]["matchLabels"]
    selected = [s for s in release.all("Service") if wanted.items() <= s["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in selected] == [f"{FULLNAME}-pods"]  # not the public Service
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in selected[0]["spec"]["ports"]}
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    annotations = release.get("Deployment", FULLNAME)["spec"]["template"]["metadata"]["annotations"]
    assert "prometheus.io/scrape" not in annotations  # scraped once, through the ServiceMonitor


def test_the_haproxy_front(chart: helm.Chart, tmp_path: Path) -> None:
    release = render(chart, "haproxy")
    haproxy = release.container(f"{FULLNAME}-haproxy")
    effective = check_config(release.get("ConfigMap", FULLNAME)["data"]["smtpfront.toml"],
                             pod_env(release.container()), tmp_path)
    assert all(lst["proxy_protocol"] for lst in effective["listeners"])
    assert effective["trust"]["proxy"] == ["192.0.2.10/32", "10.42.0.0/16"]
    agent = config.parse_address(effective["metrics"]["agent_check_listen"])[1]
    metrics_port = config.parse_address(effective["metrics"]["listen"])[1]

    # The public Service now selects the HAProxy pods, on the ports HAProxy binds.
    front = release.get("Service", FULLNAME)["spec"]
    haproxy_pods = release.get("Deployment", f"{FULLNAME}-haproxy")["spec"]["selector"]["matchLabels"]
    assert front["selector"] == haproxy_pods
    cfg = release.get("ConfigMap", f"{FULLNAME}-haproxy")["data"]["haproxy.cfg"]
    for listener, port in zip(release.values["listeners"], front["ports"], strict=True):
        assert port_of(haproxy, port["targetPort"]) == listener["port"]
        assert f"bind :{listener['port']}\n" in cfg
        # The pods through the headless Service's SRV records for that port name.
        srv = f"_{listener['name']}._tcp.{FULLNAME}-pods.{NAMESPACE}.svc.cluster.local"
        assert re.search(rf"server-template pod 1-\d+ {re.escape(srv)}\n", cfg)
    assert f"send-proxy-v2 check port {metrics_port} " in cfg and f"agent-port {agent} " in cfg
    assert "option httpchk GET /readyz" in cfg

    # The same design as the shipped deploy/haproxy/haproxy.cfg (which test_haproxy.py runs).
    shipped = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    assert haproxy_section(cfg, "defaults") == haproxy_section(shipped, "defaults")
    (expected,) = server_options(shipped)
    assert server_options(cfg) == [expected] * len(release.values["listeners"])

    # The real haproxy accepts the rendered configuration.
    path = tmp_path / "haproxy.cfg"
    path.write_text(cfg)
    done = subprocess.run([tool("haproxy", "haproxy"), "-c", "-f", str(path)], capture_output=True, text=True,
                          timeout=TIMEOUT * 3)
    assert done.returncode == 0 and "[WARNING]" not in done.stderr, done.stdout + done.stderr

    # Only HAProxy may reach the SMTP and agent ports of the smtpfront pods.
    policy = release.get("NetworkPolicy", FULLNAME)["spec"]["ingress"][0]
    assert policy["from"] == [{"podSelector": {"matchLabels": haproxy_pods}}]


def haproxy_section(cfg: str, name: str) -> list[str]:
    """The lines of one section of an HAProxy configuration, comments left out."""
    lines = [line.split("#")[0].strip() for line in cfg.splitlines()]
    start = lines.index(name)
    end = next((i for i in range(start + 1, len(lines)) if not lines[i]), len(lines))
    return [line for line in lines[start + 1:end] if line]


def server_options(cfg: str) -> list[dict[str, str]]:
    """The check, agent and PROXY options of each default-server line (addresses and ports left out)."""
    flags = {"send-proxy-v2", "check", "agent-check"}
    valued = {"inter", "fall", "rise", "agent-inter"}
    lines = [line.split() for line in cfg.splitlines() if line.strip().startswith("default-server")]
    return [{word: (line[i + 1] if word in valued else "") for i, word in enumerate(line) if word in flags | valued}
            for line in lines]


BAD_VALUES = [
    ({"workers": "many"}, "/workers"),
    ({"workers": 0}, "/workers"),
    ({"listeners": [{"name": "smtp", "port": 2525, "servicePort": 25, "tls": "sometimes"}]}, "/listeners/0/tls"),
    ({"listeners": [{"name": "SMTP_Port", "port": 2525, "servicePort": 25}]}, "/listeners/0/name"),
    ({"config": {"limits": {"mesage_size": 1000}}}, "mesage_size"),
    ({"config": {"workers": 3}}, "workers"),  # the chart sets it
    ({"queue": {"url": "redis://:pw@redis:6379/0"}}, "/queue/url"),
    ({"tls": {"enabled": True}}, "/tls/cert"),
    ({"service": {"type": "Ingress"}}, "/service/type"),
    ({"workers": None, "resources": {"requests": {"cpu": None}}}, "cpu"),
    ({"config": {"consumer": {"workers": 0}}}, "workers"),
    ({"config": {"consumer": {"metrics_listen": "0.0.0.0:1"}}}, "metrics_listen"),  # the chart sets it
    ({"consumer": {"enabled": True, "args": ["--maildir", "/m"], "metricsPort": "9103"}}, "/consumer/metricsPort"),
    ({"consumer": {"enabled": True, "args": "--maildir /m"}}, "/consumer/args"),
]


@pytest.mark.parametrize(("bad", "where"), BAD_VALUES, ids=[w for _, w in BAD_VALUES])
def test_wrong_values_fail_through_the_schema(chart: helm.Chart, bad: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError) as failed:
        chart.render(bad, name=RELEASE, namespace=NAMESPACE)
    assert where in str(failed.value)
    report = helm.lint(str(CHART), bad, strict=True)
    assert any(where in error for error in report["errors"]), report


# Keys the chart sets itself, so values.schema.json leaves them out of `config`.
CHART_OWNED = {"workers", "queue", "listen", "listeners.address", "metrics.listen", "metrics.agent_check_listen",
               "tls.cert_file", "tls.key_file", "supervisor.graceful_timeout", "consumer.metrics_listen"}


def schema_of_keys() -> dict[str, dict[str, Any]]:
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]
    out = {}
    for key, sub in schema["config"]["properties"].items():
        if sub.get("type") == "object" and "properties" in sub:
            out |= {f"{key}.{name}": s for name, s in sub["properties"].items()}
        else:
            out[key] = sub
    listener = schema["listeners"]["items"]["properties"]
    out |= {f"listeners.{n}": s for n, s in listener.items() if n not in ("name", "port", "servicePort")}
    return out


def field(key: str) -> tuple[Any, typing.Mapping[str, Any]]:
    section, _, name = key.rpartition(".")
    cls: Any = config.Config if not section else config.ListenerConfig if section == "listeners" else \
        typing.get_type_hints(config.Config)[section]
    (found,) = [f for f in dataclasses.fields(cls) if f.name == name]
    return typing.get_type_hints(cls)[name], found.metadata


def test_the_schema_covers_every_configuration_key_with_its_type() -> None:
    """values.schema.json `config` and `listeners` against smtpfront.config, key by key."""
    schema = schema_of_keys()
    assert set(schema) == set(config.keys()) - CHART_OWNED
    json_types = {int: "integer", float: "number", bool: "boolean", str: "string"}
    for key, sub in schema.items():
        tp, meta = field(key)
        args = typing.get_args(tp)
        if type(None) in args:
            (tp,) = [a for a in args if a is not type(None)]
        if typing.get_origin(tp) is typing.Literal:
            assert sub["enum"] == list(typing.get_args(tp)), key
        elif typing.get_origin(tp) is tuple:
            assert sub["type"] == "array", key
            if meta.get("items"):
                assert sub["items"]["enum"] == list(meta["items"]), key
        elif meta.get("kind") == "sni":
            assert sub["type"] == "object", key
        else:
            assert sub["type"] == json_types[tp], key
            assert sub.get("minimum") == meta.get("min") and sub.get("exclusiveMinimum") == meta.get("gt"), key


def test_the_chart_ships_this_version_of_smtpfront(chart: helm.Chart) -> None:
    assert chart.metadata["appVersion"] == __version__
    assert chart.values["image"]["tag"] == ""  # the appVersion is the default tag


# -- the consumer Deployment (smtpfront consume) ---------------------------------------------------

CONSUMER = f"{FULLNAME}-consumer"


def test_the_consumer_is_off_by_default(chart: helm.Chart) -> None:
    release = render(chart, "defaults")
    assert [d["metadata"]["name"] for d in release.all("Deployment")] == [FULLNAME]
    assert "consumer" not in tomllib.loads(release.get("ConfigMap", FULLNAME)["data"]["smtpfront.toml"])


def test_the_consumer_deployment(chart: helm.Chart, tmp_path: Path) -> None:
    release = render(chart, "consumer")
    deployment = release.get("Deployment", CONSUMER)
    container, pod = release.container(CONSUMER), deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2

    # `consume --config FILE` + the values' args, accepted by smtpfront's own parser.
    assert container["args"] == ["consume", "--config", "/etc/smtpfront/smtpfront.toml", "--maildir",
                                 "/var/mail/smtpfront"]
    args = build_parser().parse_args(container["args"])
    assert (args.command, args.maildir) == ("consume", "/var/mail/smtpfront")
    assert args.config == "/etc/smtpfront/smtpfront.toml"

    # The same ConfigMap and queue credentials as the smtpfront pods; check-config accepts the
    # file in the consumer's environment, with the consumer's keys and the chart's metrics address.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/etc/smtpfront"]]["configMap"]["name"] == FULLNAME
    env = pod_env(container)
    assert env["SMTPFRONT_QUEUE"] == pod_env(release.container())["SMTPFRONT_QUEUE"] == \
        f"redis://:{SECRET}@redis.mail.svc:6379/0"
    effective = check_config(release.get("ConfigMap", FULLNAME)["data"]["smtpfront.toml"], env, tmp_path)
    consumer = effective["consumer"]
    assert (consumer["group"], consumer["workers"], consumer["exec_timeout"]) == ("maildir", 4, 30.0)
    assert config.parse_address(consumer["metrics_listen"])[1] == port_of(container, "metrics") == 9103
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9103"

    # The Maildir is on the claimed volume (the root filesystem is read-only); the deliveries
    # in hand get their time on SIGTERM.
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert volumes[mounts["/var/mail/smtpfront"]]["persistentVolumeClaim"]["claimName"] == "smtpfront-mail"
    assert pod["terminationGracePeriodSeconds"] > consumer["exec_timeout"] + consumer["block_ms"] / 1000
    assert container["resources"]["requests"] == {"cpu": "100m", "memory": "128Mi"}

    # Its pods are none of the smtpfront Services', budget's or policy's; their own policy opens
    # the metrics port only.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for kind, name, path in [("Service", FULLNAME, ("spec", "selector")),
                             ("Service", f"{FULLNAME}-pods", ("spec", "selector")),
                             ("PodDisruptionBudget", FULLNAME, ("spec", "selector", "matchLabels")),
                             ("NetworkPolicy", FULLNAME, ("spec", "podSelector", "matchLabels"))]:
        selector = release.get(kind, name)
        for key in path:
            selector = selector[key]
        assert not selector.items() <= labels.items(), f"{kind}/{name} selects the consumer pods"
    policy = release.get("NetworkPolicy", CONSUMER)["spec"]
    assert policy["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert [p["port"] for rule in policy["ingress"] for p in rule["ports"]] == [9103]


def test_an_enabled_consumer_needs_its_target(chart: helm.Chart) -> None:
    with pytest.raises(Exception, match=r"consumer\.args: say where mail goes"):
        chart.render({"consumer": {"enabled": True}}, name=RELEASE, namespace=NAMESPACE)
