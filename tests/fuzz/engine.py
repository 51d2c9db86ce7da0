"""A typed view of the parts of atheris the fuzz targets use (atheris ships no type stubs).

`Provider` reads a fuzz input the way every target here does: options are taken one byte at a
time from the end of the input (FuzzedDataProvider's integers), payload bytes from the front.
`seeds.encode` writes inputs in that layout, so seeds and targets agree on it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TypeVar, cast

import atheris  # type: ignore[import-untyped]

T = TypeVar("T")


class Provider:
    """FuzzedDataProvider with the few reads the targets need, typed."""

    def __init__(self, data: bytes) -> None:
        self._fdp = atheris.FuzzedDataProvider(data)

    def option(self, count: int) -> int:
        """0 to count - 1 (count <= 256): one byte from the end, modulo `count`."""
        return int(self._fdp.ConsumeIntInRange(0, count - 1))

    def pick(self, choices: Sequence[T]) -> T:
        return choices[self.option(len(choices))]

    def take(self, count: int) -> bytes:
        """Up to `count` bytes from the front."""
        return bytes(self._fdp.ConsumeBytes(count))

    def rest(self) -> bytes:
        return self.take(self.remaining())

    def remaining(self) -> int:
        return int(self._fdp.remaining_bytes())

    def chunks(self, largest: int) -> Iterator[bytes]:
        """The rest as reads of 1 to `largest` bytes, each length one byte from the end."""
        while self.remaining():
            size = self.option(largest) + 1
            chunk = self.take(size)
            if chunk:  # the last length byte may have been the last byte of all
                yield chunk


def instrument(modules: Sequence[str]) -> AbstractContextManager[object]:
    """Coverage instrumentation for `modules` (and their submodules) imported inside."""
    return cast(AbstractContextManager[object], atheris.instrument_imports(include=list(modules)))


def enable_hooks() -> None:
    """Let libFuzzer see regex and str.startswith/endswith comparisons made from now on.

    Only str patterns are wrapped: atheris 3.0 fails on some bytes patterns (it adds a str to
    bytes while it makes up a matching input).
    """
    plain: Callable[[object, int], object] = re.__dict__["_compile"]
    atheris.enabled_hooks.add("RegEx")
    hooked: Callable[[object, int], object] = re.__dict__["_compile"]

    def compile_pattern(pattern: object, flags: int) -> object:
        return hooked(pattern, flags) if isinstance(pattern, str) else plain(pattern, flags)

    re.__dict__["_compile"] = compile_pattern
    atheris.enabled_hooks.add("str")


def fuzz(argv: list[str], target: Callable[[bytes], None]) -> None:
    """Run libFuzzer with `argv` (flags and corpus directories); exits the process at the end."""
    atheris.Setup(argv, target)
    atheris.Fuzz()
