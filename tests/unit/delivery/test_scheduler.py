"""Tests for sendgate.delivery.scheduler: what tests/integration/test_delivery.py does not reach.

Enhanced-code parsing, backoff bounds, messages removed while queued, unreadable state files,
retry requests, state writes that fail, and ids announced to a running scheduler. Mail goes
through a plaintext smarthost route to a real aiosmtpd receiver on 127.0.62.x:25 (one address
per test), so no DNS is involved; time is injected.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import ssl
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.peers.mx import Receiver

from sendgate.config import DeliveryConfig
from sendgate.delivery.dns import Resolver
from sendgate.delivery.plan import Planner, Relay
from sendgate.delivery.scheduler import Scheduler, _enhanced
from sendgate.delivery.state import DeliveryState
from sendgate.delivery.target import RemoteReply, Timeouts
from sendgate.log import EventLog
from sendgate.spool import Envelope, Spool

_T = TypeVar("_T")
START = 1_800_000_000.0
ALICE = "alice@sender.test"
BOB = "bob@example.org"
FAST = Timeouts(connect=5.0, command=10.0, data=10.0)
WAIT = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Rig:
    """A spool, a log and the settings; `scheduler()` makes a scheduler as the runner would."""

    def __init__(self, root: Path, relay_address: str = "127.0.62.1", **settings: Any) -> None:
        self.clock = Clock()
        self.stream = io.StringIO()
        self.log = EventLog(self.stream, fmt="json", level="debug", clock=self.clock)
        self.spool = Spool(root / "spool", clock=self.clock)
        self.root = root
        self.settings = DeliveryConfig(**settings)
        self.relay = Relay(("*",), relay_address, 25, "none", None)

    def scheduler(self, executor: ThreadPoolExecutor, seed: int = 7) -> Scheduler:
        rng = random.Random(seed)
        planner = Planner(
            relays=[self.relay],
            resolver=Resolver([("127.0.62.53", 53)], timeout=1.0),  # never asked: IP literal
            mta_sts=None,
            dane_enabled=False,
            rng=rng,
        )
        return Scheduler(
            spool=self.spool,
            planner=planner,
            executor=executor,
            log=self.log,
            settings=self.settings,
            hostname="mta.sender.test",
            ssl_context=ssl.create_default_context(),
            clock=self.clock,
            rng=rng,
            timeouts=FAST,
        )

    def run(self, body: Callable[[Scheduler], Awaitable[_T]]) -> _T:
        """Run `body(scheduler)` on a fresh event loop with a fresh scheduler."""

        async def main() -> _T:
            with ThreadPoolExecutor(4) as executor:
                return await body(self.scheduler(executor))

        return asyncio.run(main())

    def drain(self) -> None:
        """A restarted runner: a fresh scheduler runs until nothing is due now."""
        self.run(lambda scheduler: scheduler.drain())

    def queue(self, subject: str = "Hello", recipients: tuple[str, ...] = (BOB,)) -> str:
        message = f"From: <{ALICE}>\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()
        queue_id = self.spool.new_id()
        self.spool.put(
            Envelope(
                queue_id=queue_id,
                sender=ALICE,
                recipients=recipients,
                user=ALICE,
                received_at=self.clock(),
                size=len(message),
            ),
            message,
        )
        self.clock.advance(0.01)  # the next id sorts after this one
        return queue_id

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = self.stream.getvalue().splitlines()
        return [event for event in map(json.loads, lines) if event["event"] == name]


def _subjects(receiver: Receiver) -> list[str]:
    return [
        line.split(b": ", 1)[1].decode()
        for got in receiver.received
        for line in got.content.split(b"\r\n")
        if line.startswith(b"Subject: ")
    ]


# --- _enhanced ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (550, "5.1.1 No such user", "5.1.1"),
        (250, "2.0.0 Ok: queued", "2.0.0"),
        (451, "4.3.0 Try again", "4.3.0"),
        (550, "5.1.1", "5.1.1"),  # the code alone
        (550, "5.1.1\nsecond line", "5.1.1"),
        (550, "5.123.456 long but valid", "5.123.456"),
        (550, "No such user", "5.0.0"),  # no enhanced code: derived from the basic code
        (451, "Try again", "4.0.0"),
        (550, "4.1.1 class disagrees with the code", "5.0.0"),
        (450, "5.7.1 class disagrees with the code", "4.0.0"),
        (550, "5.1.1x no separator", "5.0.0"),
        (550, "5.1234.1 too many digits", "5.0.0"),
        (550, " 5.1.1 not at the start", "5.0.0"),
        (550, "user 5.1.1 in the middle", "5.0.0"),
        (550, "3.1.1 not a class", "5.0.0"),
        (554, "", "5.0.0"),
    ],
)
def test_enhanced_code_of_a_reply(code: int, text: str, expected: str) -> None:
    assert _enhanced(RemoteReply(code, text)) == expected


def test_no_reply_at_all_is_4_4_1() -> None:
    assert _enhanced(None) == "4.4.1"


@given(st.integers(200, 599), st.text(max_size=40))
def test_enhanced_code_is_well_formed_and_of_the_reply_class(code: int, text: str) -> None:
    result = _enhanced(RemoteReply(code, text))
    klass, subject, detail = result.split(".")
    assert klass == str(code)[0]
    assert subject.isdigit()
    assert detail.isdigit()
    assert 1 <= len(subject) <= 3
    assert 1 <= len(detail) <= 3


# --- backoff ------------------------------------------------------------------------------------


def _waits(rig: Rig, seed: int, attempts: range) -> list[float]:
    with ThreadPoolExecutor(1) as executor:
        scheduler = rig.scheduler(executor, seed)
        return [scheduler._backoff(n) for n in attempts]


def test_backoff_doubles_from_retry_first_up_to_retry_max_with_ten_percent_jitter(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, retry_first=300.0, retry_max=7200.0)
    waits = _waits(rig, 1, range(1, 41))
    for attempts, wait in enumerate(waits, start=1):
        base = min(300.0 * 2 ** (attempts - 1), 7200.0)
        assert 0.9 * base <= wait <= 1.1 * base, (attempts, wait)
    assert waits[0] < 330
    assert min(waits[10:]) >= 7200 * 0.9
    assert len(set(waits)) == len(waits)  # jittered: no two equal


def test_backoff_is_reproducible_from_the_seed(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    assert _waits(rig, 3, range(1, 10)) == _waits(rig, 3, range(1, 10))
    assert _waits(rig, 3, range(1, 10)) != _waits(rig, 4, range(1, 10))


@given(
    seed=st.integers(0, 2**32),
    attempts=st.integers(1, 10**9),
    first=st.floats(1, 86400),
    extra=st.floats(0, 86400),
)
def test_backoff_stays_within_bounds_for_any_attempt_count(
    seed: int, attempts: int, first: float, extra: float
) -> None:
    maximum = min(first + extra, 86400.0)
    scheduler = Scheduler(
        spool=None,  # type: ignore[arg-type]  # _backoff touches only settings and rng
        planner=None,  # type: ignore[arg-type]
        executor=None,  # type: ignore[arg-type]
        log=EventLog(io.StringIO()),
        settings=DeliveryConfig(retry_first=first, retry_max=maximum),
        hostname="mta.sender.test",
        ssl_context=None,  # type: ignore[arg-type]
        clock=lambda: START,
        rng=random.Random(seed),
    )
    wait = scheduler._backoff(attempts)
    base = min(first * 2.0 ** min(attempts - 1, 30), maximum)
    assert 0.9 * base <= wait <= 1.1 * base
    assert wait <= 1.1 * maximum


# --- messages removed while queued --------------------------------------------------------------


def test_a_message_removed_while_waiting_for_a_slot_is_dropped(tmp_path: Path) -> None:
    # concurrency 1: two attempts in flight (one sending, one waiting), the third not started.
    rig = Rig(tmp_path, "127.0.62.10", concurrency=1)
    first, second, third = rig.queue("one"), rig.queue("two"), rig.queue("three")

    async def body(scheduler: Scheduler) -> None:
        loop = asyncio.get_running_loop()
        drain = asyncio.ensure_future(scheduler.drain())
        assert await loop.run_in_executor(None, receiver.data_started.wait, WAIT)
        rig.spool.remove(third)  # the operator's `queue remove` while the first is being sent
        hold.set()
        await drain

    hold = threading.Event()
    with Receiver("127.0.62.10", 25, hold=hold) as receiver:
        rig.run(body)

    # Which of the two takes the one slot first is up to the event loop.
    assert sorted(_subjects(receiver)) == ["one", "two"]
    assert {event["queue_id"] for event in rig.events("delivery")} == {first, second}
    assert rig.events("delivery_bug") == []
    assert rig.events("queue_error") == []
    assert rig.spool.ids() == []


def test_a_message_removed_before_a_scan_is_forgotten(tmp_path: Path) -> None:
    rig = Rig(tmp_path, "127.0.62.11")
    queue_id = rig.queue()

    async def body(scheduler: Scheduler) -> None:
        await scheduler.scan()
        rig.spool.remove(queue_id)
        await scheduler.drain()  # nothing listens on 127.0.62.11: an attempt would be logged

    rig.run(body)

    assert rig.events("delivery") == []
    assert rig.events("delivery_bug") == []


# --- unreadable state ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "state",
    [
        b"{not json",
        DeliveryState.fresh(("someone.else@example.org",)).to_json(),
    ],
    ids=["garbage", "other-recipients"],
)
def test_an_unreadable_state_file_starts_the_message_over(tmp_path: Path, state: bytes) -> None:
    rig = Rig(tmp_path, "127.0.62.12")
    queue_id = rig.queue("kept")
    rig.spool.write_state(queue_id, state)

    with Receiver("127.0.62.12", 25) as receiver:
        rig.drain()

    [reset] = rig.events("state_reset")
    assert reset["queue_id"] == queue_id
    assert reset["level"] == "warning"
    assert reset["error"].startswith("state: ")
    assert _subjects(receiver) == ["kept"]
    assert rig.spool.ids() == []


def test_a_state_with_a_nan_time_does_not_stall_other_messages(tmp_path: Path) -> None:
    rig = Rig(tmp_path, "127.0.62.13")
    stuck = rig.queue("stuck")
    record = json.loads(DeliveryState.fresh((BOB,)).to_json())
    record["next_attempt"] = float("nan")
    rig.spool.write_state(stuck, json.dumps(record).encode())
    rig.queue("other")

    with Receiver("127.0.62.13", 25) as receiver:
        rig.drain()

    assert "other" in _subjects(receiver)


# --- retry requests -----------------------------------------------------------------------------


def test_a_retry_request_makes_a_deferred_message_due_at_once(tmp_path: Path) -> None:
    rig = Rig(tmp_path, "127.0.62.14")
    queue_id = rig.queue("again")

    async def body(scheduler: Scheduler) -> None:
        await scheduler.drain()  # 451: deferred by about retry_first
        raw = rig.spool.read_state(queue_id)
        assert raw is not None
        assert DeliveryState.from_json(raw, (BOB,)).next_attempt > rig.clock() + 200
        await scheduler.drain()  # not due: nothing happens
        assert len(rig.events("delivery")) == 1
        rig.spool.request_retry(queue_id)
        await scheduler.drain()

    with Receiver("127.0.62.14", 25, data_replies=["451 4.3.0 later"]) as receiver:
        rig.run(body)

    assert [event["result"] for event in rig.events("delivery")] == ["deferred", "sent"]
    assert _subjects(receiver) == ["again"]
    assert rig.spool.ids() == []
    assert rig.spool.take_retry_requests() == []


def test_a_retry_request_is_honoured_by_a_restarted_runner(tmp_path: Path) -> None:
    rig = Rig(tmp_path, "127.0.62.15")
    queue_id = rig.queue("again")
    with Receiver("127.0.62.15", 25, data_replies=["451 4.3.0 later"]) as receiver:
        rig.drain()
        rig.drain()  # a restart does not make it due either
        assert len(rig.events("delivery")) == 1
        rig.spool.request_retry(queue_id)
        rig.drain()

    assert [event["result"] for event in rig.events("delivery")] == ["deferred", "sent"]
    assert _subjects(receiver) == ["again"]


# --- a state that cannot be written -------------------------------------------------------------


def test_a_state_write_failure_keeps_the_message_due_later(tmp_path: Path) -> None:
    rig = Rig(tmp_path, "127.0.62.16", retry_first=300.0)
    queue_id = rig.queue("later")
    state_dir = tmp_path / "spool" / "state"
    aside = tmp_path / "state-aside"

    async def body(scheduler: Scheduler) -> None:
        await scheduler.scan()
        # A real failure even for root: state/ is a file, so the rename into it fails (ENOTDIR).
        state_dir.rename(aside)
        state_dir.write_bytes(b"")
        await scheduler.drain()
        [error] = rig.events("queue_error")
        assert error["queue_id"] == queue_id
        assert error["error"].startswith(f"cannot write state file {state_dir / queue_id}: ")
        assert rig.spool.ids() == [queue_id]  # not lost
        assert len(rig.events("delivery")) == 1

        rig.clock.advance(299)
        await scheduler.drain()
        assert len(rig.events("delivery")) == 1  # not retried at once, nor in a loop

        state_dir.unlink()
        aside.rename(state_dir)
        rig.clock.advance(1)
        await scheduler.drain()

    with Receiver("127.0.62.16", 25, data_replies=["451 4.3.0 later"]) as receiver:
        rig.run(body)

    assert [event["result"] for event in rig.events("delivery")] == ["deferred", "sent"]
    assert _subjects(receiver) == ["later"]
    assert rig.spool.ids() == []
    assert not list((tmp_path / "spool" / "tmp").iterdir())


# --- announced ids ------------------------------------------------------------------------------


def test_run_delivers_an_announced_message_without_waiting_for_a_scan(tmp_path: Path) -> None:
    rig = Rig(tmp_path, "127.0.62.17", scan_interval=3600.0)
    rig.queue("first")  # found by the scan at start

    async def body(scheduler: Scheduler) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        running = asyncio.ensure_future(scheduler.run(stop, grace=5.0))
        await loop.run_in_executor(None, receiver.wait_for, 1)
        queue_id = rig.queue("second")  # the next scan is an hour away
        scheduler.announce(queue_id)
        await loop.run_in_executor(None, receiver.wait_for, 2)
        stop.set()
        await running

    with Receiver("127.0.62.17", 25) as receiver:
        rig.run(body)

    assert _subjects(receiver) == ["first", "second"]
    assert rig.spool.ids() == []
    assert rig.events("delivery_bug") == []


def test_announcing_an_unknown_id_is_harmless(tmp_path: Path) -> None:
    rig = Rig(tmp_path, "127.0.62.18", scan_interval=3600.0)
    rig.queue("real")

    async def body(scheduler: Scheduler) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        scheduler.announce("0123456789ABCDEFGH")  # never queued (or already delivered)
        running = asyncio.ensure_future(scheduler.run(stop, grace=5.0))
        await loop.run_in_executor(None, receiver.wait_for, 1)
        stop.set()
        await running

    with Receiver("127.0.62.18", 25) as receiver:
        rig.run(body)

    assert _subjects(receiver) == ["real"]
    assert rig.events("queue_error") == []
    assert rig.events("delivery_bug") == []
