"""A fake clock for code that takes `clock: Callable[[], float]`: time moves only when told.

`FakeClock()` is called like `time.time` and returns the current fake time. Tests move it with
`advance(seconds)` or `set(t)`; it refuses to go back unless made with `monotonic=False`, so a
test cannot hide a bug by travelling backwards by accident. With `step`, every reading moves the
clock on by that much afterwards (for code that must see time pass between two calls, like ids
that follow the clock).
"""

from __future__ import annotations

# 2027-01-15T08:00:00Z: a realistic epoch, far from 0 so that "no time yet" bugs show.
START = 1_800_000_000.0


class FakeClock:
    """Injected time: starts at `start` and moves only when a test says so (or by `step`)."""

    def __init__(self, start: float = START, *, step: float = 0.0, monotonic: bool = True) -> None:
        if monotonic and step < 0:
            raise ValueError("a monotonic clock cannot step backwards")
        self._now = start
        self._step = step
        self._monotonic = monotonic

    def __call__(self) -> float:
        now = self._now
        self._now += self._step
        return now

    @property
    def now(self) -> float:
        """The time the next reading returns (reading this does not step the clock)."""
        return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock on by `seconds`; returns the new time."""
        return self.set(self._now + seconds)

    def set(self, t: float) -> float:
        """Move the clock to `t`; returns it. Going back is a ValueError if monotonic."""
        if self._monotonic and t < self._now:
            raise ValueError(f"the clock is monotonic: {t} is before {self._now}")
        self._now = t
        return t
