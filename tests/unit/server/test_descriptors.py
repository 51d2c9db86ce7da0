"""Tests for sendgate.server.descriptors: the soft limit raised to the hard one, the reserve."""

from __future__ import annotations

import subprocess
import sys

from sendgate.server.descriptors import RESERVE, connection_budget

_PROBE = """
import resource
from sendgate.server.descriptors import raise_limit
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
print(soft, hard, raise_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def _probe(limit: str) -> list[int]:
    done = subprocess.run(
        ["prlimit", f"--nofile={limit}", "--", sys.executable, "-c", _PROBE],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return [int(word) for word in done.stdout.split()]


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    assert _probe("256:2048") == [256, 2048, 2048, 2048]


def test_a_limit_already_at_the_hard_one_stays() -> None:
    assert _probe("1024:1024") == [1024, 1024, 1024, 1024]


def test_the_budget_keeps_the_reserve() -> None:
    assert connection_budget(1024) == 1024 - RESERVE
    assert connection_budget(RESERVE) == 1  # never nothing at all
