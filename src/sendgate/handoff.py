"""Group handoff: jobs from the event loop run in a worker thread in groups, not one by one.

Handing one job to a thread pool costs a wake-up of a thread, a wake-up of the loop, and GIL
contention with every other pool thread; a durable write costs a sync. A `GroupHandoff` keeps
at most `in_flight` threads draining its jobs: each takes every job waiting (up to
`max_group`), runs them as one group, hands the results back to the loop in one call, and goes
on with the jobs that arrived meanwhile, without waiting for the loop to start it again. Under
load one handoff and one commit serve many messages (group commit); at low load a job starts
at once, so nobody waits for a group to fill.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from contextlib import suppress
from typing import Generic, TypeVar

_J = TypeVar("_J")
_R = TypeVar("_R")


class GroupHandoff(Generic[_J, _R]):
    """Runs `run_group(jobs)` in `executor`; `run_group` returns one result or exception per job.

    An exception raised by `run_group` itself fails every job of its group. Each job's answer
    is handed to the event loop that awaits it.
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
        self._lock = threading.Lock()  # the loop adds jobs, the draining threads take them
        self._running = 0
        self._waiting: list[tuple[_J, asyncio.Future[_R]]] = []

    async def run(self, job: _J) -> _R:
        """Run `job` with the next group; its result, or its exception raised here."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_R] = loop.create_future()
        entry = (job, future)
        with self._lock:
            self._waiting.append(entry)
            start = self._running < self._in_flight
            self._running += start
        if start:
            try:
                drain = self._executor.submit(self._drain)
            except BaseException as exc:
                # No thread will take this job, nor any waiting: every job here found a thread
                # running, or none it could start. This one gets the error raised here.
                with self._lock:
                    if entry in self._waiting:
                        self._waiting.remove(entry)
                self._abandon(RuntimeError(f"group handoff: no thread to run the job: {exc}"))
                raise
            drain.add_done_callback(self._drain_ended)
        return await future

    def _drain_ended(self, drain: Future[None]) -> None:
        """A drain that never ran (its pool was shut down) or failed leaves no job waiting."""
        if drain.cancelled():
            self._abandon(RuntimeError("group handoff: the thread pool was shut down"))
        elif (exc := drain.exception()) is not None:
            self._abandon(exc)

    def _abandon(self, exc: BaseException) -> None:
        """Count one draining thread less and fail every waiting job with `exc`."""
        with self._lock:
            self._running = max(0, self._running - 1)
            waiting, self._waiting = self._waiting, []
        failed: list[tuple[asyncio.Future[_R], _R | BaseException]]
        failed = [(future, exc) for _, future in waiting]
        _answer(failed)

    def _drain(self) -> None:
        """In a pool thread: run groups until none is waiting."""
        while True:
            with self._lock:
                if not self._waiting:
                    self._running = max(0, self._running - 1)
                    return
                group = self._waiting[: self._max_group]
                del self._waiting[: self._max_group]
            outcomes: Sequence[_R | BaseException]
            try:
                outcomes = self._run_group([job for job, _ in group])
            except BaseException as exc:
                outcomes = [exc] * len(group)
            if len(outcomes) != len(group):
                outcomes = [RuntimeError("group handoff: wrong number of results")] * len(group)
            _answer(
                [(future, outcome) for (_, future), outcome in zip(group, outcomes, strict=True)]
            )


def _answer(answers: list[tuple[asyncio.Future[_R], _R | BaseException]]) -> None:
    """From any thread: hand each answer to the loop that waits for it, one call per loop.

    A thread can outlive the loop that started it when loops come and go, as in tests.
    """
    loops: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[_R], _R | BaseException]]]
    loops = {}
    for answer in answers:
        loops.setdefault(answer[0].get_loop(), []).append(answer)
    for loop, some in loops.items():
        with suppress(RuntimeError):  # that loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_deliver, some)


def _deliver(answers: list[tuple[asyncio.Future[_R], _R | BaseException]]) -> None:
    """On the loop: give each job its outcome."""
    for future, outcome in answers:
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
