"""Shared fixtures: a real ``redis-server`` on a free loopback port, started and stopped per test;
a real three-master Redis Cluster (``redis-cli --cluster create``) the same way.

No test mocks Redis. ``tests/run.sh`` installs the Debian package when it is missing; a
missing binary here is a failure, never a skip.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest


def terminate(process: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float = 10) -> None:
    """Stop a test's subprocess: SIGTERM, then SIGKILL if it is still there after ``timeout``."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def wait_greeting(port: int, timeout: float, process: subprocess.Popen[bytes] | None = None,
                  log: Path | None = None) -> None:
    """Wait until a server on 127.0.0.1:``port`` greets with 220; fail at once if ``process``
    exited, and say what it logged (``log``) either way."""
    said = "" if log is None else f":\n{log.read_text()}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the server exited{said}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                if conn.recv(64).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"no greeting on port {port}{said}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    """A running redis-server: its port and URL, and a way to stop and restart it.

    ``appendonly``: persist every write (``--appendonly yes --appendfsync always`` in
    ``directory``: fsynced before the reply), so a stop/start on the same port keeps the
    data; the default is an in-memory server that starts empty.
    """

    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    appendonly: bool = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: run the tests with `bash tests/run.sh`, which installs it")
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persistence,
             "--dir", str(self.directory), "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        pytest.fail(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)
            self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server for one test, stopped afterwards."""
    server = RedisServer(free_port(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _ephemeral_low() -> int:
    """The first port the kernel hands out to outgoing connections (32768 by default)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_cluster_port() -> int:
    """A loopback port P that is free together with P + 10000 (Redis Cluster's bus port).

    Both lie below the ephemeral range: a port in it can be taken, between this check and
    redis-server's bind, by any process's outgoing connection.
    """
    rng = random.Random()
    top = min(55000, _ephemeral_low() - 10000)
    for _ in range(200):
        port = rng.randrange(12000, top)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    pytest.fail("no free port pair for a Redis Cluster node")


def _redis_cli(*args: str, timeout: float = 10) -> str:
    binary = shutil.which("redis-cli")
    if binary is None:
        pytest.fail("redis-cli is not installed: run the tests with `bash tests/run.sh`, which installs redis")
    done = subprocess.run([binary, *args], capture_output=True, timeout=timeout, check=False)
    return done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")


@dataclass
class RedisClusterNodes:
    """A running Redis Cluster of three masters (no replicas) on loopback, one directory each.

    ``cluster-require-full-coverage no`` and a long ``cluster-node-timeout``: a stopped
    node's slots fail, the others keep serving, and a restarted node (``stop``/``start``
    keep its ``nodes-P.conf``, not its data) takes its slots back without a failover.
    """

    ports: list[int]
    directory: Path
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    def url(self, shards: int | None = None) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.ports)
        return f"redis+cluster://{hosts}/" + (f"?shards={shards}" if shards is not None else "")

    def start(self, port: int) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: run the tests with `bash tests/run.sh`, which installs it")
        home = self.directory / str(port)
        home.mkdir(exist_ok=True)
        self.processes[port] = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", f"nodes-{port}.conf", "--cluster-node-timeout", "60000",
             "--cluster-require-full-coverage", "no", "--save", "", "--appendonly", "no", "--dir", str(home)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self._wait(port, "PING", "PONG", "did not start")

    def stop(self, port: int) -> None:
        process = self.processes.pop(port, None)
        if process is not None:
            terminate(process)

    def wait_ok(self, port: int) -> None:
        """Until the node says ``cluster_state:ok`` (a restarted master waits ~2 s for that)."""
        self._wait(port, "CLUSTER INFO", "cluster_state:ok", "did not reach cluster_state:ok", timeout=15)

    def _wait(self, port: int, command: str, expect: str, failure: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if expect in _redis_cli("-p", str(port), *command.split(), timeout=2):
                return
            time.sleep(0.05)
        self.close()
        pytest.fail(f"redis cluster node {port} {failure}")

    def create(self) -> None:
        for port in self.ports:
            self.start(port)
        said = _redis_cli("--cluster", "create", *(f"127.0.0.1:{port}" for port in self.ports),
                          "--cluster-replicas", "0", "--cluster-yes", timeout=30)
        if "[OK] All 16384 slots covered" not in said:
            self.close()
            pytest.fail(f"redis-cli --cluster create failed:\n{said}")
        for port in self.ports:
            self.wait_ok(port)

    def close(self) -> None:
        for port in list(self.processes):
            self.stop(port)


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisClusterNodes]:
    """A fresh three-master Redis Cluster for one test, stopped afterwards."""
    ports: list[int] = []
    while len(ports) < 3:
        port = free_cluster_port()
        if not {port, port + 10000} & {p + d for p in ports for d in (-10000, 0, 10000)}:
            ports.append(port)
    cluster = RedisClusterNodes(ports, tmp_path)
    try:
        cluster.create()
        yield cluster
    finally:
        cluster.close()


_MARKED_BY_FOLDER = {"core": "core", "aio": "wire", "deploy": "deploy", "supervisor": "process"}
_REDIS_FIXTURES = {"redis_server", "redis_cluster"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Markers from where a test lives and what it starts (pyproject.toml lists them)."""
    root = Path(__file__).parent
    for item in items:
        parts = Path(str(item.fspath)).relative_to(root).parts
        folder = parts[0] if len(parts) > 1 else ""
        if folder in _MARKED_BY_FOLDER:
            item.add_marker(_MARKED_BY_FOLDER[folder])
        if _REDIS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker("redis")
