from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator, Mapping
from typing import Any

import orjson
import pytest

from smtpfront import logs
from smtpfront.logs import JsonFormatter, redact, sanitize, setup_logging
from smtpfront.session_logger import SessionLogger

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
log = logging.getLogger("smtpfront.test")


@pytest.fixture(autouse=True)
def _restore_tree() -> Iterator[None]:
    root = logging.getLogger("smtpfront")
    saved = (root.handlers[:], root.level, root.propagate)
    yield
    root.handlers[:], root.level, root.propagate = saved


@pytest.fixture
def out() -> io.StringIO:
    stream = io.StringIO()
    setup_logging("INFO", stream=stream)
    return stream


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def session(sid: str = "s1", client: str | tuple[Any, ...] = "192.0.2.1:4242") -> SessionLogger:
    return SessionLogger(log, sid, client)


class CountingStr:
    def __init__(self) -> None:
        self.calls = 0

    def __str__(self) -> str:
        self.calls += 1
        return "counted"


# --- JSON lines -----------------------------------------------------------------------


def test_json_line_has_the_base_keys(out: io.StringIO) -> None:
    log.info("hello %s", "world")
    (rec,) = lines(out)
    assert list(rec) == ["ts", "level", "logger", "msg"]
    assert TS.match(rec["ts"])
    assert (rec["level"], rec["logger"], rec["msg"]) == ("INFO", "smtpfront.test", "hello world")


def test_worker_present_only_when_set() -> None:
    stream = io.StringIO()
    setup_logging(stream=stream, worker=3)
    log.warning("w")
    setup_logging(stream=stream)
    log.warning("no w")
    with_worker, without = lines(stream)
    assert with_worker["worker"] == 3
    assert "worker" not in without


def test_extra_fields_are_merged(out: io.StringIO) -> None:
    log.info("x", extra={"size": 12, "ok": True, "rcpts": ["a@b"], "level": "forged"})
    (rec,) = lines(out)
    assert (rec["size"], rec["ok"], rec["rcpts"]) == (12, True, ["a@b"])
    assert rec["level"] == "INFO" and rec["level_"] == "forged"


def test_session_logger_adds_session_and_client(out: io.StringIO) -> None:
    s = session()
    s.info("connected", extra={"tls": False})
    s.event("mail_from", address="a@example.org")
    connected, mail = lines(out)
    assert connected["session"] == "s1" and connected["client"] == "192.0.2.1:4242"
    assert connected["tls"] is False
    assert {k: mail[k] for k in ("level", "msg", "session", "client", "address")} == {
        "level": "INFO",
        "msg": "mail_from",
        "session": "s1",
        "client": "192.0.2.1:4242",
        "address": "a@example.org",
    }
    assert mail["logger"] == "smtpfront.test"


@pytest.mark.parametrize(
    ("peer", "client"),
    [(("192.0.2.7", 25), "192.0.2.7:25"), (("2001:db8::1", 587, 0, 0), "[2001:db8::1]:587")],
)
def test_session_logger_formats_peername_tuples(out: io.StringIO, peer: tuple[Any, ...], client: str) -> None:
    session(client=peer).event("connect")
    assert lines(out)[0]["client"] == client


def test_event_fields_named_like_record_attributes_do_not_raise(out: io.StringIO) -> None:
    session().event("x", name="n", module="m", message="msg", msg="y")
    (rec,) = lines(out)
    assert rec["msg"] == "x"
    assert (rec["name_"], rec["module_"], rec["message_"], rec["msg_"]) == ("n", "m", "msg", "y")


def test_exc_info_gives_exc_field(out: io.StringIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        session().exception("unexpected")
    (rec,) = lines(out)
    assert rec["level"] == "ERROR" and rec["session"] == "s1"
    assert rec["exc"].startswith("Traceback") and "ValueError: boom" in rec["exc"]


def test_unserialisable_values_fall_back_to_str(out: io.StringIO) -> None:
    class Thing:
        def __str__(self) -> str:
            return "thing!"

    class Broken:
        def __str__(self) -> str:
            raise RuntimeError

    log.info("x", extra={"thing": Thing(), "big": 2**70, "bad": "\udcff", "broken": Broken()})
    (rec,) = lines(out)
    assert rec["thing"] == "thing!" and rec["big"] == str(2**70)
    assert rec["bad"] == "\\udcff" and rec["broken"].startswith("<")


def test_bytes_fields_are_sanitised_and_stay_on_one_line(out: io.StringIO) -> None:
    session().event("helo", name=b"evil\r\nfake: line", raw=memoryview(b"\x00\xff"))
    text = out.getvalue()
    assert text.count("\n") == 1
    rec = orjson.loads(text)
    assert rec["name_"] == "evil\\x0d\\x0afake: line" and rec["raw"] == "\\x00\\xff"


def test_broken_stream_does_not_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise BrokenPipeError

    monkeypatch.setattr(logging, "raiseExceptions", False)
    setup_logging(stream=Broken())
    log.info("lost")
    session().event("lost", x=1)


# --- sanitize --------------------------------------------------------------------------


def test_sanitize_blocks_crlf_injection() -> None:
    assert sanitize(b"evil\r\nfake: line") == "evil\\x0d\\x0afake: line"


def test_sanitize_escapes_control_chars_del_and_backslash() -> None:
    assert sanitize("a\tb\x00c\x1b[31md\x7fe\x85f\u2028g") == ("a\\x09b\\x00c\\x1b[31md\\x7fe\\x85f\\u2028g")
    assert sanitize("C:\\x0d") == "C:\\\\x0d"  # a peer cannot forge an escape


def test_sanitize_invalid_utf8_and_keeps_valid_utf8() -> None:
    assert sanitize(b"caf\xc3\xa9 \xff\xfe\xc3") == "café \\xff\\xfe\\xc3"
    assert sanitize(bytearray(b"\xe2\x82\xac")) == "€"
    assert sanitize(memoryview(b"ok\xff")) == "ok\\xff"


@pytest.mark.parametrize(("n", "expected"), [(9, "x" * 9), (10, "x" * 10), (11, "x" * 10 + "…")])
def test_sanitize_truncates_at_the_limit(n: int, expected: str) -> None:
    assert sanitize("x" * n, limit=10) == expected
    assert sanitize(b"x" * n, limit=10) == expected


def test_sanitize_long_input() -> None:
    result = sanitize(b"A" * 25_000_000)
    assert result == "A" * 200 + "…"
    assert sanitize("é" * 1000, limit=5) == "ééééé…"
    assert sanitize(b"\xf0\x9f\x93\xa7" * 1000, limit=3) == "📧📧📧…"
    assert sanitize(b"", limit=0) == "" and sanitize(b"a", limit=0) == "…"


def test_sanitize_never_cuts_inside_an_escape() -> None:
    assert sanitize(b"abc\r\n", limit=5) == "abc…"
    assert sanitize(b"abc\r\n", limit=7) == "abc\\x0d…"
    assert sanitize(b"abc\r\n", limit=11) == "abc\\x0d\\x0a"
    assert sanitize(b"\xff" * 100, limit=10) == "\\xff\\xff…"


def test_sanitize_rejects_negative_limit() -> None:
    with pytest.raises(ValueError):
        sanitize("x", limit=-1)


# --- redact ----------------------------------------------------------------------------


def test_redact() -> None:
    fields = {"Password": "p", "user": "u", "x_auth_token": "t", "nested": {"secret": 1, "ok": 2}}
    assert redact(fields) == {
        "Password": "***",
        "user": "u",
        "x_auth_token": "***",
        "nested": {"secret": "***", "ok": 2},
    }
    assert fields["Password"] == "p"  # a copy


def test_event_redacts_credentials_even_nested(out: io.StringIO) -> None:
    s = session()
    s.event(
        "auth",
        mechanism="PLAIN",
        password="hunter2",
        sasl={"Token": "tok3n", "headers": [{"Authorization": "Basic c2VjcmV0"}]},
    )
    s.info("login", extra={"credentials": ("user", "hunter2")})
    log.info("direct", extra={"api_key": "k3y"})
    text = out.getvalue()
    for secret in ("hunter2", "tok3n", "c2VjcmV0", "k3y"):
        assert secret not in text
    auth, login, direct = lines(out)
    assert auth["mechanism"] == "PLAIN" and auth["password"] == "***"
    assert auth["sasl"] == {"Token": "***", "headers": [{"Authorization": "***"}]}
    assert login["credentials"] == "***" and direct["api_key"] == "***"


def test_redact_bounds_depth() -> None:
    cyclic: dict[str, object] = {}
    cyclic["self"] = cyclic
    assert "…" in str(redact(cyclic))


# --- setup_logging ---------------------------------------------------------------------


def test_setup_twice_keeps_one_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    root, top = logging.getLogger("smtpfront"), logging.getLogger()
    top_handlers = top.handlers[:]
    foreign = logging.NullHandler()
    root.addHandler(foreign)
    setup_logging(stream=first)
    setup_logging(stream=second)
    assert len([h for h in root.handlers if h is not foreign]) == 1 and foreign in root.handlers
    assert root.propagate is False and top.handlers == top_handlers
    log.info("once")
    assert first.getvalue() == "" and len(lines(second)) == 1


def test_plain_format_is_readable() -> None:
    stream = io.StringIO()
    setup_logging("debug", json=False, stream=stream, worker=2)
    session().event("rcpt_to", address=b"a@b\r\nX", note="two words")
    line = stream.getvalue()
    assert line.count("\n") == 1 and not line.startswith("{")
    assert re.match(
        r"^\S+Z INFO    smtpfront\.test \[w2\] rcpt_to session=s1 client=192\.0\.2\.1:4242 "
        r"address=a@b\\x0d\\x0aX note=\"two words\"\n$",
        line,
    )


def test_plain_format_with_traceback() -> None:
    stream = io.StringIO()
    setup_logging(json=False, stream=stream)
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.exception("failed")
    assert "ERROR   smtpfront.test failed\nTraceback" in stream.getvalue()


def test_unknown_level_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        setup_logging("LOUD")


# --- level filtering: nothing is built for a disabled level ---------------------------


class WalkedMapping(Mapping[str, object]):
    """A field value that counts how often it is looked into (redaction walks every mapping).

    Spying through the value, not by patching ``logs.redact``: logs.py runs compiled, and its
    own calls do not look up a patched module global."""

    def __init__(self) -> None:
        self.reads = 0

    def __getitem__(self, key: str) -> object:
        self.reads += 1
        return {"k": "v"}[key]

    def __iter__(self) -> Iterator[str]:
        self.reads += 1
        return iter(["k"])

    def __len__(self) -> int:
        return 1


def test_disabled_levels_compute_nothing(out: io.StringIO) -> None:
    counter = CountingStr()
    walked = WalkedMapping()
    s = session()
    s.debug_event("rcpt_to", address=counter, headers=walked)
    s.debug("data chunk %s", counter, extra={"obj": counter, "headers": walked})
    log.debug("x %s", counter)
    setup_logging("WARNING", stream=out)
    s.event("mail_from", address=counter, headers=walked)
    assert out.getvalue() == "" and counter.calls == 0 and walked.reads == 0  # nothing redacted either
    setup_logging("INFO", stream=out)
    s.event("mail_from", address="a@b", headers=walked)  # the same call, enabled, does build its fields
    assert walked.reads and counter.calls == 0
    assert lines(out)[0]["headers"] == {"k": "v"}


def test_enabled_event_formats_once(out: io.StringIO) -> None:
    counter = CountingStr()
    session().event("mail_from", address=counter)
    assert lines(out)[0]["address"] == "counted" and counter.calls == 1


def test_debug_event_emitted_at_debug() -> None:
    stream = io.StringIO()
    setup_logging("DEBUG", stream=stream)
    session().debug_event("rcpt_to", address="a@b")
    (rec,) = lines(stream)
    assert (rec["level"], rec["msg"], rec["address"]) == ("DEBUG", "rcpt_to", "a@b")


def test_formatter_is_usable_on_its_own() -> None:
    record = logging.LogRecord("other", logging.INFO, __file__, 1, "m", None, None)
    record.created, record.msecs = 0.5, 500.0
    rec = orjson.loads(JsonFormatter(worker=0).format(record))
    assert rec == {
        "ts": "1970-01-01T00:00:00.500Z",
        "level": "INFO",
        "logger": "other",
        "msg": "m",
        "worker": 0,
    }


def test_lines_of_a_moment_go_out_in_one_write() -> None:
    import asyncio

    class Counting(io.StringIO):
        writes = 0

        def write(self, text: str) -> int:
            self.writes += 1
            return super().write(text)

    stream = Counting()
    logger = logging.getLogger("smtpfront")
    saved = (logger.propagate, logger.level, list(logger.handlers))
    setup_logging("INFO", json=True, stream=stream)
    try:
        async def main() -> None:
            log = logging.getLogger("smtpfront.test")
            log.info("one")
            log.info("two")
            assert stream.getvalue() == ""  # waiting a moment for others to share the write
            await asyncio.sleep(0)
            assert stream.getvalue() == ""
            await asyncio.sleep(logs._LINGER * 2)
            assert [json.loads(line)["msg"] for line in stream.getvalue().splitlines()] == ["one", "two"]
            assert stream.writes == 1
            log.warning("three")  # trouble is written at once
            assert json.loads(stream.getvalue().splitlines()[-1])["msg"] == "three"
            log.info("four")

        asyncio.run(main())
        logging.getLogger("smtpfront.test").info("five")  # no loop: at once, after what waited
    finally:
        logger.propagate, logger.level, logger.handlers[:] = saved[0], saved[1], saved[2]
    messages = [json.loads(line)["msg"] for line in stream.getvalue().splitlines()]
    assert messages == ["one", "two", "three", "four", "five"]


def test_session_records_are_redacted_once_and_the_mark_never_shows(out: io.StringIO) -> None:
    SessionLogger(logging.getLogger("smtpfront.session"), "s1", ("192.0.2.1", 25)).event(
        "queued", password="hunter2", size=3)
    (record,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert record["password"] == "***" and record["size"] == 3
    assert not any(key.startswith("_smtpfront") for key in record)


@pytest.mark.parametrize("json_lines", [True, False])
def test_session_event_lines_are_the_same_without_a_record(json_lines: bool) -> None:
    """Inside a loop, with only the daemon's handler, an event line is built without a LogRecord;
    it reads exactly as the record path writes it (a pass-through filter forces that path)."""
    import asyncio

    stream = io.StringIO()
    setup_logging("INFO", json=json_lines, stream=stream, worker=2)
    session_log = logging.getLogger("smtpfront.session")
    records: list[logging.LogRecord] = []

    def seen(record: logging.LogRecord) -> bool:
        records.append(record)
        return True

    fields: dict[str, object] = {"queue_id": "Q1", "size": 1024, "password": "hunter2", "level": "forged",
                                 "args": "a r g s", "msg": "m", "tls": {"version": "TLSv1.3", "token": "t"},
                                 "helo": "c.example", "empty": ""}

    async def main() -> None:
        logger = SessionLogger(session_log, "s1", ("2001:db8::1", 25))
        logger.event("queued", **fields)
        session_log.addFilter(seen)
        try:
            logger.event("queued", **fields)
        finally:
            session_log.removeFilter(seen)
        await asyncio.sleep(logs._LINGER * 2)

    asyncio.run(main())
    direct, general = stream.getvalue().splitlines()
    assert len(records) == 1  # only the second line was a record
    strip = (lambda line: {k: v for k, v in orjson.loads(line).items() if k != "ts"}) if json_lines else (
        lambda line: line.split(" ", 1)[1])
    assert strip(direct) == strip(general)
    if json_lines:
        rec = orjson.loads(direct)
        assert (rec["password"], rec["tls"]["token"], rec["level"], rec["level_"]) == ("***", "***", "INFO", "forged")
        assert (rec["worker"], rec["session"], rec["client"]) == (2, "s1", "[2001:db8::1]:25")


class Keep(logging.Handler):
    """Keeps every record it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_handler_added_by_the_embedding_program_gets_every_session_record(out: io.StringIO) -> None:
    import asyncio

    keep = Keep()
    session_log = logging.getLogger("smtpfront.session")
    session_log.addHandler(keep)
    try:
        async def main() -> None:
            SessionLogger(session_log, "s1", "192.0.2.1:25").event("queued", size=1)
            await asyncio.sleep(logs._LINGER * 2)

        asyncio.run(main())
    finally:
        session_log.removeHandler(keep)
    assert [r.getMessage() for r in keep.records] == ["queued"]
    assert [line["msg"] for line in lines(out)] == ["queued"]


def test_a_session_record_names_the_caller() -> None:
    setup_logging("DEBUG", stream=io.StringIO())
    keep = Keep()
    log.addHandler(keep)
    try:
        session().event("queued", size=1)
        session().debug_event("command", verb="RSET")
    finally:
        log.removeHandler(keep)
    assert [(r.pathname, r.funcName) for r in keep.records] == [
        (__file__, "test_a_session_record_names_the_caller")] * 2


def test_a_trouble_repeated_per_message_is_one_line_a_second(out: io.StringIO,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: now[0])
    throttle = logs.Throttle(1.0)
    for _ in range(500):  # the queue away: every message fails within the same second
        throttle.warning(log, "queue commit failed: %s", "down")
    now[0] += 1.5
    throttle.warning(log, "queue commit failed: %s", "down")
    assert [line["msg"] for line in lines(out)] == [
        "queue commit failed: down", "queue commit failed: down (and 499 more like it in the last 1 s)"]


def test_sanitize_escapes_every_character_it_maps_even_alone_or_among_printable_text() -> None:
    # sanitize skips the escaping pass for printable text without a backslash: every
    # character the escape table names must be unprintable (or the backslash) for that to hold.
    from smtpfront.logs import _ESCAPES

    for code, escape in _ESCAPES.items():
        char = chr(code)
        assert sanitize(char) == escape
        assert sanitize(f"mail{char}from") == f"mail{escape}from"
    assert sanitize("plain text, é and ü") == "plain text, é and ü"


def test_timestamp_now_follows_the_clock_to_the_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    """A line's timestamp is made once per millisecond and reused within it: never stale, never
    a second off at the edge of one."""
    formatter = logs.JsonFormatter()
    now = [1700000000.1234]
    monkeypatch.setattr(logs.time, "time", lambda: now[0])
    assert formatter.timestamp_now() == "2023-11-14T22:13:20.123Z"
    now[0] = 1700000000.1237  # the same millisecond
    assert formatter.timestamp_now() == "2023-11-14T22:13:20.123Z"
    now[0] = 1700000000.9999
    assert formatter.timestamp_now() == "2023-11-14T22:13:20.999Z"
    now[0] = 1700000001.0
    assert formatter.timestamp_now() == "2023-11-14T22:13:21.000Z"
    now[0] = 1700000001.0004
    assert formatter.timestamp_now() == "2023-11-14T22:13:21.000Z"
    now[0] = 1700000061.5
    assert formatter.timestamp_now() == "2023-11-14T22:14:21.500Z"
