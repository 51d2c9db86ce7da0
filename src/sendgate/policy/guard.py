"""Failed-login defences: count failures per network and per account, delay, ban, never lock out.

Every count lives in the `LimitStore`, so all workers, a restart and later every node see the
same numbers; every time comes from the store's clock. The rules:

- A failure is counted for the client's address (IPv4 /32, IPv6 /64) and its block (/24, /48),
  each against its own threshold within `window`. Beyond `delay_after` failures of the address,
  each further failure is answered after a delay that doubles up to `delay_max` (the caller
  waits on a timer). At the threshold the network is banned; a repeat offender's ban doubles
  (up to `ban_max`) while earlier bans are remembered (`ban_memory`). Banned IPv6 /64s inside
  one /56 (and /56s inside one /48) ban the wider prefix.
- A failure also counts for the account, across networks; past `account_failures` the account
  is locked, and attempts for it are refused without checking the password, except from its
  known networks (the /24 or /48 it logged in from successfully within `known_network_memory`).
  From a known network, failures count apart (`known_failures`), so a distributed attack never
  locks the real user out, and someone sharing the user's network cannot guess for ever.
- NAT and offices: a network's ban never refuses an account known there. At accept, before any
  account is named, a banned network is refused with 421 only if no account at all is known
  there; otherwise the ban is enforced at AUTH, where accounts known there go on and every
  other name gets 454 without any password check. So one guesser behind a NAT cannot lock the
  office out, and still gets nothing but cheap refusals.
- One wrong password repeated (a phone with a stale saved password) counts once: failures are
  noted as a fingerprint of user and password, and a counter counts distinct fingerprints.
- Nothing is ever reset by a success; allow-listed networks are never counted, delayed or banned
  (an account lock still applies to them, with the same known-network exception).

Security: usernames and passwords come from clients. Passwords enter the store only as a keyed
fingerprint (HMAC under a secret of this installation, truncated), and refusals never depend on
whether the account exists: unknown names are counted and locked like real ones.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Protocol

from sendgate.config.schema import LoginLimitsConfig
from sendgate.policy import keys
from sendgate.policy.networks import ClientNetworks, IPNetwork, is_allowed, parse_allow_list
from sendgate.store.limits import Ban, LimitStore

NETWORK_BANNED = "network_banned"
ACCOUNT_LOCKED = "account_locked"
KNOWN_LOCKED = "known_locked"


class KnownNetworks(Protocol):
    """The part of the `UserStore` the guard reads: which networks an account logged in from."""

    def is_known(self, username: str, network: str, at: float, *, memory: float) -> bool: ...

    def network_known(self, network: str, at: float, *, memory: float) -> bool: ...


@dataclass(frozen=True, slots=True)
class Admission:
    """The verdict at accept: `ban` is the ban in force, if any; `refuse` means 421 now."""

    ban: Ban | None = None
    refuse: bool = False


ADMIT = Admission()


@dataclass(frozen=True, slots=True)
class Failure:
    """What one failed login led to."""

    failures: int
    """Distinct failures of the client's address within the window, this one included."""
    delay: float
    """Seconds to wait before answering."""
    bans: tuple[Ban, ...]
    """Bans (or locks) this failure started."""
    repeated: bool = False
    """A wrong password tried already: answered without checking, counted nothing new."""


@dataclass(frozen=True, slots=True)
class Check:
    """The verdict before an attempt's password is checked."""

    refused: tuple[str, Ban] | None = None
    """Refuse unchecked: the reason and the ban or lock behind it."""
    banned_here: Ban | None = None
    """The network's ban, when the account is known there: check the password, and answer a
    wrong one as refused too, so the answer does not tell a known account from others."""


CLEAR = Check()


class LoginGuard:
    """Applies the failed-login rules (module docstring); blocking, call it from a thread pool."""

    def __init__(
        self,
        limits: LimitStore,
        accounts: KnownNetworks,
        settings: LoginLimitsConfig,
        secret: bytes,
    ) -> None:
        self._limits = limits
        self._accounts = accounts
        self._cfg = settings
        self._allow = parse_allow_list(settings.allow)
        self._secret = secret

    # --- at accept --------------------------------------------------------------------------

    def admit(self, client: ClientNetworks) -> Admission:
        """Whether a new connection from `client` may talk to us at all."""
        bans = self._limits.active_bans(self._net_keys(client))
        if not bans:
            return ADMIT
        cfg = self._cfg
        now = self._limits.now()
        shared = self._accounts.network_known(
            str(client.block), now, memory=cfg.known_network_memory
        )
        return Admission(ban=bans[0], refuse=not shared)

    def admits_at_once(self, client: ClientNetworks) -> bool:
        """True when `client` is surely admitted, found out without waiting (on the loop).

        False when it may be banned, or the store could not answer at once: then `admit`
        decides, in a thread. Saves the thread hop on every connection that is not banned.
        """
        return self._limits.active_bans_at_once(self._net_keys(client)) == []

    # --- at AUTH ----------------------------------------------------------------------------

    def check(self, client: ClientNetworks, username: str) -> Check:
        """Whether an attempt for `username` must be refused unchecked (see `Check`)."""
        account = username.lower()
        wanted = self._login_keys(account, client)
        bans = {ban.key: ban for ban in self._limits.active_bans(wanted)}
        if not bans:
            return CLEAR
        known_lock = bans.get(wanted[1])
        if known_lock is not None:
            return Check(refused=(KNOWN_LOCKED, known_lock))
        network_ban = next((ban for key, ban in bans.items() if key.startswith(keys.NET)), None)
        if self._is_known(account, client):
            return Check(banned_here=network_ban)
        lock = bans.get(wanted[0])
        if lock is not None:
            return Check(refused=(ACCOUNT_LOCKED, lock))
        assert network_ban is not None  # bans held one of the three kinds
        return Check(refused=(NETWORK_BANNED, network_ban))

    def clear_at_once(self, client: ClientNetworks, username: str) -> bool:
        """True when `check` would surely answer CLEAR, found out without waiting (on the loop).

        False when a ban may apply, or the store could not answer at once: `check` decides.
        """
        wanted = self._login_keys(username.lower(), client)
        return self._limits.active_bans_at_once(wanted) == []

    def _login_keys(self, account: str, client: ClientNetworks) -> list[str]:
        """The ban keys a login checks: the account's lock, its lock here, then the networks."""
        return [
            keys.account_key(account),
            keys.known_lock_key(account, client.block),
            *self._net_keys(client),
        ]

    def repeated(
        self, client: ClientNetworks, username: str, password: str, generation: int
    ) -> Failure | None:
        """The failure to answer, unchecked, when this wrong password was tried already.

        A phone with a stale saved password, or a guesser replaying one guess, costs no argon2
        and counts nothing new; `generation` (the account's password generation, 0 if none) is
        in the fingerprint, so a password changed since is checked again.
        """
        cfg = self._cfg
        account = username.lower()
        print_ = self._fingerprint(account, password, generation)
        if self._is_known(account, client):
            key = keys.known_failures_key(account, client.block)
        else:
            key = keys.account_failures_key(account)
        if not self._limits.seen(key, print_, cfg.account_window):
            return None
        failures = 0
        if not self.allowed(client):
            failures = self._limits.count(keys.failures_key(client.host), cfg.window)
        return Failure(failures=failures, delay=self.delay_for(failures), bans=(), repeated=True)

    def failed(
        self, client: ClientNetworks, username: str, password: str, generation: int = 0
    ) -> Failure:
        """Count a failed login; start the bans it earns; say how long to wait before answering."""
        cfg = self._cfg
        limits = self._limits
        account = username.lower()
        print_ = self._fingerprint(account, password, generation)
        bans: list[Ban] = []
        failures = 0
        if not self.allowed(client):
            failures = limits.record(keys.failures_key(client.host), print_, cfg.window)
            if failures >= cfg.host_failures:
                bans.extend(self._ban_network(client, client.host, "host_failures"))
            block = limits.record(keys.failures_key(client.block), print_, cfg.window)
            if block >= cfg.block_failures:
                bans.extend(self._ban_network(client, client.block, "block_failures"))
        if self._is_known(account, client):
            key = keys.known_failures_key(account, client.block)
            if limits.record(key, print_, cfg.account_window) >= cfg.known_failures:
                bans.append(self._ban(keys.known_lock_key(account, client.block), "known_failures"))
                limits.forget(key)
        else:
            key = keys.account_failures_key(account)
            if limits.record(key, print_, cfg.account_window) >= cfg.account_failures:
                bans.append(self._ban(keys.account_key(account), "account_failures"))
                limits.forget(key)
        return Failure(failures=failures, delay=self.delay_for(failures), bans=tuple(bans))

    def delay_for(self, failures: int) -> float:
        """The wait before answering the `failures`-th failure of one address."""
        cfg = self._cfg
        beyond = failures - cfg.delay_after
        if beyond <= 0 or cfg.delay <= 0:
            return 0.0
        # min() before the power would overflow for an absurd count.
        return min(cfg.delay * 2.0 ** min(beyond - 1, 64), cfg.delay_max)

    def allowed(self, client: ClientNetworks) -> bool:
        return is_allowed(client.address, self._allow)

    # --- inside ---------------------------------------------------------------------------

    def _is_known(self, account: str, client: ClientNetworks) -> bool:
        now = self._limits.now()
        return self._accounts.is_known(
            account, str(client.block), now, memory=self._cfg.known_network_memory
        )

    def _net_keys(self, client: ClientNetworks) -> list[str]:
        """The ban keys of the client's networks; none for an allow-listed client."""
        if self.allowed(client):
            return []
        return [keys.net_key(net) for net in client.bannable()]

    def _ban_network(self, client: ClientNetworks, network: IPNetwork, reason: str) -> list[Ban]:
        started = [self._ban(keys.net_key(network), reason)]
        self._limits.forget(keys.failures_key(network))
        # IPv6: enough banned /64s in one /56 ban the /56; enough /56s in one /48, the /48.
        if client.middle is None:
            return started
        for narrow, wide in ((client.host, client.middle), (client.middle, client.block)):
            if narrow != network:
                continue
            banned = self._limits.record(
                keys.escalation_key(wide), str(narrow), self._cfg.ban_memory + self._cfg.ban_max
            )
            if banned >= self._cfg.ipv6_escalation:
                started.append(self._ban(keys.net_key(wide), "ipv6_escalation"))
                network = wide
        return started

    def _ban(self, key: str, reason: str) -> Ban:
        cfg = self._cfg
        active = self._limits.ban_of(key)
        if active is not None:  # another worker banned it a moment ago: not a new offence
            return active
        offences = self._limits.offences(key, memory=cfg.ban_memory)
        duration = min(cfg.ban_time * 2.0 ** min(offences, 64), cfg.ban_max)
        return self._limits.ban(key, duration, reason, memory=cfg.ban_memory)

    def _fingerprint(self, account: str, password: str, generation: int) -> str:
        mac = hmac.new(self._secret, digestmod=hashlib.sha256)
        for part in (
            account.encode("utf-8", "surrogatepass"),
            str(generation).encode(),
            password.encode("utf-8", "surrogatepass"),
        ):
            mac.update(len(part).to_bytes(8, "big"))
            mac.update(part)
        # 64 bits tell failures apart; a leaked store reveals nothing usable about passwords.
        return mac.hexdigest()[:16]
