"""The README's embedding example works as printed (examples/embed.py)."""

from __future__ import annotations

import asyncio
import importlib.util
import smtplib
from pathlib import Path

import pytest

from smtpfront import SMTPServer
from smtpfront.sink.memory import MemorySink

EXAMPLE = Path(__file__).parent.parent / "examples" / "embed.py"


def load_policy() -> type:
    spec = importlib.util.spec_from_file_location("embed_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Policy  # type: ignore[no-any-return]


def test_embedding_example_enforces_its_policy() -> None:
    policy = load_policy()
    sink = MemorySink()

    def client(port: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.sendmail("a@example.org", ["bob@example.com"], b"Subject: ok\r\n\r\nhello\r\n")
            with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                smtp.sendmail("a@example.org", ["eve@elsewhere.net"], b"Subject: relay\r\n\r\nx\r\n")
            assert refused.value.recipients["eve@elsewhere.net"][0] == 550
            with pytest.raises(smtplib.SMTPDataError) as spam:
                smtp.sendmail("a@example.org", ["bob@example.com"], b"Subject: buy\r\n\r\nVIAGRA now\r\n")
            assert spam.value.smtp_code == 554

    async def main() -> None:
        async with SMTPServer(policy(), port=0, sink=sink, tls=False) as server:
            await asyncio.get_running_loop().run_in_executor(None, client, server.port)

    asyncio.run(main())
    assert len(sink.messages) == 1
    assert sink.messages[0].body.endswith(b"Subject: ok\r\n\r\nhello\r\n")
