"""Waiting on a condition the test can only poll (a worker's state, the kernel's), never on time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def wait_until(condition: Callable[[], bool], within: float = 10.0) -> bool:
    """Poll `condition` until it holds (True) or `within` seconds have passed (False)."""
    deadline = time.monotonic() + within
    pace = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            return False
        pace.wait(0.01)
    return True
