"""Counts of what one process did (limits hit, mail held), kept in memory for metrics.

A `Counters` object belongs to whoever counts (the submission holds one per worker); a metrics
exporter reads `snapshot()`. Each count has a name and optional labels, as a Prometheus counter
would, and only ever grows.
"""

from __future__ import annotations

import threading

Labels = tuple[tuple[str, str], ...]


class Counters:
    """Named counts with labels; safe to use from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, Labels], int] = {}

    def add(self, name: str, amount: int = 1, **labels: str) -> None:
        """Add `amount` (>= 0) to the count `name` with `labels`."""
        if amount < 0:
            raise ValueError(f"a counter only grows; got {amount}")
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + amount

    def get(self, name: str, **labels: str) -> int:
        """The count `name` with exactly `labels` (0 if never added to)."""
        with self._lock:
            return self._counts.get((name, tuple(sorted(labels.items()))), 0)

    def snapshot(self) -> dict[tuple[str, Labels], int]:
        """Every count so far, by (name, sorted labels)."""
        with self._lock:
            return dict(self._counts)
