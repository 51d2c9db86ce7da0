"""Clients this process refused for a ban lately, so that their next connections cost no store read.

An attacker that keeps connecting while banned would otherwise cost a thread handoff and two
store reads per connection. A refusal is remembered for at most `TTL` seconds (and never past
the ban's end), so a ban lifted by an operator is honoured within that time; a ban made by
another worker is always seen, since only refusals are remembered, never admissions.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from sendgate.store.limits import Ban

TTL = 5.0
MAX_ENTRIES = 10000


class RecentlyRefused:
    """Client address -> the ban it was refused for, until min(now + TTL, ban end)."""

    def __init__(
        self, clock: Callable[[], float], ttl: float = TTL, size: int = MAX_ENTRIES
    ) -> None:
        self._clock = clock
        self._ttl = ttl
        self._size = size
        self._entries: OrderedDict[str, tuple[float, Ban]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, client_ip: str) -> Ban | None:
        with self._lock:
            entry = self._entries.get(client_ip)
            if entry is None:
                return None
            if self._clock() < entry[0]:
                return entry[1]
            del self._entries[client_ip]
            return None

    def add(self, client_ip: str, ban: Ban) -> None:
        until = min(self._clock() + self._ttl, ban.until)
        with self._lock:
            self._entries.pop(client_ip, None)
            while len(self._entries) >= self._size:
                self._entries.popitem(last=False)
            self._entries[client_ip] = (until, ban)
