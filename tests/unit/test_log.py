"""Tests for sendgate.log: one line per event, escaping that forges nothing, levels, binding."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import select
import unicodedata
from contextlib import suppress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sendgate.log import DEFER_FOR, EventLog, Value

TS = 1_714_564_800.25
TS_TEXT = "2024-05-01T12:00:00.250Z"
_KV_TOKEN = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|[^\s"=]+)(?: |$)')


def make_log(fmt: str = "kv", level: str = "info") -> tuple[EventLog, io.StringIO]:
    stream = io.StringIO()
    return EventLog(stream, fmt=fmt, level=level, clock=lambda: TS), stream


def parse_kv(line: str) -> dict[str, str]:
    """Read a kv line back; every byte must belong to exactly one key=value token."""
    assert line.endswith("\n")
    body = line[:-1]
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(body):
        match = _KV_TOKEN.match(body, pos)
        assert match is not None, f"unparsable at {pos}: {body!r}"
        key, raw = match.groups()
        assert key not in fields, f"field {key} given twice in {body!r}"
        fields[key] = json.loads(raw) if raw.startswith('"') else raw
        pos = match.end()
    return fields


# --- kv format -------------------------------------------------------------------------------


def test_kv_line_layout() -> None:
    log, stream = make_log()
    log.event("accepted", queue_id="01HX0000000000ABCD", size=1234, user="alice@example.org")
    assert stream.getvalue() == (
        f"ts={TS_TEXT} level=info event=accepted queue_id=01HX0000000000ABCD size=1234"
        " user=alice@example.org\n"
    )


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (None, '""'),
        ("", '""'),
        (True, "true"),
        (False, "false"),
        (0.5, "0.500"),
        (7, "7"),
        ("<a@b>,[::1]:25/x+y-z", "<a@b>,[::1]:25/x+y-z"),
        ("two words", '"two words"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("a=b", '"a=b"'),
        ("back\\slash", '"back\\\\slash"'),
        ("line\r\nbreak", '"line\\r\\nbreak"'),
        ("nul\x00esc\x1b[31m", '"nul\\u0000esc\\u001b[31m"'),
        ("caf\u00e9", '"caf\u00e9"'),
    ],
)
def test_kv_values_are_bare_or_quoted_and_escaped(value: Value, shown: str) -> None:
    log, stream = make_log()
    log.event("e", v=value)
    assert stream.getvalue() == f"ts={TS_TEXT} level=info event=e v={shown}\n"


@pytest.mark.parametrize(
    "forged",
    [
        "x reason=forged",
        'x" reason="forged',
        "x\nts=2000-01-01T00:00:00.000Z level=error event=forged",
        "x\rreason=forged",
        "reason=forged",
        'x\\" reason=forged',
    ],
)
def test_kv_value_cannot_forge_a_field_or_a_line(forged: str) -> None:
    log, stream = make_log()
    log.event("auth_fail", user=forged, reason="ok")
    line = stream.getvalue()
    assert line.count("\n") == 1
    fields = parse_kv(line)
    assert fields == {
        "ts": TS_TEXT,
        "level": "info",
        "event": "auth_fail",
        "user": forged,
        "reason": "ok",
    }


@given(value=st.text(), other=st.text())
def test_any_text_value_stays_one_line_and_parses_back(value: str, other: str) -> None:
    log, stream = make_log()
    log.event("e", user=value, reason=other)
    line = stream.getvalue()
    assert line.count("\n") == 1
    assert line.endswith("\n")
    assert "\r" not in line
    fields = parse_kv(line)
    assert fields["user"] == value
    assert fields["reason"] == other
    assert set(fields) == {"ts", "level", "event", "user", "reason"}


@pytest.mark.parametrize("char", ["\x7f", "\x85", "\x9b", "\u2028", "\u2029"])
def test_every_control_and_line_separator_is_escaped(char: str) -> None:
    log, stream = make_log()
    log.event("e", user=f"a{char}b")
    line = stream.getvalue()
    assert len(line.splitlines()) == 1
    assert not any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in line[:-1])


# --- json format -----------------------------------------------------------------------------


def test_json_line_layout() -> None:
    log, stream = make_log("json")
    log.event("rejected", "warning", reason="sender_not_owned", code="553 5.7.1", user=None)
    line = stream.getvalue()
    assert line.count("\n") == 1
    assert json.loads(line) == {
        "ts": TS_TEXT,
        "level": "warning",
        "event": "rejected",
        "reason": "sender_not_owned",
        "code": "553 5.7.1",
        "user": None,
    }


@given(value=st.text())
def test_json_keeps_any_text_on_one_line(value: str) -> None:
    log, stream = make_log("json")
    log.event("e", user=value, reason="ok")
    line = stream.getvalue()
    assert line.count("\n") == 1
    assert len(line.splitlines()) == 1
    record = json.loads(line)
    assert record["user"] == value
    assert record["reason"] == "ok"


# --- levels, context, streams ----------------------------------------------------------------


def test_levels_below_the_minimum_are_dropped() -> None:
    log, stream = make_log(level="warning")
    log.event("a", "debug")
    log.event("b", "info")
    log.event("c", "warning")
    log.event("d", "error")
    events = [parse_kv(line + "\n")["event"] for line in stream.getvalue().splitlines()]
    assert events == ["c", "d"]
    assert not log.enabled("info")
    assert log.enabled("warning")
    assert log.enabled("error")


def test_debug_level_shows_everything() -> None:
    log, stream = make_log(level="debug")
    log.event("a", "debug")
    assert parse_kv(stream.getvalue())["level"] == "debug"
    assert log.enabled("debug")


def test_context_fields_are_merged_and_overridden_by_event_fields() -> None:
    log, stream = make_log()
    log.context.update(worker=2, conn="c0")
    log.event("e", conn="c7", size=3)
    assert stream.getvalue() == f"ts={TS_TEXT} level=info event=e worker=2 conn=c7 size=3\n"
    log, stream = make_log("json")
    log.context["worker"] = 2
    log.event("e", size=3)
    assert json.loads(stream.getvalue()) == {
        "ts": TS_TEXT,
        "level": "info",
        "event": "e",
        "worker": 2,
        "size": 3,
    }


def test_closed_stream_does_not_raise() -> None:
    log, stream = make_log()
    stream.close()
    log.event("e", user="alice")  # ValueError inside; must not escape
    assert stream.closed


def test_broken_pipe_does_not_raise() -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    with open(write_fd, "w", encoding="utf-8") as writer:
        log = EventLog(writer, clock=lambda: TS)
        log.event("e", user="alice")
        log.event("e", user="bob")
        # The buffered line is still unsent: closing fails the same way, which is expected.
        with suppress(BrokenPipeError):
            writer.close()
    assert writer.closed


def test_default_stream_is_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    EventLog(clock=lambda: TS).event("e", size=1)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"ts={TS_TEXT} level=info event=e size=1\n"


# --- bound loggers ---------------------------------------------------------------------------


def test_bound_fields_come_after_the_context_and_before_the_event_fields() -> None:
    log, stream = make_log()
    log.context["worker"] = 1
    bound = log.bind(conn="c7", client="192.0.2.1")
    bound.event("auth_ok", user="alice@example.org", cached=False)
    assert stream.getvalue() == (
        f"ts={TS_TEXT} level=info event=auth_ok worker=1 conn=c7 client=192.0.2.1"
        " user=alice@example.org cached=false\n"
    )


def test_bound_line_is_the_line_the_fields_written_out_give() -> None:
    bound_log, bound_stream = make_log()
    plain_log, plain_stream = make_log()
    bound_log.bind(conn="c1", client="2001:db8::1").event("timeout", "warning", kind="idle")
    plain_log.event("timeout", "warning", conn="c1", client="2001:db8::1", kind="idle")
    assert bound_stream.getvalue() == plain_stream.getvalue()


def test_bound_logger_sees_a_context_set_after_binding() -> None:
    log, stream = make_log("json")
    bound = log.bind(conn="c1")
    log.context = {"worker": 3}  # as a forked worker does
    bound.event("connect", tls="starttls")
    assert list(json.loads(stream.getvalue()).items()) == [
        ("ts", TS_TEXT),
        ("level", "info"),
        ("event", "connect"),
        ("worker", 3),
        ("conn", "c1"),
        ("tls", "starttls"),
    ]


def test_event_field_overrides_a_bound_one_in_its_place() -> None:
    log, stream = make_log()
    log.bind(conn="c1", client="?").event("e", client="192.0.2.9", size=1)
    assert stream.getvalue() == f"ts={TS_TEXT} level=info event=e conn=c1 client=192.0.2.9 size=1\n"


def test_bound_logger_drops_levels_below_the_minimum() -> None:
    log, stream = make_log(level="warning")
    bound = log.bind(conn="c1")
    bound.event("connect")
    bound.event("timeout", "warning", kind="idle")
    assert stream.getvalue() == f"ts={TS_TEXT} level=warning event=timeout conn=c1 kind=idle\n"


class Writes(io.StringIO):
    """A stream that remembers each flushed write, as the log's pipe would see them."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def flush(self) -> None:
        text = self.getvalue()
        if text:
            self.writes.append(text)
            self.seek(0)
            self.truncate()


class SignalledWrites(Writes):
    """`Writes` that also sets an asyncio event at each write (made on the loop's thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.written = asyncio.Event()

    def flush(self) -> None:
        super().flush()
        if self.writes:
            self.written.set()


def test_info_events_on_a_deferring_loop_wait_to_be_written_together() -> None:
    stream = SignalledWrites()
    log = EventLog(stream, clock=lambda: 0.0)

    async def main() -> tuple[list[str], float]:
        loop = asyncio.get_running_loop()
        log.defer_on(loop)
        start = loop.time()
        log.event("one")
        await asyncio.sleep(0)  # a turn of the loop ends: not a reason to write
        log.event("two")
        seen = list(stream.writes)
        await asyncio.wait_for(stream.written.wait(), 10)
        waited = loop.time() - start
        log.event("three")
        log.defer_on(None)  # writes what waits
        log.event("four")  # and from now on each at once
        return seen, waited

    seen, waited = asyncio.run(main())
    assert seen == []
    assert waited >= DEFER_FOR * 0.9  # the loop's clock may round its timers a little early
    assert [w.count("\n") for w in stream.writes] == [2, 1, 1]
    assert "event=one" in stream.writes[0]
    assert "event=two" in stream.writes[0]
    assert "event=four" in stream.writes[2]


def test_a_warning_is_written_at_once_after_the_lines_that_waited() -> None:
    stream = Writes()
    log = EventLog(stream, clock=lambda: 0.0)

    async def main() -> list[str]:
        log.defer_on(asyncio.get_running_loop())
        log.event("before")
        log.event("trouble", "warning")
        seen = list(stream.writes)
        log.event("after")
        log.defer_on(None)
        return seen

    seen = asyncio.run(main())
    assert len(seen) == 1
    assert re.findall(r"event=(\w+)", seen[0]) == ["before", "trouble"]
    assert "event=after" in stream.writes[1]


def test_another_threads_events_are_written_at_once() -> None:
    stream = Writes()
    log = EventLog(stream, clock=lambda: 0.0)

    async def main() -> None:
        log.defer_on(asyncio.get_running_loop())
        await asyncio.to_thread(log.event, "from_a_thread")
        assert len(stream.writes) == 1  # before this turn ended
        log.defer_on(None)

    asyncio.run(main())
    assert "event=from_a_thread" in stream.writes[0]


@given(sizes=st.lists(st.integers(0, 6000), min_size=1, max_size=12))
def test_deferred_writes_stay_whole_and_within_one_atomic_pipe_write(sizes: list[int]) -> None:
    stream = Writes()
    log = EventLog(stream, clock=lambda: 0.0)

    async def main() -> None:
        log.defer_on(asyncio.get_running_loop())
        for index, size in enumerate(sizes):
            log.event("e", n=index, pad="x" * size)
        log.defer_on(None)

    asyncio.run(main())
    lines = [line for write in stream.writes for line in write.splitlines()]
    numbers = [re.search(r" n=(\d+)", line) for line in lines]
    assert [int(m[1]) if m else -1 for m in numbers] == list(range(len(sizes)))
    for write in stream.writes:
        assert write.endswith("\n")
        # More than one line only when they fit in one atomic write together.
        assert write.count("\n") == 1 or len(write) <= select.PIPE_BUF


def test_a_closed_loop_does_not_keep_lines_back() -> None:
    stream = Writes()
    log = EventLog(stream, clock=lambda: 0.0)
    loop = asyncio.new_event_loop()
    log.defer_on(loop)
    loop.close()
    log.event("late")
    assert len(stream.writes) == 1
