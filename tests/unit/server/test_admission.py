"""Tests for sendgate.server.admission: asking the handler factory, and every way it can fail.

The live paths (a refused client on 587 and 465, a factory raising) are in test_connection.py;
these call `ask` directly, with a factory the test writes and a log read back as text.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable

import pytest
from tests.support.clock import FakeClock

from sendgate.log import BoundLog, EventLog
from sendgate.server.admission import Admission, ask, log_refusal
from sendgate.smtp import replies
from sendgate.smtp.events import Event
from sendgate.smtp.replies import Reply
from sendgate.smtp.session import Session


class Handler:
    def handle(self, event: Event, session: Session) -> Reply:
        return replies.OK


class Factory:
    """Answers with `answer` (or raises it), at once or, with `later`, through a coroutine."""

    def __init__(self, answer: Admission | Exception, *, later: bool = False) -> None:
        self.answer = answer
        self.later = later
        self.asked: list[tuple[str, str]] = []

    def __call__(self, client_ip: str, conn_id: str) -> Admission | Awaitable[Admission]:
        self.asked.append((client_ip, conn_id))
        return self._later() if self.later else self._now()

    def _now(self) -> Admission:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    async def _later(self) -> Admission:
        return self._now()


def logged() -> tuple[BoundLog, io.StringIO]:
    stream = io.StringIO()
    return EventLog(stream, clock=FakeClock()).bind(conn="c1", client="192.0.2.1"), stream


def settle(verdict: Admission | Awaitable[Admission]) -> Admission:
    assert isinstance(verdict, Awaitable)
    return asyncio.run(_await(verdict))


async def _await(pending: Awaitable[Admission]) -> Admission:
    return await pending


def test_a_handler_given_at_once_is_returned_as_is() -> None:
    handler = Handler()
    factory = Factory(handler)
    log, stream = logged()
    assert ask(factory, "192.0.2.1", "c1", log, draining=False) is handler
    assert factory.asked == [("192.0.2.1", "c1")]
    assert stream.getvalue() == ""


def test_a_refusal_given_at_once_is_returned_as_is() -> None:
    log, _ = logged()
    verdict = ask(Factory(replies.SERVICE_UNAVAILABLE), "192.0.2.1", "c1", log, draining=False)
    assert verdict is replies.SERVICE_UNAVAILABLE


def test_a_draining_worker_refuses_without_asking() -> None:
    factory = Factory(Handler())
    log, stream = logged()
    assert ask(factory, "192.0.2.1", "c1", log, draining=True) is replies.SHUTTING_DOWN
    assert factory.asked == []
    assert stream.getvalue() == ""


def test_a_factory_raising_at_once_refuses_with_421_and_is_logged() -> None:
    log, stream = logged()
    verdict = ask(Factory(RuntimeError("store down")), "192.0.2.1", "c1", log, draining=False)
    assert verdict is replies.SERVICE_UNAVAILABLE
    assert stream.getvalue().endswith(
        "level=error event=admission_error conn=c1 client=192.0.2.1 "
        "error=\"RuntimeError('store down')\"\n"
    )


def test_a_verdict_given_later_is_awaited() -> None:
    handler = Handler()
    log, stream = logged()
    verdict = ask(Factory(handler, later=True), "192.0.2.1", "c1", log, draining=False)
    assert settle(verdict) is handler
    assert stream.getvalue() == ""


def test_a_factory_failing_later_refuses_with_421_and_is_logged() -> None:
    log, stream = logged()
    factory = Factory(OSError("no such table"), later=True)
    verdict = ask(factory, "192.0.2.1", "c1", log, draining=False)
    assert stream.getvalue() == ""  # nothing has failed yet
    assert settle(verdict) is replies.SERVICE_UNAVAILABLE
    assert "event=admission_error conn=c1" in stream.getvalue()
    assert "OSError('no such table')" in stream.getvalue()


def test_a_pending_verdict_can_be_cancelled() -> None:
    log, stream = logged()

    async def main() -> None:
        never: asyncio.Future[Admission] = asyncio.get_running_loop().create_future()
        started = asyncio.Event()

        async def pending() -> Admission:
            started.set()
            return await never

        verdict = ask(lambda ip, conn: pending(), "192.0.2.1", "c1", log, draining=False)
        assert isinstance(verdict, Awaitable)
        task = asyncio.ensure_future(verdict)
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert never.cancelled()

    asyncio.run(main())
    assert stream.getvalue() == ""  # a cancelled admission is no admission error


def test_a_refusal_is_logged_with_its_codes() -> None:
    log, stream = logged()
    log_refusal(log, replies.SERVICE_UNAVAILABLE)
    code = f"{replies.SERVICE_UNAVAILABLE.code} {replies.SERVICE_UNAVAILABLE.enhanced}"
    assert stream.getvalue().endswith(
        f'level=warning event=refused conn=c1 client=192.0.2.1 reason=admission code="{code}"\n'
    )
