"""smtpfront side by side with its peers on this machine, as one Markdown table.

    .venv/bin/python loadtest/compare.py [--quick] [--servers NAME,...] [--seconds S] [--runs N]

Servers: smtpfront with one worker, its shipped defaults (INFO session log, metrics,
``Received:``, STARTTLS offered) and each queue (``null:``, ``maildir:`` in a temp dir,
``redis://`` on a redis-server started here on the load core, as a separate Redis host would
be, or on the server's core for ``smtpfront-redis-samecore``; the stream is trimmed every
0.5 s as draining consumers would keep it), aiosmtpd (asyncio and uvloop; a handler that
discards the message), nodemailer ``smtp-server`` (``onData`` consumes the stream) and Postfix
``smtp-sink`` (C, the ceiling). Each server gets core 1 (``taskset``), the load core 0.

For every case (message size x concurrent sessions x messages per session) and server:
msgs/s and MB/s from Postfix ``smtp-source`` (a neutral C generator; its ``-c`` counter is
read after a warm-up and at the end), p99 final-dot → reply from a separate, shorter pass of
``smtpfront.loadgen`` at the same size and concurrency, and the peak RSS of the serving
process sampled from /proc. Extras: RSS per idle connection (``--idle`` sessions held
against one smtpfront worker) and the time to accept one 25 MB message, per server.
Missing peers are installed on first use (pip, npm into loadtest/peers/, apt for Postfix).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS = HERE / "peers"
PYTHON = sys.executable
SERVERS = ("smtpfront-null", "smtpfront-redis", "smtpfront-redis-samecore", "smtpfront-maildir", "aiosmtpd",
           "aiosmtpd-uvloop", "nodemailer", "smtp-sink")
REFERENCE = "smtpfront-null"
SERVER_CPU, LOAD_CPU = "1", "0"


@dataclass(frozen=True)
class Case:
    """One cell of the matrix."""

    size: int
    sessions: int
    kept: bool  # many messages per session (smtp-source -d), else one per connection

    @property
    def label(self) -> str:
        size = f"{self.size // 1024} KB" if self.size < 1024 * 1024 else f"{self.size // (1024 * 1024)} MB"
        return f"{size}, {self.sessions}, {'many' if self.kept else 'one per conn'}"


@dataclass
class Result:
    """What one server did in one case (the best of ``runs``)."""

    case: Case
    server: str
    msgs_per_s: float = 0.0
    mb_per_s: float = 0.0
    p99_ms: float | None = None
    peak_rss_mb: float = 0.0
    note: str = ""
    runs: list[float] = field(default_factory=list)
    cpu_us_per_msg: float | None = None  # the serving process's CPU per message, in the best run


# -- pure parts (unit-tested) ---------------------------------------------------------------


def parse_counter(output: bytes) -> int:
    """The last complete count in ``smtp-source -c`` output (``1\\r2\\r3\\r…``); 0 when none yet."""
    fields = output.replace(b"\n", b"\r").split(b"\r")
    if fields and not output.endswith((b"\r", b"\n")):
        fields = fields[:-1]  # the last number may still be being written
    for item in reversed(fields):
        if item.strip().isdigit():
            return int(item)
    return 0


def smtp_source_argv(case: Case, port: int, messages: int = 1_000_000_000) -> list[str]:
    """Postfix smtp-source for ``case``: ``-s`` sessions, ``-m`` messages in all, ``-l`` body octets,
    ``-d`` to keep each session for many messages, ``-c`` to print a running count."""
    argv = ["smtp-source", "-c", "-s", str(case.sessions), "-m", str(messages), "-l", str(case.size),
            "-f", "load@example.org", "-t", "sink@example.net", "-M", "loadgen.example"]
    return argv + (["-d"] if case.kept else []) + [f"127.0.0.1:{port}"]


def rate(start: tuple[float, int], end: tuple[float, int]) -> float:
    """Messages per second between two ``(time, count)`` samples."""
    elapsed = end[0] - start[0]
    return (end[1] - start[1]) / elapsed if elapsed > 0 else 0.0


def ratio(reference: float | None, value: float | None) -> str:
    """``reference / value`` as ``1.85x`` (how many times the reference's throughput); ``-`` if unknown."""
    if not reference or not value:
        return "-"
    return f"{reference / value:.2f}x"


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def build_table(results: Sequence[Result], reference: str = REFERENCE, versus: str = "nodemailer") -> str:
    """One Markdown table: a row per case and server, with the row's msgs/s ÷ ``versus``'s (the
    targets are stated against nodemailer) and the reference's msgs/s ÷ the row's."""
    best = {(r.case, r.server): r.msgs_per_s for r in results}
    lines = [f"| case (size, sessions, msgs/session) | server | msgs/s | MB/s | server CPU µs/msg | p99 ms "
             f"| peak RSS MB | server ÷ {versus} | {reference} ÷ server |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        note = f" ({r.note})" if r.note else ""
        lines.append(f"| {r.case.label} | {r.server}{note} | {_num(r.msgs_per_s)} | {_num(r.mb_per_s, 1)} "
                     f"| {_num(r.cpu_us_per_msg)} | {_num(r.p99_ms, 2)} | {_num(r.peak_rss_mb, 1)} "
                     f"| {ratio(r.msgs_per_s, best.get((r.case, versus)))} "
                     f"| {ratio(best.get((r.case, reference)), r.msgs_per_s)} |")
    return "\n".join(lines)


def matrix(quick: bool) -> list[Case]:
    """The cases: quick = 1 KB x 10 sessions, kept and one per connection; full = 1/100 KB x 10/100 x both."""
    if quick:
        return [Case(1024, 10, True), Case(1024, 10, False)]
    return [Case(size, sessions, kept) for size in (1024, 100 * 1024) for sessions in (10, 100)
            for kept in (True, False)]


# -- processes --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(cpu: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else argv


def stop(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL after 10 s; always reaps."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def reap(pid: int, timeout: float = 5) -> None:
    """Wait for a process that is not our child to exit; SIGKILL it after ``timeout``."""
    def alive() -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False

    deadline = time.monotonic() + timeout
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        if alive():
            os.kill(pid, signal.SIGKILL)


def wait_greeting(port: int, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
                if conn.recv(512).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"no SMTP greeting on port {port} after {timeout} s")


def wait_redis(port: int, process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(b"PING\r\n")
            if conn.recv(16).startswith(b"+PONG"):
                return
        time.sleep(0.05)
    raise RuntimeError(f"redis-server did not start on port {port}")


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
    return out


def rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class StreamDrain:
    """Stands in for the downstream consumers: every 0.5 s, trims the queue stream to its last
    10,000 entries (memory stays bounded over long runs, as a draining consumer keeps it)."""

    def __init__(self, port: int, stream: bytes = b"smtpfront:inbound") -> None:
        self.port, self.stream = port, stream
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        command = b"*5\r\n$5\r\nXTRIM\r\n$%d\r\n%s\r\n$6\r\nMAXLEN\r\n$1\r\n~\r\n$5\r\n10000\r\n" % (
            len(self.stream), self.stream)
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=5) as conn:
            while not self._stop.wait(0.5):
                conn.sendall(command)
                conn.recv(64)

    def __enter__(self) -> StreamDrain:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


class RssSampler:
    """Peak RSS of one process, sampled every 0.2 s on a thread."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            self._stop.wait(0.2)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, rss_mb(self.pid))


# -- peers: found or installed ------------------------------------------------------------------


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def ensure_postfix_tools() -> bool:
    if shutil.which("smtp-source") or Path("/usr/sbin/smtp-source").exists():
        return True
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        say("compare: Postfix smtp-source/smtp-sink missing; install the Debian package 'postfix' (as root)")
        return False
    say("compare: installing the Debian package 'postfix' for smtp-source and smtp-sink (apt-get) …")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "install", "-y", "-qq", "postfix"], env=env, check=False, timeout=600,
                   stdout=subprocess.DEVNULL)
    if shutil.which("postfix"):  # only the test binaries are wanted, not a running MTA
        subprocess.run(["postfix", "stop"], check=False, timeout=60, capture_output=True)
    return Path("/usr/sbin/smtp-source").exists()


def ensure_aiosmtpd() -> bool:
    try:
        import aiosmtpd  # noqa: F401
    except ImportError:
        say("compare: installing aiosmtpd into this Python environment (pip install aiosmtpd) …")
        subprocess.run([PYTHON, "-m", "pip", "install", "--quiet", "aiosmtpd"], check=False, timeout=600)
    return subprocess.run([PYTHON, "-c", "import aiosmtpd"], capture_output=True, timeout=60).returncode == 0


def ensure_nodemailer() -> bool:
    if (PEERS / "node_modules" / "smtp-server").is_dir():
        return True
    if not shutil.which("node") or not shutil.which("npm"):
        say("compare: node/npm not found; skipping nodemailer smtp-server")
        return False
    say(f"compare: installing nodemailer smtp-server into {PEERS} (npm install --prefix loadtest/peers smtp-server) …")
    subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(PEERS), "smtp-server"],
                   check=False, timeout=600)
    return (PEERS / "node_modules" / "smtp-server").is_dir()


def available(servers: Sequence[str]) -> list[str]:
    ok: list[str] = []
    for name in servers:
        if name.startswith("smtpfront-redis") and not shutil.which("redis-server"):
            say("compare: redis-server not found (bash tests/run.sh installs it); skipping smtpfront-redis")
        elif name.startswith("aiosmtpd") and not ensure_aiosmtpd():
            say("compare: aiosmtpd unavailable; skipping")
        elif name == "nodemailer" and not ensure_nodemailer():
            pass
        elif name == "smtp-sink" and not Path("/usr/sbin/smtp-sink").exists():
            say("compare: smtp-sink unavailable; skipping")
        else:
            ok.append(name)
    return ok


# -- one server ---------------------------------------------------------------------------------


@dataclass
class Running:
    port: int
    process: subprocess.Popen[bytes]
    serving_pid: int  # whose RSS counts (smtpfront: the worker, not the master)
    helpers: list[subprocess.Popen[bytes]] = field(default_factory=list)


@contextlib.contextmanager
def server(name: str, workdir: Path) -> Iterator[Running]:
    """Start ``name`` on core 1 on a free port; stop it (and its redis) on exit."""
    port = free_port()
    helpers: list[subprocess.Popen[bytes]] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPFRONT_")}
    process: subprocess.Popen[bytes] | None = None
    drain: StreamDrain | None = None
    log = (workdir / f"{name}.log").open("ab")
    try:
        if name.startswith("smtpfront-"):
            queue = {"smtpfront-null": "null:", "smtpfront-maildir": f"maildir:{tempfile.mkdtemp(dir=workdir)}"}
            if name.startswith("smtpfront-redis"):
                # Redis on the load core, as a separate Redis host would be; "-samecore" puts it
                # on the server's core (one machine doing both). The stream is drained as a
                # consumer would (StreamDrain): smtpfront itself runs its shipped defaults.
                redis_port = free_port()
                helpers.append(subprocess.Popen(
                    pinned(SERVER_CPU if name.endswith("-samecore") else LOAD_CPU,
                           ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                            "--appendonly", "no", "--dir", str(workdir)]),
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                queue[name] = f"redis://127.0.0.1:{redis_port}/0"
                wait_redis(redis_port, helpers[0])
                drain = StreamDrain(redis_port)
            # The shipped defaults: INFO session log (one line per message), metrics,
            # Received:, STARTTLS offered (a self-signed certificate).
            argv = [PYTHON, "-m", "smtpfront", "serve", "--listen", f"127.0.0.1:{port}", "--workers", "1",
                    "--queue", queue[name], "--metrics-listen", "127.0.0.1:0", "--graceful-timeout", "2"]
            env["SMTPFRONT_TLS__SELF_SIGNED_DIR"] = str(workdir / "tls")
        elif name.startswith("aiosmtpd"):
            argv = [PYTHON, str(PEERS / "aiosmtpd_sink.py"), str(port), *(["--uvloop"] if "uvloop" in name else [])]
        elif name == "nodemailer":
            argv = ["node", str(PEERS / "nodemailer_sink.js"), str(port)]
        elif name == "smtp-sink":
            user = ["-u", "nobody"] if os.geteuid() == 0 else []  # smtp-sink refuses to run as root without -u
            argv = ["/usr/sbin/smtp-sink", *user, f"127.0.0.1:{port}", "1024"]
        else:
            raise ValueError(f"unknown server {name!r}; known: {', '.join(SERVERS)}")
        process = subprocess.Popen(pinned(SERVER_CPU, argv), cwd=workdir, env=env, stdout=log, stderr=log)
        wait_greeting(port, process)
        serving = process.pid
        if name.startswith("smtpfront-"):
            kids = children(process.pid)
            serving = kids[0] if kids else process.pid
        with drain or contextlib.nullcontext():
            yield Running(port, process, serving, helpers)
    finally:
        kids = children(process.pid) if process is not None else []
        stop(process)
        for kid in kids:  # smtpfront's workers: gone with their master, or made to go
            reap(kid)
        for helper in helpers:
            stop(helper)
        log.close()


# -- measurements -------------------------------------------------------------------------------


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` in clock ticks (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    return int(fields[11]) + int(fields[12])


def smtp_source_rate(case: Case, port: int, seconds: float, workdir: Path,
                     pid: int | None = None) -> tuple[float, float | None]:
    """msgs/s of smtp-source against ``port``, counted from after a warm-up to the end, and the
    CPU ``pid`` (the serving process) spent per message over the same window, in µs."""
    out = workdir / "smtp-source.out"
    with out.open("wb") as sink:
        argv = smtp_source_argv(case, port)
        argv[0] = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
        process = subprocess.Popen(pinned(LOAD_CPU, argv), stdout=sink, stderr=subprocess.DEVNULL)
        try:
            warmup = min(1.0, seconds / 4)
            time.sleep(warmup)
            first = (time.monotonic(), parse_counter(out.read_bytes()))
            ticks = cpu_ticks(pid) if pid is not None else 0
            time.sleep(seconds)
            last = (time.monotonic(), parse_counter(out.read_bytes()))
            ticks = cpu_ticks(pid) - ticks if pid is not None else 0
        finally:
            stop(process)
    messages = last[1] - first[1]
    cpu = ticks / os.sysconf("SC_CLK_TCK") * 1e6 / messages if pid is not None and messages > 0 else None
    return rate(first, last), cpu


def loadgen(port: int, *args: str, timeout: float = 120) -> dict[str, object]:
    """One run of smtpfront.loadgen (pinned to the load core); its JSON report."""
    done = subprocess.run(pinned(LOAD_CPU, [PYTHON, "-m", "smtpfront.loadgen", f"127.0.0.1:{port}", "--json", *args]),
                          capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT)
    try:
        report: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": (done.stderr or done.stdout)[-300:]}
    return report


def measure(case: Case, name: str, seconds: float, runs: int, workdir: Path) -> Result:
    """Best of ``runs`` smtp-source runs, then one shorter loadgen pass for p99."""
    result = Result(case, name)
    try:
        with server(name, workdir) as running, RssSampler(running.serving_pid) as rss:
            for _ in range(runs):
                msgs, cpu = smtp_source_rate(case, running.port, seconds, workdir, running.serving_pid)
                if msgs > max(result.runs, default=0.0):
                    result.cpu_us_per_msg = cpu
                result.runs.append(round(msgs, 1))
            mode = [] if case.kept else ["--per-connection"]
            report = loadgen(running.port, "--sessions", str(case.sessions), "--size", str(case.size),
                             "--seconds", str(max(1.0, seconds / 2)), *mode)
            p99 = report.get("p99_ms")
            result.p99_ms = float(p99) if isinstance(p99, int | float) and report.get("accepted") else None
        result.peak_rss_mb = rss.peak
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        result.note = f"failed: {exc}"[:80]
    result.msgs_per_s = max(result.runs, default=0.0)
    result.mb_per_s = result.msgs_per_s * case.size / 1e6
    return result


async def _hold_idle(port: int, count: int) -> list[asyncio.StreamWriter]:
    """Open ``count`` sessions that read the greeting and then stay idle (batches of 500)."""
    writers: list[asyncio.StreamWriter] = []

    async def one() -> None:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        writers.append(writer)
        await asyncio.wait_for(reader.readline(), 10)

    for at in range(0, count, 500):
        await asyncio.gather(*(one() for _ in range(min(500, count - at))))
    return writers


def idle_rss(count: int, workdir: Path) -> dict[str, float]:
    """RSS of one smtpfront worker before and while holding ``count`` idle sessions."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = count + 256
    if soft < want:  # the server inherits the raised limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, want), hard))
        if min(hard, want) < want:
            count = max(0, min(hard, want) - 256)
            say(f"compare: the open-file limit ({hard}) allows only {count} idle sessions")
    with server("smtpfront-null", workdir) as running:
        time.sleep(0.5)
        before = rss_mb(running.serving_pid)

        async def hold() -> float:
            writers = await _hold_idle(running.port, count)
            try:
                await asyncio.sleep(1.0)
                return rss_mb(running.serving_pid)
            finally:
                for writer in writers:
                    writer.close()

        during = asyncio.run(asyncio.wait_for(hold(), 300))
    return {"sessions": count, "rss_before_mb": round(before, 1), "rss_during_mb": round(during, 1),
            "kb_per_session": round((during - before) * 1024 / count, 2) if count else 0.0}


def big_message(name: str, workdir: Path, size: int = 25_000_000) -> dict[str, object]:
    """Seconds from the first body octet to the reply for one ``size``-octet message."""
    try:
        with server(name, workdir) as running:
            report = loadgen(running.port, "--sessions", "1", "--messages", "1", "--size", str(size),
                             "--seconds", "120", "--timeout", "120", timeout=300)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return {"server": name, "error": str(exc)[:80]}
    took = report.get("max_ms")
    if not report.get("accepted") or not isinstance(took, int | float) or not took:
        return {"server": name, "error": f"not accepted: {report.get('codes') or report.get('error')}"}
    return {"server": name, "seconds": round(took / 1000, 3), "mb_per_s": round(size / 1e6 / (took / 1000), 1)}


# -- the report -------------------------------------------------------------------------------


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"nproc {os.cpu_count()}, {model}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 KB x 10 sessions only, 2 s runs, 1,000 idle sessions")
    p.add_argument("--servers", default=",".join(SERVERS), help=f"comma-separated ({','.join(SERVERS)})")
    p.add_argument("--seconds", type=float, help="seconds per smtp-source run (8; quick 2)")
    p.add_argument("--runs", type=int, default=1, help="smtp-source runs per case; the best counts (1)")
    p.add_argument("--idle", type=int, help="idle sessions for the RSS-per-connection figure (10000; quick 1000)")
    p.add_argument("--no-extras", action="store_true", help="skip the idle-session and 25 MB measurements")
    p.add_argument("--json-out", metavar="FILE", help="also write every result as JSON")
    args = p.parse_args(argv)
    seconds = args.seconds or (2.0 if args.quick else 8.0)
    wanted = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SERVERS]
    if unknown:
        p.error(f"unknown servers {unknown}; known: {', '.join(SERVERS)}")
    if not ensure_postfix_tools():
        return 2
    servers = available(wanted)
    command = "python loadtest/compare.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results: list[Result] = []
    extras: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="smtpfront-compare-") as tmp:
        workdir = Path(tmp)
        for case in matrix(args.quick):
            for name in servers:
                say(f"compare: {case.label} → {name} …")
                results.append(measure(case, name, seconds, max(1, args.runs), workdir))
                say(f"compare:   {results[-1].msgs_per_s:,.0f} msgs/s, p99 {results[-1].p99_ms} ms "
                    f"{results[-1].note}")
        if not args.no_extras:
            if "smtpfront-null" in servers:
                say("compare: idle sessions against one smtpfront worker …")
                extras["idle"] = idle_rss(args.idle or (1000 if args.quick else 10_000), workdir)
            say("compare: one 25 MB message per server …")
            extras["25mb"] = [big_message(name, workdir) for name in servers]
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"Measured {stamp} on {machine()}; servers pinned to core {SERVER_CPU}, load to core {LOAD_CPU}.")
    print(f"Command: `{command.strip()}` (best of {max(1, args.runs)} smtp-source run(s) of {seconds:g} s per case).")
    print()
    print(build_table(results))
    print()
    print("msgs/s and MB/s: Postfix smtp-source (`-l SIZE` body octets plus its ~150 octets of headers; MB/s "
          "counts SIZE). p99: final dot → reply, from a separate smtpfront.loadgen pass at the same size and "
          "sessions. Peak RSS: the serving process (smtpfront: its one worker, not the master; redis not counted).")
    if isinstance(extras.get("idle"), dict):
        idle = extras["idle"]
        assert isinstance(idle, dict)
        print()
        print(f"Idle sessions: {idle['sessions']:,} held against one smtpfront worker: RSS {idle['rss_before_mb']} → "
              f"{idle['rss_during_mb']} MB, {idle['kb_per_session']} KB per idle session.")
    big = extras.get("25mb")
    if isinstance(big, list):
        print()
        print("| one 25 MB message | seconds (first body octet → reply) | MB/s |")
        print("|---|---:|---:|")
        for row in big:
            print(f"| {row['server']} | {row.get('seconds', row.get('error', '-'))} | {row.get('mb_per_s', '-')} |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({
            "when": stamp, "machine": machine(), "command": command, "seconds": seconds,
            "results": [{**asdict(r), "case": asdict(r.case)} for r in results], "extras": extras}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
