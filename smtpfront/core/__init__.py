"""The sans-IO SMTP/LMTP engine: bytes in, events out; replies in, bytes out.

The same typed Python runs interpreted or compiled by mypyc (``setup.py`` builds the hot
modules when a C compiler is there); :func:`compiled` says which.
"""

from __future__ import annotations

import os

__all__ = ["COMPILED_MODULES", "COMPILED_WITH_CORE", "compiled", "stale_modules"]

#: The modules setup.py compiles: the ones a pipelined transaction runs through, and the
#: readers of each state (proxy.py's grammar and sasl.py's mechanisms run once per session
#: and stay interpreted).
COMPILED_MODULES = ("buffer", "capabilities", "commands", "connection", "data", "errors", "events", "grammar",
                    "options", "read_body", "read_chunk", "read_command", "read_proxy", "read_sasl", "replies",
                    "sentinels", "states", "tallies", "verbs")

#: The modules outside the core on the per-command and per-message path: the asyncio adapter
#: (``smtpfront.aio``), the sink's writer, lane and record, the ``Received:`` field, the session
#: log's line and the held metrics. They are compiled in the core's group so that mypyc sees the
#: core's types and each other's: typed native attributes and calls. The core never imports
#: them; they are named here because this is the list setup.py and the stale check read.
COMPILED_WITH_CORE = ("aio.budget", "aio.decisions", "aio.flow", "aio.protocol", "aio.sessionlog", "aio.start",
                      "aio.tally", "aio.timeouts", "aio.transaction", "held", "logs", "sink.base", "sink.record",
                      "sink.redis.large", "sink.redis.lane", "sink.redis.sink", "sink.redis.topology",
                      "sink.redis.wire", "sink.redis.writer", "sink.trace")


def compiled() -> bool:
    """True when the session code runs compiled (its module was loaded from an extension)."""
    from . import connection

    return not (connection.__file__ or "").endswith(".py")


def stale_modules() -> list[str]:
    """In a checkout, the compiled modules older than their source: an edit that a reinstall
    has not compiled yet (the old code runs until then)."""
    import importlib.util

    # The code is in the group's shared library; each module's own extension is a small shim
    # that a rebuild leaves alone when nothing about the module's name changed.
    spec = importlib.util.find_spec(f"{__name__}._compiled__mypyc")
    if spec is None or not spec.origin:
        return []
    here = os.path.dirname(__file__)
    if not os.path.exists(os.path.join(here, os.pardir, os.pardir, "setup.py")):
        return []  # an installed copy, not a checkout: pip writes its files in any order
    built = os.path.getmtime(spec.origin)
    sources = {name: os.path.join(here, f"{name}.py") for name in COMPILED_MODULES}
    sources.update({name: os.path.join(here, os.pardir, *name.split(".")) + ".py" for name in COMPILED_WITH_CORE})
    return [name for name, source in sources.items() if os.path.getmtime(source) > built]
