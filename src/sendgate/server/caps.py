"""Connection caps shared by all worker processes: global, per client IP, and unauthenticated.

Counters live in an anonymous shared memory map created before the workers fork. Each worker
writes only its own row (no locks, no lost updates) and a check sums the rows, so a crashed
worker's connections are forgotten by zeroing its row. Client addresses are hashed with a
secret key into buckets (an attacker cannot aim collisions at a victim); IPv6 clients are
counted per /64, the block one subscriber usually holds. A collision can only make a cap
stricter, never looser.

Unauthenticated connections (every new one, until its AUTH succeeds) have their own, smaller
share of the global cap, so that idle connections that never log in cannot fill the server:
over half that share the server is under pressure (workers shorten the unauthenticated command
timeout), and when it is full a worker closes an old idle one to make room.

Connections that end without a login (failed handshakes, probes, floods, failed logins) are
also counted per address in windows of RATE_WINDOW seconds: past `max_anonymous_per_window`
the address's new connections are refused before any TLS work, which bounds the handshake
CPU one address can make the server spend. Logged-in clients never count against it, and an
address where someone logged in during this window or the one before is not refused at all:
an attacker behind an office's or a carrier's NAT must not lock out the users there.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import mmap
import secrets
import time
from collections.abc import Callable

BUCKETS = 65536
_WIDTH = 4  # bytes per counter (uint32)
_UNAUTHENTICATED = BUCKETS + 1  # the slot of a row that counts unauthenticated connections
_BUCKETS_REMEMBERED = 4096
RATE_WINDOW = 10.0  # seconds; connections ending without a login are counted per window


@functools.lru_cache(maxsize=4096)  # clients come back; each connection asks twice
def address_key(ip: str) -> str:
    """What one client is for the caps and the flood log: its IPv4 address, or its IPv6 /64."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


class ConnectionCaps:
    """Global and per-IP connection counting across `workers` processes."""

    def __init__(
        self,
        workers: int,
        max_total: int,
        max_per_ip: int,
        max_unauthenticated: int | None = None,
        max_anonymous_per_window: int = 0,
        clock: Callable[[], float] = time.monotonic,  # one clock for all processes on Linux
    ) -> None:
        self._workers = workers
        self._row = BUCKETS + 2  # slot 0 of a row is the worker's total, then the buckets
        self._map = mmap.mmap(-1, workers * self._row * _WIDTH)
        self._cells = memoryview(self._map).cast("I")
        # Per worker: slot 0 is the window its counts belong to, then the buckets.
        self._rate_row = BUCKETS + 1
        self._rate_map = mmap.mmap(-1, workers * self._rate_row * _WIDTH)
        self._rates = memoryview(self._rate_map).cast("I")
        # Per worker and bucket: 1 + the window of the last login there (0: none seen).
        self._login_map = mmap.mmap(-1, workers * self._rate_row * _WIDTH)
        self._logins = memoryview(self._login_map).cast("I")
        self._clock = clock
        self.max_anonymous_per_window = max_anonymous_per_window  # 0: no limit
        self._key = secrets.token_bytes(16)
        self._buckets: dict[str, int] = {}  # an address's bucket, asked several times a connection
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.max_unauthenticated = min(max_unauthenticated or max_total, max_total)
        self.worker = 0

    def bucket(self, ip: str) -> int:
        slot = self._buckets.get(ip)
        if slot is None:
            if len(self._buckets) >= _BUCKETS_REMEMBERED:
                self._buckets.clear()
            slot = self._buckets[ip] = self._bucket(ip)
        return slot

    def _bucket(self, ip: str) -> int:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            packed = ip.encode()
        else:
            if isinstance(addr, ipaddress.IPv6Address):
                mapped = addr.ipv4_mapped
                packed = mapped.packed if mapped is not None else addr.packed[:8]
            else:
                packed = addr.packed
        digest = hashlib.blake2b(packed, digest_size=4, key=self._key).digest()
        return 1 + int.from_bytes(digest, "little") % BUCKETS

    def _sum(self, slot: int) -> int:
        cells, row = self._cells, self._row
        return sum(cells[w * row + slot] for w in range(self._workers))

    def acquire(self, ip: str) -> int | None:
        """Count one (unauthenticated) connection from `ip`; None when a cap is reached."""
        slot = self.bucket(ip)
        if (
            self._sum(0) >= self.max_total
            or self._sum(slot) >= self.max_per_ip
            or self._sum(_UNAUTHENTICATED) >= self.max_unauthenticated
        ):
            return None
        base = self.worker * self._row
        self._cells[base] += 1
        self._cells[base + slot] += 1
        self._cells[base + _UNAUTHENTICATED] += 1
        return slot

    def address_full(self, ip: str) -> bool:
        return self._sum(self.bucket(ip)) >= self.max_per_ip

    def promote(self, slot: int | None = None) -> None:
        """One of this worker's connections (from bucket `slot`) authenticated: it leaves the
        unauthenticated share, and its address is not rate limited for a while."""
        self._decrement(self.worker * self._row + _UNAUTHENTICATED)
        if slot is not None and self.max_anonymous_per_window:
            self._logins[self.worker * self._rate_row + slot] = (self._window() + 1) & 0xFFFFFFFF

    def release(self, slot: int, *, authenticated: bool = False) -> None:
        base = self.worker * self._row
        self._decrement(base + slot)
        self._decrement(base)
        if not authenticated:
            self._decrement(base + _UNAUTHENTICATED)
            if self.max_anonymous_per_window:
                self._rates[self._own_rate_row() + slot] += 1

    def over_rate(self, ip: str) -> bool:
        """True when `ip` ended too many connections without a login in this window."""
        limit = self.max_anonymous_per_window
        if not limit:
            return False
        window = self._window()
        rates, logins, row, slot = self._rates, self._logins, self._rate_row, self.bucket(ip)
        recent = ((window + 1) & 0xFFFFFFFF, window)  # a login in this window or the last
        total = 0
        for worker in range(self._workers):
            base = worker * row
            if logins[base + slot] in recent:
                return False
            if rates[base] == window:
                total += rates[base + slot]
        return total >= limit

    def _window(self) -> int:
        return int(self._clock() / RATE_WINDOW) & 0xFFFFFFFF

    def _own_rate_row(self) -> int:
        """This worker's rate row, emptied first when its counts are from an earlier window."""
        base = self.worker * self._rate_row
        window = self._window()
        if self._rates[base] != window:
            self._rates[base : base + self._rate_row] = memoryview(
                bytes(self._rate_row * _WIDTH)
            ).cast("I")
            self._rates[base] = window
        return base

    def _decrement(self, cell: int) -> None:
        if self._cells[cell] > 0:
            self._cells[cell] -= 1

    def under_pressure(self) -> bool:
        """Over half the unauthenticated share, or three quarters of the global cap, in use."""
        return (
            self._sum(_UNAUTHENTICATED) * 2 >= self.max_unauthenticated
            or self._sum(0) * 4 >= self.max_total * 3
        )

    def unauthenticated(self) -> int:
        return self._sum(_UNAUTHENTICATED)

    def active(self) -> int:
        return self._sum(0)

    def forget_worker(self, worker: int) -> None:
        """Zero a dead worker's row (called by the supervisor before replacing it).

        Its rate row stays: what an address did within the window still counts.
        """
        start = worker * self._row
        self._cells[start : start + self._row] = memoryview(bytes(self._row * _WIDTH)).cast("I")
