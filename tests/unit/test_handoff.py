"""Tests for sendgate.handoff: jobs that arrive while a group runs go together in the next one."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from sendgate.handoff import GroupHandoff, each


class Recorder:
    """A group function that records its groups and can be held at its start."""

    def __init__(self) -> None:
        self.groups: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def __call__(self, jobs: list[int]) -> Sequence[int | BaseException]:
        self.groups.append(list(jobs))
        self.started.set()
        self.gate.wait(10)
        return [ValueError(f"odd {j}") if j % 2 else j * 10 for j in jobs]


@pytest.fixture
def executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(4)


def test_a_lone_job_runs_at_once_and_gets_its_result(executor: ThreadPoolExecutor) -> None:
    recorder = Recorder()

    async def main() -> int:
        return await GroupHandoff(executor, recorder).run(4)

    assert asyncio.run(main()) == 40
    assert recorder.groups == [[4]]


def test_jobs_arriving_during_a_group_run_together_next(executor: ThreadPoolExecutor) -> None:
    recorder = Recorder()
    recorder.gate.clear()

    async def main() -> list[int | BaseException]:
        handoff = GroupHandoff(executor, recorder, max_group=3)
        first = asyncio.ensure_future(handoff.run(0))
        await asyncio.to_thread(recorder.started.wait, 10)  # the first group is running
        rest = [asyncio.ensure_future(handoff.run(j)) for j in (2, 4, 6, 8)]
        await asyncio.sleep(0)  # let them queue behind the running group
        recorder.gate.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    assert asyncio.run(main()) == [0, 20, 40, 60, 80]
    assert recorder.groups == [[0], [2, 4, 6], [8]]


def test_each_job_gets_its_own_exception(executor: ThreadPoolExecutor) -> None:
    recorder = Recorder()

    async def main() -> list[int | BaseException]:
        handoff = GroupHandoff(executor, recorder)
        return await asyncio.gather(*(handoff.run(j) for j in (1, 2)), return_exceptions=True)

    odd, even = asyncio.run(main())
    assert isinstance(odd, ValueError)
    assert str(odd) == "odd 1"
    assert even == 20


def test_a_failing_group_fails_every_job_and_the_next_group_runs(
    executor: ThreadPoolExecutor,
) -> None:
    calls: list[list[int]] = []
    gate = threading.Event()

    def flaky(jobs: list[int]) -> Sequence[int | BaseException]:
        calls.append(jobs)
        gate.wait(10)
        if len(calls) == 2:
            raise OSError("disk gone")
        return jobs

    async def main() -> list[int | BaseException]:
        handoff = GroupHandoff(executor, flaky)
        jobs = [asyncio.ensure_future(handoff.run(j)) for j in (1, 2, 3)]
        await asyncio.sleep(0)
        gate.set()
        done = await asyncio.gather(*jobs, return_exceptions=True)
        return [*done, await handoff.run(4)]

    results = asyncio.run(main())
    assert calls == [[1], [2, 3], [4]]
    assert [str(r) for r in results] == ["1", "disk gone", "disk gone", "4"]


def test_a_job_whose_waiter_is_cancelled_does_not_break_the_group(
    executor: ThreadPoolExecutor,
) -> None:
    recorder = Recorder()
    recorder.gate.clear()

    async def main() -> int:
        handoff = GroupHandoff(executor, recorder)
        gone = asyncio.ensure_future(handoff.run(0))
        kept = asyncio.ensure_future(handoff.run(2))
        await asyncio.to_thread(recorder.started.wait, 10)
        gone.cancel()  # the client went away while its message was being stored
        recorder.gate.set()
        return await kept

    assert asyncio.run(main()) == 20
    assert recorder.groups == [[0], [2]]


def test_each_calls_the_function_on_every_job_and_keeps_failures_apart() -> None:
    def half(n: int) -> int:
        if n % 2:
            raise ValueError(f"odd {n}")
        return n // 2

    outcomes = each(half)([4, 3, 8])
    assert outcomes[0] == 2
    assert isinstance(outcomes[1], ValueError)
    assert str(outcomes[1]) == "odd 3"
    assert outcomes[2] == 4


def test_a_group_function_answering_the_wrong_number_fails_each_job(
    executor: ThreadPoolExecutor,
) -> None:
    async def main() -> list[int | BaseException]:
        handoff: GroupHandoff[int, int] = GroupHandoff(executor, lambda jobs: [])
        return list(await asyncio.gather(handoff.run(1), return_exceptions=True))

    [outcome] = asyncio.run(main())
    assert isinstance(outcome, RuntimeError)
    assert "wrong number of results" in str(outcome)


def test_the_draining_thread_answers_each_job_on_its_own_loop(
    executor: ThreadPoolExecutor,
) -> None:
    recorder = Recorder()
    recorder.gate.clear()
    handoff = GroupHandoff(executor, recorder)
    queued = threading.Event()
    second: list[int] = []

    def other_loop() -> None:
        async def run() -> int:
            job = asyncio.ensure_future(handoff.run(2))
            await asyncio.sleep(0)  # now waiting behind the first group, in the same thread
            queued.set()
            return await job

        second.append(asyncio.run(run()))

    async def first() -> int:
        job = asyncio.ensure_future(handoff.run(4))
        await asyncio.to_thread(recorder.started.wait, 10)
        thread = threading.Thread(target=other_loop)
        thread.start()
        await asyncio.to_thread(queued.wait, 10)
        recorder.gate.set()
        result = await job
        await asyncio.to_thread(thread.join, 10)
        return result

    # The thread was started for the first loop; the second job's answer must go to its own.
    assert asyncio.run(first()) == 40
    assert second == [20]
    assert recorder.groups == [[4], [2]]


class RefusingOnce(ThreadPoolExecutor):
    """A pool whose first submit fails as a shut-down pool's does."""

    refused = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if not self.refused:
            self.refused = True
            raise RuntimeError("cannot schedule new futures after shutdown")
        return super().submit(fn, *args, **kwargs)


def test_a_job_no_thread_can_take_fails_and_the_next_one_runs() -> None:
    handoff: GroupHandoff[int, int] = GroupHandoff(RefusingOnce(1), Recorder())

    async def main() -> int:
        with pytest.raises(RuntimeError, match="shutdown"):
            await asyncio.wait_for(handoff.run(2), 10)
        return await asyncio.wait_for(handoff.run(4), 10)

    assert asyncio.run(main()) == 40


def test_a_job_whose_pool_shuts_down_before_it_runs_fails_and_the_next_one_runs() -> None:
    pool = ThreadPoolExecutor(1)
    gate = threading.Event()
    pool.submit(gate.wait, 10)  # the only thread is busy: the drain waits in the pool's queue
    handoff: GroupHandoff[int, int] = GroupHandoff(pool, Recorder())

    async def main() -> int:
        job = asyncio.ensure_future(handoff.run(2))
        await asyncio.sleep(0)  # queued behind the busy thread
        pool.shutdown(wait=False, cancel_futures=True)
        gate.set()
        with pytest.raises(RuntimeError, match="thread pool was shut down"):
            await asyncio.wait_for(job, 10)
        with pytest.raises(RuntimeError, match="shutdown"):
            await asyncio.wait_for(handoff.run(4), 10)  # no thread to start: fails at once
        return 0

    assert asyncio.run(main()) == 0
