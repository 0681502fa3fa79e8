"""deploy/Dockerfile and deploy/compose.yaml, checked without a container engine (there is none
here; ``docker`` is only a client): the Dockerfile's commands are the ones the tests and
deploy/run.sh run, and the compose file is wired to the shipped haproxy.cfg and to a
configuration that ``smtpfront check-config`` accepts."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from smtpfront import config
from smtpfront.cli import build_parser

from .support import CHART, DEPLOY, REPO, TIMEOUT, tool

DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
HAPROXY_CFG = DEPLOY / "haproxy" / "haproxy.cfg"


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = "\n".join(line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#"))
    text = re.sub(r"\\\n", " ", text)
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in text.splitlines()
            if line.strip()]


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def one(op: str, steps: list[tuple[str, str]] | None = None) -> str:
    (found,) = [args for name, args in (steps or final_stage()) if name == op]
    return found


def pip_install(command: str) -> list[str]:
    """The arguments after ``pip install`` in a shell command line."""
    words = shlex.split(command)
    start = next(i for i in range(len(words) - 1) if words[i:i + 2] == ["pip", "install"])
    end = next((i for i in range(start, len(words)) if words[i] in ("&&", ";")), len(words))
    return words[start + 2:end]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_the_install_commands_are_deploy_install_sh_s() -> None:
    """The image installs as the README commands do: the run lock (hashes checked), then smtpfront
    built with the locked build tools; only the lock's name, the cache and editability differ."""
    (run,) = [args for op, args in instructions() if op == "RUN" and "pip install" in args]
    image = [pip_install(part) for part in run.split("&&") if "pip install" in part]
    lines = [line for line in (DEPLOY / "install.sh").read_text().splitlines() if "pip install" in line]
    script = [pip_install(line) for line in lines]
    assert len(image) == len(script) == 2
    lock, build = script
    assert lock[-2:] == ["-r", "requirements/$kind.lock"] and "--require-hashes" in lock and "--no-deps" in lock
    assert image[0] == [*lock[:-1], "requirements/run.lock", "--no-cache-dir"]
    assert build[-2:] == ["-e", "."] and "--no-build-isolation" in build  # an image cannot install editable
    assert image[1] == [*build[:-2], "--no-cache-dir", "."]


def test_the_build_stage_copies_what_the_package_build_reads() -> None:
    steps = instructions()
    copied = {source for op, args in steps if op == "COPY" and "--from" not in args for source in args.split()[:-1]}
    for source in copied:
        assert (REPO / source).exists(), source
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    version_module = project["tool"]["setuptools"]["dynamic"]["version"]["attr"].split(".")[0]
    assert {"pyproject.toml", "setup.py", project["project"]["readme"], version_module} <= copied
    packages = project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert all(pattern.rstrip("*") in copied for pattern in packages)


def test_the_image_runs_what_the_chart_and_compose_expect(compose: dict[str, Any]) -> None:
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", re.search(r"PYTHON_IMAGE=(\S+)", one("ARG", instructions()))[1])
    entrypoint, cmd = json.loads(one("ENTRYPOINT")), json.loads(one("CMD"))  # exec form: JSON arrays
    assert entrypoint == ["/usr/bin/tini", "--", "smtpfront"]
    assert "tini" in one("RUN")
    args = build_parser().parse_args(cmd)  # smtpfront's own parser accepts the CMD
    assert args.command == "serve"
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())

    # Non-root: the same uid as the chart's pods.
    user = one("USER").split(":")[0]
    assert user == "10001" == str(chart_values["podSecurityContext"]["runAsUser"])
    assert "--uid 10001" in one("RUN")

    # TMPDIR (metric files) on a volume, the same directory the chart mounts an emptyDir at.
    assert re.search(r"\bTMPDIR=(\S+)", one("ENV"))[1] == "/tmp"
    assert json.loads(one("VOLUME")) == ["/tmp"]
    assert compose["services"]["smtpfront"]["tmpfs"] == ["/tmp"] and compose["services"]["smtpfront"]["read_only"]

    # The exposed ports are the chart's defaults.
    exposed = {int(p) for p in one("EXPOSE").split()}
    ports = {chart_values["listeners"][0]["port"], chart_values["metrics"]["port"],
             chart_values["metrics"]["agentCheck"]["port"]}
    assert exposed == ports

    # The configuration file the CMD reads is the one compose mounts; the chart runs the CMD too.
    (mounted,) = compose["services"]["smtpfront"]["configs"]
    assert mounted["target"] == args.config
    with helm.Chart.load(CHART) as chart:
        deployment = yaml.safe_load(chart.render(name="mx")["smtpfront/templates/deployment.yaml"])
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"] == cmd
    assert {"name": "TMPDIR", "value": "/tmp"} in container["env"]


def haproxy_env(compose: dict[str, Any]) -> dict[str, str]:
    """The variables haproxy.cfg reads: its own defaults, then what compose sets."""
    defaults = dict(re.findall(r'"\$\{(\w+)-([^}]*)\}"', HAPROXY_CFG.read_text()))
    return {**defaults, **compose["services"]["haproxy"].get("environment", {})}


def test_compose_wires_the_services(compose: dict[str, Any], tmp_path: Path) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "smtpfront", "haproxy", "consumer"}
    assert services["smtpfront"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["consumer"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["haproxy"]["depends_on"]["smtpfront"]["condition"] == "service_healthy"
    for name in ("smtpfront", "consumer"):
        build = services[name]["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE

    # HAProxy runs the shipped haproxy.cfg.
    source, target, mode = services["haproxy"]["volumes"][0].split(":")
    assert (COMPOSE.parent / source).resolve() == HAPROXY_CFG
    assert (target, mode) == ("/usr/local/etc/haproxy/haproxy.cfg", "ro")

    # smtpfront's configuration: valid, and matching what HAProxy and the consumer use.
    text = compose["configs"][services["smtpfront"]["configs"][0]["source"]]["content"]
    path = tmp_path / "smtpfront.toml"
    path.write_text(text)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SMTPFRONT_")}
    done = subprocess.run([sys.executable, "-m", "smtpfront", "check-config", str(path)], capture_output=True,
                          text=True, timeout=TIMEOUT * 3, env=environ)
    assert done.returncode == 0, done.stderr
    effective = tomllib.loads(done.stdout)

    env = haproxy_env(compose)
    host, port = config.parse_address(env["BACKEND_ADDR"])
    assert host == "smtpfront"
    (listener,) = effective["listeners"]
    assert config.parse_address(listener["address"])[1] == port and listener["proxy_protocol"]
    assert config.parse_address(effective["metrics"]["listen"])[1] == int(env["BACKEND_METRICS_PORT"])
    assert config.parse_address(effective["metrics"]["agent_check_listen"])[1] == int(env["BACKEND_AGENT_PORT"])
    haproxy_address = ipaddress.ip_address(services["haproxy"]["networks"]["mail"]["ipv4_address"])
    assert any(haproxy_address in ipaddress.ip_network(net) for net in effective["trust"]["proxy"])
    assert f":{config.parse_address(effective['metrics']['listen'])[1]}/readyz" in \
        services["smtpfront"]["healthcheck"]["test"][-1]
    assert "ports" not in services["smtpfront"]  # only HAProxy reaches it
    published = {p.rsplit(":", 1)[1]: p for p in services["haproxy"]["ports"]}
    assert env["FRONT_BIND"].rsplit(":", 1)[1] in published

    # A graceful stop fits in the stop grace period.
    assert int(services["smtpfront"]["stop_grace_period"].rstrip("s")) > effective["supervisor"]["graceful_timeout"]

    # The consumer reads the queue smtpfront writes, with smtpfront's own parser.
    consume = build_parser().parse_args(services["consumer"]["command"])
    assert consume.command == "consume" and consume.queue == effective["queue"] and consume.maildir
    assert urlhost(effective["queue"]) == "redis"
    # ... and serves its metrics where the shipped scrape job looks for them.
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "scrape.yml").read_text())
    [job] = [job for job in scrape["scrape_configs"] if job["job_name"] == "smtpfront-consumer"]
    assert job["static_configs"][0]["targets"] == [f"consumer:{config.parse_address(consume.metrics_listen)[1]}"]


def urlhost(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1].split(":")[0]


def test_haproxy_accepts_the_shipped_configuration_with_the_compose_environment(compose: dict[str, Any],
                                                                                tmp_path: Path) -> None:
    env = {**haproxy_env(compose), "STATS_SOCKET": str(tmp_path / "admin.sock"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([tool("haproxy", "haproxy"), "-c", "-f", str(HAPROXY_CFG)], capture_output=True,
                          text=True, timeout=TIMEOUT * 3, env=env)
    # "smtpfront" resolves only inside compose: HAProxy starts anyway (init-addr ...,none).
    assert done.returncode == 0, done.stdout + done.stderr
