"""A worker's allowances: sending budget a busy account's messages spend from memory.

Taking every message from the shared limit store is one write transaction per message: about
50 us of CPU alone, twice that with the spool threads and the workers contending for the
file, and a fifth of the throughput of 100-message connections (bench/ab.py). An account far
from its limits does not need a transaction per message. When every budget of an account
still has at least `MIN_LEFT` units left after a take, the next take also charges a batch of
spare units (at most 1/`DIVISOR` of what is left, and `MAX_BATCH` messages); the worker keeps
them here and spends them on the account's next messages without a store write.

What stays exact: the store is always charged before a message is accepted, so no budget is
ever exceeded, whatever the workers do. What batching costs: while a worker holds spare units,
the other workers see them as spent (an account is refused early by at most 1/`DIVISOR` of its
remaining budget per worker), and units a worker never spends (it stopped, or the account fell
idle) come back only as the budget refills. An account near a limit, or on the default limits
(200 messages an hour), gets no batch: each of its messages goes to the store and reads its
flag.

Flags: a message spent from an allowance does not read the account's flag when the last read
(which found none) is under `FLAG_TTL` old, so an account flagged by another worker is held or
refused there at most `FLAG_TTL` later. A flag set by this worker drops the allowance at once.

Recipients an account's message went to are remembered with the store time they were recorded
(the store keeps them for the distinct-recipients window): a message to known recipients needs
nothing from the store, one to a new recipient always takes from it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

DIVISOR = 64
MIN_LEFT = 4 * DIVISOR  # below this in any budget, every message goes to the store
MAX_BATCH = 32
FLAG_TTL = 1.0
MAX_ACCOUNTS = 1024  # busy accounts remembered per worker; the oldest is forgotten first
MAX_KNOWN = 4096  # recipients remembered per account

L = TypeVar("L")  # the limits an allowance was taken under (compared for equality only)


@dataclass(frozen=True, slots=True)
class Budgets:
    """What one take left in the account's budgets (None: that budget is unlimited)."""

    messages: int | None
    """The fewest messages left in any message budget."""
    recipients: int | None
    """Recipients left in the recipients budget."""


@dataclass(slots=True)
class _Allowance(Generic[L]):
    limits: L
    messages: int | None  # spare messages held (None: no message budget is limited)
    recipients: int | None  # spare recipient units held (None: unlimited)
    batch_messages: int  # the spare units the next take asks for
    batch_recipients: int
    checked: float  # store time of the last flag read that found no flag
    known: dict[str, float] = field(default_factory=dict)  # recipient hash -> recorded at


def batch(left: int | None, most: int) -> int:
    """Spare units to take next from a budget with `left` units left (None: unlimited)."""
    if left is None:
        return 0
    return max(0, min(most, left // DIVISOR))


def batchable(left: Budgets) -> bool:
    """Whether an account with these budgets left may spend from an allowance."""
    return all(units is None or units >= MIN_LEFT for units in (left.messages, left.recipients))


class Allowances(Generic[L]):
    """The allowances of one worker, by account. Thread-safe; never blocks on a store."""

    def __init__(self, window: float) -> None:
        self._window = window  # how long the store remembers a recipient
        self._accounts: dict[str, _Allowance[L]] = {}
        self._lock = threading.Lock()

    def spend(
        self,
        username: str,
        limits: L,
        recipients: int,
        hashes: Sequence[str],
        now: float,
        *,
        flag_read: bool = False,
    ) -> bool:
        """Spend one message to `recipients` recipients (`hashes`, when counted) from memory.

        `flag_read`: the caller has just read the flag and found none. False when there is no
        allowance, it was taken under other limits, it does not cover the message, a
        recipient is new, or the flag needs reading.
        """
        with self._lock:
            held = self._accounts.get(username)
            if held is None or held.limits != limits:
                return False
            if flag_read:
                held.checked = now
            elif now - held.checked >= FLAG_TTL:
                return False
            if held.messages is not None and held.messages < 1:
                return False
            if held.recipients is not None and held.recipients < recipients:
                return False
            since = now - self._window
            if any(held.known.get(digest, since) <= since for digest in hashes):
                return False
            if held.messages is not None:
                held.messages -= 1
            if held.recipients is not None:
                held.recipients -= recipients
            return True

    def unknown(self, username: str, hashes: Sequence[str], now: float) -> list[str]:
        """Which of `hashes` the store must be asked about (all but those recorded recently)."""
        since = now - self._window
        with self._lock:
            held = self._accounts.get(username)
            known = {} if held is None else held.known
            return [digest for digest in hashes if known.get(digest, since) <= since]

    def batches(self, username: str, limits: L) -> tuple[int, int]:
        """The spare (messages, recipients) the account's next take should ask for."""
        with self._lock:
            held = self._accounts.get(username)
            if held is None or held.limits != limits:
                return 0, 0
            return held.batch_messages, held.batch_recipients

    def taken(
        self,
        username: str,
        limits: L,
        spare: tuple[int, int],
        left: Budgets,
        recorded: Sequence[str],
        now: float,
        recipients: int,
    ) -> None:
        """A take charged one message and `spare` units more; keep them if the account is busy.

        `left` is what the take left in the budgets, `recorded` the recipients it recorded,
        and `now` the time it read the flag.
        """
        busy = batchable(left)
        with self._lock:
            held = self._accounts.get(username)
            if held is not None and held.limits != limits:
                del self._accounts[username]
                held = None
            if held is None:
                if not busy and spare == (0, 0):
                    return  # the usual account: nothing to keep
                if len(self._accounts) >= MAX_ACCOUNTS:
                    del self._accounts[next(iter(self._accounts))]
                held = _Allowance(
                    limits,
                    None if left.messages is None else 0,
                    None if left.recipients is None else 0,
                    0,
                    0,
                    now,
                )
                self._accounts[username] = held
            spare_messages, spare_recipients = spare
            if held.messages is not None:
                held.messages += spare_messages
            if held.recipients is not None:
                held.recipients += spare_recipients
            if busy:
                held.batch_messages = batch(left.messages, MAX_BATCH)
                held.batch_recipients = batch(left.recipients, MAX_BATCH * max(recipients, 1))
                held.checked = now
            else:
                # Near a limit: the spare units already taken are spent, but no more are
                # asked for, and every message reads the flag again.
                held.batch_messages = held.batch_recipients = 0
                held.checked = float("-inf")
            if len(held.known) + len(recorded) > MAX_KNOWN:
                since = now - self._window
                held.known = {d: at for d, at in held.known.items() if at > since}
                if len(held.known) + len(recorded) > MAX_KNOWN:
                    held.known.clear()
            for digest in recorded:
                held.known[digest] = now

    def drop(self, username: str) -> None:
        """Forget the account's allowance (it was flagged): its next message reads the flag."""
        with self._lock:
            self._accounts.pop(username, None)
