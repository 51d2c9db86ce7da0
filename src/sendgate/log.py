"""Structured event log: one line per event, key=value (default) or JSON.

Security: values may come from clients (EHLO names, addresses); they are escaped so that one
event is always exactly one line and no field can forge another. Callers never pass passwords
or message bodies; events carry names, addresses, counts and codes only.
"""

from __future__ import annotations

import asyncio
import json
import select
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol, TextIO

from sendgate.text import log_timestamp, log_value

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
Value = str | int | float | bool | None
# Given every event (its name and own fields) whatever the level: the metrics count them.
Observer = Callable[[str, Mapping[str, Value]], None]
# Deferred lines are written together up to this size: several processes share the log's pipe,
# and a write to a pipe is whole (never split by another writer's) only up to PIPE_BUF.
DEFERRED_MOST = select.PIPE_BUF
# Seconds a deferred line may wait for others to share its write. A crash loses at most the
# info lines of that long: a warning or an error is written at once, with what waits before it.
DEFER_FOR = 0.05
_WARNING = LEVELS["warning"]


def _kv_value(value: Value) -> str:
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.3f}"
    return log_value(str(value))


class EventSink(Protocol):
    """Anything events can be given to: an EventLog, a BoundLog, a flood's counter."""

    def event(self, name: str, level: str = "info", /, **fields: Value) -> None: ...


class EventLog:
    """Writes events to a text stream; cheap enough for several events per message."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        fmt: str = "kv",
        level: str = "info",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._json = fmt == "json"
        self._min = LEVELS[level]
        self._clock = clock
        self.context: dict[str, Value] = {}
        self.observer: Observer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._pending: list[str] = []
        self._pending_size = 0
        self._flush_due = False  # a flush of the deferred lines is scheduled on the loop

    def enabled(self, level: str) -> bool:
        return LEVELS[level] >= self._min

    def event(self, name: str, level: str = "info", /, **fields: Value) -> None:
        if self.observer is not None:
            self.observe(name, fields)
        if LEVELS[level] < self._min:
            return
        self._write(name, level, {**self.context, **fields})

    def observe(self, name: str, fields: Mapping[str, Value]) -> None:
        assert self.observer is not None
        # Counting must never take a connection down (a full disk under the metrics files).
        # try rather than contextlib.suppress: this runs for every event, and a try that
        # raises nothing costs nothing.
        try:  # noqa: SIM105
            self.observer(name, fields)
        except Exception:  # noqa: S110
            pass

    def defer_on(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Info lines logged on `loop`'s thread wait up to `DEFER_FOR` seconds to be written
        together, up to `DEFERRED_MOST` octets a write (None: each at once again, after
        writing what waits).

        A busy delivery runner logs a line per message, an acceptor several per connection:
        one write each was a seventh of the runner's event loop time (the system call and the
        wake-up of the log's reader), and one per turn of the loop still most of a write per
        message.
        """
        self.flush()
        self._flush_due = False  # a flush scheduled on an earlier loop is not this one's
        self._loop = loop
        self._loop_thread = None if loop is None else threading.get_ident()

    def flush(self) -> None:
        """Write the deferred lines now."""
        if self._pending:
            text = "".join(self._pending)
            self._pending.clear()
            self._pending_size = 0
            self._put(text)

    def _flush_when_due(self) -> None:
        self._flush_due = False
        self.flush()

    def bind(self, **fields: Value) -> BoundLog:
        """A logger that adds `fields` (e.g. conn=, client=) to every event, after the context."""
        return BoundLog(self, fields)

    def _write(self, name: str, level: str, merged: dict[str, Value]) -> None:
        ts = log_timestamp(self._clock())
        if self._json:
            line = json.dumps({"ts": ts, "level": level, "event": name, **merged})
        else:
            parts = [f"ts={ts}", f"level={level}", f"event={name}"]
            parts.extend(f"{key}={_kv_value(value)}" for key, value in merged.items())
            line = " ".join(parts)
        line += "\n"
        if self._loop_thread is not None and self._loop_thread == threading.get_ident():
            if self._pending_size + len(line) > DEFERRED_MOST:
                self.flush()
            self._pending.append(line)
            self._pending_size += len(line)
            if LEVELS[level] >= _WARNING:
                self.flush()
            elif not self._flush_due:
                try:
                    assert self._loop is not None
                    self._loop.call_later(DEFER_FOR, self._flush_when_due)
                except RuntimeError:  # the loop is closed: nothing would write them
                    self.flush()
                else:
                    self._flush_due = True
            return
        self._put(line)

    def _put(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):
            # A closed or broken log stream must never take a connection down with it.
            pass


class BoundLog:
    """Events of one connection: fixed fields go after the log's context, before the event's own.

    The fields are read at each event, so the log's context may change after binding (the
    worker sets it once forked). An event field of the same name overrides a bound one in place.
    """

    __slots__ = ("_fields", "_log")

    def __init__(self, log: EventLog, fields: dict[str, Value]) -> None:
        self._log = log
        self._fields = fields

    def event(self, name: str, level: str = "info", /, **fields: Value) -> None:
        log = self._log
        if log.observer is not None:
            log.observe(name, fields)
        if log.enabled(level):
            log._write(name, level, {**log.context, **self._fields, **fields})
