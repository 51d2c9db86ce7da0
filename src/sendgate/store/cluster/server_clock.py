"""A shared store's clock, read without a round trip per call.

Every node must date leases, windows and bans on one clock, the store's, yet callers ask for
the time per message, and a round trip each time cost 100 us. So the difference between the
server's clock and this host's is measured (the server's time against the middle of the round
trip) and added to this host's clock, and measured again once `ttl` seconds have passed or this
host's clock went back.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class ServerClock:
    """The server's time from this host's clock and their measured difference."""

    def __init__(self, read_server: Callable[[], float], ttl: float = 60.0) -> None:
        """`read_server`: the server's time in unix seconds (one round trip; may raise)."""
        self._read_server = read_server
        self._ttl = ttl
        self._skew = 0.0  # the server's clock minus this host's
        self._from = self._until = 0.0  # this host's times between which the skew is used

    def now(self) -> float:
        """The server's time; measures the difference first when it is due (may raise)."""
        local = time.time()
        if local >= self._until or local < self._from:
            self.measure()
            local = time.time()
        return local + self._skew

    def last(self) -> float:
        """The server's time by the last measured difference, without measuring."""
        return time.time() + self._skew

    def measure(self) -> None:
        before = time.time()
        server = self._read_server()
        after = time.time()
        self._skew = server - (before + after) / 2
        self._from, self._until = after, after + self._ttl
