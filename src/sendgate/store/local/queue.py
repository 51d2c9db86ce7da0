"""`QueueStore` on the spool directory: the local queue for one node and its one delivery runner.

The files (`store.local.spool`) are the only truth; what a claiming handle adds is an index in
memory: every queued message with its delivery state and due time, and the leases it handed
out. The index is built by scanning the spool (at the first claim, then every `scan_interval`
seconds, loading at most `LOAD_BATCH` new messages per claim so that a big backlog starts moving
at once), by the ids (and envelopes) the acceptors announce through the pipe, and by this
handle's own puts. A claim reads the bytes of messages up to `CLAIM_READ_MAX` itself.
Leases live in this memory too, so each message must have exactly one claiming process: with
several delivery runners, runner k of n claims only the ids in share k (`queue_id_share`), hears
only its own announce pipe, takes only its own retry flags, and makes the ids of its own DSNs in
its share. A lease that runs out makes the message claimable again with a larger token, and the
old holder's update is refused.

Held messages (``hold/`` in the spool) are never claimed. A claim that finds something due
lists the hold files once (one directory listing per claim call, none per message), so a hold
set by another process (the operator's command line) is obeyed at the next claim; a held row
is parked outside the due heap until a scan sees its hold gone, or `unhold` (whose retry flag
reaches another process's runner like `request_retry`'s) makes it due at once.

Security: ids read from the announce pipe and from directory listings are checked before use;
stored delivery states are parsed strictly, and an unreadable one is reported and replaced by a
fresh state (the message is tried again, never lost). This module does not log: problems go
back to the caller in `Claimed.problems` and `Claim.state_problem`.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path

from sendgate.errors import LeaseLostError, SpoolError, SpoolFullError, UnknownQueueIdError
from sendgate.fsutil import is_disk_full
from sendgate.store.delivery_state import DeliveryState
from sendgate.store.envelope import Envelope, queue_id_share
from sendgate.store.local.announce import AnnounceReader, AnnounceWriter
from sendgate.store.local.spool import Spool
from sendgate.store.local.streamfile import StreamedBody
from sendgate.store.queue import BodyFile, Claim, Claimed, Recovery
from sendgate.text import one_line

LOAD_BATCH = 1024  # new messages read from disk per claim: bounds the time one call takes
CLAIM_READ_MAX = 64 * 1024  # messages up to this size come with their claim


@dataclass(slots=True)
class _Row:
    envelope: Envelope
    state: DeliveryState
    due: float
    token: int = 0
    lease_until: float | None = None
    state_problem: str | None = None
    parked: bool = False  # held when last due: out of the due heap until released
    state_on_disk: bool = False  # a state file was found or (maybe) written for it


class LocalQueueStore:
    """The local `QueueStore` (see the module docstring); thread-safe."""

    # A completion is two to four unlinks without a sync; renew and release change memory.
    quick_bookkeeping = True

    def __init__(
        self,
        root: Path,
        *,
        clock: Callable[[], float] = time.time,
        scan_interval: float = 5.0,
        announce_to: AnnounceWriter | None = None,
        announced: AnnounceReader | None = None,
        share: tuple[int, int] = (0, 1),
    ) -> None:
        """`share`: (k, n) for runner k of n; a handle that never claims keeps (0, 1)."""
        self._spool = Spool(root, clock=clock)
        self._share, self._shares = share
        self._clock = clock
        self._scan_interval = scan_interval
        self._announce_to = announce_to
        self._announced = announced
        # `_lock` guards the index and is never held across a file read or a listing:
        # completions on the runner's loop take it while a claim reads in a pool thread.
        # `_claiming` lets one claim at a time refresh the index (its loads, its scan) and
        # guards what only a claim touches: `_to_load`, `_announced_envelopes`,
        # `_retry_wanted` and `_next_scan`.
        self._lock = threading.Lock()
        self._claiming = threading.Lock()
        self._indexing = False  # set by the first claim: only a runner keeps an index
        self._rows: dict[str, _Row] = {}
        self._due: list[tuple[float, str]] = []  # unleased rows; stale entries skipped on pop
        self._leases: list[tuple[float, str, int]] = []  # (until, id, token) of leased rows
        self._to_load: deque[str] = deque()
        self._announced_envelopes: dict[str, bytes] = {}  # envelope lines of ids to load
        self._retry_wanted: set[str] = set()  # retry requests for ids not loaded yet
        self._next_scan = 0.0

    # --- submission and the operator --------------------------------------------------------

    def new_id(self) -> str:
        queue_id = self._spool.new_id()
        while not self._owns(queue_id):  # a runner's DSN: its own to deliver (2 tries on average)
            queue_id = self._spool.new_id()
        return queue_id

    def _owns(self, queue_id: str) -> bool:
        return self._shares == 1 or queue_id_share(queue_id, self._shares) == self._share

    def put(self, envelope: Envelope, message: bytes, *, hold: str | None = None) -> None:
        self._spool.put(envelope, message, hold=None if hold is None else one_line(hold))
        if self._announce_to is not None:
            self._announce_to.announce(envelope.queue_id, envelope.to_json())
        if self._indexing and self._owns(envelope.queue_id):
            self._index_puts([envelope], parked=hold is not None)

    def put_many(self, items: Sequence[tuple[Envelope, bytes]]) -> None:
        self._spool.put_many(items)
        if self._announce_to is not None:
            self._announce_to.announce_many(
                [(envelope.queue_id, envelope.to_json()) for envelope, _ in items]
            )
        if self._indexing:
            mine = [envelope for envelope, _ in items if self._owns(envelope.queue_id)]
            self._index_puts(mine, parked=False)

    def new_body(self) -> BodyFile:
        return _SpoolBody(self._spool.new_body())

    def put_streamed(
        self, envelope: Envelope, head: bytes, body: BodyFile, *, hold: str | None = None
    ) -> None:
        if not isinstance(body, _SpoolBody):
            body.discard()
            raise SpoolError("a body from another queue store")
        self._spool.put_streamed(
            envelope, head, body.file, hold=None if hold is None else one_line(hold)
        )
        if self._announce_to is not None:
            self._announce_to.announce(envelope.queue_id, envelope.to_json())
        if self._indexing and self._owns(envelope.queue_id):
            self._index_puts([envelope], parked=hold is not None)

    def ids(self) -> list[str]:
        return self._spool.ids()

    def envelope(self, queue_id: str) -> Envelope:
        return self._spool.envelope(queue_id)

    def message(self, queue_id: str) -> bytes:
        return self._spool.message(queue_id)

    def delivery_state(self, queue_id: str) -> DeliveryState | None:
        envelope = self._spool.envelope(queue_id)
        raw = self._spool.read_state(queue_id)
        return None if raw is None else DeliveryState.from_json(raw, envelope.recipients)

    def remove(self, queue_id: str) -> None:
        self._spool.remove(queue_id)
        with self._lock:
            row = self._rows.get(queue_id)
            if row is not None and row.lease_until is None:
                del self._rows[queue_id]

    def request_retry(self, queue_id: str) -> None:
        self._spool.request_retry(queue_id)
        with self._lock:
            row = self._rows.get(queue_id)
            if row is not None and row.lease_until is None:
                self._reschedule(queue_id, row, self._clock())

    def hold(self, queue_id: str, reason: str) -> None:
        # A leased row is checked again when it is next due: held after its attempt.
        self._spool.holds.hold(queue_id, one_line(reason))

    def unhold(self, queue_id: str) -> bool:
        if not self._spool.holds.unhold(queue_id):
            return False
        # Due now, here and in another process's runner; a message finished meanwhile was
        # released all the same.
        with suppress(UnknownQueueIdError):
            self.request_retry(queue_id)
        return True

    def hold_reason(self, queue_id: str) -> str | None:
        return self._spool.holds.reason(queue_id)

    def recover(self) -> Recovery:
        return self._spool.sweep()

    # --- delivery ---------------------------------------------------------------------------

    def claim(self, limit: int, lease: float) -> Claimed:
        problems: list[str] = []
        with self._claiming:
            self._indexing = True
            now = self._clock()
            self._refresh(now, problems)
            held: set[str] = set()
            listed = False
            while True:  # twice at most: the hold files are listed between two holds of the lock
                with self._lock:
                    self._expire(now)
                    first = self._first_due()
                    if listed or first is None or first > now:
                        claims = self._hand_out(limit, lease, now, held)
                        next_check = self._next_check(now)
                        break
                listed = True
                try:
                    held = self._spool.holds.ids()
                except SpoolError as exc:
                    problems.append(str(exc))
                    limit = 0  # unsure what is held: hand out nothing rather than deliver it
        return Claimed(tuple(self._with_messages(claims)), next_check, tuple(problems))

    def _hand_out(self, limit: int, lease: float, now: float, held: set[str]) -> list[Claim]:
        """Lease up to `limit` due rows (under `_lock`); held ones are parked instead."""
        claims: list[Claim] = []
        while self._due and self._due[0][0] <= now and len(claims) < limit:
            due, queue_id = heapq.heappop(self._due)
            row = self._rows.get(queue_id)
            if row is None or row.lease_until is not None or row.due != due:
                continue  # a stale heap entry: removed, leased, or rescheduled
            if queue_id in held:
                row.parked = True
                continue
            row.token += 1
            row.lease_until = until = now + lease
            heapq.heappush(self._leases, (until, queue_id, row.token))
            claims.append(Claim(row.envelope, row.state, row.token, until, row.state_problem))
            row.state_problem = None  # reported once
        return claims

    def _with_messages(self, claims: list[Claim]) -> list[Claim]:
        """Small messages' bytes read in this call (one thread handoff for the whole claim)."""
        read: list[Claim] = []
        for claim in claims:
            if claim.envelope.size <= CLAIM_READ_MAX:
                # Not here: the attempt reads it (and reports what went wrong) as for big ones.
                with suppress(SpoolError):
                    claim = replace(claim, message=self._spool.message(claim.queue_id))
            read.append(claim)
        return read

    def renew(self, claims: Sequence[Claim], lease: float) -> list[Claim]:
        kept = []
        with self._lock:
            until = self._clock() + lease
            for claim in claims:
                row = self._rows.get(claim.queue_id)
                if row is None or row.token != claim.token or row.lease_until is None:
                    continue
                row.lease_until = until
                heapq.heappush(self._leases, (until, claim.queue_id, row.token))
                kept.append(
                    Claim(claim.envelope, claim.state, claim.token, until, claim.state_problem)
                )
        return kept

    def update(self, claim: Claim, state: DeliveryState) -> None:
        queue_id = claim.queue_id
        row = self._held(claim)
        if row is not None:
            row.state_on_disk = True  # before the write: a failed one may leave it too
        try:
            self._spool.write_state(queue_id, state.to_json())
        except UnknownQueueIdError:
            self._drop(claim)
            raise
        except SpoolError:
            with self._lock:
                row = self._rows.get(queue_id)
                if row is not None and row.token == claim.token:
                    # Not on disk, but this runner will not resend what it delivered (unless it
                    # restarts first: at least once, never lost).
                    row.state = state
            raise
        with self._lock:
            row = self._rows.get(queue_id)
            if row is not None and row.token == claim.token:
                row.state = state
                row.lease_until = None
                self._reschedule(queue_id, row, state.next_attempt)

    def complete(self, claim: Claim) -> None:
        row = self._held(claim)
        state = row is None or row.state_on_disk
        try:
            self._spool.remove(claim.queue_id, durable=False, state=state)
        except UnknownQueueIdError:
            self._drop(claim)
            raise
        # Any other failure keeps the row (and its lease): the caller releases it for a retry.
        self._drop(claim)

    def release(self, claim: Claim, due: float | None = None) -> None:
        with self._lock:
            row = self._rows.get(claim.queue_id)
            if row is None or row.token != claim.token or row.lease_until is None:
                return
            row.lease_until = None
            self._reschedule(claim.queue_id, row, row.due if due is None else due)

    def arrivals_fd(self) -> int | None:
        return None if self._announced is None else self._announced.fd

    def close(self) -> None:
        self._spool.close()
        for end in (self._announce_to, self._announced):
            if end is not None:
                end.close()

    # --- the index --------------------------------------------------------------------------

    def _held(self, claim: Claim) -> _Row | None:
        """LeaseLostError unless `claim` is the latest lease of its message; its row, if any."""
        with self._lock:
            row = self._rows.get(claim.queue_id)
            if row is not None and row.token != claim.token:
                raise LeaseLostError(f"lease on {claim.queue_id} was lost")
        return row

    def _drop(self, claim: Claim) -> None:
        with self._lock:
            row = self._rows.get(claim.queue_id)
            if row is not None and row.token == claim.token:
                del self._rows[claim.queue_id]

    def _index_puts(self, envelopes: Sequence[Envelope], *, parked: bool) -> None:
        """Index messages this handle put, except those a claim has loaded already."""
        with self._lock:
            now = self._clock()
            for envelope in envelopes:
                if envelope.queue_id not in self._rows:
                    self._add(envelope, None, now, parked=parked)

    def _add(
        self, envelope: Envelope, raw_state: bytes | None, now: float, *, parked: bool = False
    ) -> _Row:
        problem = None
        if raw_state is None:
            state = DeliveryState.fresh(envelope.recipients, now)
        else:
            try:
                state = DeliveryState.from_json(raw_state, envelope.recipients)
            except SpoolError as exc:
                # An unreadable state must not lose the message: start it over (at least once).
                problem = str(exc)
                state = DeliveryState.fresh(envelope.recipients, now)
        row = _Row(
            envelope,
            state,
            state.next_attempt,
            state_problem=problem,
            state_on_disk=raw_state is not None,
        )
        self._rows[envelope.queue_id] = row
        if parked:
            row.parked = True  # held from the start: out of the due heap until released
        else:
            heapq.heappush(self._due, (row.due, envelope.queue_id))
        return row

    def _reschedule(self, queue_id: str, row: _Row, due: float) -> None:
        row.due = due
        row.parked = False
        heapq.heappush(self._due, (due, queue_id))

    def _refresh(self, now: float, problems: list[str]) -> None:
        """Bring the index in line with the spool: a scan when one is due, arrivals, loads.

        Called by one claim at a time (`_claiming`); the spool is read without `_lock`.
        """
        if now >= self._next_scan:
            try:
                self._scan(now)
            except SpoolError as exc:
                problems.append(str(exc))
            self._next_scan = now + self._scan_interval
        if self._announced is not None:
            for queue_id, line in self._announced.take():
                if self._owns(queue_id):
                    self._to_load.append(queue_id)
                    if line is not None and len(self._announced_envelopes) < LOAD_BATCH * 4:
                        self._announced_envelopes[queue_id] = line
        batch = [self._to_load.popleft() for _ in range(min(LOAD_BATCH, len(self._to_load)))]
        lines = {q: self._announced_envelopes.pop(q, None) for q in dict.fromkeys(batch)}
        with self._lock:
            wanted = [(q, line) for q, line in lines.items() if q not in self._rows]
        loaded: list[tuple[Envelope, bytes | None]] = []
        for queue_id, line in wanted:
            try:
                # An announced envelope spares reading the queue file. The state is read all
                # the same: a restarted runner may read announcements its predecessor handled.
                envelope = self._announced_envelope(queue_id, line)
                if envelope is None:
                    envelope = self._spool.envelope(queue_id)
                elif not self._spool.queued(queue_id):
                    continue  # delivered or removed since it was announced
                loaded.append((envelope, self._spool.read_state(queue_id)))
            except UnknownQueueIdError:
                continue  # delivered or removed since it was listed
            except SpoolError as exc:
                problems.append(str(exc))
        with self._lock:
            for envelope, raw_state in loaded:
                queue_id = envelope.queue_id
                if queue_id in self._rows:
                    continue  # put by this handle meanwhile
                row = self._add(envelope, raw_state, now)
                if queue_id in self._retry_wanted:
                    self._retry_wanted.discard(queue_id)
                    self._reschedule(queue_id, row, now)

    @staticmethod
    def _announced_envelope(queue_id: str, line: bytes | None) -> Envelope | None:
        """The envelope an acceptor announced with `queue_id`, if it reads as a stored one."""
        try:
            envelope = None if line is None else Envelope.from_json(line)
        except SpoolError:
            return None  # read it from the spool instead
        return envelope if envelope is not None and envelope.queue_id == queue_id else None

    def _scan(self, now: float) -> None:
        # The index is copied under the lock and compared outside it; only the rows to change
        # are looked at again under the lock. A row put after the copy is kept, not dropped as
        # missing from the listing.
        with self._lock:
            indexed = list(self._rows.items())
        queued = [q for q in self._spool.ids() if self._owns(q)]
        present = set(queued)
        known = {q for q, _ in indexed}
        gone = known - present
        known.update(self._to_load)
        self._to_load.extend(q for q in queued if q not in known)
        self._retry_wanted &= present  # a message gone before it was loaded wants nothing
        with self._lock:
            for queue_id in gone:
                row = self._rows.get(queue_id)
                if row is not None and row.lease_until is None:
                    del self._rows[queue_id]  # removed by the operator or another handle
        parked = [q for q, row in indexed if row.parked and q in present]
        if parked:
            held = self._spool.holds.ids()
            with self._lock:
                for queue_id in parked:
                    row = self._rows.get(queue_id)
                    if row is not None and row.parked and queue_id not in held:
                        self._reschedule(queue_id, row, now)  # released by other means than unhold
        # Last: unreadable retry flags must not keep the listing from being used.
        retries = self._spool.take_retry_requests(self._owns)
        with self._lock:
            for queue_id in retries:
                row = self._rows.get(queue_id)
                if row is None:
                    if queue_id in present:
                        self._retry_wanted.add(queue_id)
                elif row.lease_until is None:
                    self._reschedule(queue_id, row, now)

    def _expire(self, now: float) -> None:
        """Leases that ran out make their messages due again (with their last due time)."""
        while self._leases and self._leases[0][0] <= now:
            until, queue_id, token = heapq.heappop(self._leases)
            row = self._rows.get(queue_id)
            if row is None or row.token != token or row.lease_until != until:
                continue  # renewed, ended or reclaimed since
            row.lease_until = None
            self._reschedule(queue_id, row, min(row.due, now))

    def _first_due(self) -> float | None:
        """The due time at the top of the heap, stale entries dropped on the way (under `_lock`)."""
        while self._due:
            due, queue_id = self._due[0]
            row = self._rows.get(queue_id)
            if row is not None and row.lease_until is None and row.due == due:
                return due
            heapq.heappop(self._due)
        return None

    def _next_check(self, now: float) -> float:
        """When `claim` should run again at the latest: next due, lease expiry or scan."""
        candidates = [self._next_scan]
        first = self._first_due()
        if first is not None:
            candidates.append(first)
        if self._leases:
            candidates.append(self._leases[0][0])
        if self._to_load:
            candidates.append(now)
        return min(candidates)


class _SpoolBody:
    """`BodyFile` over the spool's streamed file: OSError reported as SpoolError."""

    __slots__ = ("file",)

    def __init__(self, file: StreamedBody) -> None:
        self.file = file

    @property
    def size(self) -> int:
        return self.file.size

    def write(self, data: bytes) -> None:
        try:
            self.file.write(data)
        except OSError as exc:
            error = SpoolFullError if is_disk_full(exc) else SpoolError
            raise error(f"cannot write spool file {self.file.path}: {exc.strerror}") from exc

    def discard(self) -> None:
        self.file.discard()
