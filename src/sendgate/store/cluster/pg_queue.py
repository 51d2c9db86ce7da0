"""`QueueStore` on PostgreSQL: one queue that every node puts into and every node's runner claims.

Durability: `put` and `put_many` return once their transaction has committed, and the 250 is
sent only after that. With PostgreSQL's default `synchronous_commit = on` a commit is flushed
to the primary's WAL on disk; with a synchronous standby (`synchronous_standby_names`) it is on
the standby too, so a failover to it loses nothing acknowledged. With an asynchronous replica, a
failover may lose the last commits: sendgate then may have said 250 for mail that is gone.

Claims: `claim` takes due rows with ``FOR UPDATE SKIP LOCKED`` (nodes claiming at once never
wait for each other or take the same row) and sets a lease, a new fencing token (the row's
token plus one) and the claiming node's name. `update`, `complete` and `release` change the
row only where the token is still the claim's: a node that was paused past its lease, whose
message another node then claimed, finds a larger token and gets `LeaseLostError`. A lease
that runs out makes the row claimable again by any node.

Time: leases and due times are on one clock for every node, PostgreSQL's: this handle reads
the server's time once a minute and adds the offset to its own clock (a test may inject a
clock instead).

New mail: a put also sends ``NOTIFY sendgate_queue`` (delivered at commit); a claiming handle
LISTENs on a connection of its own whose descriptor is `arrivals_fd`, so a runner claims mail
that any node accepted at once rather than at its next scan.

A large message's body is written to an unlinked temporary file as it arrives (the body of a
message never sits in a session's memory) and read into the row by `put_streamed`, in the
queueing thread.

Errors: PostgreSQL's failures are `SpoolError` (`SpoolFullError` when its disk is full),
naming the database without credentials.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors

from sendgate import __version__
from sendgate.errors import (
    LeaseLostError,
    SpoolError,
    SpoolFullError,
    StoreError,
    UnknownQueueIdError,
)
from sendgate.store.cluster.postgres import (
    CONNECT_TIMEOUT,
    Connection,
    Database,
    schema_version,
)
from sendgate.store.cluster.server_clock import ServerClock
from sendgate.store.delivery_state import DeliveryState
from sendgate.store.envelope import RANDOM_BYTES, UNIQUE, Envelope, new_queue_id
from sendgate.store.queue import BodyFile, Claim, Claimed, Recovery
from sendgate.text import one_line

CLAIM_READ_MAX = 64 * 1024  # messages up to this size come with their claim
SKEW_INTERVAL = 60.0  # seconds between readings of the server's clock
CHANNEL = "sendgate_queue"
_COLUMN_QUERIES = {
    "envelope": "SELECT envelope FROM queue WHERE queue_id = %s",
    "message": "SELECT message FROM queue WHERE queue_id = %s",
    "hold": "SELECT hold FROM queue WHERE queue_id = %s",
}


class PostgresQueueStore:
    """The shared `QueueStore` on PostgreSQL (see the module docstring); thread-safe."""

    quick_bookkeeping = False  # every call is a round trip to the database

    def __init__(
        self,
        url: str,
        *,
        node: str | None = None,
        clock: Callable[[], float] | None = None,
        scan_interval: float = 5.0,
        max_connections: int = 8,
        body_dir: str | None = None,
    ) -> None:
        """Connect and check the schema; StoreError if either fails.

        `node` names this node in the leases it takes (default: the host name); `clock`
        replaces the server's clock (tests); `scan_interval` bounds the wait between claims when
        no notification comes; `body_dir` is where streamed bodies wait (default: $TMPDIR).
        """
        self._db = Database(url, what="queue store", max_size=max_connections)
        self._url = url
        self.node = node or socket.gethostname()
        self._clock = clock
        self._server_clock = ServerClock(self._server_time, SKEW_INTERVAL)
        self._scan_interval = scan_interval
        self._body_dir = body_dir
        self._lock = threading.Lock()
        self._arrivals: _Arrivals | None = None
        if clock is None:
            self._server_clock.measure()

    # --- time ---------------------------------------------------------------------------------

    def now(self) -> float:
        """The store's time: the injected clock, or this host's clock set by the server's."""
        if self._clock is not None:
            return self._clock()
        try:
            return self._server_clock.now()
        except SpoolError:
            return self._server_clock.last()  # the last offset serves meanwhile

    def _server_time(self) -> float:
        row = self._one(
            lambda conn: conn.execute("SELECT extract(epoch from clock_timestamp())").fetchone()
        )
        assert row is not None
        return float(row[0])

    # --- submission and the operator ----------------------------------------------------------

    def new_id(self) -> str:
        return new_queue_id(self.now(), UNIQUE.randbytes(RANDOM_BYTES))

    def put(self, envelope: Envelope, message: bytes, *, hold: str | None = None) -> None:
        _check_size(envelope, len(message))
        reason = None if hold is None else one_line(hold)
        now = self.now()

        # One statement, one round trip: the row and its notification commit together.
        self._one(
            lambda conn: conn.execute(
                """WITH queued AS (
                    INSERT INTO queue (queue_id, envelope, message, size, due, hold)
                    VALUES (%s, %s, %s, %s, %s, %s) RETURNING 1
                ) SELECT pg_notify(%s, '') FROM queued""",
                (
                    envelope.queue_id,
                    envelope.to_json(),
                    message,
                    len(message),
                    now,
                    reason,
                    CHANNEL,
                ),
            )
        )

    def put_many(self, items: Sequence[tuple[Envelope, bytes]]) -> None:
        if not items:
            return
        for envelope, message in items:
            _check_size(envelope, len(message))
        now = self.now()

        # One statement, so all or none, and one round trip for the whole group commit.
        self._one(
            lambda conn: conn.execute(
                """WITH queued AS (
                    INSERT INTO queue (queue_id, envelope, message, size, due)
                    SELECT queue_id, envelope, message, size, %s
                    FROM unnest(%s::text[], %s::bytea[], %s::bytea[], %s::bigint[])
                        AS given (queue_id, envelope, message, size)
                    RETURNING 1
                ) SELECT pg_notify(%s, '') WHERE EXISTS (SELECT 1 FROM queued)""",
                (
                    now,
                    [envelope.queue_id for envelope, _ in items],
                    [envelope.to_json() for envelope, _ in items],
                    [message for _, message in items],
                    [len(message) for _, message in items],
                    CHANNEL,
                ),
            )
        )

    def new_body(self) -> BodyFile:
        return _TempBody(self._body_dir)

    def put_streamed(
        self, envelope: Envelope, head: bytes, body: BodyFile, *, hold: str | None = None
    ) -> None:
        if not isinstance(body, _TempBody):
            body.discard()
            raise SpoolError("a body from another queue store")
        try:
            _check_size(envelope, len(head) + body.size)
            message = head + body.read_all()
        finally:
            body.discard()
        self.put(envelope, message, hold=hold)

    def ids(self) -> list[str]:
        rows = self._one(
            lambda conn: conn.execute("SELECT queue_id FROM queue ORDER BY queue_id").fetchall()
        )
        return [row[0] for row in rows]

    def envelope(self, queue_id: str) -> Envelope:
        return Envelope.from_json(bytes(self._column(queue_id, "envelope")))

    def message(self, queue_id: str) -> bytes:
        return bytes(self._column(queue_id, "message"))

    def delivery_state(self, queue_id: str) -> DeliveryState | None:
        row = self._row(queue_id, "SELECT envelope, state FROM queue WHERE queue_id = %s")
        if row[1] is None:
            return None
        envelope = Envelope.from_json(bytes(row[0]))
        return DeliveryState.from_json(bytes(row[1]), envelope.recipients)

    def remove(self, queue_id: str) -> None:
        cursor = self._one(
            lambda conn: conn.execute("DELETE FROM queue WHERE queue_id = %s", (queue_id,))
        )
        if cursor.rowcount == 0:
            raise UnknownQueueIdError(f"unknown queue id {queue_id}")

    def request_retry(self, queue_id: str) -> None:
        now = self.now()

        def write(conn: Connection) -> None:
            row = conn.execute(
                "UPDATE queue SET due = LEAST(due, %s) WHERE queue_id = %s"
                " AND (lease_until IS NULL OR lease_until <= %s) RETURNING 1",
                (now, queue_id, now),
            ).fetchone()
            if row is None:
                _must_exist(conn, queue_id)
            else:
                conn.execute(f"NOTIFY {CHANNEL}")

        self._one(write)

    def hold(self, queue_id: str, reason: str) -> None:
        cursor = self._one(
            lambda conn: conn.execute(
                "UPDATE queue SET hold = %s WHERE queue_id = %s", (one_line(reason), queue_id)
            )
        )
        if cursor.rowcount == 0:
            raise UnknownQueueIdError(f"unknown queue id {queue_id}")

    def unhold(self, queue_id: str) -> bool:
        now = self.now()

        def write(conn: Connection) -> bool:
            row = conn.execute(
                "UPDATE queue SET hold = NULL, due = LEAST(due, %s)"
                " WHERE queue_id = %s AND hold IS NOT NULL RETURNING 1",
                (now, queue_id),
            ).fetchone()
            if row is None:
                _must_exist(conn, queue_id)
                return False
            conn.execute(f"NOTIFY {CHANNEL}")
            return True

        return bool(self._one(write))

    def hold_reason(self, queue_id: str) -> str | None:
        reason: str | None = self._column(queue_id, "hold")
        return reason

    def recover(self) -> Recovery:
        # Every put is one transaction: nothing half-written can be left behind.
        return Recovery(removed_partial=0, corrupt=(), unknown_entries=0)

    # --- delivery -----------------------------------------------------------------------------

    def claim(self, limit: int, lease: float) -> Claimed:
        arrivals = self._arrivals
        if arrivals is not None:
            arrivals.consume()  # before the claim: mail announced from now on wakes it again
        now = self.now()
        until = now + lease

        def write(conn: Connection) -> tuple[list[Any], Any]:
            rows = conn.execute(
                """WITH picked AS (
                    SELECT queue_id FROM queue
                    WHERE hold IS NULL AND due <= %(now)s
                        AND (lease_until IS NULL OR lease_until <= %(now)s)
                    ORDER BY due, queue_id LIMIT %(limit)s
                    FOR UPDATE SKIP LOCKED
                )
                UPDATE queue SET token = queue.token + 1, lease_until = %(until)s,
                    node = %(node)s
                FROM picked WHERE queue.queue_id = picked.queue_id
                RETURNING queue.queue_id, queue.envelope, queue.state, queue.token, queue.due,
                    CASE WHEN queue.size <= %(inline)s THEN queue.message END""",
                {
                    "now": now,
                    "limit": limit,
                    "until": until,
                    "node": self.node,
                    "inline": CLAIM_READ_MAX,
                },
            ).fetchall()
            # This node's note for `cluster status` rides along (a WITH that writes runs
            # whether or not the query reads it).
            upcoming = conn.execute(
                """WITH seen AS (
                    INSERT INTO nodes (name, seen, version) VALUES (%s, %s, %s)
                    ON CONFLICT (name) DO UPDATE
                        SET seen = excluded.seen, version = excluded.version
                )
                SELECT
                    (SELECT min(due) FROM queue WHERE hold IS NULL AND lease_until IS NULL),
                    (SELECT min(lease_until) FROM queue
                        WHERE hold IS NULL AND lease_until IS NOT NULL)""",
                (self.node, now, __version__),
            ).fetchone()
            return rows, upcoming

        rows, upcoming = self._one(write)
        claims: list[Claim] = []
        problems: list[str] = []
        for queue_id, raw_envelope, raw_state, token, _due, message in sorted(
            rows, key=lambda row: (row[4], row[0])
        ):
            try:
                envelope = Envelope.from_json(bytes(raw_envelope))
            except SpoolError as exc:
                problems.append(f"{queue_id}: {exc}")
                continue  # left leased: tried again when the lease runs out, never lost
            state, problem = _state(raw_state, envelope, now)
            claims.append(
                Claim(
                    envelope,
                    state,
                    int(token),
                    until,
                    problem,
                    None if message is None else bytes(message),
                )
            )
        next_check = now + self._scan_interval
        for candidate in upcoming or ():
            if candidate is not None:
                next_check = min(next_check, max(float(candidate), now))
        return Claimed(tuple(claims), next_check, tuple(problems))

    def renew(self, claims: Sequence[Claim], lease: float) -> list[Claim]:
        if not claims:
            return []
        until = self.now() + lease
        rows = self._one(
            lambda conn: conn.execute(
                """UPDATE queue SET lease_until = %s
                FROM unnest(%s::text[], %s::bigint[]) AS held (queue_id, token)
                WHERE queue.queue_id = held.queue_id AND queue.token = held.token
                    AND queue.lease_until IS NOT NULL
                RETURNING queue.queue_id""",
                (until, [claim.queue_id for claim in claims], [claim.token for claim in claims]),
            ).fetchall()
        )
        kept = {row[0] for row in rows}
        return [
            Claim(claim.envelope, claim.state, claim.token, until, claim.state_problem)
            for claim in claims
            if claim.queue_id in kept
        ]

    def update(self, claim: Claim, state: DeliveryState) -> None:
        def write(conn: Connection) -> None:
            row = conn.execute(
                "UPDATE queue SET state = %s, due = %s, lease_until = NULL, node = NULL"
                " WHERE queue_id = %s AND token = %s RETURNING 1",
                (state.to_json(), state.next_attempt, claim.queue_id, claim.token),
            ).fetchone()
            if row is None:
                _lost(conn, claim)

        self._one(write)

    def complete(self, claim: Claim) -> None:
        def write(conn: Connection) -> None:
            row = conn.execute(
                "DELETE FROM queue WHERE queue_id = %s AND token = %s RETURNING 1",
                (claim.queue_id, claim.token),
            ).fetchone()
            if row is None:
                _lost(conn, claim)

        self._one(write)

    def release(self, claim: Claim, due: float | None = None) -> None:
        self._one(
            lambda conn: conn.execute(
                "UPDATE queue SET lease_until = NULL, node = NULL, due = COALESCE(%s, due)"
                " WHERE queue_id = %s AND token = %s AND lease_until IS NOT NULL",
                (due, claim.queue_id, claim.token),
            )
        )

    def status(self) -> QueueStatus:
        """What `sendgate cluster status` shows of the queue and the nodes that claim from it."""
        now = self.now()

        def read(conn: Connection) -> QueueStatus:
            counts = conn.execute(
                """SELECT count(*), count(hold), count(lease_until),
                    count(*) FILTER (WHERE hold IS NULL AND lease_until IS NULL AND due > %s)
                FROM queue""",
                (now,),
            ).fetchone()
            assert counts is not None
            nodes = conn.execute(
                """SELECT nodes.name, nodes.seen, nodes.version,
                    (SELECT count(*) FROM queue
                        WHERE queue.node = nodes.name AND queue.lease_until > %s)
                FROM nodes ORDER BY nodes.name""",
                (now,),
            ).fetchall()
            server = conn.execute("SHOW server_version").fetchone()
            return QueueStatus(
                now=now,
                queued=int(counts[0]),
                held=int(counts[1]),
                leased=int(counts[2]),
                deferred=int(counts[3]),
                nodes=tuple(
                    NodeStatus(str(name), float(seen), str(version), int(leases))
                    for name, seen, version, leases in nodes
                ),
                schema_version=schema_version(conn),
                server_version=str(server[0]) if server else "?",
            )

        result: QueueStatus = self._one(read)
        return result

    def arrivals_fd(self) -> int | None:
        """A pipe that turns readable when a node queued mail (its listener made on first call)."""
        with self._lock:
            if self._arrivals is None:
                self._arrivals = _Arrivals(self._url)
            return self._arrivals.fd

    def close(self) -> None:
        with self._lock:
            arrivals, self._arrivals = self._arrivals, None
        if arrivals is not None:
            arrivals.close()
        self._db.close()

    # --- helpers ------------------------------------------------------------------------------

    def _run(self, work: Callable[[Connection], Any], *, atomic: bool = True) -> Any:
        try:
            return self._db.run(work, atomic=atomic)
        except StoreError as exc:
            raise _spool_error(exc) from exc.__cause__

    def _one(self, work: Callable[[Connection], Any]) -> Any:
        """One statement, or statements each complete on its own: no transaction around them."""
        return self._run(work, atomic=False)

    def _row(self, queue_id: str, query: str) -> Any:
        row = self._one(lambda conn: conn.execute(query.encode(), (queue_id,)).fetchone())
        if row is None:
            raise UnknownQueueIdError(f"unknown queue id {queue_id}")
        return row

    def _column(self, queue_id: str, column: str) -> Any:
        return self._row(queue_id, _COLUMN_QUERIES[column])[0]


def _check_size(envelope: Envelope, size: int) -> None:
    """A caller's bug, refused before anything is stored (as the local spool does)."""
    if envelope.size != size:
        raise ValueError(f"envelope size {envelope.size} != message size {size}")


def _state(raw: Any, envelope: Envelope, now: float) -> tuple[DeliveryState, str | None]:
    """The stored state, or a fresh one due now (and why) when there is none or it is bad."""
    if raw is None:
        return DeliveryState.fresh(envelope.recipients, now), None
    try:
        return DeliveryState.from_json(bytes(raw), envelope.recipients), None
    except SpoolError as exc:
        # An unreadable state must not lose the message: start it over (at least once).
        return DeliveryState.fresh(envelope.recipients, now), str(exc)


def _must_exist(conn: Connection, queue_id: str) -> None:
    row = conn.execute("SELECT 1 FROM queue WHERE queue_id = %s", (queue_id,)).fetchone()
    if row is None:
        raise UnknownQueueIdError(f"unknown queue id {queue_id}")


def _lost(conn: Connection, claim: Claim) -> None:
    """Why a write under `claim` changed nothing: the message is gone, or another lease won."""
    _must_exist(conn, claim.queue_id)
    raise LeaseLostError(f"lease on {claim.queue_id} was lost")


def _spool_error(exc: StoreError) -> SpoolError:
    cause = exc.__cause__
    if isinstance(cause, errors.UniqueViolation):
        return SpoolError(f"{exc}: queue id already in use")
    if isinstance(cause, errors.DiskFull | errors.OutOfMemory):
        return SpoolFullError(str(exc))
    return SpoolError(str(exc))


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """A node that claimed from the queue: when last, its version, the leases it holds now."""

    name: str
    seen: float
    version: str
    leases: int


@dataclass(frozen=True, slots=True)
class QueueStatus:
    now: float
    queued: int
    held: int
    leased: int
    deferred: int
    nodes: tuple[NodeStatus, ...]
    schema_version: int
    server_version: str


class _Arrivals:
    """LISTEN on a connection of its own, in a thread: each notification (and each reconnect,
    after which mail may have come unannounced) makes a pipe readable. The pipe's descriptor
    stays the same whatever happens to the connection, so a runner can watch it for good."""

    RETRY = 1.0  # seconds between connection attempts while PostgreSQL is away
    POLL = 1.0  # seconds between looks at `_closed` while waiting for notifications

    def __init__(self, url: str) -> None:
        self._url = url
        read, write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.fd, self._write = read, write
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="queue-listen", daemon=True)
        self._thread.start()

    def consume(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self.fd, 4096):
                pass

    def close(self) -> None:
        self._closed.set()
        self._thread.join(self.POLL + CONNECT_TIMEOUT + 1)
        for fd in (self.fd, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _signal(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._write, b"!")  # a full pipe already says it all

    def _listen(self) -> None:
        while not self._closed.is_set():
            try:
                with psycopg.connect(
                    self._url, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT)
                ) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._signal()
                    while not self._closed.is_set():
                        for _ in conn.notifies(timeout=self.POLL):
                            self._signal()
            except psycopg.Error:
                self._closed.wait(self.RETRY)


class _TempBody:
    """A streamed body in an unlinked temporary file, until `put_streamed` reads it."""

    def __init__(self, directory: str | None) -> None:
        try:
            # Owned until put_streamed or discard closes it: not a with-block's lifetime.
            self._file: Any = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115
        except OSError as exc:
            raise _body_error(exc) from exc
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes) -> None:
        if self._file is None:
            raise SpoolError("body written after it was used")
        try:
            self._file.write(data)
        except OSError as exc:
            raise _body_error(exc) from exc
        self._size += len(data)

    def read_all(self) -> bytes:
        if self._file is None:
            raise SpoolError("body read after it was used")
        try:
            self._file.seek(0)
            data: bytes = self._file.read()
        except OSError as exc:
            raise _body_error(exc) from exc
        return data

    def discard(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()


def _body_error(exc: OSError) -> SpoolError:
    message = f"cannot write a streamed body: {exc.strerror or exc}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return SpoolFullError(message)
    return SpoolError(message)
