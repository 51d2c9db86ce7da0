"""The limits contract: counters, rates and bans that every worker process (and node) shares.

The defences (failed-login limits, bans, sending quotas) keep all their
state behind `LimitStore`, so that every acceptor process, a restart, and later every node
of a cluster see the same numbers. The local backend keeps them in SQLite; a Redis backend can
replace it without touching the callers, which is why each operation is one atomic step on the
store's own clock (`now`) instead of a read-modify-write by the caller.

Keys are opaque strings chosen by the policy (made in `sendgate.policy.keys`, for instance
``net:192.0.2.0/24``); a key is always used with the same window. Members are short strings
(a network, a password fingerprint, a recipient hash), never secrets in clear.

The methods block: call them from a thread pool, never on an event loop. Implementations are
safe to use from several threads at once. Failures raise `StoreError`.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class RateVerdict:
    """The answer of `LimitStore.take`."""

    allowed: bool
    retry_after: float
    """Seconds until the request would be allowed (0 when it was)."""
    remaining: int
    """Units that could still be taken at once after this request."""


@dataclass(frozen=True, slots=True)
class RateRequest:
    """One GCRA budget of `LimitStore.take_all`: `cost` units of `limit` per `period` s."""

    key: str
    limit: int
    period: float
    cost: int = 1


@dataclass(frozen=True, slots=True)
class DistinctRequest:
    """One distinct-members budget of `LimitStore.take_all`.

    At most `limit` distinct members may be noted under `key` within `window` seconds; the
    request notes `members` (a member already noted in the window does not count again). A
    request whose members are all in the window is always allowed, even over a lowered limit.
    """

    key: str
    members: tuple[str, ...]
    limit: int
    window: float


@dataclass(frozen=True, slots=True)
class DistinctVerdict:
    """The answer for one `DistinctRequest`."""

    allowed: bool
    new: int
    """Members of the request not in the window yet: those that would count (taken or not)."""


@dataclass(frozen=True, slots=True)
class Taken:
    """The answer of `LimitStore.take_all`: one verdict per request, in the order asked."""

    allowed: bool
    """Every request had room, and all were taken; otherwise nothing was."""
    rates: tuple[RateVerdict, ...]
    distinct: tuple[DistinctVerdict, ...]


@dataclass(frozen=True, slots=True)
class Ban:
    """A key refused until `until` (store clock)."""

    key: str
    since: float
    until: float
    reason: str
    offences: int
    """Bans of this key remembered so far, this one included (repeat offenders wait longer)."""


class LimitStore(Protocol):
    """Shared counters, GCRA rates and bans (see the module docstring)."""

    def now(self) -> float:
        """The store's clock (unix seconds): ban times are on it."""
        ...

    def record(self, key: str, member: str, window: float) -> int:
        """Note `member` under `key` now; return the distinct members noted in the last `window` s.

        Noting a member again refreshes its time and never counts it twice (a client repeating
        the same wrong password counts once). Members older than `window` are forgotten.
        """
        ...

    def count(self, key: str, window: float) -> int:
        """The distinct members noted under `key` in the last `window` seconds."""
        ...

    def seen(self, key: str, member: str, window: float) -> bool:
        """Whether `member` was noted under `key` in the last `window` seconds."""
        ...

    def take(self, key: str, limit: int, period: float, cost: int = 1) -> RateVerdict:
        """Take `cost` units from a GCRA budget of `limit` units per `period`, all or nothing.

        The budget refills continuously (one unit every period/limit seconds) up to `limit`,
        so a burst is at most `limit` and no window edge lets a second burst through.
        ValueError if `cost` exceeds `limit` (such a request could never be allowed).
        """
        ...

    def take_all(
        self, rates: Sequence[RateRequest], distinct: Sequence[DistinctRequest] = ()
    ) -> Taken:
        """Take every request in one atomic step, or none of them.

        Each verdict says whether its own budget had room, as `take` would (the remaining units
        and retry times as if only that request were made); when any lacks room nothing at all
        is taken or noted, so a refused request never uses up another budget. Noting a member
        refreshes its time, as `record` does. ValueError for a bad rate (as `take`), a negative
        distinct limit, a window <= 0, or a key asked twice.
        """
        ...

    def forget(self, key: str) -> None:
        """Drop the members and the rate budget kept under `key`."""
        ...

    def ban(self, key: str, duration: float, reason: str, *, memory: float) -> Ban:
        """Refuse `key` for `duration` seconds from now; return the ban.

        Its `offences` counts this ban and the earlier ones of `key`, unless the last of those
        ended more than `memory` seconds ago (then the count starts again at 1). A ban replaces
        a shorter active one and never shortens a longer one.
        """
        ...

    def ban_of(self, key: str) -> Ban | None:
        """The active ban of `key`, or None."""
        ...

    def active_bans(self, keys: Sequence[str]) -> list[Ban]:
        """The active bans among `keys`, in the order of `keys` (one round trip: hot path)."""
        ...

    def active_bans_at_once(self, keys: Sequence[str]) -> list[Ban] | None:
        """`active_bans` if it can be answered without waiting for anything, else None.

        The one method that may be called on an event loop: a backend that cannot answer
        without I/O that may wait (a network store) always returns None.
        """
        ...

    def offences(self, key: str, *, memory: float) -> int:
        """How many bans of `key` are remembered, as `ban` would count them before a new one."""
        ...

    def unban(self, key: str) -> bool:
        """End the active ban of `key` now (its offences stay remembered); False if none."""
        ...

    def bans(self) -> list[Ban]:
        """Every active ban, ordered by key."""
        ...

    def close(self) -> None:
        """Release the backend's resources; the store is unusable afterwards."""
        ...


def check_rate(limit: int, period: float, cost: int) -> None:
    """ValueError for a rate no backend may take (see `LimitStore.take`)."""
    if limit < 1 or not period > 0 or not math.isfinite(period) or cost < 1:
        raise ValueError(
            f"a rate needs limit >= 1, period > 0, cost >= 1; got {limit}, {period}, {cost}"
        )
    if cost > limit:
        raise ValueError(f"cost {cost} exceeds the limit {limit}: it could never be allowed")


def check_requests(rates: Sequence[RateRequest], distinct: Sequence[DistinctRequest]) -> None:
    """ValueError for a `LimitStore.take_all` no backend may take."""
    keys = [rate.key for rate in rates] + [request.key for request in distinct]
    if len(set(keys)) != len(keys):
        raise ValueError(f"a key is asked twice in one take_all: {sorted(keys)}")
    for rate in rates:
        check_rate(rate.limit, rate.period, rate.cost)
    for request in distinct:
        if request.limit < 0 or request.window <= 0:
            raise ValueError(
                f"a distinct limit needs limit >= 0, window > 0; got {request.limit},"
                f" {request.window}"
            )
