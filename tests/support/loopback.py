"""One life cycle for the servers tests run on a background thread: start, serve, stop.

A `ThreadedServer` binds its sockets on the caller's thread (so a taken address fails `start`
at once), serves on one background thread and says when it accepts connections; `start` returns
only then. `stop` makes the thread return, joins it and closes the sockets. An exception that
escapes the serving thread, or that the server hands to `_failed`, is raised by `stop`: a bug in
a peer fails the test that used it instead of vanishing in a thread. `AsyncioServer` is the same
for servers living in an asyncio event loop on that thread. Both are context managers.

Security: test code only; subclasses listen on the loopback addresses tests give them.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import threading
from types import TracebackType
from typing import Self

START_TIMEOUT = 10.0
STOP_TIMEOUT = 30.0


class ThreadedServer(abc.ABC):
    """A server run by one background thread named `name`; subclasses fill in the hooks."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._started = threading.Event()
        self._errors_lock = threading.Lock()
        self._errors: list[BaseException] = []
        self._thread: threading.Thread | None = None

    # -- hooks ------------------------------------------------------------------------------

    @abc.abstractmethod
    def _bind(self) -> None:
        """Open the listening sockets, on the caller's thread."""

    @abc.abstractmethod
    def _serve(self) -> None:
        """Serve on the background thread: call `_serving()` once accepting, return when told."""

    @abc.abstractmethod
    def _interrupt(self) -> None:
        """Make `_serve` return soon (called from the test's thread)."""

    @abc.abstractmethod
    def _release(self) -> None:
        """Close what `_bind` opened; runs at every stop, also after a failed start."""

    # -- for subclasses ---------------------------------------------------------------------

    def _serving(self) -> None:
        """Tell `start` that connections are accepted now."""
        self._started.set()

    def _failed(self, error: BaseException) -> None:
        """Keep `error` for `stop` to raise (a server bug must fail the test)."""
        with self._errors_lock:
            self._errors.append(error)

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self.name} is already running")
        self._started.clear()
        try:
            self._bind()
        except BaseException:
            self._release()
            raise
        self._thread = threading.Thread(target=self._thread_main, name=self.name, daemon=True)
        self._thread.start()
        started = self._started.wait(START_TIMEOUT)
        with self._errors_lock:
            failed = bool(self._errors)
        if failed or not started:
            self.stop()  # raises what the thread raised
            raise RuntimeError(f"{self.name} did not start within {START_TIMEOUT}s")

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        try:
            if thread is not None:
                if thread.is_alive():
                    self._interrupt()
                thread.join(STOP_TIMEOUT)
                if thread.is_alive():
                    self._failed(RuntimeError(f"{self.name} did not stop in {STOP_TIMEOUT}s"))
        finally:
            self._release()
        with self._errors_lock:
            errors, self._errors = self._errors, []
        if errors:
            raise RuntimeError(f"{self.name} failed") from errors[0]

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _thread_main(self) -> None:
        try:
            self._serve()
        except BaseException as error:  # kept for stop() to raise
            self._failed(error)
        finally:
            self._started.set()  # start() must not wait for a thread that has ended


class AsyncioServer(ThreadedServer):
    """A ThreadedServer whose thread runs an asyncio event loop for as long as it serves."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    @abc.abstractmethod
    async def _run_async(self) -> None:
        """Serve in the loop: call `_serving()` once accepting, return after `_stopped()`."""

    async def _stopped(self) -> None:
        """Wait until `stop` is called."""
        assert self._stopping is not None
        await self._stopping.wait()

    def _serve(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        await self._run_async()

    def _interrupt(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop has ended on its own
                loop.call_soon_threadsafe(stopping.set)
