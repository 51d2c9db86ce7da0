"""Verify a login's password against the user store, in equal time and with a short-lived cache.

A user has a main password and any number of app passwords. The password's lookup (a short
SHA-256 prefix, `policy.app_passwords.lookup_of`) picks the one stored hash to verify: the app
password with that lookup, else the main password, unless the account accepts app passwords
only. A success with an app password says its label and records its use (at most about once a
minute per label, to spare the store writes).

Security: username and password come from the client's AUTH exchange. Every attempt that reaches
argon2 costs exactly one verification, whether or not the user exists, whether the secret is an
app password, and whether or not the stored hash is usable or the main password is refused, so
timing does not tell which usernames exist or how they are set up. A successful login is
remembered only as an HMAC under a per-process random key, computed over the password, which
secret it matched and that secret's hash, and the user's generation, so a password change or a
removed app password ends it. Passwords are never stored, logged or shown in a repr.
"""

import asyncio
import concurrent.futures
import functools
import hmac
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from argon2 import PasswordHasher, extract_parameters
from argon2.exceptions import VerificationError

from sendgate.policy.app_passwords import lookup_of
from sendgate.store.users import AppPassword, UserRecord, UserStore

TOUCH_INTERVAL = 60.0
"""Seconds within which a second use of an app password is not written to the store again."""


@dataclass(frozen=True, slots=True)
class AuthResult:
    """The outcome of one login attempt."""

    user: UserRecord | None
    """The verified user, or None when the attempt failed."""
    cached: bool
    """True when the verified-login cache answered instead of argon2 (for logs and metrics)."""
    app_password: str | None = None
    """The label of the app password that matched; None for the main password or a failure."""


_FAILED = AuthResult(user=None, cached=False)


class Authenticator:
    """Checks username and password pairs; safe to call from many threads at once."""

    def __init__(
        self,
        users: UserStore,
        hasher: PasswordHasher,
        executor: concurrent.futures.Executor,
        cache_ttl: float,
        clock: Callable[[], float],
        cache_max: int = 10000,
    ) -> None:
        """Use `executor` for the blocking work; cache successes for `cache_ttl` s (<= 0: off).

        `clock` is unix time: an app password's last use is stored (and listed) from it.
        """
        self._users = users
        self._hasher = hasher
        self._executor = executor
        self._cache_ttl = cache_ttl
        self._cache_max = cache_max
        self._caching = cache_ttl > 0 and cache_max > 0
        self._clock = clock
        self._cache_secret = secrets.token_bytes(32)
        # The hash of a password nobody knows, made with the same parameters as real hashes:
        # verifying against it costs what a real verification costs and never succeeds.
        self._dummy_hash = hasher.hash(secrets.token_bytes(32))
        # Keyed MAC -> expiry. Entries are added with the same TTL, so insertion order is expiry
        # order and the oldest entry is both the first to expire and the first to evict.
        self._cache: OrderedDict[bytes, float] = OrderedDict()
        self._cache_lock = threading.Lock()

    @property
    def executor(self) -> concurrent.futures.Executor:
        """The pool the blocking work runs in (the login path runs its whole attempt there)."""
        return self._executor

    async def verify(self, username: str, password: str) -> AuthResult:
        """Check the pair in the executor (store lookup and argon2 both block)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.verify_blocking, username, password)

    def verify_blocking(self, username: str, password: str) -> AuthResult:
        """Check the pair in the calling thread; store failures propagate as SendgateError."""
        return self.verify_user(self._users.get_user(username), password)

    def verify_user(self, user: UserRecord | None, password: str) -> AuthResult:
        """Check `password` for a user already read from the store (None: no such user)."""
        hit = self.cached(user, password)
        if hit is not None:
            return hit
        # surrogatepass: a lone surrogate must fail to match, not raise.
        secret = password.encode("utf-8", "surrogatepass")
        app, stored = self._secret_for(user, password)
        if user is None or stored is None or not _is_parsable(stored):
            # The dummy hash costs what a real verification costs and never matches.
            self._argon2_verify(self._dummy_hash, secret)
            return _FAILED
        if not self._argon2_verify(stored, secret):
            return _FAILED
        # check_needs_rehash is not acted on: rehashing here would write to the store on the
        # login path; hashes move to new parameters when the password is next set.
        label = None if app is None else app.label
        if self._caching:
            self._remember(self._cache_key(user, label, stored, secret))
        self._note_use(user, app)
        return AuthResult(user=user, cached=False, app_password=label)

    def cached(self, user: UserRecord | None, password: str) -> AuthResult | None:
        """The verified-login cache's answer alone: a success, or None when only argon2 can tell.

        Lets the login path skip its checks for a repeated wrong password when the password is
        known right (a password that verified for this generation and hash is not a wrong one).
        """
        if user is None:
            return None
        return self._cache_answer(user, password, None)

    def cached_at_once(
        self, user: UserRecord, apps: Sequence[AppPassword], password: str
    ) -> AuthResult | None:
        """`cached` for a user read with its app passwords `apps`, without touching the store.

        For an event loop: None also when the answer would write (an app password whose last
        use is to be recorded); the caller then takes the path that may wait.
        """
        return self._cache_answer(user, password, apps)

    def _cache_answer(
        self, user: UserRecord, password: str, apps: Sequence[AppPassword] | None
    ) -> AuthResult | None:
        """The cache's success, or None. With `apps` (read by the caller) nothing is written:
        an app password whose last use is due to be recorded gets None instead."""
        if not self._caching:
            return None
        app, stored = self._secret_for(user, password, apps)
        if stored is None or not _is_parsable(stored):
            return None
        if apps is not None and app is not None and self._use_due(app):
            return None
        label = None if app is None else app.label
        secret = password.encode("utf-8", "surrogatepass")
        if not self._cache_hit(self._cache_key(user, label, stored, secret)):
            return None
        self._note_use(user, app)  # writes only without `apps`: a due use returned None above
        return AuthResult(user=user, cached=True, app_password=label)

    def _secret_for(
        self, user: UserRecord | None, password: str, apps: Sequence[AppPassword] | None = None
    ) -> tuple[AppPassword | None, str | None]:
        """The app password that may match, and the one stored hash to verify (None: none).

        `apps` are the user's app passwords when the caller read them already.
        """
        if user is None:
            return None, None
        if apps is None:
            apps = self._users.app_passwords(user.username)
        app = _matching_app_password(apps, password)
        if app is not None:
            return app, app.password_hash
        if user.settings.app_passwords_only:
            return None, None
        return None, user.password_hash

    def _use_due(self, app: AppPassword) -> bool:
        return app.last_used is None or self._clock() - app.last_used >= TOUCH_INTERVAL

    def _note_use(self, user: UserRecord, app: AppPassword | None) -> None:
        if app is not None and self._use_due(app):
            self._users.touch_app_password(user.username, app.label, self._clock())

    def _argon2_verify(self, encoded_hash: str, secret: bytes) -> bool:
        try:
            return self._hasher.verify(encoded_hash, secret)
        except VerificationError:
            # Mismatch, or a hash that parsed but does not decode: either way a failed login.
            return False

    def _cache_key(
        self, user: UserRecord, label: str | None, stored_hash: str, secret: bytes
    ) -> bytes:
        # Which secret matched is part of the key: "main" or "app:" + label cannot collide.
        which = "main" if label is None else "app:" + label
        fields = (
            user.username.encode(),
            str(user.generation).encode(),
            which.encode("utf-8", "surrogatepass"),
            stored_hash.encode(),
            secret,
        )
        # Length prefixes keep the field boundaries unambiguous.
        message = b"".join(len(part).to_bytes(8, "big") + part for part in fields)
        return hmac.digest(self._cache_secret, message, "sha256")

    def _cache_hit(self, key: bytes) -> bool:
        # A plain dict lookup is safe here: keys are MACs under a secret key, so how long a
        # lookup takes tells an attacker nothing about any digest they could choose.
        now = self._clock()
        with self._cache_lock:
            expiry = self._cache.get(key)
            if expiry is None:
                return False
            if now < expiry:
                return True
            del self._cache[key]
            return False

    def _remember(self, key: bytes) -> None:
        now = self._clock()
        with self._cache_lock:
            # Two threads may verify the same login at once; re-adding keeps expiry order.
            self._cache.pop(key, None)
            # The oldest entry goes first: it is also the next to expire, or expired already.
            while len(self._cache) >= self._cache_max:
                self._cache.popitem(last=False)
            self._cache[key] = now + self._cache_ttl


def _matching_app_password(apps: Sequence[AppPassword], password: str) -> AppPassword | None:
    """The app password whose lookup matches, if any (the first by label if several do)."""
    lookup = lookup_of(password)
    for app in apps:
        if app.lookup == lookup:
            return app
    return None


@functools.lru_cache(maxsize=1024)  # every login asks it of its user's hash
def _is_parsable(encoded_hash: str) -> bool:
    """Return True if `encoded_hash` looks like an argon2 hash (a cheap parse, no hashing)."""
    try:
        extract_parameters(encoded_hash)
    except ValueError:  # argon2's InvalidHashError, or a bad number inside the hash
        return False
    return True
