"""The connection log under a flood: the first few connections of an address in full, then counts.

A flood of connections must not become a flood of log lines (one attacker's 12,800 handshakes
once wrote 38,000 lines in 10 s, drowning everything else and filling the disk). So within one
interval, an address's first `burst` connections log their lines as usual; the lines of its
later connections (connect, tls, tls_failed, refused, evicted, timeout, disconnect) are
counted instead, and when the interval ends one `flood` line per such address gives the counts.
Only the connection's own lines are held back: what the handler logs (logins, failures, bans,
queued mail) is always written, so fail2ban and the operator see every login attempt.
"""

from __future__ import annotations

from collections import Counter

from sendgate.log import BoundLog, EventLog, Value
from sendgate.server.caps import address_key

BURST = 20  # connections of one address per interval logged in full
INTERVAL = 10.0  # seconds (the worker calls `flush` this often)


class CountedLog:
    """Stands in for a connection's BoundLog: its events count toward its address's summary."""

    __slots__ = ("_flood", "_key")

    def __init__(self, flood: FloodLog, key: str) -> None:
        self._flood = flood
        self._key = key

    def event(self, name: str, level: str = "info", /, **fields: Value) -> None:
        self._flood.count(self._key, name)


class FloodLog:
    """Hands out each new connection's log, full or counted; `flush` ends an interval."""

    def __init__(self, log: EventLog, *, burst: int = BURST, interval: float = INTERVAL) -> None:
        self._log = log
        self._burst = burst
        self.interval = interval
        self._connections: Counter[str] = Counter()
        self._held: dict[str, Counter[str]] = {}

    def connection(self, client_ip: str, conn_id: str) -> BoundLog | CountedLog:
        """The log for a new connection from `client_ip` (counted per IPv4 address or /64)."""
        key = address_key(client_ip)
        seen = self._connections[key] = self._connections[key] + 1
        if seen <= self._burst:
            return self._log.bind(conn=conn_id, client=client_ip)
        return CountedLog(self, key)

    def count(self, key: str, event: str) -> None:
        """One event of a connection whose lines are held back (in the interval under way)."""
        counts = self._held.get(key)
        if counts is None:
            counts = self._held[key] = Counter()
        counts[event] += 1

    def flush(self) -> None:
        """Write one line per address whose lines were held back; start a new interval."""
        held, self._held = self._held, {}
        connections, self._connections = self._connections, Counter()
        for key, counts in held.items():
            fields: dict[str, Value] = {
                "client": key,
                "interval": f"{self.interval:g}s",
                "connections": connections[key],
                "logged": self._burst,
            }
            fields.update(sorted(counts.items()))
            self._log.event("flood", "warning", **fields)
