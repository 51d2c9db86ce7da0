"""How many delivery runners `serve` starts, and each one's share of the outbound limits.

By default one runner per two cores (at least one, at most AUTO_MOST): on 2 cores
(bench/README.md, 2026-12-06) a second runner drained a full queue 1.4x as fast, but under
submission load that saturated both cores it cost about 9 % more CPU per message (one more
process preempting the acceptors, each runner's claims and handoffs serving half the mail).

The limits in `[delivery]` are for the whole node: runner k of n gets concurrency // n, plus
one of the remainder when k is below it, so the shares add up to exactly the configured total.
A runner needs at least one of each limit, hence never more runners than the smaller limit.
"""

from __future__ import annotations

from dataclasses import replace

from sendgate.config.schema import DeliveryConfig

AUTO_MOST = 4  # each runner is a process of its own; one delivers over 1000 messages/s


def runner_count(delivery: DeliveryConfig, cpus: int | None) -> int:
    """The runners to start: `delivery.runners`, or for 0 one per two cores (1 to AUTO_MOST)."""
    wanted = delivery.runners or max(1, min((cpus or 1) // 2, AUTO_MOST))
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
