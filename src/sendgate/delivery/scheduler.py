"""The delivery scheduler: claims due messages from the queue and runs their attempts, fairly.

It asks the `QueueStore` for due messages (each under a lease it renews while it holds it),
starts one task per message within the task limit, keeps per-destination fairness (a message
whose recipient domains are all at their limit waits aside, so one domain's backlog cannot take
every slot and starve the others), carries each domain's recipients with the `Courier`, and
hands the results to `outcome` to decide: store the new state with its next attempt, report to
the sender (a DSN through `DsnWriter`), or finish the message. Everything it knows between
attempts is in the queue, so a restarted runner continues where the last one stopped; delivery
is at least once: a crash after the remote 250 and before the state is stored repeats that
delivery, it never loses one.

Security: remote replies reach the log, the state and DSNs only through `outcome`, which makes
them one-line and bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

from sendgate.config.schema import DeliveryConfig
from sendgate.delivery import outcome
from sendgate.delivery.bounce import DsnWriter, RecipientNotice
from sendgate.delivery.courier import Courier
from sendgate.errors import LeaseLostError, SpoolError, UnknownQueueIdError
from sendgate.handoff import GroupHandoff, each
from sendgate.log import EventLog
from sendgate.store.delivery_state import DeliveryState, RecipientState
from sendgate.store.queue import Claim, QueueStore

_T = TypeVar("_T")
# Under load, arrivals within this many seconds of the last claim wait for one claim together
# (one thread handoff and one read of the announcements for many messages); an arrival after a
# quiet spell is claimed at once.
ARRIVAL_GATHER = 0.01


class Scheduler:
    """Delivers what is in the queue until `stop` is set (or, with `drain`, until idle)."""

    def __init__(
        self,
        *,
        queue: QueueStore,
        courier: Courier,
        dsn: DsnWriter,
        executor: Executor,
        log: EventLog,
        settings: DeliveryConfig,
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self._queue = queue
        self._courier = courier
        self._dsn = dsn
        self._executor = executor
        self._log = log
        self._cfg = settings
        self._clock = clock
        self._rng = rng
        self._held: dict[str, Claim] = {}  # the latest claim of every message held
        self._running: set[str] = set()
        self._domains: dict[str, asyncio.Semaphore] = {}
        # Tasks holding or waiting for each recipient domain, and claims set aside because every
        # domain they need is busy (per-destination fairness, as Postfix's queue manager keeps).
        self._busy: dict[str, int] = {}
        self._parked: dict[str, deque[str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Bound the tasks in flight: each waits for connection slots, and a big queue must not
        # become thousands of waiting tasks.
        self._task_limit = settings.concurrency * 2
        self._wake = asyncio.Event()
        self._next_check = 0.0
        self._renew_at = 0.0
        self._arrivals: int | None = None  # the queue's arrivals descriptor, when watched
        # Message reads and completions of many attempts share thread handoffs. A store whose
        # bookkeeping is quick completes, renews and releases on the loop: a thread handoff
        # costs more than a few unlinks (bench/README.md). Claims stay in the pool: one may
        # scan queue/ or load many envelopes.
        self._reads = GroupHandoff(executor, each(queue.message), in_flight=2)
        self._completions = GroupHandoff(executor, each(queue.complete))
        self._quick = queue.quick_bookkeeping
        self._watching = False
        self._last_claim = -ARRIVAL_GATHER  # loop time of the last claim

    def _arrived(self) -> None:
        """New mail may be claimable: claim now, or with the next arrivals when the last claim
        was moments ago. The descriptor stays readable until `claim` consumes it, so it is not
        watched again before then (no spinning on it)."""
        assert self._arrivals is not None
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._arrivals)
        self._watching = False
        delay = self._last_claim + ARRIVAL_GATHER - loop.time()
        if delay > 0:
            loop.call_later(delay, self._claim_now)
        else:
            self._claim_now()

    def _claim_now(self) -> None:
        self._next_check = 0.0
        self._wake.set()

    def _watch(self) -> None:
        if self._arrivals is not None and not self._watching:
            asyncio.get_running_loop().add_reader(self._arrivals, self._arrived)
            self._watching = True

    async def _io(self, func: Callable[..., _T], *args: object) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    async def _book(self, func: Callable[..., _T], *args: object) -> _T:
        """A bookkeeping call of the queue (renew, release): on the loop when quick."""
        if self._quick:
            return func(*args)
        return await self._io(func, *args)

    # --- the main loops -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, *, grace: float = 30.0) -> None:
        """Deliver until `stop` is set, then give running attempts `grace` seconds to finish."""
        stopper = asyncio.ensure_future(stop.wait())
        self._arrivals = self._queue.arrivals_fd()
        self._watch()
        try:
            while not stop.is_set():
                if self._clock() >= self._next_check and self._room():
                    await self._claim()
                    continue  # a full batch may leave more due: claim again while there is room
                await self._renew()
                timeout = self._renew_at - self._clock() if self._held else None
                if self._room():
                    until_check = self._next_check - self._clock()
                    timeout = until_check if timeout is None else min(timeout, until_check)
                # At the task limit a due message waits for a finishing task (which sets
                # _wake), not for its due time: that is already past.
                self._wake.clear()
                waker = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait(
                    {stopper, waker},
                    timeout=None if timeout is None else max(timeout, 0.0),
                    return_when="FIRST_COMPLETED",
                )
                waker.cancel()
        finally:
            stopper.cancel()
            if self._watching and self._arrivals is not None:
                asyncio.get_running_loop().remove_reader(self._arrivals)
                self._watching = False
            if self._tasks:
                _, late = await asyncio.wait(self._tasks, timeout=grace)
                for task in late:
                    task.cancel()
                if late:
                    await asyncio.wait(late)
            await self._give_back()
            await self._courier.close()

    async def drain(self) -> None:
        """Run until nothing is due now and nothing is running (for tests and the benchmark)."""
        try:
            while True:
                room = self._room()
                claimed = await self._claim() if room else 0
                if claimed and claimed == room:
                    continue  # a full batch: more may be due (and some may wait aside)
                if not self._tasks:
                    if claimed:
                        continue
                    return
                await asyncio.wait(self._tasks, return_when="FIRST_COMPLETED")
        finally:
            await self._courier.close()

    def _room(self) -> int:
        return self._task_limit - len(self._tasks)

    async def _claim(self) -> int:
        """Claim what is due (up to the free task slots) and start or park it; return the count."""
        self._last_claim = asyncio.get_running_loop().time()
        try:
            claimed = await self._io(self._queue.claim, self._room(), self._cfg.lease)
        except SpoolError as exc:
            self._log.event("queue_error", "error", error=str(exc))
            self._next_check = self._clock() + self._cfg.scan_interval
            return 0
        self._watch()  # `claim` consumed the arrivals that woke us
        for problem in claimed.problems:
            self._log.event("queue_error", "error", error=problem)
        self._next_check = claimed.next_check
        if claimed.claims and not self._held:
            self._renew_at = self._clock() + self._cfg.lease / 3
        for claim in claimed.claims:
            if claim.state_problem is not None:
                # An unreadable state must not lose the message: it starts over (at least once).
                self._log.event(
                    "state_reset", "warning", queue_id=claim.queue_id, error=claim.state_problem
                )
            queue_id = claim.queue_id
            known = queue_id in self._held
            self._held[queue_id] = claim  # a re-claim of a message we hold renews its lease
            if not known:
                self._dispatch(queue_id)
        return len(claimed.claims)

    async def _renew(self) -> None:
        """Keep the leases of the messages held (running or waiting aside) alive."""
        if not self._held or self._clock() < self._renew_at:
            return
        self._renew_at = self._clock() + self._cfg.lease / 3
        held = list(self._held.values())
        try:
            kept = await self._book(self._queue.renew, held, self._cfg.lease)
        except SpoolError as exc:
            self._log.event("queue_error", "error", error=str(exc))
            return
        renewed = {claim.queue_id: claim for claim in kept}
        self._log.event("leases_renewed", "debug", held=len(held), kept=len(kept))
        for claim in held:
            if self._held.get(claim.queue_id) is not claim:
                continue  # replaced or finished meanwhile
            if claim.queue_id in renewed:
                self._held[claim.queue_id] = renewed[claim.queue_id]
            elif claim.queue_id not in self._running:
                del self._held[claim.queue_id]  # lost while waiting aside: not ours to start

    async def _give_back(self) -> None:
        """At a stop, release what waits aside so that another runner may take it at once."""
        for queue_id in [q for q in self._held if q not in self._running]:
            claim = self._held.pop(queue_id)
            with contextlib.suppress(SpoolError):
                await self._book(self._queue.release, claim)

    # --- fairness -----------------------------------------------------------------------------

    def _dispatch(self, queue_id: str) -> None:
        """Start the attempt of a held message, or set it aside while its domains are busy."""
        claim = self._held.get(queue_id)
        if claim is None:
            return  # its lease was lost while it waited aside
        # Up to one waiting task per sending one for a domain: the waiting one has its message
        # read and starts the moment a slot frees. More would only crowd out other domains.
        limit = self._cfg.domain_concurrency * 2
        domains = _pending_domains(claim.state, claim.envelope.recipients)
        if domains and all(self._busy.get(domain, 0) >= limit for domain in domains):
            self._parked.setdefault(domains[0], deque()).append(queue_id)
            return
        for domain in domains:
            self._busy[domain] = self._busy.get(domain, 0) + 1
        self._running.add(queue_id)
        task = asyncio.ensure_future(self._attempt(queue_id, domains))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _release(self, domains: list[str]) -> None:
        """An attempt is over: free its domains and bring back one message parked on each."""
        for domain in domains:
            left = self._busy[domain] - 1
            if left:
                self._busy[domain] = left
            else:
                del self._busy[domain]
                self._domains.pop(domain, None)  # no task holds or waits for its semaphore
            parked = self._parked.get(domain)
            if parked:
                queue_id = parked.popleft()
                if not parked:
                    del self._parked[domain]
                self._dispatch(queue_id)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            self._log.event("delivery_bug", "error", error=repr(task.exception()))

    # --- one attempt of one message -----------------------------------------------------------

    async def _attempt(self, queue_id: str, domains: list[str]) -> None:
        try:
            await self._attempt_message(queue_id)
        except Exception as exc:
            # An I/O error or a bug must not strand the message: log it and try again later.
            if isinstance(exc, SpoolError):
                self._log.event("queue_error", "error", queue_id=queue_id, error=str(exc))
            else:
                self._log.event("delivery_bug", "error", queue_id=queue_id, error=repr(exc))
            claim = self._held.get(queue_id)
            if claim is not None:
                with contextlib.suppress(SpoolError):
                    retry = self._clock() + self._cfg.retry_first
                    await self._book(self._queue.release, claim, retry)
        finally:
            self._running.discard(queue_id)
            self._held.pop(queue_id, None)
            self._release(domains)

    async def _attempt_message(self, queue_id: str) -> None:
        claim = self._held[queue_id]
        message = claim.message
        if message is None:
            try:
                message = await self._reads.run(queue_id)
            except UnknownQueueIdError:
                return  # removed by the operator meanwhile
        envelope, state = claim.envelope, claim.state
        now = self._clock()
        by_domain: dict[str, list[int]] = {}
        for index in state.pending():
            by_domain.setdefault(_domain_of(envelope.recipients[index]), []).append(index)
        rows = dict(enumerate(state.recipients))
        carries = [
            self._carry(claim, message, domain, indexes, rows, now)
            for domain, indexes in by_domain.items()
        ]
        # Most messages go to one domain: awaited here, without gather's task per domain.
        results = [await carries[0]] if len(carries) == 1 else await asyncio.gather(*carries)
        updates: dict[int, RecipientState] = {}
        for result in results:
            updates.update(result)
        await self._conclude(queue_id, state, state.with_results(updates), message)

    async def _carry(
        self,
        claim: Claim,
        message: bytes,
        domain: str,
        indexes: list[int],
        rows: dict[int, RecipientState],
        now: float,
    ) -> dict[int, RecipientState]:
        semaphore = self._domains.setdefault(
            domain, asyncio.Semaphore(self._cfg.domain_concurrency)
        )
        async with semaphore:
            return await self._courier.carry(claim.envelope, message, domain, indexes, rows, now)

    async def _conclude(
        self, queue_id: str, before: DeliveryState, after: DeliveryState, message: bytes
    ) -> None:
        envelope = self._held[queue_id].envelope
        now = self._clock()
        verdict = outcome.conclude(before, after, envelope, now, self._cfg)
        state = verdict.state
        if verdict.expired:
            self._log.event("expired", "warning", queue_id=queue_id)
        notices = []
        if envelope.sender and (verdict.failed or verdict.delayed or verdict.relayed):
            notices = outcome.notices(
                state, envelope, verdict.failed, verdict.delayed, verdict.relayed
            )
        if notices:
            until = outcome.retry_until(envelope, self._cfg) if verdict.delayed else None
            try:
                queued = await self._io(self._dsn.write, envelope, notices, message, now, until)
            except SpoolError as exc:
                # The sender must still hear of it: those recipients are tried (and, failing
                # again, reported) at the next attempt.
                self._log.event("queue_error", "error", queue_id=queue_id, error=str(exc))
                state = outcome.unreported(state, verdict.failed, verdict.delayed)
            else:
                if queued.signing_problem is not None:
                    self._log.event(
                        "dkim_error",
                        "error",
                        queue_id=queued.envelope.queue_id,
                        error=queued.signing_problem,
                    )
                self._log.event(
                    "dsn",
                    queue_id=queue_id,
                    dsn_id=queued.envelope.queue_id,
                    action=_main_action(notices),
                    recipients=len(notices),
                )
        claim = self._held[queue_id]  # the latest lease: a re-claim may have renewed it
        try:
            if state.finished():
                if self._quick:
                    self._queue.complete(claim)
                else:
                    await self._completions.run(claim)
                return
            state = outcome.schedule(state, envelope, now, self._cfg, self._rng.random())
            await self._io(self._queue.update, claim, state)
        except UnknownQueueIdError:
            # `queue remove` during the attempt: the operator's word is final.
            self._log.event("removed_during_attempt", queue_id=queue_id)
        except LeaseLostError:
            self._log.event("lease_lost", "warning", queue_id=queue_id)
        except SpoolError as exc:
            # Not stored; the queue keeps the new state in memory where it can, so delivered
            # recipients are not sent again unless the runner restarts first (at least once).
            self._log.event("queue_error", "error", queue_id=queue_id, error=str(exc))
            with contextlib.suppress(SpoolError):
                await self._book(self._queue.release, claim, now + self._cfg.retry_first)


def _main_action(notices: list[RecipientNotice]) -> str:
    """The DSN's kind for the log: failed over delayed over relayed."""
    actions = {notice.action for notice in notices}
    return next(action for action in ("failed", "delayed", "relayed") if action in actions)


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def _pending_domains(state: DeliveryState, recipients: tuple[str, ...]) -> list[str]:
    """The recipient domains an attempt needs, each once, in envelope order."""
    return list(dict.fromkeys(_domain_of(recipients[i]) for i in state.pending()))
