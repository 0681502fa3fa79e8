"""The README's two setups (a submission server, an MX), run as written: its commands in a fresh
directory, its swaks lines against the server they start, its shown replies expected.

Only what cannot be shared on a test machine differs: the listening ports (free ones instead
of 2587 and 2525), the metrics port, and `bash deploy/run.sh` / `.venv/bin/smtpfront` run this
interpreter's smtpfront (the test command has installed it); `bash deploy/install.sh run` is
that install and is skipped. The password is the one the README says was typed."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import free_port, terminate, wait_greeting

README = Path(__file__).parent.parent / "README.md"
TIMEOUT = 10


def setup_text(name: str) -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"<!-- setup:{name} -->\n(.*?)<!-- setup:", text, re.DOTALL)
    assert match, f"the README lost its setup:{name} marker"
    return match.group(1)


def console_lines(text: str) -> list[str]:
    return [line for block in re.findall(r"```console\n(.*?)```", text, re.DOTALL) for line in block.splitlines()]


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        terminate(process)


def run_setup(name: str, cwd: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    text = setup_text(name)
    ports = {"2587": str(free_port()), "2525": str(free_port())}
    served: list[str] = []

    def local(value: str) -> str:
        for written, used in ports.items():
            value = value.replace(f"127.0.0.1:{written}", f"127.0.0.1:{used}")
        return value

    password = re.search(r"the password typed above was `([^`]+)`", text)
    lines = console_lines(text)
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.startswith("$ "):
            continue
        command = line[2:]
        shown = []
        while i < len(lines) and not lines[i].startswith("$ "):
            shown.append(lines[i])
            i += 1
        if command == "bash deploy/install.sh run":
            continue
        if command.startswith("mkdir -p "):
            (cwd / command.split()[-1]).mkdir(parents=True, exist_ok=True)
        elif command.startswith("cat > ") and command.endswith("<<'EOF'"):
            end = shown.index("EOF")
            (cwd / command.split()[2]).write_text(local("\n".join(shown[:end]) + "\n"))
        elif command.startswith(".venv/bin/smtpfront passwd "):
            assert password, "the README does not say which password was typed"
            done = subprocess.run([sys.executable, "-m", "smtpfront", *shlex.split(command)[1:]], cwd=cwd,
                                  input=password.group(1) + "\n", capture_output=True, text=True, timeout=60)
            assert done.returncode == 0 and shown[-1] in done.stderr, (shown, done.stderr)
        elif command.startswith("bash deploy/run.sh "):
            log = cwd / f"serve-{len(served)}.log"
            args = shlex.split(command)[2:]
            process = subprocess.Popen([sys.executable, "-m", "smtpfront", "serve", *args, "--metrics-listen",
                                        f"127.0.0.1:{free_port()}"], cwd=cwd, stdout=log.open("wb"),
                                       stderr=subprocess.STDOUT)
            processes.append(process)
            config = (cwd / args[args.index("--config") + 1]).read_text()
            port = re.search(r'address = "127\.0\.0\.1:(\d+)"', config)
            assert port
            wait_greeting(int(port.group(1)), TIMEOUT * 2, process, log)
            served.append(command)
        elif command.startswith("swaks "):
            done = subprocess.run([local(arg) for arg in shlex.split(command)] + ["--timeout", str(TIMEOUT)],
                                  cwd=cwd, capture_output=True, text=True, timeout=60)
            for expected in shown:
                pattern = re.escape(expected).replace("…", ".+")
                assert re.search(pattern, done.stdout), (command, expected, done.stdout)
        elif command.startswith("ls "):
            found = sorted(p.name for p in (cwd / command.split()[-1]).iterdir())
            assert len(found) == len(shown), (found, shown)
        else:
            raise AssertionError(f"the README runs a command this test does not know: {command}")
    assert served, "the setup starts no server"


def test_the_submission_setup_works_as_written(tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    run_setup("submission", tmp_path, processes)
    assert len(list((tmp_path / "submission" / "spool" / "new").iterdir())) == 2
    assert "correct horse" not in (tmp_path / "submission" / "passwd").read_text()


def test_the_mx_setup_works_as_written(tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    run_setup("mx", tmp_path, processes)
