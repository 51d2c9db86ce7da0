"""How many delivery runners `serve` starts, and each one's share of the outbound limits.

The limits in `[delivery]` are for the whole node: runner k of n gets concurrency // n, plus
one of the remainder when k is below it, so the shares add up to exactly the configured total.
A runner needs at least one of each limit, hence never more runners than the smaller limit.
"""

from __future__ import annotations

from dataclasses import replace

from sendgate.config.schema import DeliveryConfig

AUTO_MOST = 4  # each runner is a process of its own; one delivers over 1000 messages/s


def runner_count(delivery: DeliveryConfig, cpus: int | None) -> int:
    """The runners to start: `delivery.runners`, or one per core (at most AUTO_MOST) for 0."""
    wanted = delivery.runners or min(cpus or 1, AUTO_MOST)
    return max(1, min(wanted, delivery.concurrency, delivery.domain_concurrency))


def share_of(total: int, runner: int, runners: int) -> int:
    """Runner `runner`'s part of `total` split among `runners` (the parts sum to `total`)."""
    return total // runners + (1 if runner < total % runners else 0)


def runner_settings(delivery: DeliveryConfig, runner: int, runners: int) -> DeliveryConfig:
    """`delivery` with runner `runner`'s share of the node's limits."""
    return replace(
        delivery,
        concurrency=share_of(delivery.concurrency, runner, runners),
        domain_concurrency=share_of(delivery.domain_concurrency, runner, runners),
    )
