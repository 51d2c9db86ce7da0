"""Connection caps shared by all worker processes: a global cap and a per-client-IP cap.

Counters live in an anonymous shared memory map created before the workers fork. Each worker
writes only its own row (no locks, no lost updates) and a check sums the rows, so a crashed
worker's connections are forgotten by zeroing its row. Client addresses are hashed with a
secret key into buckets (an attacker cannot aim collisions at a victim); IPv6 clients are
counted per /64, the block one subscriber usually holds. A collision can only make a cap
stricter, never looser.
"""

from __future__ import annotations

import hashlib
import ipaddress
import mmap
import secrets

BUCKETS = 65536
_WIDTH = 4  # bytes per counter (uint32)


class ConnectionCaps:
    """Global and per-IP connection counting across `workers` processes."""

    def __init__(self, workers: int, max_total: int, max_per_ip: int) -> None:
        self._workers = workers
        self._row = BUCKETS + 1  # slot 0 of a row is the worker's total
        self._map = mmap.mmap(-1, workers * self._row * _WIDTH)
        self._cells = memoryview(self._map).cast("I")
        self._key = secrets.token_bytes(16)
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.worker = 0

    def bucket(self, ip: str) -> int:
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
        """Count one connection from `ip`; None (nothing counted) when a cap is reached."""
        slot = self.bucket(ip)
        if self._sum(0) >= self.max_total or self._sum(slot) >= self.max_per_ip:
            return None
        base = self.worker * self._row
        self._cells[base] += 1
        self._cells[base + slot] += 1
        return slot

    def release(self, slot: int) -> None:
        base = self.worker * self._row
        if self._cells[base + slot] > 0:
            self._cells[base + slot] -= 1
        if self._cells[base] > 0:
            self._cells[base] -= 1

    def active(self) -> int:
        return self._sum(0)

    def forget_worker(self, worker: int) -> None:
        """Zero a dead worker's row (called by the supervisor before replacing it)."""
        start = worker * self._row
        self._cells[start : start + self._row] = memoryview(bytes(self._row * _WIDTH)).cast("I")
