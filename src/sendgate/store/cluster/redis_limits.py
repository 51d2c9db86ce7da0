"""`LimitStore` on Redis: every node of a cluster counts, rate-limits and bans on one store.

Each operation is one Lua script, so it is atomic on the server, and it reads the time from
Redis itself (TIME): nodes whose clocks disagree still count in one time line, and no
read-modify-write between nodes can lose an update. Keys expire when nobody needs them any
more (a window, a budget's refill, a ban's memory), so an attacker's addresses do not pile up.
All keys share the hash tag "{sendgate}" so that the multi-key scripts work on a Redis Cluster
too (in one slot).

Floats cross the Lua boundary as strings: a Lua number returned to the client is truncated to
an integer.

When Redis cannot be reached every call raises `StoreError` within the socket timeout; the
policy then refuses the login or the message with a temporary failure (never lets it through
uncounted), and service returns by itself when Redis does.

Security: keys and members are opaque strings chosen by the policy (networks, hashed names);
they travel as script arguments, never inside the script text.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import redis

from sendgate.errors import StoreError
from sendgate.store.cluster.server_clock import ServerClock
from sendgate.store.limits import (
    Ban,
    DistinctRequest,
    DistinctVerdict,
    RateRequest,
    RateVerdict,
    Taken,
    check_rate,
    check_requests,
)

TIMEOUT = 2.0  # seconds for a connection or a reply: a stalled Redis must not stall logins
SKEW_TTL = 60.0  # seconds a measured difference between the clocks is used
_PREFIX = "{sendgate}:"
_MEMBERS, _RATE, _BAN, _BANS = _PREFIX + "m:", _PREFIX + "r:", _PREFIX + "b:", _PREFIX + "bans"
_SECRET = _PREFIX + "secret"
SECRET_BYTES = 32

# The time on Redis's clock, unless the first argument gives one (tests inject a clock).
_NOW = """
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[1])
end
local function str(x) return string.format('%.17g', x) end
"""

# Note members under a key now, forgetting those out of the window (record and take_all).
_NOTE = """
local function note(key, members, window)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', str(now - window))
  for _, member in ipairs(members) do redis.call('ZADD', key, str(now), member) end
  redis.call('PEXPIRE', key, math.ceil(window * 1000))
end
"""

_RECORD = (
    _NOW
    + _NOTE
    + """
note(KEYS[1], {ARGV[2]}, tonumber(ARGV[3]))
return redis.call('ZCARD', KEYS[1])
"""
)

_COUNT = (
    _NOW
    + """
return redis.call('ZCOUNT', KEYS[1], '(' .. str(now - tonumber(ARGV[2])), '+inf')
"""
)

_SEEN = (
    _NOW
    + """
local at = redis.call('ZSCORE', KEYS[1], ARGV[2])
if at and tonumber(at) > now - tonumber(ARGV[3]) then return 1 end
return 0
"""
)

# GCRA, as the local store computes it (with its float slack: a budget's last unit is not
# refused for a rounding error); one function for take and take_all.
_GCRA = """
local SLACK = 1e-9
local function gcra(stored, limit, period, cost)
  local interval = period / limit
  local tat = now
  if stored and tonumber(stored) > now then tat = tonumber(stored) end
  local wanted = tat + cost * interval
  if wanted - now > period * (1 + SLACK) then
    local room = period - (tat - now)
    return 0, str(wanted - period - now), math.max(0, math.floor(room / interval + SLACK)), tat
  end
  local room = period - (wanted - now)
  return 1, '0', math.max(0, math.floor(room / interval + SLACK)), wanted
end
local function keep(key, tat)
  redis.call('SET', key, str(tat), 'PX', math.max(1, math.ceil((tat - now) * 1000)))
end
"""

_TAKE = (
    _NOW
    + _GCRA
    + """
local allowed, retry, remaining, tat = gcra(redis.call('GET', KEYS[1]),
  tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
if allowed == 1 then keep(KEYS[1], tat) end
return {allowed, retry, remaining}
"""
)

# KEYS: the rate keys, then the distinct keys. ARGV: now, the number of rates, then
# limit, period, cost per rate, then per distinct request: limit, window, member count, members.
_TAKE_ALL = (
    _NOW
    + _GCRA
    + _NOTE
    + """
local rates = tonumber(ARGV[2])
local arg = 3
local all = 1
local rate_out, tats = {}, {}
for i = 1, rates do
  local allowed, retry, remaining, tat = gcra(redis.call('GET', KEYS[i]),
    tonumber(ARGV[arg]), tonumber(ARGV[arg + 1]), tonumber(ARGV[arg + 2]))
  arg = arg + 3
  rate_out[i] = {allowed, retry, remaining}
  tats[i] = tat
  if allowed == 0 then all = 0 end
end
local distinct_out, noted = {}, {}
for j = rates + 1, #KEYS do
  local limit, window, count = tonumber(ARGV[arg]), tonumber(ARGV[arg + 1]), tonumber(ARGV[arg + 2])
  local members = {}
  for m = 1, count do members[m] = ARGV[arg + 2 + m] end
  arg = arg + 3 + count
  local since = now - window
  local new = 0
  for _, member in ipairs(members) do
    local at = redis.call('ZSCORE', KEYS[j], member)
    if not at or tonumber(at) <= since then new = new + 1 end
  end
  local allowed = 1
  if new > 0 then
    local present = redis.call('ZCOUNT', KEYS[j], '(' .. str(since), '+inf')
    if present + new > limit then allowed = 0 end
  end
  if allowed == 0 then all = 0 end
  distinct_out[#distinct_out + 1] = {allowed, new}
  noted[#noted + 1] = {KEYS[j], members, window}
end
if all == 1 then
  for i = 1, rates do keep(KEYS[i], tats[i]) end
  for _, n in ipairs(noted) do note(n[1], n[2], n[3]) end
end
return {all, rate_out, distinct_out}
"""
)

# KEYS: the ban, the index of bans. ARGV: now, the key, duration, reason, memory.
_BAN_SET = (
    _NOW
    + """
local duration, memory = tonumber(ARGV[3]), tonumber(ARGV[5])
local old = redis.call('HMGET', KEYS[1], 'since', 'until', 'offences')
local offences, since, till = 1, now, now + duration
if old[2] then
  local old_since, old_until = tonumber(old[1]), tonumber(old[2])
  if old_until > now then
    since = old_since
    if old_until > till then till = old_until end
  end
  if now - old_until <= memory then offences = tonumber(old[3]) + 1 end
end
redis.call('HSET', KEYS[1], 'since', str(since), 'until', str(till), 'reason', ARGV[4],
  'offences', offences, 'expires', str(till + memory))
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil((till + memory - now) * 1000)))
-- The index keeps active bans only: ended ones leave it here too, or it would grow with every
-- network ever banned where nobody lists the bans.
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', str(now))
redis.call('ZADD', KEYS[2], str(till), ARGV[2])
return {str(since), str(till), ARGV[4], offences}
"""
)

# KEYS: bans. ARGV: now. One reply per key: {} or the active ban's fields.
_BANS_OF = (
    _NOW
    + """
local out = {}
for i, key in ipairs(KEYS) do
  local b = redis.call('HMGET', key, 'since', 'until', 'reason', 'offences')
  if b[2] and tonumber(b[2]) > now then out[i] = b else out[i] = {} end
end
return out
"""
)

# KEYS: the ban. ARGV: now, memory. The offences remembered, or 0.
_OFFENCES = (
    _NOW
    + """
local b = redis.call('HMGET', KEYS[1], 'until', 'offences')
if not b[1] or now - tonumber(b[1]) > tonumber(ARGV[2]) then return 0 end
return tonumber(b[2])
"""
)

# KEYS: the ban, the index. ARGV: now, the key. Ends an active ban now.
_UNBAN = (
    _NOW
    + """
local b = redis.call('HMGET', KEYS[1], 'until', 'expires')
if not b[1] or tonumber(b[1]) <= now then return 0 end
local expires = tonumber(b[2]) - (tonumber(b[1]) - now)
redis.call('HSET', KEYS[1], 'until', str(now), 'expires', str(expires))
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil((expires - now) * 1000)))
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""
)

# KEYS: the index. ARGV: now. The keys of active bans (ended ones leave the index).
_ACTIVE = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', str(now))
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""
)


class RedisLimitStore:
    """`LimitStore` on one Redis (see the module docstring); safe to share between threads."""

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] | None = None,
        timeout: float = TIMEOUT,
    ) -> None:
        """`url`: redis://, rediss:// or unix://. `clock` replaces Redis's clock (for tests:
        keys still expire on Redis's, later than the injected time may say, never earlier
        than the scripts need)."""
        try:
            self._redis = redis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                decode_responses=True,
            )
        except ValueError as exc:
            raise StoreError(f"limit store: bad Redis URL: {exc}") from None
        self._clock = clock
        self._server_clock = ServerClock(self._redis_time, SKEW_TTL)
        scripts = {
            "record": _RECORD,
            "count": _COUNT,
            "seen": _SEEN,
            "take": _TAKE,
            "take_all": _TAKE_ALL,
            "ban": _BAN_SET,
            "bans_of": _BANS_OF,
            "offences": _OFFENCES,
            "unban": _UNBAN,
            "active": _ACTIVE,
        }
        self._scripts = {name: self._redis.register_script(text) for name, text in scripts.items()}

    def _run(self, script: str, keys: Sequence[str], *args: Any) -> Any:
        now = "" if self._clock is None else repr(self._clock())
        with _failing():
            return self._scripts[script](keys=list(keys), args=[now, *args])

    def now(self) -> float:
        """Redis's time, from this host's clock and their measured difference: callers ask
        for it per message, and a round trip each time cost 100 us (the scripts read Redis's
        own clock; this one only dates what they return and times a worker's allowances)."""
        if self._clock is not None:
            return self._clock()
        return self._server_clock.now()

    def _redis_time(self) -> float:
        with _failing():
            seconds, micros = self._redis.time()
        return float(seconds) + micros / 1e6

    # --- members in a sliding window ----------------------------------------------------------

    def record(self, key: str, member: str, window: float) -> int:
        return int(self._run("record", [_MEMBERS + key], member, repr(window)))

    def count(self, key: str, window: float) -> int:
        return int(self._run("count", [_MEMBERS + key], repr(window)))

    def seen(self, key: str, member: str, window: float) -> bool:
        return bool(self._run("seen", [_MEMBERS + key], member, repr(window)))

    def forget(self, key: str) -> None:
        with _failing():
            self._redis.delete(_MEMBERS + key, _RATE + key)

    # --- GCRA -----------------------------------------------------------------------------------

    def take(self, key: str, limit: int, period: float, cost: int = 1) -> RateVerdict:
        check_rate(limit, period, cost)
        reply = self._run("take", [_RATE + key], limit, repr(period), cost)
        return _rate(reply)

    def take_all(
        self, rates: Sequence[RateRequest], distinct: Sequence[DistinctRequest] = ()
    ) -> Taken:
        check_requests(rates, distinct)
        args: list[Any] = [len(rates)]
        for rate in rates:
            args += [rate.limit, repr(rate.period), rate.cost]
        for request in distinct:
            members = sorted(set(request.members))
            args += [request.limit, repr(request.window), len(members), *members]
        redis_keys = [_RATE + rate.key for rate in rates]
        redis_keys += [_MEMBERS + request.key for request in distinct]
        allowed, rate_replies, distinct_replies = self._run("take_all", redis_keys, *args)
        return Taken(
            bool(allowed),
            tuple(_rate(reply) for reply in rate_replies),
            tuple(DistinctVerdict(bool(ok), int(new)) for ok, new in distinct_replies),
        )

    # --- bans -----------------------------------------------------------------------------------

    def ban(self, key: str, duration: float, reason: str, *, memory: float) -> Ban:
        since, until, reason, offences = self._run(
            "ban", [_BAN + key, _BANS], key, repr(duration), reason, repr(memory)
        )
        return Ban(key, float(since), float(until), reason, int(offences))

    def ban_of(self, key: str) -> Ban | None:
        found = self.active_bans([key])
        return found[0] if found else None

    def active_bans(self, keys: Sequence[str]) -> list[Ban]:
        unique = list(dict.fromkeys(keys))
        if not unique:
            return []
        replies = self._run("bans_of", [_BAN + key for key in unique])
        return [
            Ban(key, float(fields[0]), float(fields[1]), fields[2], int(fields[3]))
            for key, fields in zip(unique, replies, strict=True)
            if fields
        ]

    def active_bans_at_once(self, keys: Sequence[str]) -> list[Ban] | None:
        return [] if not keys else None  # a network round trip may wait: never on the loop

    def offences(self, key: str, *, memory: float) -> int:
        return int(self._run("offences", [_BAN + key], repr(memory)))

    def unban(self, key: str) -> bool:
        return bool(self._run("unban", [_BAN + key, _BANS], key))

    def bans(self) -> list[Ban]:
        keys = sorted(self._run("active", [_BANS]))
        return self.active_bans(keys)

    def shared_secret(self) -> bytes:
        """The cluster's installation secret (fingerprints of failed passwords), made by the
        first node that asks: every node must fingerprint a password alike, or a guess
        repeated on two nodes would count twice."""
        with _failing():
            self._redis.set(_SECRET, secrets.token_hex(SECRET_BYTES), nx=True)
            value = self._redis.get(_SECRET)
        try:
            key = bytes.fromhex(str(value))
        except ValueError:
            key = b""
        if len(key) != SECRET_BYTES:
            raise StoreError(f"limit store (Redis): {_SECRET} is damaged")
        return key

    def server_version(self) -> str:
        """The Redis server's version (`sendgate cluster status`)."""
        with _failing():
            info = self._redis.info("server")
        return str(info.get("redis_version", "?"))

    def close(self) -> None:
        self._redis.close()


@contextlib.contextmanager
def _failing() -> Iterator[None]:
    """Redis's errors as the StoreError every LimitStore raises (no URL, so no password)."""
    try:
        yield
    except redis.RedisError as exc:
        raise StoreError(f"limit store (Redis): {exc}") from None


def _rate(reply: Sequence[Any]) -> RateVerdict:
    allowed, retry, remaining = reply
    return RateVerdict(bool(allowed), float(retry), int(remaining))
