"""An in-memory stand-in for the flag methods of a `UserStore`, counting its calls.

Tests of the sending limits use it instead of a real user store: it keeps flags the way the
contract says (`set_flag` keeps an existing flag as it is) and counts reads and writes, so a
test can check how many store round trips a message costs.
"""

from __future__ import annotations

from sendgate.store.users import Flag


class FakeFlags:
    """`flag_of` / `set_flag` / `clear_flag` on a dict."""

    def __init__(self) -> None:
        self.flags: dict[str, Flag] = {}
        self.reads = 0
        self.writes = 0

    def flag_of(self, username: str) -> Flag | None:
        self.reads += 1
        return self.flags.get(username.lower())

    def set_flag(self, username: str, reason: str, at: float) -> Flag:
        self.writes += 1
        return self.flags.setdefault(username.lower(), Flag(username.lower(), at, reason))

    def clear_flag(self, username: str) -> bool:
        return self.flags.pop(username.lower(), None) is not None
