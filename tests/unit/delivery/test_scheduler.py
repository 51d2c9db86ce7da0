"""Tests for sendgate.delivery.scheduler: what tests/integration/test_delivery.py does not reach.

Messages removed while queued, unreadable state files, retry requests, state writes that fail,
ids announced to a running scheduler, leases, fairness. Mail goes through a plaintext smarthost
route to a real aiosmtpd receiver on 127.0.62.x:25 (one address per test), so no DNS is
involved; time is injected. Each scheduler gets a new queue handle, as a restarted runner would.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from tests.peers.mx import Receiver
from tests.support.clock import FakeClock

from sendgate.config.schema import DeliveryConfig
from sendgate.delivery import scheduler as scheduler_module
from sendgate.delivery.bounce import DsnWriter
from sendgate.delivery.courier import Courier
from sendgate.delivery.dns import Resolver
from sendgate.delivery.plan import Planner, Relay
from sendgate.delivery.scheduler import Scheduler
from sendgate.delivery.target import Timeouts
from sendgate.log import EventLog
from sendgate.store.delivery_state import DeliveryState
from sendgate.store.envelope import Envelope
from sendgate.store.local.announce import AnnouncePipe, AnnounceReader, AnnounceWriter
from sendgate.store.local.queue import LocalQueueStore
from sendgate.store.local.spool import Spool
from sendgate.store.queue import Claim, Claimed

_T = TypeVar("_T")
START = 1_800_000_000.0
ALICE = "alice@sender.test"
BOB = "bob@example.org"
FAST = Timeouts(connect=5.0, command=10.0, data=10.0)
WAIT = 30.0

LEASE = DeliveryConfig().lease  # the default the scheduler works with


class LogStream(io.StringIO):
    """The log as text, with a way to wait for an event written by another thread."""

    def __init__(self) -> None:
        super().__init__()
        self._written = threading.Condition()

    def write(self, text: str) -> int:
        with self._written:
            count = super().write(text)
            self._written.notify_all()
        return count

    def wait_for(self, event: str, timeout: float = WAIT) -> None:
        marker = f'"event": "{event}"'
        with self._written:
            if not self._written.wait_for(lambda: marker in self.getvalue(), timeout):
                raise AssertionError(f"no {event} event in the log")


class Rig:
    """A spool, a log and the settings; `scheduler()` makes a scheduler as the runner would."""

    def __init__(self, root: Path, relay_address: str = "127.0.62.1", **settings: Any) -> None:
        self.clock = FakeClock()
        self.stream = LogStream()
        self.log = EventLog(self.stream, fmt="json", level="debug", clock=self.clock)
        self.root = root
        self.spool = Spool(root / "spool", clock=self.clock)  # the files, for tests to break
        self.pipe = AnnouncePipe()
        # The acceptors' handle: puts announce themselves to the runner's handle.
        self.store = LocalQueueStore(
            root / "spool", clock=self.clock, announce_to=AnnounceWriter(self.pipe.write_fds)
        )
        self.runner_store: LocalQueueStore | None = None
        self.quick_bookkeeping = True  # the runner's handle says so to the scheduler
        self.settings = DeliveryConfig(**settings)
        self.relay = Relay(("*",), relay_address, 25, "none", None)

    def close(self) -> None:
        self.pipe.close()

    def scheduler(self, executor: ThreadPoolExecutor, seed: int = 7) -> Scheduler:
        rng = random.Random(seed)
        planner = Planner(
            relays=[self.relay],
            resolver=Resolver([("127.0.62.53", 53)], timeout=1.0),  # never asked: IP literal
            mta_sts=None,
            dane_enabled=False,
            rng=rng,
        )
        queue = LocalQueueStore(
            self.root / "spool",
            clock=self.clock,
            scan_interval=self.settings.scan_interval,
            announced=AnnounceReader(self.pipe.read_fds[0]),
        )
        queue.quick_bookkeeping = self.quick_bookkeeping
        self.runner_store = queue
        courier = Courier(
            planner=planner,
            helo="mta.sender.test",
            ssl_context=ssl.create_default_context(),
            timeouts=FAST,
            concurrency=self.settings.concurrency,
            log=self.log,
        )
        return Scheduler(
            queue=queue,
            courier=courier,
            dsn=DsnWriter(queue, "mta.sender.test", None),
            executor=executor,
            log=self.log,
            settings=self.settings,
            clock=self.clock,
            rng=rng,
        )

    async def index(self) -> None:
        """Let the runner's queue handle read the spool now (a claim of nothing)."""
        assert self.runner_store is not None
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.runner_store.claim, 0, LEASE)

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
        queue_id = self.store.new_id()
        self.store.put(
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


@pytest.fixture
def rigs(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    """Makes rigs in tmp_path (closing their pipes afterwards)."""
    made: list[Rig] = []

    def make(relay_address: str, **settings: Any) -> Rig:
        made.append(Rig(tmp_path, relay_address, **settings))
        return made[-1]

    yield make
    for rig in made:
        rig.close()


def _subjects(receiver: Receiver) -> list[str]:
    return [
        line.split(b": ", 1)[1].decode()
        for got in receiver.received
        for line in got.content.split(b"\r\n")
        if line.startswith(b"Subject: ")
    ]


# --- messages removed while queued --------------------------------------------------------------


def test_a_message_removed_while_waiting_for_a_slot_is_dropped(
    tmp_path: Path, rigs: Callable[..., Rig]
) -> None:
    # concurrency 1: two attempts in flight (one sending, one waiting), the third not started.
    rig = rigs("127.0.62.10", concurrency=1)
    first, second, third = rig.queue("one"), rig.queue("two"), rig.queue("three")

    async def body(scheduler: Scheduler) -> None:
        loop = asyncio.get_running_loop()
        drain = asyncio.ensure_future(scheduler.drain())
        assert await loop.run_in_executor(None, receiver.data_started.wait, WAIT)
        rig.store.remove(third)  # the operator's `queue remove` while the first is being sent
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


def test_a_message_removed_before_a_scan_is_forgotten(
    tmp_path: Path, rigs: Callable[..., Rig]
) -> None:
    rig = rigs("127.0.62.11")
    queue_id = rig.queue()

    async def body(scheduler: Scheduler) -> None:
        await rig.index()
        rig.store.remove(queue_id)
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
def test_an_unreadable_state_file_starts_the_message_over(
    tmp_path: Path, rigs: Callable[..., Rig], state: bytes
) -> None:
    rig = rigs("127.0.62.12")
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


def test_a_state_with_a_nan_time_does_not_stall_other_messages(
    tmp_path: Path, rigs: Callable[..., Rig]
) -> None:
    rig = rigs("127.0.62.13")
    stuck = rig.queue("stuck")
    record = json.loads(DeliveryState.fresh((BOB,)).to_json())
    record["next_attempt"] = float("nan")
    rig.spool.write_state(stuck, json.dumps(record).encode())
    rig.queue("other")

    with Receiver("127.0.62.13", 25) as receiver:
        rig.drain()

    assert "other" in _subjects(receiver)


# --- retry requests -----------------------------------------------------------------------------


def test_a_retry_request_makes_a_deferred_message_due_at_once(
    tmp_path: Path, rigs: Callable[..., Rig]
) -> None:
    rig = rigs("127.0.62.14")
    queue_id = rig.queue("again")

    async def body(scheduler: Scheduler) -> None:
        await scheduler.drain()  # 451: deferred by about retry_first
        raw = rig.spool.read_state(queue_id)
        assert raw is not None
        assert DeliveryState.from_json(raw, (BOB,)).next_attempt > rig.clock() + 200
        await scheduler.drain()  # not due: nothing happens
        assert len(rig.events("delivery")) == 1
        rig.store.request_retry(queue_id)
        rig.clock.advance(rig.settings.scan_interval)  # the runner's next look at the spool
        await scheduler.drain()

    with Receiver("127.0.62.14", 25, data_replies=["451 4.3.0 later"]) as receiver:
        rig.run(body)

    assert [event["result"] for event in rig.events("delivery")] == ["deferred", "sent"]
    assert _subjects(receiver) == ["again"]
    assert rig.spool.ids() == []
    assert rig.spool.take_retry_requests() == []


def test_a_retry_request_is_honoured_by_a_restarted_runner(
    tmp_path: Path, rigs: Callable[..., Rig]
) -> None:
    rig = rigs("127.0.62.15")
    queue_id = rig.queue("again")
    with Receiver("127.0.62.15", 25, data_replies=["451 4.3.0 later"]) as receiver:
        rig.drain()
        rig.drain()  # a restart does not make it due either
        assert len(rig.events("delivery")) == 1
        rig.store.request_retry(queue_id)
        rig.drain()

    assert [event["result"] for event in rig.events("delivery")] == ["deferred", "sent"]
    assert _subjects(receiver) == ["again"]


# --- a state that cannot be written -------------------------------------------------------------


def test_a_state_write_failure_keeps_the_message_due_later(
    tmp_path: Path, rigs: Callable[..., Rig]
) -> None:
    rig = rigs("127.0.62.16", retry_first=300.0)
    queue_id = rig.queue("later")
    state_dir = tmp_path / "spool" / "state"
    aside = tmp_path / "state-aside"

    async def body(scheduler: Scheduler) -> None:
        await rig.index()
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


def test_run_delivers_an_announced_message_without_waiting_for_a_scan(
    tmp_path: Path, rigs: Callable[..., Rig]
) -> None:
    rig = rigs("127.0.62.17", scan_interval=3600.0)
    rig.queue("first")  # found by the scan at start

    async def body(scheduler: Scheduler) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        running = asyncio.ensure_future(scheduler.run(stop, grace=5.0))
        await loop.run_in_executor(None, receiver.wait_for, 1)
        rig.queue("second")  # announced through the pipe; the next scan is an hour away
        await loop.run_in_executor(None, receiver.wait_for, 2)
        stop.set()
        await running

    with Receiver("127.0.62.17", 25) as receiver:
        rig.run(body)

    assert _subjects(receiver) == ["first", "second"]
    assert rig.spool.ids() == []
    assert rig.events("delivery_bug") == []


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "slow"])
def test_completions_of_a_quick_store_are_made_on_the_loop_and_claims_in_threads(
    tmp_path: Path, rigs: Callable[..., Rig], monkeypatch: pytest.MonkeyPatch, quick: bool
) -> None:
    rig = rigs("127.0.62.41")
    rig.quick_bookkeeping = quick
    rig.queue("one")
    rig.queue("two")
    threads: dict[str, set[int]] = {"claim": set(), "complete": set()}
    real_claim, real_complete = LocalQueueStore.claim, LocalQueueStore.complete

    def claim(store: LocalQueueStore, limit: int, lease: float) -> Claimed:
        threads["claim"].add(threading.get_ident())
        return real_claim(store, limit, lease)

    def complete(store: LocalQueueStore, claim: Claim) -> None:
        threads["complete"].add(threading.get_ident())
        real_complete(store, claim)

    # On the class: the scheduler takes the bound methods when it is made.
    monkeypatch.setattr(LocalQueueStore, "claim", claim)
    monkeypatch.setattr(LocalQueueStore, "complete", complete)

    async def body(scheduler: Scheduler) -> int:
        await scheduler.drain()
        return threading.get_ident()

    with Receiver("127.0.62.41", 25) as receiver:
        loop_thread = rig.run(body)

    assert sorted(_subjects(receiver)) == ["one", "two"]
    assert rig.store.ids() == []
    assert threads["claim"]
    assert loop_thread not in threads["claim"]  # a claim may scan queue/ or load a lot
    assert threads["complete"]
    assert (threads["complete"] == {loop_thread}) is quick


def test_an_arrival_moments_after_a_claim_waits_to_be_claimed_with_the_next_ones(
    tmp_path: Path, rigs: Callable[..., Rig], monkeypatch: pytest.MonkeyPatch
) -> None:
    gather = 2.0
    monkeypatch.setattr(scheduler_module, "ARRIVAL_GATHER", gather)
    rig = rigs("127.0.62.40", scan_interval=3600.0)
    rig.queue("first")  # found by the claim at start
    claims: list[tuple[float, list[str]]] = []

    async def body(scheduler: Scheduler) -> None:
        loop = asyncio.get_running_loop()
        store = rig.runner_store
        assert store is not None
        real_claim = store.claim

        def claim(limit: int, lease: float) -> Claimed:
            claimed = real_claim(limit, lease)
            claims.append((loop.time(), [c.queue_id for c in claimed.claims]))
            return claimed

        store.claim = claim  # type: ignore[method-assign]
        stop = asyncio.Event()
        running = asyncio.ensure_future(scheduler.run(stop, grace=5.0))
        await loop.run_in_executor(None, receiver.wait_for, 1)
        announced_at = loop.time()
        second = rig.queue("second")
        third = rig.queue("third")
        await loop.run_in_executor(None, receiver.wait_for, 3)
        stop.set()
        await running
        first_claim = claims[0][0]
        assert announced_at < first_claim + gather  # arrived within the gather window
        [(at, ids)] = [claim for claim in claims if claim[1]][1:]
        # Not claimed at once... (the stamps come from the claiming thread, a thread hop after
        # the scheduler's own, so they may lag it by a little, differently each time)
        assert at - first_claim >= gather - 0.1
        assert sorted(ids) == sorted([second, third])  # ...but both in one claim

    with Receiver("127.0.62.40", 25) as receiver:
        rig.run(body)

    assert _subjects(receiver) == ["first", "second", "third"]


def test_announcing_an_unknown_id_is_harmless(tmp_path: Path, rigs: Callable[..., Rig]) -> None:
    rig = rigs("127.0.62.18", scan_interval=3600.0)
    rig.queue("real")

    async def body(scheduler: Scheduler) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        AnnounceWriter(rig.pipe.write_fds).announce("0123456789ABCDEFGH")  # never queued
        running = asyncio.ensure_future(scheduler.run(stop, grace=5.0))
        await loop.run_in_executor(None, receiver.wait_for, 1)
        stop.set()
        await running

    with Receiver("127.0.62.18", 25) as receiver:
        rig.run(body)

    assert _subjects(receiver) == ["real"]
    assert rig.events("queue_error") == []
    assert rig.events("delivery_bug") == []


# --- leases -------------------------------------------------------------------------------------


def test_a_result_whose_lease_was_lost_is_dropped(tmp_path: Path, rigs: Callable[..., Rig]) -> None:
    rig = rigs("127.0.62.20")
    queue_id = rig.queue("taken over")

    async def body(scheduler: Scheduler) -> None:
        loop = asyncio.get_running_loop()
        drain = asyncio.ensure_future(scheduler.drain())
        assert await loop.run_in_executor(None, receiver.data_started.wait, WAIT)
        # The lease runs out mid-transaction and another runner takes the message over.
        rig.clock.advance(LEASE)
        assert rig.runner_store is not None
        [other] = rig.runner_store.claim(10, LEASE).claims
        assert other.queue_id == queue_id
        hold.set()
        await drain

    hold = threading.Event()
    with Receiver("127.0.62.20", 25, hold=hold, data_replies=["451 4.3.0 later"]) as receiver:
        rig.run(body)

    [lost] = rig.events("lease_lost")
    assert lost["queue_id"] == queue_id
    assert rig.spool.read_state(queue_id) is None  # the stale result was not stored
    assert rig.store.ids() == [queue_id]


def test_held_leases_are_renewed_while_a_transaction_runs(
    tmp_path: Path, rigs: Callable[..., Rig]
) -> None:
    rig = rigs("127.0.62.21", scan_interval=3600.0)
    queue_id = rig.queue("slow")

    async def body(scheduler: Scheduler) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        running = asyncio.ensure_future(scheduler.run(stop, grace=5.0))
        assert await loop.run_in_executor(None, receiver.data_started.wait, WAIT)
        rig.clock.advance(LEASE / 3)
        # An announcement (of nothing queued) wakes the loop, which renews what it holds.
        AnnounceWriter(rig.pipe.write_fds).announce("0123456789ABCDEFGH")
        await loop.run_in_executor(None, rig.stream.wait_for, "leases_renewed")
        rig.clock.advance(LEASE * 2 / 3 + 1)  # past the first lease, within the renewed one
        assert rig.runner_store is not None
        taken = await loop.run_in_executor(None, rig.runner_store.claim, 10, LEASE)
        assert queue_id not in [claim.queue_id for claim in taken.claims]
        hold.set()
        stop.set()
        await running

    hold = threading.Event()
    with Receiver("127.0.62.21", 25, hold=hold) as receiver:
        rig.run(body)

    assert _subjects(receiver) == ["slow"]
    [renewed] = rig.events("leases_renewed")
    assert (renewed["held"], renewed["kept"]) == (1, 1)
    assert rig.events("lease_lost") == []
    assert rig.store.ids() == []


def test_a_stop_gives_back_what_waits_aside(tmp_path: Path, rigs: Callable[..., Rig]) -> None:
    # One slot for the domain, two tasks for it at most: the third message waits aside.
    rig = rigs("127.0.62.22", concurrency=1, domain_concurrency=1)
    first, second, third = rig.queue("one"), rig.queue("two"), rig.queue("three")

    async def body(scheduler: Scheduler) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        running = asyncio.ensure_future(scheduler.run(stop, grace=0.2))
        assert await loop.run_in_executor(None, receiver.data_started.wait, WAIT)
        stop.set()
        await running  # the held transaction is cut off after the grace period

    hold = threading.Event()
    with Receiver("127.0.62.22", 25, hold=hold) as receiver:
        rig.run(body)
        hold.set()

    assert rig.runner_store is not None
    free = [claim.queue_id for claim in rig.runner_store.claim(10, LEASE).claims]
    assert free == [third]  # released at the stop; the two started ones keep their leases
    assert sorted(rig.store.ids()) == sorted([first, second, third])
