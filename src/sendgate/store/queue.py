"""The queue contract: accepted messages from the durable `put` before the 250 to delivery's end.

Every queue backend implements `QueueStore` (the local file spool today; a database later) and
passes the contract tests in tests/contracts/. Callers reach the queue only through it.

Delivery works on *claims*: `claim` hands out messages that are due, each under a lease with a
fencing token, so that several runners (or nodes) never work on one message at once, and one
that was paused past its lease cannot overwrite the result of the runner that took over: its
`update` or `complete` raises `LeaseLostError`. A lease ends with `update` (new delivery state,
due again at its next attempt), `complete` (the message leaves the queue) or `release` (given
back unchanged); a lease that simply runs out makes the message claimable again.

A message may be *held* (by the operator, or by the defences for a suspended account): it
stays queued but is never claimed until it is released with `unhold`, which makes it due at
once. Holds are durable like the messages themselves.

The methods block (disk, database): call them from a thread pool, never on an event loop,
except those a store's `quick_bookkeeping` vouches for. Implementations are safe to use from
several threads at once. Failures raise `SpoolError` (`SpoolFullError` when storage is full,
`UnknownQueueIdError` for an id that is not queued).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sendgate.store.delivery_state import DeliveryState
from sendgate.store.envelope import Envelope


@dataclass(frozen=True, slots=True)
class Claim:
    """One message leased to the caller: what an attempt needs (perhaps the message bytes too)."""

    envelope: Envelope
    state: DeliveryState
    """The stored state, or a fresh one (due now) when the message was never tried."""
    token: int
    """The fencing token: larger for every new lease of this message."""
    lease_until: float
    """When the lease runs out, on the store's clock."""
    state_problem: str | None = None
    """Why a stored state could not be read (the claim then carries a fresh one); for the log."""
    message: bytes | None = None
    """The message bytes when the backend read them with the claim (small messages, in the
    claim's one call instead of a call each); None: read them with `QueueStore.message`."""

    @property
    def queue_id(self) -> str:
        return self.envelope.queue_id


@dataclass(frozen=True, slots=True)
class Claimed:
    """The result of one `claim` call."""

    claims: tuple[Claim, ...]
    next_check: float
    """When to call `claim` again at the latest (store clock): the earliest due message left,
    or the backend's next look for mail it has not seen."""
    problems: tuple[str, ...] = ()
    """One-line reports of stored entries that could not be read (for the log)."""


@dataclass(frozen=True, slots=True)
class Recovery:
    """What `QueueStore.recover` cleaned up at start."""

    removed_partial: int
    """Unfinished writes removed (they were never acknowledged with a 250)."""
    corrupt: tuple[str, ...]
    """Queue ids whose stored envelope is unreadable; set aside, never deleted."""
    unknown_entries: int
    """Entries the store does not recognise; left in place."""
    restored: int = 0
    """Acknowledged messages whose entry a power cut had lost, put back in the queue."""


class BodyFile(Protocol):
    """A large message's body, written to the queue backend as it arrives (`new_body`).

    Written from one thread (the event loop: each write is brief), then given to
    `put_streamed` or discarded. Its methods raise SpoolError (SpoolFullError when storage is
    full); after a failed write the body is unusable: discard it.
    """

    @property
    def size(self) -> int:
        """Octets written so far."""
        ...

    def write(self, data: bytes) -> None:
        """Append `data`."""
        ...

    def discard(self) -> None:
        """Remove what was written; idempotent, never raises, a no-op once put."""
        ...


class QueueStore(Protocol):
    """Queued messages with their envelopes and delivery states (see the module docstring)."""

    @property
    def quick_bookkeeping(self) -> bool:
        """True when `complete`, `renew` and `release` only unlink a few local files and change
        memory (no sync, no network peer, bounded work), so that a delivery runner may call
        them on its event loop instead of handing each to a thread. They must not wait for a
        claim running in another thread to finish reading storage."""
        ...

    def new_id(self) -> str:
        """A new queue id: unique across processes and nodes, sortable by time."""
        ...

    def put(self, envelope: Envelope, message: bytes, *, hold: str | None = None) -> None:
        """Queue `message` under `envelope.queue_id`: it is durable when this returns.

        The promise behind every 250: once `put` returns, the message survives a crash or a
        power loss at any instant, and it is claimable (at once by runners sharing this handle's
        process tree, within the backend's scan interval by others). With `hold` (the reason)
        it is held instead, and no crash at any instant leaves it claimable. On any failure
        nothing of the message stays behind: SpoolFullError when storage is full, SpoolError
        otherwise (including an id already in use).
        """
        ...

    def put_many(self, items: Sequence[tuple[Envelope, bytes]]) -> None:
        """Queue several messages in one commit (a group commit): all are durable on return.

        The promise of `put` for each message, at the cost of one commit for all of them. On
        any failure none of them stays queued: SpoolFullError or SpoolError as for `put`.
        """
        ...

    def new_body(self) -> BodyFile:
        """Start a body to stream into the queue (for `put_streamed`); errors as for `put`."""
        ...

    def put_streamed(
        self, envelope: Envelope, head: bytes, body: BodyFile, *, hold: str | None = None
    ) -> None:
        """Queue the message `head` + the bytes written to `body`: `put`'s promise and errors.

        `head` is the message's header section (with the empty line that ends it); `body`
        came from this store's `new_body` and is used up either way (on failure, discarded).
        """
        ...

    def ids(self) -> list[str]:
        """The queued ids, oldest first."""
        ...

    def envelope(self, queue_id: str) -> Envelope:
        """The envelope of a queued message; UnknownQueueIdError if it is not queued."""
        ...

    def message(self, queue_id: str) -> bytes:
        """The message bytes exactly as stored by `put`."""
        ...

    def delivery_state(self, queue_id: str) -> DeliveryState | None:
        """The stored delivery state, or None before the first attempt that left work to do."""
        ...

    def remove(self, queue_id: str) -> None:
        """Take a message out of the queue for good (the operator's `queue remove`).

        Durable when it returns. A runner holding a lease on it gets UnknownQueueIdError from
        `update` or `complete`.
        """
        ...

    def request_retry(self, queue_id: str) -> None:
        """Make a queued message due now (the operator's `queue retry`), unless it is leased."""
        ...

    def hold(self, queue_id: str, reason: str) -> None:
        """Hold a queued message (durably) for `reason`, replacing an earlier reason.

        From the next `claim` on, in any process, it is not handed out; a message leased now is
        held after its current attempt (it is never claimed again). UnknownQueueIdError if it
        is not queued. The reason is kept as one printable line.
        """
        ...

    def unhold(self, queue_id: str) -> bool:
        """Release a held message (durably) and make it due now; False if it was not held.

        UnknownQueueIdError if it is not queued.
        """
        ...

    def hold_reason(self, queue_id: str) -> str | None:
        """Why a queued message is held, or None; UnknownQueueIdError if it is not queued."""
        ...

    def recover(self) -> Recovery:
        """Clean up after a crash; call once at start, before anything is put or claimed."""
        ...

    def claim(self, limit: int, lease: float) -> Claimed:
        """Lease up to `limit` messages that are due now, for `lease` seconds, oldest due first.

        A message is due when its state's `next_attempt` has come, nobody holds a live lease
        on it and it is not held. Each claim carries a new fencing token.
        """
        ...

    def renew(self, claims: Sequence[Claim], lease: float) -> list[Claim]:
        """Extend the leases still held to `lease` seconds from now; lost ones are left out."""
        ...

    def update(self, claim: Claim, state: DeliveryState) -> None:
        """Store `state` durably and end the lease; the message falls due at `state.next_attempt`.

        LeaseLostError if the lease was lost, UnknownQueueIdError if the message was removed
        meanwhile, SpoolError if the state could not be stored (the lease is then still held:
        end it with `release`).
        """
        ...

    def complete(self, claim: Claim) -> None:
        """The message is finished (every recipient delivered or reported): it leaves the queue.

        Not necessarily durable: after a crash the message may come back and be delivered
        again (delivery is at least once). Errors as for `update`.
        """
        ...

    def release(self, claim: Claim, due: float | None = None) -> None:
        """End the lease without a new state; the message falls due at `due` (or as before).

        A lost lease or a removed message is ignored: there is nothing left to give back.
        """
        ...

    def arrivals_fd(self) -> int | None:
        """A descriptor that turns readable when new messages may be claimable, or None.

        A runner may watch it with its event loop to claim new mail at once instead of at its
        next scan; `claim` consumes what made it readable. It never blocks.
        """
        ...

    def close(self) -> None:
        """Release the backend's resources; the store is unusable afterwards."""
        ...
