"""Memory for messages in flight: a worker's budget, and freed memory given back to the system.

Message content is held in memory while it is received and until its 250 (the Session keeps
it, then the handler signs and queues it). Each worker lets its connections hold at most
`capacity` octets of content together. A client that declared SIZE at MAIL FROM waits there
for room (holding nothing, so no two connections can wait for each other) up to a deadline,
then gets 452 4.3.1; a message without SIZE that would go over is dropped as it arrives and
its end answered 452 4.3.1.
"""

from __future__ import annotations

import asyncio
import ctypes
import time

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
# Not lower: the group commit's batch and other per-message buffers of a few hundred KiB would
# each be a fresh mapping (mmap, page faults, munmap): at 256 KiB that cost 15-30 % more CPU
# per message at 100 messages per connection. Bodies past 256 KiB stream to disk anyway.
_MMAP_THRESHOLD = 1024 * 1024


class MemoryBudget:
    """Octets of message content a worker's connections may hold together."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._freed: asyncio.Event | None = None  # made on first wait, on the worker's loop

    def take(self, octets: int) -> bool:
        """Count `octets` more if they fit; False (nothing counted) if they do not."""
        if self.used + octets > self.capacity:
            return False
        self.used += octets
        return True

    def give(self, octets: int) -> None:
        self.used = max(0, self.used - octets)
        if self._freed is not None:
            self._freed.set()

    async def wait_to_take(self, octets: int, timeout: float) -> bool:
        """`take`, waiting up to `timeout` seconds for others to give room back."""
        deadline = time.monotonic() + timeout
        while not self.take(octets):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._freed is None:
                self._freed = asyncio.Event()
            self._freed.clear()
            try:
                # Not wait_for: on 3.11 it can swallow a cancellation that races the event,
                # and a cancelled waiter must never walk away with octets taken.
                async with asyncio.timeout(left):
                    await self._freed.wait()
            except TimeoutError:
                return self.take(octets)
        return True


def return_freed_memory() -> None:
    """Make glibc give large freed blocks back to the system at once.

    glibc raises its mmap threshold after large blocks are freed (up to 32 MiB), after which
    message-sized buffers come from the heap and stay there: a burst of big messages left the
    workers hundreds of MiB larger for good. A fixed threshold keeps every block from 1 MiB
    up in its own mapping, returned when freed.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass  # not glibc: its allocator has its own policy
