"""A worker's allowances: sending budget a busy account's messages spend from memory.

Taking every message from the shared limit store is one write transaction per message: about
50 us of CPU alone, twice that with the spool threads and the workers contending for the
file, and a fifth of the throughput of 100-message connections (bench/ab.py). An account far
from its limits does not need a transaction per message. When every budget of an account
still has at least `MIN_LEFT` units left after a take, its next take also charges a batch of
spare units (at most 1/`DIVISOR` of what is left, and `MAX_BATCH` messages); the worker keeps
them here and spends them on the account's next messages without a store write. One thread
per account fetches a batch at a time.

Spare units last `SPARE_TTL`: the store counts them as sent when they were taken, so they are
spent within a second of that or not at all. GCRA's promise (at most the budget at once, then
one unit per interval) holds exactly for an account whose budget refills more slowly than 33
units a second (under 118800 messages an hour): its bucket stays non-empty for longer than a
spare lives. A faster account can send up to one batch more than GCRA allows in some interval,
which is less than a second of its rate. Spare units are always charged before they are spent,
so workers never share out more than the store gave. What batching costs: while a worker holds
spare units, the other workers see them as spent (an account is refused early by at most
1/`DIVISOR` of its remaining budget per worker); unspent ones come back as the budget refills.
An account near a limit, or on the default limits (200 messages an hour), gets no batch: each
of its messages goes to the store and reads its flag.

Flags: a message spent from an allowance does not read the account's flag when the last read
(which found none) is under `FLAG_TTL` old, so an account flagged by another worker is held or
refused there at most `FLAG_TTL` later. A flag set by this worker drops the allowance, and a
take that was under way meanwhile keeps nothing.

Recipients: every take sends all the message's recipients to the store, which counts the new
ones and refreshes the known ones. A recipient refreshed by a take under `SPARE_TTL` ago needs
nothing from the store; any other recipient makes the message a take.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

DIVISOR = 64
MIN_LEFT = 4 * DIVISOR  # below this in any budget, every message goes to the store
MAX_BATCH = 32
FLAG_TTL = 1.0
SPARE_TTL = 1.0  # spare units, and recipients refreshed in the store, are good this long
MAX_ACCOUNTS = 1024  # busy accounts per worker; the least recently used is forgotten first
MAX_KNOWN = 1024  # recipients remembered per account (only those refreshed within SPARE_TTL)
NEVER = float("-inf")

L = TypeVar("L")  # the limits an allowance was taken under (compared for equality only)


@dataclass(frozen=True, slots=True)
class Budgets:
    """What one take left in the account's budgets (None: that budget is unlimited)."""

    messages: int | None
    """The fewest messages left in any message budget."""
    recipients: int | None
    """Recipients left in the recipients budget."""


@dataclass(frozen=True, slots=True)
class Batch:
    """The spare units a take should ask for, and the drop count it was asked under."""

    messages: int = 0
    recipients: int = 0
    drops: int = 0


@dataclass(slots=True)
class _Allowance(Generic[L]):
    limits: L
    messages: int | None  # spare messages held (None: no message budget is limited)
    recipients: int | None  # spare recipient units held (None: unlimited)
    batch_messages: int = 0  # the spare units the next take asks for
    batch_recipients: int = 0
    taken: float = NEVER  # when the spare units were charged
    checked: float = NEVER  # the last flag read that found no flag
    fetching: float = NEVER  # when a thread last asked for a batch (until its take is done)
    known: dict[str, float] = field(default_factory=dict)  # recipient hash -> refreshed at


def batch(left: int | None, most: int) -> int:
    """Spare units to take next from a budget with `left` units left (None: unlimited)."""
    if left is None:
        return 0
    return max(0, min(most, left // DIVISOR))


def batchable(left: Budgets) -> bool:
    """Whether an account with these budgets left may spend from an allowance."""
    return all(units is None or units >= MIN_LEFT for units in (left.messages, left.recipients))


def _fresh(since: float, now: float, ttl: float) -> bool:
    """`since` is under `ttl` old (a clock that stepped back makes nothing fresh)."""
    return since <= now < since + ttl


class Allowances(Generic[L]):
    """The allowances of one worker, by account. Thread-safe; never blocks on a store."""

    def __init__(self) -> None:
        self._accounts: OrderedDict[str, _Allowance[L]] = OrderedDict()
        self._drops = 0  # allowances dropped so far: a take that saw fewer keeps nothing
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
        allowance, it was taken under other limits, it does not cover the message, its spare
        units are too old, a recipient was not refreshed lately, or the flag needs reading.
        """
        with self._lock:
            held = self._accounts.get(username)
            if held is None or held.limits != limits:
                return False
            if flag_read:
                held.checked = now
            elif not _fresh(held.checked, now, FLAG_TTL):
                return False
            if not _fresh(held.taken, now, SPARE_TTL):
                return False
            if held.messages is not None and held.messages < 1:
                return False
            if held.recipients is not None and held.recipients < recipients:
                return False
            known = held.known
            if not all(_fresh(known.get(digest, NEVER), now, SPARE_TTL) for digest in hashes):
                return False
            if held.messages is not None:
                held.messages -= 1
            if held.recipients is not None:
                held.recipients -= recipients
            self._accounts.move_to_end(username)
            return True

    def batch(self, username: str, limits: L, now: float) -> Batch:
        """The spare units the account's next take should ask for (none while another asks)."""
        with self._lock:
            held = self._accounts.get(username)
            if held is None or held.limits != limits or _fresh(held.fetching, now, SPARE_TTL):
                return Batch(drops=self._drops)
            if held.batch_messages == held.batch_recipients == 0:
                return Batch(drops=self._drops)
            held.fetching = now
            return Batch(held.batch_messages, held.batch_recipients, self._drops)

    def taken(
        self,
        username: str,
        limits: L,
        spare: Batch,
        left: Budgets,
        refreshed: Sequence[str],
        now: float,
        recipients: int,
    ) -> None:
        """A take at `now` charged one message and `spare` units more, and refreshed recipients.

        `left` is what the take left in the budgets; `now` is also when it read the flag.
        """
        busy = batchable(left)
        with self._lock:
            if spare.drops != self._drops:
                return  # an account was flagged meanwhile, maybe this one: keep nothing
            held = self._accounts.get(username)
            if held is not None and held.limits != limits:
                del self._accounts[username]
                held = None
            if held is None:
                if not busy and (spare.messages, spare.recipients) == (0, 0):
                    return  # the usual account: nothing to keep
                if len(self._accounts) >= MAX_ACCOUNTS:
                    self._accounts.popitem(last=False)
                held = _Allowance(
                    limits,
                    None if left.messages is None else 0,
                    None if left.recipients is None else 0,
                )
                self._accounts[username] = held
            self._accounts.move_to_end(username)
            if not _fresh(held.taken, now, SPARE_TTL):
                # Older spare units are given up: spent now, they could go past GCRA's bound.
                held.messages = None if held.messages is None else 0
                held.recipients = None if held.recipients is None else 0
            if not held.messages and not held.recipients:
                held.taken = now  # (spare units still held keep their own, earlier, time)
            held.fetching = NEVER
            if held.messages is not None:
                held.messages += spare.messages
            if held.recipients is not None:
                held.recipients += spare.recipients
            if busy:
                held.batch_messages = batch(left.messages, MAX_BATCH)
                # Whole messages' worth, so that messages like this one leave no odd units.
                per = max(recipients, 1)
                held.batch_recipients = batch(left.recipients, MAX_BATCH * per) // per * per
                held.checked = now
            else:
                # Near a limit: the spare units already taken are spent, but no more are
                # asked for, and every message reads the flag again.
                held.batch_messages = held.batch_recipients = 0
                held.checked = NEVER
            known = held.known
            if len(known) + len(refreshed) > MAX_KNOWN:
                held.known = known = {
                    d: at for d, at in known.items() if _fresh(at, now, SPARE_TTL)
                }
                if len(known) + len(refreshed) > MAX_KNOWN:
                    known.clear()
            for digest in refreshed[:MAX_KNOWN]:
                known[digest] = now

    def drop(self, username: str) -> None:
        """Forget the account's allowance (it was flagged): its next message reads the flag."""
        with self._lock:
            self._drops += 1
            self._accounts.pop(username, None)
