"""The connection cache: idle outbound SMTP sessions kept for the next transaction to one place.

A session is cached only under the key it was set up and verified with (address, port, host
name, TLS mode, verify, acceptable names, implicit TLS, trust store, AUTH user, HELO name), so a
transaction never rides on a session whose checks it would not have passed itself. As Postfix's
connection cache does, it saves the connect, greeting, TLS handshake and AUTH of busy routes.

Security: DANE sessions are never cached (their leaf check belongs to one plan); idle sessions
are bounded in number, idle time, age and transactions, and a session comes back only healthy.
The cache holds sessions, never credentials (the key has the AUTH user, not the password).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import aiosmtplib
from aiosmtplib import SMTPException

from sendgate.delivery.target import Target


@dataclass(frozen=True, slots=True)
class SessionKey:
    """Everything that decided how a session was set up and verified: equal keys may share it."""

    address: str
    port: int
    host: str
    mode: str
    verify: str
    names: tuple[str, ...]
    implicit: bool
    trust: ssl.SSLContext | None  # verify "pkix": the trust store that checked the chain
    username: str | None
    helo: str


def session_key(target: Target, helo: str, context: ssl.SSLContext | None) -> SessionKey | None:
    """The key `target` shares sessions under; None for DANE (its leaf_check belongs to a plan)."""
    tls = target.tls
    if tls.verify == "dane":
        return None
    return SessionKey(
        target.address,
        target.port,
        target.host,
        tls.mode,
        tls.verify,
        tls.names,
        tls.implicit,
        context if tls.verify == "pkix" else None,
        target.auth[0] if target.auth is not None else None,
        helo,
    )


@dataclass(slots=True, eq=False)
class CachedSession:
    """An established session between transactions: greeted, TLS and AUTH done."""

    smtp: aiosmtplib.SMTP
    transport: asyncio.BaseTransport | None
    tls_version: str | None
    tls_cipher: str | None
    born: float  # cache clock when it connected
    transactions: int = 0
    idle_since: float = 0.0

    @property
    def alive(self) -> bool:
        return self.smtp.is_connected

    def drop(self) -> None:
        if self.transport is not None:
            cast(asyncio.Transport, self.transport).abort()
        self.smtp.close()


class ConnectionCache:
    """Idle SMTP sessions that `deliver` may reuse, so that a busy route skips connect and EHLO.

    A session is taken out (`take`) while it carries a transaction, so two never share it, and
    comes back (`give`) only if it is healthy. Limits: `idle_time` seconds idle (Postfix's
    smtp_connection_cache_time_limit), `max_age` seconds since it connected,
    `max_transactions` per session, `per_key` idle sessions per destination and `total`
    overall. Expired sessions are closed in the background (QUIT, at most `quit_timeout`
    seconds) by a timer on the running loop; `close` QUITs every idle session and should be
    awaited once no delivery runs (the cache stays usable afterwards). `clock` is injectable
    for tests; it must count seconds.
    """

    def __init__(
        self,
        *,
        idle_time: float = 2.0,
        max_age: float = 300.0,
        max_transactions: int = 100,
        per_key: int = 20,
        total: int = 100,
        quit_timeout: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        limits = {
            "idle_time": idle_time,
            "max_age": max_age,
            "max_transactions": max_transactions,
            "per_key": per_key,
            "total": total,
            "quit_timeout": quit_timeout,
        }
        for name, value in limits.items():
            if not value > 0:
                raise ValueError(f"connection cache {name} must be positive, not {value!r}")
        self._idle_time = idle_time
        self._max_age = max_age
        self._max_transactions = max_transactions
        self._per_key = per_key
        self._total = total
        self._quit_timeout = quit_timeout
        self._clock = clock
        self._idle: dict[SessionKey, list[CachedSession]] = {}
        self._count = 0
        self._timer: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def idle(self) -> int:
        """How many sessions wait for a transaction now."""
        return self._count

    def now(self) -> float:
        """The cache's clock: stamp `CachedSession.born` with it when a session connects."""
        return self._clock()

    async def close(self) -> None:
        """QUIT every idle session, and wait for the sessions already being closed."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        idle, self._idle, self._count = self._idle, {}, 0
        for sessions in idle.values():
            for session in sessions:
                self._discard(session)
        while self._closing:
            await asyncio.gather(*self._closing)

    def _usable(self, session: CachedSession, now: float) -> bool:
        return (
            now - session.idle_since < self._idle_time
            and now - session.born < self._max_age
            and session.transactions < self._max_transactions
            and session.alive
        )

    def take(self, key: SessionKey) -> CachedSession | None:
        """An idle session for `key`, now owned by the caller; expired ones are closed."""
        sessions = self._idle.pop(key, [])
        now = self._clock()
        found = None
        while sessions and found is None:
            session = sessions.pop()  # the most recently used: the least likely to be closed
            self._count -= 1
            if self._usable(session, now):
                found = session
            else:
                self._discard(session)
        if sessions:
            self._idle[key] = sessions
        return found

    def give(self, key: SessionKey, session: CachedSession) -> bool:
        """Keep `session` for `key`; False when a limit says to close it instead.

        On True the cache owns the session; on False the caller still does and must close it.
        """
        now = self._clock()
        session.idle_since = now
        sessions = self._idle.get(key, [])
        if (
            not self._usable(session, now)
            or len(sessions) >= self._per_key
            or self._count >= self._total
        ):
            return False
        sessions.append(session)
        self._idle[key] = sessions
        self._count += 1
        self._schedule()
        return True

    def _schedule(self) -> None:
        if self._timer is not None or not self._count:
            return
        oldest = min(s.idle_since for sessions in self._idle.values() for s in sessions)
        delay = max(oldest + self._idle_time - self._clock(), 0.0)
        self._timer = asyncio.get_running_loop().call_later(delay, self._reap)

    def _reap(self) -> None:
        self._timer = None
        now = self._clock()
        for key, sessions in list(self._idle.items()):
            kept = [s for s in sessions if self._usable(s, now)]
            for session in sessions:
                if session not in kept:
                    self._discard(session)
            self._count -= len(sessions) - len(kept)
            if kept:
                self._idle[key] = kept
            else:
                del self._idle[key]
        self._schedule()

    def _discard(self, session: CachedSession) -> None:
        """Close `session` in the background: delivery never waits for a goodbye."""
        task = asyncio.get_running_loop().create_task(self._shut(session))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _shut(self, session: CachedSession) -> None:
        try:
            if session.alive:
                with contextlib.suppress(SMTPException, OSError):
                    await session.smtp.quit(timeout=self._quit_timeout)
        finally:
            session.drop()
