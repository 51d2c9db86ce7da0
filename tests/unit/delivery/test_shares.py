"""Tests for sendgate.delivery.shares: how many runners, and each one's part of the limits."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from sendgate.config.schema import DeliveryConfig
from sendgate.delivery.shares import AUTO_MOST, runner_count, runner_settings, share_of


def test_zero_means_one_runner_per_two_cores_up_to_a_bound() -> None:
    delivery = replace(DeliveryConfig(), concurrency=100, domain_concurrency=100)
    assert runner_count(delivery, 4) == 2
    assert runner_count(delivery, 5) == 2
    assert runner_count(delivery, 2) == 1
    assert runner_count(delivery, 1) == 1
    assert runner_count(delivery, None) == 1  # the core count is unknown
    assert runner_count(delivery, 64) == AUTO_MOST
    assert runner_count(replace(delivery, runners=8), 2) == 8  # asked for: as asked


def test_never_more_runners_than_either_limit() -> None:
    delivery = replace(DeliveryConfig(), runners=8, concurrency=3, domain_concurrency=20)
    assert runner_count(delivery, 8) == 3
    assert runner_count(replace(delivery, concurrency=20, domain_concurrency=1), 8) == 1


@given(total=st.integers(1, 1000), runners=st.integers(1, 16))
def test_the_shares_add_up_to_the_total_and_differ_by_at_most_one(total: int, runners: int) -> None:
    parts = [share_of(total, runner, runners) for runner in range(runners)]
    assert sum(parts) == total
    assert max(parts) - min(parts) <= 1


def test_a_runner_gets_its_share_of_both_limits_and_keeps_the_rest() -> None:
    delivery = replace(DeliveryConfig(), concurrency=20, domain_concurrency=5, lease=60.0)
    first, second = (runner_settings(delivery, k, 2) for k in range(2))
    assert (first.concurrency, first.domain_concurrency) == (10, 3)
    assert (second.concurrency, second.domain_concurrency) == (10, 2)
    assert first.lease == second.lease == 60.0
