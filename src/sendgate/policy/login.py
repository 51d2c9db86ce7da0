"""One login attempt from start to end: refuse unchecked, or verify, then count, note and notify.

This is the blocking part of an AUTH, run in one thread hop (`attempt`): the guard's refusal
check, at most one argon2 verification, then either the failure count (with its delay and bans)
or the success bookkeeping: the known-network record, the compromised-account rule (logins
from too many networks within an hour flag the account) and the sign-in notice for a network
the account has not used before. The caller (submission) waits `wait` seconds on a timer, logs the
result and answers.

The everyday login (no ban, a password verified lately, nothing to write) is decided on the
event loop instead, by `attempt_at_once`, which reads only what the stores answer without
waiting and leaves everything else to `attempt`.

Timing: an attempt refused without checking the password waits as long as a verification
takes (the median of recent ones), so the answer time does not tell a locked account, an
unknown user and a wrong password apart.
"""

from __future__ import annotations

import secrets
import statistics
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sendgate.config.schema import LoginLimitsConfig
from sendgate.policy.auth import Authenticator, AuthResult
from sendgate.policy.dovecot import DovecotAuth
from sendgate.policy.guard import NETWORK_BANNED, Failure, KnownNetworks, LoginGuard
from sendgate.policy.networks import ClientNetworks, network_text
from sendgate.store.limits import Ban
from sendgate.store.users import AppPassword, Flag, LoginNote, UserRecord

# A network noted for an account by this process is not written again for this long: a client
# that logs in for every message would otherwise cost a store write per message.
NOTE_REFRESH = 300.0
NOTE_CACHE_MAX = 10000
_SAMPLES = 31


class Accounts(KnownNetworks, Protocol):
    """The part of the `UserStore` a login reads and writes: users, known networks and flags."""

    def note_login(
        self, username: str, network: str, at: float, *, memory: float, recent: float
    ) -> LoginNote: ...

    def set_flag(self, username: str, reason: str, at: float) -> Flag: ...

    def get_user(self, username: str) -> UserRecord | None: ...

    def login_at_once(self, username: str) -> tuple[UserRecord, list[AppPassword]] | None: ...


class Notifier(Protocol):
    """Sends the sign-in notice (policy.notice.SignInNotices); returns the queue id or None."""

    def send(
        self,
        user: UserRecord,
        *,
        network: str,
        client_ip: str,
        client_name: str | None,
        tls_version: str | None,
        app_password: str | None,
    ) -> str | None: ...


@dataclass(frozen=True, slots=True)
class LoginRequest:
    client: ClientNetworks
    client_ip: str
    username: str
    password: str
    client_name: str | None
    tls_version: str | None

    def __repr__(self) -> str:  # never the password
        return f"LoginRequest(client_ip={self.client_ip!r}, username={self.username!r})"


@dataclass(frozen=True, slots=True)
class LoginResult:
    user: UserRecord | None
    """The verified user; None when refused or failed."""
    wait: float
    """Seconds to wait before answering (a failure's delay, or a refusal's padding)."""
    refused: tuple[str, Ban] | None = None
    """Answer as refused: the reason and the ban behind it (with `failure` too when the
    password was checked, or was a repeat, on a banned network the account is known on)."""
    failure: Failure | None = None
    cached: bool = False
    app_password: str | None = None
    note: LoginNote | None = None
    """What the known-network record said (None when this process noted it recently)."""
    flagged: Flag | None = None
    """The flag this login set (too many networks within an hour); None if it was set before."""
    notice: str | None = None
    """Queue id of the sign-in notice sent."""


class Logins:
    """Runs login attempts (module docstring); safe to call from several threads at once."""

    def __init__(
        self,
        guard: LoginGuard,
        authenticator: Authenticator,
        accounts: Accounts,
        settings: LoginLimitsConfig,
        now: Callable[[], float],
        notifier: Notifier | None = None,
        timer: Callable[[], float] = time.perf_counter,
        dovecot: DovecotAuth | None = None,
    ) -> None:
        """`dovecot`: check passwords there instead of with `authenticator` (auth.backend)."""
        self.guard = guard
        self._auth = authenticator
        self._dovecot = dovecot
        self._accounts = accounts
        self._cfg = settings
        self._now = now
        self._notifier = notifier
        self._timer = timer
        self._lock = threading.Lock()
        self._samples: deque[float] = deque(maxlen=_SAMPLES)
        self._noted: OrderedDict[tuple[str, str], float] = OrderedDict()

    def attempt(self, request: LoginRequest) -> LoginResult:
        """Decide one attempt (blocking: store reads and writes, argon2)."""
        guard = self.guard
        check = guard.check(request.client, request.username)
        if check.refused is not None:
            return LoginResult(user=None, wait=self.verify_time(), refused=check.refused)
        # As a failure on a banned network known to the account: refused, like everyone there.
        as_refused = (NETWORK_BANNED, check.banned_here) if check.banned_here else None
        record = self._accounts.get_user(request.username)
        # A password verified lately is right: no need to look for it among the wrong ones.
        result = self._auth.cached(record, request.password) if self._dovecot is None else None
        generation = record.generation if record is not None else 0
        if result is None:
            repeated = guard.repeated(
                request.client, request.username, request.password, generation
            )
            if repeated is not None:
                wait = self.verify_time() + repeated.delay
                return LoginResult(user=None, wait=wait, refused=as_refused, failure=repeated)
            started = self._timer()
            result = self._verify(request, record)
            if not result.cached:
                self._sample(self._timer() - started)
        if result.user is None:
            failure = guard.failed(request.client, request.username, request.password, generation)
            return LoginResult(user=None, wait=failure.delay, refused=as_refused, failure=failure)
        user = result.user
        app_password = result.app_password
        note = self._note(user, request)
        flagged = None
        notice = None
        if note is not None:
            flagged = self._maybe_flag(user, note)
            if note.new and not note.first and self._notifier is not None:
                notice = self._notifier.send(
                    user,
                    network=network_text(request.client.block),
                    client_ip=request.client_ip,
                    client_name=request.client_name,
                    tls_version=request.tls_version,
                    app_password=app_password,
                )
        return LoginResult(
            user=user,
            wait=0.0,
            cached=result.cached,
            app_password=app_password,
            note=note,
            flagged=flagged,
            notice=notice,
        )

    def attempt_at_once(self, request: LoginRequest) -> LoginResult | None:
        """`attempt` when it can be decided on the event loop, without waiting: else None.

        That is the everyday login: no ban applies, the user and the password are known from
        lately (the verified-login cache) and nothing needs writing (this network was noted
        lately, no app password's use is due to be recorded). Anything else, including every
        failure, goes the way that may wait: `attempt`, in a thread.
        """
        if self._dovecot is not None or not self.guard.clear_at_once(
            request.client, request.username
        ):
            return None
        found = self._accounts.login_at_once(request.username)
        if found is None:
            return None
        user, apps = found
        if self._note_due(user, request):
            return None
        result = self._auth.cached_at_once(user, apps, request.password)
        if result is None:
            return None
        return LoginResult(user=user, wait=0.0, cached=True, app_password=result.app_password)

    def _verify(self, request: LoginRequest, record: UserRecord | None) -> AuthResult:
        """The password check of `auth.backend`: argon2 here, or Dovecot."""
        if self._dovecot is None:
            return self._auth.verify_user(record, request.password)
        name = self._dovecot.check(
            request.username,
            request.password,
            client_ip=request.client_ip,
            secured=request.tls_version is not None,
        )
        if name is None:
            return AuthResult(user=None, cached=False)
        name = name.lower()
        known = record if name == request.username else self._accounts.get_user(name)
        if known is None:
            # Not in sendgate's table: the login name is the one address it may send as.
            addresses = (name,) if "@" in name else ()
            known = UserRecord(username=name, password_hash="", addresses=addresses, generation=0)
        return AuthResult(user=known, cached=False)

    def verify_time(self) -> float:
        """The median wall time of recent argon2 verifications (measured once if none yet)."""
        with self._lock:
            samples = list(self._samples)
        if not samples:
            started = self._timer()
            self._auth.verify_blocking("", secrets.token_urlsafe(16))
            elapsed = self._timer() - started
            self._sample(elapsed)
            return elapsed
        return statistics.median(samples)

    def _sample(self, seconds: float) -> None:
        with self._lock:
            self._samples.append(seconds)

    def _note_due(self, user: UserRecord, request: LoginRequest) -> bool:
        """Whether a login now must note its network (not noted by this process lately)."""
        key = (user.username, network_text(request.client.block))
        with self._lock:
            return not self._noted_lately(key, self._now())

    def _noted_lately(self, key: tuple[str, str], now: float) -> bool:
        """Whether this process noted `key` (user, network) within NOTE_REFRESH; hold the lock."""
        noted = self._noted.get(key)
        return noted is not None and 0 <= now - noted < NOTE_REFRESH

    def _note(self, user: UserRecord, request: LoginRequest) -> LoginNote | None:
        network = network_text(request.client.block)
        key = (user.username, network)
        now = self._now()
        with self._lock:
            if self._noted_lately(key, now):
                return None
            self._noted.pop(key, None)
            while len(self._noted) >= NOTE_CACHE_MAX:
                self._noted.popitem(last=False)
            self._noted[key] = now
        return self._accounts.note_login(
            user.username,
            network,
            now,
            memory=self._cfg.known_network_memory,
            recent=3600.0,
        )

    def _maybe_flag(self, user: UserRecord, note: LoginNote) -> Flag | None:
        limit = self._cfg.networks_per_hour
        if limit <= 0 or note.recent <= limit:
            return None
        reason = f"logged in from {note.recent} networks within an hour"
        now = self._now()
        flag = self._accounts.set_flag(user.username, reason, now)
        # An account flagged before keeps its flag as it was: nothing new to report.
        return flag if (flag.since, flag.reason) == (now, reason) else None
