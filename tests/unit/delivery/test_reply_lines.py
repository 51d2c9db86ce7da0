"""The next hop's reply lines are read the same however its bytes are cut (pipeline._Replies)."""

from __future__ import annotations

import asyncio

import pytest

from sendgate.delivery.pipeline import MAX_LINE, _Replies


def read(chunks: list[bytes]) -> tuple[list[tuple[int, str]], str | None]:
    parser = _Replies(asyncio.Protocol())
    for chunk in chunks:
        parser.data_received(chunk)
    return list(parser.replies), None if parser.error is None else str(parser.error)


@pytest.mark.parametrize("length", [MAX_LINE - 1, MAX_LINE, MAX_LINE + 1])
@pytest.mark.parametrize("ending", [b"\r\n", b"\n", b"\r\r\n"])
def test_a_long_line_gets_one_verdict_for_every_cut(length: int, ending: bytes) -> None:
    line = b"250 " + b"x" * (length - 4)
    data = line + ending + b"250 next\r\n"
    whole = read([data])
    for cut in range(len(line) - 2, len(line) + len(ending) + 1):
        assert read([data[:cut], data[cut:]]) == whole, cut
    # One CR ends the line; a second one is text, and counts.
    extra = "\r" if ending == b"\r\r\n" else ""
    accepted = length + len(extra) <= MAX_LINE
    assert (whole[1] is None) == accepted, whole[1]
    if accepted:
        assert whole[0] == [(250, "x" * (length - 4) + extra), (250, "next")]


def test_a_cr_inside_the_line_is_kept_as_text() -> None:
    assert read([b"250 a\rb\r\n"]) == ([(250, "a\rb")], None)
