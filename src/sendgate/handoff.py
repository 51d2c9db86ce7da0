"""Group handoff: jobs from the event loop run in a worker thread in groups, not one by one.

Handing one job to a thread pool costs a wake-up of a thread, a wake-up of the loop, and GIL
contention with every other pool thread; a durable write costs a file and a directory sync. A
`GroupHandoff` keeps at most `in_flight` groups running, and every job that arrives meanwhile
waits for the next group: under load one handoff and one commit serve many messages (group
commit), and at low load a job starts at once, so nobody waits for a group to fill.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

_J = TypeVar("_J")
_R = TypeVar("_R")


class GroupHandoff(Generic[_J, _R]):
    """Runs `run_group(jobs)` in `executor`; `run_group` returns one result or exception per job.

    Use from one event loop only. An exception raised by `run_group` itself fails every job
    of its group.
    """

    def __init__(
        self,
        executor: Executor,
        run_group: Callable[[list[_J]], Sequence[_R | BaseException]],
        *,
        max_group: int = 64,
        in_flight: int = 1,
    ) -> None:
        self._executor = executor
        self._run_group = run_group
        self._max_group = max_group
        self._in_flight = in_flight
        self._running = 0
        self._waiting: list[tuple[_J, asyncio.Future[_R]]] = []

    async def run(self, job: _J) -> _R:
        """Run `job` with the next group; its result, or its exception raised here."""
        future: asyncio.Future[_R] = asyncio.get_running_loop().create_future()
        self._waiting.append((job, future))
        if self._running < self._in_flight:
            self._start()
        return await future

    def _start(self) -> None:
        group, self._waiting = (
            self._waiting[: self._max_group],
            self._waiting[self._max_group :],
        )
        self._running += 1
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(self._executor, self._run_group, [job for job, _ in group])
        done.add_done_callback(lambda finished: self._finish(finished, group))

    def _finish(
        self,
        finished: asyncio.Future[Sequence[_R | BaseException]],
        group: list[tuple[_J, asyncio.Future[_R]]],
    ) -> None:
        self._running -= 1
        if self._waiting:
            self._start()
        exc = finished.exception() if not finished.cancelled() else asyncio.CancelledError()
        outcomes: Sequence[_R | BaseException]
        if exc is not None:
            outcomes = [exc] * len(group)
        else:
            outcomes = finished.result()
            if len(outcomes) != len(group):
                outcomes = [RuntimeError("group handoff: wrong number of results")] * len(group)
        for (_, future), outcome in zip(group, outcomes, strict=True):
            if future.done():
                continue  # its connection went away meanwhile
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)


def each(func: Callable[[_J], _R]) -> Callable[[list[_J]], list[_R | BaseException]]:
    """A group function that calls `func` on every job alone: one handoff, separate outcomes."""

    def run_group(jobs: list[_J]) -> list[_R | BaseException]:
        outcomes: list[_R | BaseException] = []
        for job in jobs:
            try:
                outcomes.append(func(job))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    return run_group
