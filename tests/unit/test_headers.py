"""Tests for sendgate.headers: where the header section of a message ends."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sendgate.headers import header_end, header_section

# A header line: any bytes but CR and LF, at least one of them.
_LINE = st.binary(min_size=1, max_size=20).filter(lambda b: b"\r" not in b and b"\n" not in b)


@pytest.mark.parametrize(
    ("content", "end"),
    [
        (b"Subject: x\r\n\r\nbody\r\n", 12),
        (b"Subject: x\r\nTo: y\r\n\r\n", 19),
        (b"\r\nbody only\r\n", 0),
        (b"Subject: only headers\r\n", 23),
        (b"Subject: no final CRLF", 22),
        (b"", 0),
    ],
)
def test_header_end_examples(content: bytes, end: int) -> None:
    assert header_end(content) == end
    assert header_section(content) == content[:end]


@given(st.lists(_LINE, max_size=5), st.binary(max_size=40))
def test_the_section_is_the_lines_before_the_first_empty_one(
    lines: list[bytes], body: bytes
) -> None:
    header = b"".join(line + b"\r\n" for line in lines)
    content = header + b"\r\n" + body
    assert header_end(content) == len(header)
    assert header_section(content) == header


@given(st.lists(_LINE, min_size=1, max_size=5))
def test_without_an_empty_line_all_is_header(lines: list[bytes]) -> None:
    content = b"\r\n".join(lines)
    assert header_end(content) == len(content)
    assert header_end(content + b"\r\n") == len(content) + 2
