"""The delivery runner: the process `sendgate serve` starts beside the acceptors to empty the queue.

It wires the scheduler to its collaborators (resolver, MTA-STS cache, planner, TLS trust store,
courier, DSN writer with the DKIM signer), reloads on SIGHUP what it is given to (the signer's
keys), and stops on SIGTERM after letting running attempts finish within the grace period.
What it cannot finish is retried after the restart (the queue is the only truth).
"""

from __future__ import annotations

import asyncio
import random
import signal
import ssl
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sendgate.config.schema import Config
from sendgate.delivery.bounce import DsnWriter
from sendgate.delivery.courier import Courier
from sendgate.delivery.dns import Resolver
from sendgate.delivery.mtasts import MtaSts
from sendgate.delivery.plan import MX_PORT, Planner, Relay
from sendgate.delivery.scheduler import Scheduler
from sendgate.delivery.target import Timeouts
from sendgate.dkim.signer import DkimSigner
from sendgate.errors import ConfigError
from sendgate.log import EventLog
from sendgate.store.queue import QueueStore

IO_THREADS = 8


def trust_store(cfg: Config) -> ssl.SSLContext:
    """The CAs outbound TLS is verified against: the system's plus `delivery.ca_file`.

    ConfigError when the CA file cannot be used; `serve` calls this before forking so that a
    bad file stops the start (exit 2) instead of a runner restarting for ever.
    """
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cfg.delivery.ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(cfg.delivery.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"delivery.ca_file: cannot load CA certificates from {cfg.delivery.ca_file}: "
                f"{getattr(exc, 'reason', None) or exc.strerror or exc}"
            ) from None
    return context


def build_scheduler(
    cfg: Config,
    *,
    queue: QueueStore,
    mta_sts_cache: Path,
    relays: tuple[Relay, ...],
    signer: DkimSigner | None,
    log: EventLog,
    executor: ThreadPoolExecutor,
    clock: Callable[[], float] = time.time,
    rng: random.Random | None = None,
    timeouts: Timeouts | None = None,
    mx_port: int = MX_PORT,
) -> Scheduler:
    rng = rng or random.Random()
    delivery = cfg.delivery
    nameservers = [(hp.host, hp.port) for hp in delivery.resolver] or None
    resolver = Resolver(nameservers)
    context = trust_store(cfg)
    mta_sts = MtaSts(resolver, mta_sts_cache, context, clock) if delivery.mta_sts else None
    planner = Planner(
        relays=relays,
        resolver=resolver,
        mta_sts=mta_sts,
        dane_enabled=delivery.dane,
        rng=rng,
        mx_port=mx_port,
    )
    courier = Courier(
        planner=planner,
        helo=cfg.hostname,
        ssl_context=context,
        timeouts=timeouts or Timeouts(),
        concurrency=delivery.concurrency,
        log=log,
    )
    return Scheduler(
        queue=queue,
        courier=courier,
        dsn=DsnWriter(queue, cfg.hostname, signer),
        executor=executor,
        log=log,
        settings=delivery,
        clock=clock,
        rng=rng,
    )


def run_delivery(
    cfg: Config,
    log: EventLog,
    queue: QueueStore,
    mta_sts_cache: Path,
    relays: tuple[Relay, ...],
    signer: DkimSigner | None,
    run: Callable[[Callable[[], Coroutine[Any, Any, None]]], None],
    reload: Callable[[], object] = lambda: None,
    chores: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
) -> int:
    """The runner process's main; `run` runs a coroutine function on the chosen event loop.

    `queue` and `mta_sts_cache` (the directory of cached MTA-STS policies) come from the
    storage backends (`store.backends`): the runner chooses no path of its own.
    """
    executor = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="delivery")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        log.defer_on(loop)
        try:
            await deliver(loop)
        finally:
            log.defer_on(None)

    async def deliver(loop: asyncio.AbstractEventLoop) -> None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, reload)  # TLS reload is for the acceptors
        running = [loop.create_task(chore()) for chore in chores]  # a heartbeat
        scheduler = build_scheduler(
            cfg,
            queue=queue,
            mta_sts_cache=mta_sts_cache,
            relays=relays,
            signer=signer,
            log=log,
            executor=executor,
        )
        if cfg.delivery.hold:
            log.event("delivery_held", "warning", reason="delivery.hold = true")
            await stop.wait()
        else:
            log.event("delivery_started", routes=len(relays))
            await scheduler.run(stop, grace=cfg.limits.shutdown_grace)
        for chore in running:
            chore.cancel()
        log.event("delivery_stopped")

    try:
        run(main)
    finally:
        # Stopping: a repeated SIGTERM (the supervisor's) must not cut short the attempts'
        # last store writes (this runs in the runner's own process).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        executor.shutdown(wait=True)
    return 0
