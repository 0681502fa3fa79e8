"""Embed smtpfront in an asyncio program with your own policy: 17 lines of code."""

import asyncio

from smtpfront import Hooks, Reply, SMTPServer
from smtpfront.sink.maildir import MaildirSink


class Policy(Hooks):
    async def on_rcpt_to(self, session, address, params):
        if address.domain != "example.com":
            return Reply(550, "5.7.1", "Relaying denied")

    async def on_data(self, session, message):
        body = await message.read()
        if b"viagra" in body.lower():
            return Reply(554, "5.7.1", "Message refused")


async def main() -> None:
    async with SMTPServer(Policy(), port=2525, sink=MaildirSink("./spool")) as server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
