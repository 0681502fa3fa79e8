"""MaildirSink: visibility only after commit, exact bytes, unique names, failures as SinkError.

"Nothing left" means both ``tmp/`` and ``new/`` are empty after a failure or an abort.
Disk-full cases are real ENOSPC from ``/dev/full``, dup2'ed over the message file.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import re
import shutil
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from smtpfront.core.events import Address, MailParams, RcptParams
from smtpfront.sink import maildir
from smtpfront.sink.base import Envelope, Recipient, Sink, SinkError
from smtpfront.sink.maildir import MaildirSink
from smtpfront.sink.trace import received_header

FSYNC = pytest.mark.parametrize("fsync", [True, False], ids=["fsync", "nofsync"])
BODY = b"Subject: test\r\n\r\n" + b"0123456789" * 100 + b"\r\n"
ALICE = Address("alice", "example.com")


def envelope(sender: Address = ALICE) -> Envelope:
    env = Envelope(
        id="Q1", mail_from=sender, mail_params=MailParams(),
        recipients=[Recipient(Address("bob", "example.org"), RcptParams())], received_at=1_700_000_000.0,
        client_address="192.0.2.1", client_name="c.example", helo="c.example",
    )
    env.trace = received_header(env, server_name="mx.example", queue_id="Q1", when=env.received_at)
    return env


def expected(env: Envelope, body: bytes) -> bytes:
    return b"Return-Path: <%s>\r\n" % str(env.mail_from).encode() + env.trace + body


def listing(root: Path, sub: str) -> list[str]:
    return sorted(os.listdir(root / sub))


async def deliver(sink: Sink, body: bytes = BODY, env: Envelope | None = None) -> str:
    writer = sink.open(env or envelope())
    writer.write(memoryview(body))
    return await writer.commit()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "Maildir"


def test_start_creates_private_dirs(root: Path) -> None:
    asyncio.run(MaildirSink(root).start())
    mask = os.umask(0)
    os.umask(mask)
    for sub in ("", "tmp", "new", "cur"):
        assert stat.S_IMODE((root / sub).stat().st_mode) == 0o700 & ~mask


@FSYNC
def test_visible_in_new_only_after_commit(root: Path, fsync: bool) -> None:
    async def main() -> None:
        sink = MaildirSink(root, fsync=fsync)
        env = envelope()
        writer = sink.open(env)
        for start in range(0, len(BODY), 100):
            writer.write(memoryview(BODY)[start : start + 100])
            assert listing(root, "new") == [] and len(listing(root, "tmp")) == 1
        queue_id = await writer.commit()
        assert listing(root, "tmp") == []
        content = expected(env, BODY)
        assert listing(root, "new") == [f"{queue_id},S={len(content)}"]
        assert (root / "new" / f"{queue_id},S={len(content)}").read_bytes() == content
        assert stat.S_IMODE((root / "new" / listing(root, "new")[0]).stat().st_mode) == 0o600 & ~_umask()
        host = re.escape(socket.gethostname().replace("/", r"\057").replace(":", r"\072"))
        assert re.fullmatch(rf"\d{{10}}\.M\d{{1,6}}P{os.getpid()}Q\d+\.{host}", queue_id)

    asyncio.run(main())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_null_sender_and_large_body_in_random_chunks(root: Path) -> None:
    async def main() -> None:
        sink = MaildirSink(root, buffer_size=4096)
        env = envelope(Address("", ""))
        body = random.Random(1).randbytes(1_000_000)
        writer = sink.open(env)
        chunk = bytearray()
        rng = random.Random(2)
        pos = 0
        while pos < len(body):
            n = rng.choice([1, 7, 100, 5000, 70_000])
            chunk[:] = body[pos : pos + n]
            writer.write(memoryview(chunk))  # the sink must copy: the buffer is reused
            pos += n
        queue_id = await writer.commit()
        [name] = listing(root, "new")
        assert name.startswith(queue_id + ",S=")
        data = (root / "new" / name).read_bytes()
        assert data.startswith(b"Return-Path: <>\r\nReceived: ")
        assert data == expected(env, body)

    asyncio.run(main())


@FSYNC
def test_abort_leaves_nothing(root: Path, fsync: bool) -> None:
    async def main() -> None:
        sink = MaildirSink(root, fsync=fsync)
        writer = sink.open(envelope())
        writer.write(memoryview(BODY * 50))
        await writer.abort()
        await writer.abort()
        assert listing(root, "tmp") == [] and listing(root, "new") == []
        with pytest.raises(SinkError, match="aborted"):
            writer.write(memoryview(b"x"))
        with pytest.raises(SinkError, match="aborted"):
            await writer.commit()

    asyncio.run(main())


def test_commit_twice(root: Path) -> None:
    async def main() -> None:
        writer = MaildirSink(root).open(envelope())
        await writer.commit()
        with pytest.raises(SinkError):
            await writer.commit()
        with pytest.raises(SinkError):
            writer.write(memoryview(b"x"))
        await writer.abort()  # after commit: a no-op, the message stays
        assert len(listing(root, "new")) == 1

    asyncio.run(main())


@FSYNC
def test_unique_names_under_1000_concurrent_commits(root: Path, fsync: bool) -> None:
    async def main() -> None:
        sink = MaildirSink(root, fsync=fsync)
        bodies = [b"Subject: %d\r\n\r\n%d\r\n" % (n, n) for n in range(1000)]
        ids = await asyncio.wait_for(asyncio.gather(*(deliver(sink, body) for body in bodies)), 60)
        assert len(set(ids)) == 1000
        names = listing(root, "new")
        assert len(names) == 1000 and listing(root, "tmp") == []
        by_id = {name.split(",S=")[0]: name for name in names}
        env = envelope()
        for queue_id, body in zip(ids, bodies, strict=True):
            assert (root / "new" / by_id[queue_id]).read_bytes() == expected(env, body)

    asyncio.run(main())


@FSYNC
def test_fsync_switch(root: Path, fsync: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        calls.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)

    async def main() -> None:
        sink = MaildirSink(root, fsync=fsync)
        await asyncio.gather(*(deliver(sink) for _ in range(10)))

    asyncio.run(main())
    assert len(listing(root, "new")) == 10
    assert sorted(calls) == (["dir"] * 10 + ["file"] * 10 if fsync else [])


def test_directory_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    sink = MaildirSink(tmp_path / "file" / "Maildir")
    with pytest.raises(SinkError, match="cannot create the Maildir"):
        asyncio.run(sink.open(envelope()))
    with pytest.raises(SinkError):
        asyncio.run(sink.start())


def test_unusable_tmp(root: Path) -> None:
    # A dangling tmp/ fails for every user, root included (chmod would not stop root).
    asyncio.run(MaildirSink(root).start())
    (root / "tmp").rmdir()
    (root / "tmp").symlink_to(root / "missing")
    with pytest.raises(SinkError):
        MaildirSink(root).open(envelope())
    assert not list((root / "new").iterdir())


@FSYNC
def test_new_not_a_directory(root: Path, fsync: bool) -> None:
    async def main() -> None:
        sink = MaildirSink(root, fsync=fsync)
        writer = sink.open(envelope())
        writer.write(memoryview(BODY))
        (root / "new").rmdir()
        (root / "new").write_bytes(b"")
        with pytest.raises(SinkError, match="cannot deliver"):
            await writer.commit()
        assert listing(root, "tmp") == []

    asyncio.run(main())


@FSYNC
def test_maildir_removed_before_commit(root: Path, fsync: bool) -> None:
    async def main() -> None:
        sink = MaildirSink(root, fsync=fsync)
        writer = sink.open(envelope())
        writer.write(memoryview(BODY))
        shutil.rmtree(root)
        with pytest.raises(SinkError, match="No such file"):
            await writer.commit()
        assert not root.exists()
        with pytest.raises(SinkError, match="cannot create a message file"):
            sink.open(envelope())
        assert not root.exists()

    asyncio.run(main())


@pytest.fixture
def disk_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """Message files are created in tmp/ as usual, but their writes go to /dev/full."""
    real = os.fdopen

    def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, fd)
        os.close(full)
        return real(fd, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", fdopen)


@pytest.mark.usefixtures("disk_full")
def test_disk_full_on_write_fails_fast(root: Path) -> None:
    async def main() -> None:
        writer = MaildirSink(root).open(envelope())
        assert len(listing(root, "tmp")) == 1
        with pytest.raises(SinkError, match="disk full") as first:
            writer.write(memoryview(b"x" * 100_000))  # larger than the buffer: written at once
        assert isinstance(first.value.__cause__, OSError) and first.value.__cause__.errno == errno.ENOSPC
        assert listing(root, "tmp") == []
        for _ in range(3):
            with pytest.raises(SinkError, match="disk full") as again:
                writer.write(memoryview(b"x"))
            assert again.value.__cause__ is None  # no I/O attempted
        with pytest.raises(SinkError, match="disk full"):
            await writer.commit()
        await writer.abort()
        assert listing(root, "tmp") == [] and listing(root, "new") == []

    asyncio.run(main())


@FSYNC
@pytest.mark.usefixtures("disk_full")
def test_disk_full_on_commit(root: Path, fsync: bool) -> None:
    async def main() -> None:
        writer = MaildirSink(root, fsync=fsync).open(envelope())
        writer.write(memoryview(BODY))  # still buffered
        with pytest.raises(SinkError, match="disk full: No space left on device"):
            await writer.commit()
        assert listing(root, "tmp") == [] and listing(root, "new") == []

    asyncio.run(main())


@pytest.mark.parametrize("failing", ["file", "dir"])
def test_fsync_error(root: Path, failing: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.fsync

    def fsync(fd: int) -> None:
        if ("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file") == failing:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)

    async def main() -> None:
        with pytest.raises(SinkError, match="Input/output error"):
            await deliver(MaildirSink(root))
        assert listing(root, "tmp") == [] and listing(root, "new") == []

    asyncio.run(main())


def test_cancelled_commit_leaves_no_tmp(root: Path) -> None:
    async def main() -> None:
        sink = MaildirSink(root)
        writer = sink.open(envelope())
        writer.write(memoryview(BODY))
        task = asyncio.create_task(writer.commit())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(500):  # the executor job finishes on its own
            if not listing(root, "tmp"):
                break
            await asyncio.sleep(0.01)
        assert listing(root, "tmp") == [] and len(listing(root, "new")) <= 1
        await writer.abort()

    asyncio.run(main())


def test_closed_sink_refuses(root: Path) -> None:
    async def main() -> None:
        sink = MaildirSink(root)
        writer = sink.open(envelope())
        await sink.close()
        with pytest.raises(SinkError, match="closed"):
            sink.open(envelope())
        await writer.commit()  # a transaction under way still completes
        assert len(listing(root, "new")) == 1

    asyncio.run(main())


def test_hostname_is_escaped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "a/b:c,d")
    assert maildir._host() == r"a\057b\072c\054d"
