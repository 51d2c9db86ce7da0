"""The delivery scheduler: which queued message is tried when, how many at once, and what follows.

It keeps an index of the spool in memory (rebuilt from disk at start, so a restart continues
where it stopped), starts an attempt for each due message within the global and per-domain
concurrency limits, records each recipient's outcome atomically in the message's state file,
backs off exponentially with jitter, warns the sender once after `delay_warning`, and returns
the message (RFC 3464 DSN, queued like any other message) on a permanent failure or when
`queue_lifetime` has passed. A message leaves the queue only once every recipient is delivered
or reported. Delivery is at least once: a crash after the remote 250 and before the state is
written repeats that delivery, it never loses one.

Security: remote replies are untrusted; they are made one-line and bounded before they reach
the log, the state file or a DSN.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import re
import ssl
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from functools import partial
from typing import TypeVar

from sendgate.config import DeliveryConfig
from sendgate.delivery.bounce import RecipientNotice, build_dsn
from sendgate.delivery.client import deliver
from sendgate.delivery.connections import ConnectionCache
from sendgate.delivery.plan import Planner
from sendgate.delivery.route import RouteError
from sendgate.delivery.state import DELIVERED, FAILED, PENDING, DeliveryState, RecipientState
from sendgate.delivery.target import Outcome, RemoteReply, Target, Timeouts
from sendgate.dkim import DkimError, DkimSigner
from sendgate.errors import SpoolError, UnknownQueueIdError
from sendgate.log import EventLog
from sendgate.spool import Envelope, Spool
from sendgate.text import one_line

_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")
_T = TypeVar("_T")
BOUNCE_USER = "MAILER-DAEMON"
_LOAD_BATCH = 256
# Log words for recipient states: stable, scripts parse them.
_RESULT = {DELIVERED: "sent", PENDING: "deferred", FAILED: "bounced"}


@dataclass(slots=True)
class _Entry:
    envelope: Envelope
    state: DeliveryState
    running: bool = False


class Scheduler:
    """Delivers what is in the spool until `stop` is set."""

    def __init__(
        self,
        *,
        spool: Spool,
        planner: Planner,
        executor: Executor,
        log: EventLog,
        settings: DeliveryConfig,
        hostname: str,
        ssl_context: ssl.SSLContext,
        clock: Callable[[], float],
        rng: random.Random,
        signer: DkimSigner | None = None,
        timeouts: Timeouts | None = None,
    ) -> None:
        self._spool = spool
        self._planner = planner
        self._executor = executor
        self._log = log
        self._cfg = settings
        self._hostname = hostname
        self._ssl_context = ssl_context
        self._clock = clock
        self._rng = rng
        self._signer = signer
        self._timeouts = timeouts or Timeouts()
        # Idle sessions are kept a moment for the next message to the same host (like Postfix's
        # connection cache): connect + EHLO + STARTTLS cost more than a transaction.
        self._cache = ConnectionCache()
        self._entries: dict[str, _Entry] = {}
        self._due: list[tuple[float, str]] = []
        self._wake = asyncio.Event()
        self._connections = asyncio.Semaphore(settings.concurrency)
        self._domains: dict[str, asyncio.Semaphore] = {}
        # Tasks holding or waiting for each recipient domain, and messages set aside because
        # every domain they need is busy: one domain's backlog must not take every task slot
        # and starve the others (per-destination fairness, as Postfix's queue manager keeps).
        self._busy: dict[str, int] = {}
        self._parked: dict[str, deque[str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Bound the tasks in flight: each waits for connection slots, and a big queue must not
        # become thousands of waiting tasks.
        self._task_limit = settings.concurrency * 2
        self._announced: list[str] = []

    # --- the index -------------------------------------------------------------------------

    def announce(self, queue_id: str) -> None:
        """A worker queued `queue_id`: pick it up without waiting for the next scan."""
        self._announced.append(queue_id)
        self._wake.set()

    async def _io(self, func: Callable[..., _T], *args: object) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    async def scan(self) -> None:
        """Bring the index in line with the spool: new messages, removed ones, retry requests."""
        ids = await self._io(self._spool.ids)
        present = set(ids)
        for queue_id in [q for q, e in self._entries.items() if q not in present and not e.running]:
            del self._entries[queue_id]
        await self._load([queue_id for queue_id in ids if queue_id not in self._entries])
        now = self._clock()
        for queue_id in await self._io(self._spool.take_retry_requests):
            entry = self._entries.get(queue_id)
            if entry is not None and not entry.running:
                entry.state = replace(entry.state, next_attempt=now)
                heapq.heappush(self._due, (now, queue_id))

    async def _load(self, ids: list[str]) -> None:
        # Batches bound the work per thread handoff and let deliveries start during a big load.
        for start in range(0, len(ids), _LOAD_BATCH):
            batch = ids[start : start + _LOAD_BATCH]
            try:
                entries = await self._io(self._spool.index_entries, batch)
            except SpoolError:
                entries = [await self._load_one(queue_id) for queue_id in batch]
            for queue_id, envelope, raw in entries:
                if envelope is not None:
                    self._add(queue_id, envelope, raw)

    async def _load_one(self, queue_id: str) -> tuple[str, Envelope | None, bytes | None]:
        """Load one entry after its batch failed, so one bad file costs only itself."""
        try:
            [entry] = await self._io(self._spool.index_entries, [queue_id])
        except SpoolError as exc:
            self._log.event("queue_error", "error", queue_id=queue_id, error=str(exc))
            return queue_id, None, None
        return entry

    def _add(self, queue_id: str, envelope: Envelope, raw: bytes | None) -> None:
        if raw is None:
            state = DeliveryState.fresh(envelope.recipients)
        else:
            try:
                state = DeliveryState.from_json(raw, envelope.recipients)
            except SpoolError as exc:
                # An unreadable state must not lose the message: start it over (at least once).
                self._log.event("state_reset", "warning", queue_id=queue_id, error=str(exc))
                state = DeliveryState.fresh(envelope.recipients)
        self._entries[queue_id] = _Entry(envelope, state)
        heapq.heappush(self._due, (state.next_attempt, queue_id))

    # --- the main loop ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, *, grace: float = 30.0) -> None:
        """Deliver until `stop` is set, then give running attempts `grace` seconds to finish."""
        stopper = asyncio.ensure_future(stop.wait())
        next_scan = 0.0
        try:
            while not stop.is_set():
                now = self._clock()
                if self._announced:
                    announced, self._announced = self._announced, []
                    await self._load([q for q in announced if q not in self._entries])
                if now >= next_scan:
                    try:
                        await self.scan()
                    except SpoolError as exc:
                        self._log.event("queue_error", "error", error=str(exc))
                    next_scan = self._clock() + self._cfg.scan_interval
                self._dispatch(self._clock())
                timeout = next_scan - self._clock()
                if self._due and len(self._tasks) < self._task_limit:
                    # At the task limit a due message must wait for a finishing task (which
                    # sets _wake), not for its due time: that is already past.
                    timeout = min(timeout, self._due[0][0] - self._clock())
                self._wake.clear()
                waker = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait(
                    {stopper, waker}, timeout=max(timeout, 0.0), return_when="FIRST_COMPLETED"
                )
                waker.cancel()
        finally:
            stopper.cancel()
            if self._tasks:
                _, late = await asyncio.wait(self._tasks, timeout=grace)
                for task in late:
                    task.cancel()
                if late:
                    await asyncio.wait(late)
            await self._cache.close()

    async def drain(self) -> None:
        """Run until nothing is due now and nothing is running (for tests and the benchmark)."""
        await self.scan()
        try:
            while True:
                self._dispatch(self._clock())
                if not self._tasks:
                    return
                await asyncio.wait(self._tasks, return_when="FIRST_COMPLETED")
        finally:
            await self._cache.close()

    def _dispatch(self, now: float) -> None:
        # Up to one waiting task per sending one for a domain: the waiting one has its message
        # read and starts the moment a slot frees. More would only crowd out other domains.
        limit = self._cfg.domain_concurrency * 2
        while self._due and self._due[0][0] <= now and len(self._tasks) < self._task_limit:
            due, queue_id = heapq.heappop(self._due)
            entry = self._entries.get(queue_id)
            if entry is None or entry.running or entry.state.next_attempt != due:
                continue  # stale heap row: removed, already running, or rescheduled
            domains = _pending_domains(entry)
            if domains and all(self._busy.get(domain, 0) >= limit for domain in domains):
                self._parked.setdefault(domains[0], deque()).append(queue_id)
                continue
            for domain in domains:
                self._busy[domain] = self._busy.get(domain, 0) + 1
            entry.running = True
            task = asyncio.ensure_future(self._attempt(queue_id, entry, domains))
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
                entry = self._entries.get(queue_id)
                if entry is not None:
                    heapq.heappush(self._due, (entry.state.next_attempt, queue_id))

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            self._log.event("delivery_bug", "error", error=repr(task.exception()))

    # --- one attempt of one message --------------------------------------------------------

    async def _attempt(self, queue_id: str, entry: _Entry, domains: list[str]) -> None:
        try:
            await self._attempt_message(queue_id, entry)
        except Exception as exc:
            # An I/O error or a bug must not strand the message: log it and try again later.
            if isinstance(exc, SpoolError):
                self._log.event("queue_error", "error", queue_id=queue_id, error=str(exc))
            else:
                self._log.event("delivery_bug", "error", queue_id=queue_id, error=repr(exc))
            entry.state = replace(entry.state, next_attempt=self._clock() + self._cfg.retry_first)
            heapq.heappush(self._due, (entry.state.next_attempt, queue_id))
        finally:
            entry.running = False
            self._release(domains)

    async def _attempt_message(self, queue_id: str, entry: _Entry) -> None:
        try:
            message = await self._io(self._spool.message, queue_id)
        except UnknownQueueIdError:
            self._entries.pop(queue_id, None)  # removed by the operator meanwhile
            return
        envelope, state = entry.envelope, entry.state
        by_domain: dict[str, list[int]] = {}
        for index in state.pending():
            by_domain.setdefault(_domain_of(envelope.recipients[index]), []).append(index)
        results = await asyncio.gather(
            *(
                self._attempt_domain(envelope, message, domain, indexes, state)
                for domain, indexes in by_domain.items()
            )
        )
        updates: dict[int, RecipientState] = {}
        for result in results:
            updates.update(result)
        await self._conclude(queue_id, entry, state.with_results(updates), message)

    async def _attempt_domain(
        self,
        envelope: Envelope,
        message: bytes,
        domain: str,
        indexes: list[int],
        state: DeliveryState,
    ) -> dict[int, RecipientState]:
        semaphore = self._domains.setdefault(
            domain, asyncio.Semaphore(self._cfg.domain_concurrency)
        )
        now = self._clock()
        rows = {i: state.recipients[i] for i in indexes}

        def settle(index: int, status: str, host: str | None, reply: str, enhanced: str) -> None:
            row = rows[index]
            rows[index] = replace(
                row,
                status=status,
                attempts=row.attempts + 1,
                last_attempt=now,
                host=host,
                reply=one_line(reply),
                enhanced=enhanced,
            )

        async with semaphore:
            try:
                await self._try_targets(envelope, message, domain, indexes, settle)
            except Exception as exc:
                # A bug (or an error nobody foresaw) must still conclude the attempt, so that
                # the other domains' results are kept and expiry and bounces happen.
                self._log.event(
                    "delivery_bug", "error", queue_id=envelope.queue_id, error=repr(exc)
                )
                for index in indexes:
                    if rows[index] is state.recipients[index]:  # not settled yet
                        settle(index, PENDING, None, "local error; will retry", "4.3.0")
            return rows

    async def _try_targets(
        self,
        envelope: Envelope,
        message: bytes,
        domain: str,
        indexes: list[int],
        settle: Callable[[int, str, str | None, str, str], None],
    ) -> None:
        try:
            targets = await self._planner.targets(domain)
        except RouteError as exc:
            status = FAILED if exc.permanent else PENDING
            self._log_attempt(envelope, domain, None, None, status, str(exc))
            for index in indexes:
                settle(index, status, None, str(exc), exc.status)
            return
        open_ = list(indexes)
        for target in targets:
            async with self._connections:
                outcome = await deliver(
                    target,
                    helo=self._hostname,
                    sender=envelope.sender,
                    # An envelope may name a recipient twice: send it once.
                    recipients=list(dict.fromkeys(envelope.recipients[i] for i in open_)),
                    message=message,
                    smtputf8=envelope.smtputf8,
                    eight_bit=envelope.body == "8BITMIME",
                    ssl_context=self._ssl_context,
                    timeouts=self._timeouts,
                    cache=self._cache,
                )
            open_ = self._apply(envelope, domain, target, outcome, open_, settle)
            if not open_ or outcome.recipients or _is_permanent(outcome.failure_reply):
                return

    def _apply(
        self,
        envelope: Envelope,
        domain: str,
        target: Target,
        outcome: Outcome,
        open_: list[int],
        settle: Callable[[int, str, str | None, str, str], None],
    ) -> list[int]:
        """Record one transaction's outcome; return the recipients another host may still take."""
        if outcome.failure_reply is not None or outcome.failure is not None:
            reply = outcome.failure_reply
            text = str(reply) if reply is not None else f"{outcome.failure}"
            status = FAILED if _is_permanent(reply) else PENDING
            self._log_attempt(envelope, domain, target, outcome, status, text)
            remaining = []
            for index in open_:
                got = outcome.recipients.get(envelope.recipients[index])
                if got is not None and got.code >= 500:
                    # Refused at RCPT before the session failed: that answer is final.
                    settle(index, FAILED, target.host, str(got), _enhanced(got))
                    continue
                settle(index, status, target.host, text, _enhanced(reply))
                if status == PENDING:
                    remaining.append(index)
            return remaining
        summary: dict[str, int] = {}
        for index in open_:
            address = envelope.recipients[index]
            got = outcome.recipients.get(address)
            if got is None:  # the client answers every recipient when the session did not fail
                settle(index, PENDING, target.host, "no reply for this recipient", "4.4.2")
                continue
            status = DELIVERED if got.code < 300 else FAILED if got.code >= 500 else PENDING
            summary[status] = summary.get(status, 0) + 1
            settle(index, status, target.host, str(got), _enhanced(got))
        first = next(iter(outcome.recipients.values()), None)
        named = {_RESULT[status]: count for status, count in summary.items()}
        if len(named) == 1:
            result = next(iter(named))
        else:
            result = ",".join(f"{name}:{count}" for name, count in sorted(named.items()))
        self._log_attempt(envelope, domain, target, outcome, result, str(first or ""))
        return []  # the host answered each recipient; another host is not tried this time

    def _log_attempt(
        self,
        envelope: Envelope,
        domain: str,
        target: Target | None,
        outcome: Outcome | None,
        result: str,
        reply: str,
    ) -> None:
        self._log.event(
            "delivery",
            "info" if result == "sent" else "warning",
            queue_id=envelope.queue_id,
            domain=domain,
            host=target.host if target else None,
            address=target.address if target else None,
            tls=(outcome.tls_version if outcome else None) or "none",
            policy=target.tls.reason if target else None,
            result=_RESULT.get(result, result),
            reply=one_line(reply),
        )

    async def _conclude(
        self, queue_id: str, entry: _Entry, state: DeliveryState, message: bytes
    ) -> None:
        envelope = entry.envelope
        now = self._clock()
        before = {i for i, row in enumerate(entry.state.recipients) if row.status == FAILED}
        state = replace(state, attempts=state.attempts + 1)
        expires = envelope.received_at + self._cfg.queue_lifetime
        delayed: list[int] = []
        if state.pending() and now >= expires:
            state = state.with_results(
                {
                    i: replace(row, status=FAILED, enhanced="4.4.7")
                    for i, row in enumerate(state.recipients)
                    if row.status == PENDING
                }
            )
            self._log.event("expired", "warning", queue_id=queue_id)
        elif (
            state.pending()
            and self._cfg.delay_warning
            and not state.delay_notified
            and now >= envelope.received_at + self._cfg.delay_warning
        ):
            delayed = state.pending()
            state = replace(state, delay_notified=True)
        failed = [
            i for i, row in enumerate(state.recipients) if row.status == FAILED and i not in before
        ]
        if envelope.sender and (failed or delayed):
            try:
                await self._notify_sender(envelope, state, failed, delayed, message, now, expires)
            except SpoolError as exc:
                # The sender must still hear of it: those recipients are tried (and, failing
                # again, reported) at the next attempt.
                self._log.event("queue_error", "error", queue_id=queue_id, error=str(exc))
                state = state.with_results(
                    {i: replace(state.recipients[i], status=PENDING) for i in failed}
                )
                state = replace(state, delay_notified=state.delay_notified and not delayed)
        try:
            if state.finished():
                await self._io(partial(self._spool.remove, queue_id, durable=False))
                self._entries.pop(queue_id, None)
                return
            wait = self._backoff(state.attempts)
            state = replace(state, next_attempt=min(now + wait, max(expires, now)))
            await self._io(self._spool.write_state, queue_id, state.to_json())
        except UnknownQueueIdError:
            # `queue remove` during the attempt: the operator's word is final.
            self._log.event("removed_during_attempt", queue_id=queue_id)
            self._entries.pop(queue_id, None)
            return
        except SpoolError as exc:
            # Not on disk, but kept here: delivered recipients are not sent again unless the
            # runner restarts before a later write succeeds (at least once, never lost).
            self._log.event("queue_error", "error", queue_id=queue_id, error=str(exc))
            state = replace(state, next_attempt=now + self._cfg.retry_first)
        entry.state = state
        heapq.heappush(self._due, (state.next_attempt, queue_id))

    def _backoff(self, attempts: int) -> float:
        base = min(self._cfg.retry_first * 2.0 ** min(attempts - 1, 30), self._cfg.retry_max)
        return base * (0.9 + 0.2 * self._rng.random())

    async def _notify_sender(
        self,
        envelope: Envelope,
        state: DeliveryState,
        failed: list[int],
        delayed: list[int],
        message: bytes,
        now: float,
        expires: float,
    ) -> None:
        notices = [
            RecipientNotice(
                recipient=row.address,
                action="failed" if i in failed else "delayed",
                status=row.enhanced or ("5.0.0" if i in failed else "4.0.0"),
                remote_mta=row.host,
                diagnostic=row.reply,
                last_attempt=row.last_attempt,
            )
            for i, row in enumerate(state.recipients)
            if i in failed or i in delayed
        ]
        queue_id = self._spool.new_id()
        bounce = await self._io(
            partial(
                self._store_dsn,
                queue_id,
                envelope,
                notices,
                message,
                now,
                expires if delayed else None,
            )
        )
        self._log.event(
            "dsn",
            queue_id=envelope.queue_id,
            dsn_id=queue_id,
            action="failed" if failed else "delayed",
            recipients=len(notices),
        )
        self._entries[queue_id] = _Entry(bounce, DeliveryState.fresh(bounce.recipients, now))
        heapq.heappush(self._due, (now, queue_id))

    def _store_dsn(
        self,
        queue_id: str,
        envelope: Envelope,
        notices: list[RecipientNotice],
        message: bytes,
        now: float,
        retry_until: float | None,
    ) -> Envelope:
        """Build, sign and queue a DSN (in the I/O pool: signing and fsync are not loop work)."""
        dsn = build_dsn(
            reporting_host=self._hostname,
            queue_id=envelope.queue_id,
            original_sender=envelope.sender,
            received_at=envelope.received_at,
            notices=notices,
            original=message,
            now=now,
            message_id=f"{queue_id}@{self._hostname}",
            will_retry_until=retry_until,
        )
        data = dsn.message
        if self._signer is not None:
            try:
                data = self._signer.sign(data, self._hostname) + data
            except DkimError as exc:
                self._log.event("dkim_error", "error", queue_id=queue_id, error=str(exc))
        bounce = Envelope(
            queue_id=queue_id,
            sender="",
            recipients=(envelope.sender,),
            user=BOUNCE_USER,
            received_at=now,
            size=len(data),
            smtputf8=dsn.smtputf8,
            body="8BITMIME" if dsn.eight_bit else "7BIT",
        )
        self._spool.put(bounce, data)
        return bounce


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def _pending_domains(entry: _Entry) -> list[str]:
    """The recipient domains an attempt of `entry` needs, each once, in envelope order."""
    recipients = entry.envelope.recipients
    return list(dict.fromkeys(_domain_of(recipients[i]) for i in entry.state.pending()))


def _is_permanent(reply: RemoteReply | None) -> bool:
    return reply is not None and reply.code >= 500


def _enhanced(reply: RemoteReply | None) -> str:
    """The enhanced status code of a reply (RFC 3463), or one derived from its basic code."""
    if reply is None:
        return "4.4.1"  # no answer from the host
    found = _ENHANCED.match(reply.text)
    if found and found[1] == str(reply.code)[0]:
        return found.group(0)
    return f"{str(reply.code)[0]}.0.0"
