"""Tests for DATA decoding: the terminator across chunks, dot-unstuffing, size and line checks."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sendgate.smtp.data import (
    Content,
    ContentProblem,
    DataReader,
    check_content,
    dot_stuff,
    dot_unstuff,
)
from sendgate.smtp.spill import lines_problem

SLACK = 64 * 1024  # the reader's allowance for dot-stuffing beyond max_size


def read_all(reader: DataReader, chunks: list[bytes]) -> tuple[int, Content | None]:
    """Feed chunks until the reader yields Content; return (octets consumed in total, Content)."""
    used = 0
    for chunk in chunks:
        n, content = reader.feed(chunk)
        assert 0 <= n <= len(chunk)
        used += n
        if content is not None:
            return used, content
        assert n == len(chunk)  # without a terminator every octet is consumed
    return used, None


# --- check_content ---


def test_check_content_accepts_crlf_text() -> None:
    data = b"Subject: hi\r\n\r\nbody\r\n"
    assert check_content(data, len(data), 100) == Content(data, len(data), None)


def test_check_content_accepts_empty() -> None:
    assert check_content(b"", 0, 0) == Content(b"", 0, None)


def test_check_content_size_limit_is_inclusive() -> None:
    assert check_content(b"ab\r\n", 4, 4).problem is None
    assert check_content(b"ab\r\n", 5, 4) == Content(None, 5, ContentProblem.TOO_BIG)


@pytest.mark.parametrize(
    "data", [b"a\nb", b"a\rb", b"a\r\r\n", b"a\n\r", b"a\r\n\n", b"\n", b"\r", b"a\r\nb\r"]
)
def test_check_content_refuses_bare_newlines(data: bytes) -> None:
    assert check_content(data, len(data), 100) == Content(
        None, len(data), ContentProblem.BARE_NEWLINE
    )


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"a" * 998 + b"\r\n", None),
        (b"a" * 998 + b"\r\n" + b"b" * 998 + b"\r\n", None),
        (b"a" * 999 + b"\r\n", ContentProblem.LONG_LINE),
        (b"short\r\n" + b"a" * 999 + b"\r\nshort\r\n", ContentProblem.LONG_LINE),
        (b"a" * 5000 + b"\r\n", ContentProblem.LONG_LINE),
    ],
)
def test_check_content_line_length(data: bytes, problem: ContentProblem | None) -> None:
    assert check_content(data, len(data), 100_000).problem is problem


@pytest.mark.parametrize("data", [b"a", b"a\r\nb", b"Subject: x\r\n\r\nbody", b"a" * 5000])
def test_check_content_refuses_a_missing_final_crlf(data: bytes) -> None:
    # Only BDAT can end mid-line; a long unterminated last line is refused for the missing CRLF.
    assert check_content(data, len(data), 100_000) == Content(
        None, len(data), ContentProblem.NO_FINAL_CRLF
    )


@pytest.mark.parametrize(
    ("data", "max_size", "problem"),
    [
        (b"abc", 2, ContentProblem.TOO_BIG),  # size is checked first
        (b"a\nb", 100, ContentProblem.BARE_NEWLINE),  # a bare LF, not just a missing CRLF
        (b"a\r\nb\r", 100, ContentProblem.BARE_NEWLINE),
    ],
)
def test_check_content_problem_order(data: bytes, max_size: int, problem: ContentProblem) -> None:
    assert check_content(data, len(data), max_size).problem is problem


# --- dot-stuffing ---


@pytest.mark.parametrize(
    ("raw", "content"),
    [
        (b"", b""),
        (b"plain\r\n", b"plain\r\n"),
        (b"..lead\r\n", b".lead\r\n"),
        (b"a\r\n...\r\n", b"a\r\n..\r\n"),
        (b"a.\r\nb..c\r\n", b"a.\r\nb..c\r\n"),
        (b"a\n..b\r\n", b"a\n..b\r\n"),  # only CRLF starts a line
        (b".", b""),
    ],
)
def test_dot_unstuff(raw: bytes, content: bytes) -> None:
    assert dot_unstuff(raw) == content


@pytest.mark.parametrize(
    ("content", "stuffed"),
    [
        (b"", b""),
        (b".\r\n", b"..\r\n"),
        (b"a\r\n.b\r\n..\r\n", b"a\r\n..b\r\n...\r\n"),
        (b"a.b\r\n", b"a.b\r\n"),
    ],
)
def test_dot_stuff(content: bytes, stuffed: bytes) -> None:
    assert dot_stuff(content) == stuffed
    assert dot_unstuff(stuffed) == content


# --- DataReader ---


def test_reader_single_chunk() -> None:
    raw = b"Subject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n"
    used, content = DataReader(1000).feed(raw)
    assert used == raw.index(b"QUIT")
    assert content == Content(b"Subject: x\r\n\r\n.dot\r\n", 20, None)


def test_reader_empty_message() -> None:
    assert DataReader(1000).feed(b".\r\nNOOP\r\n") == (3, Content(b"", 0, None))


def test_reader_needs_the_whole_terminator() -> None:
    reader = DataReader(1000)
    assert reader.feed(b"a\r\n.\r") == (5, None)
    assert reader.feed(b"\n") == (1, Content(b"a\r\n", 3, None))


def test_reader_dot_at_start_of_later_chunk_is_not_a_terminator_without_crlf() -> None:
    reader = DataReader(1000)
    assert reader.feed(b"abc") == (3, None)
    assert reader.feed(b".\r\n") == (3, None)
    assert reader.feed(b".\r\n") == (3, Content(b"abc.\r\n", 6, None))


def test_reader_every_split_gives_the_same_result() -> None:
    raw = b"..a\r\nb\r\n..\r\n.x\r\n.\r\nNOOP\r\n"
    expected = read_all(DataReader(1000), [raw])
    assert expected == (raw.index(b"NOOP"), Content(b".a\r\nb\r\n.\r\nx\r\n", 13, None))
    for i in range(len(raw) + 1):
        for j in range(i, len(raw) + 1):
            chunks = [raw[:i], raw[i:j], raw[j:]]
            assert read_all(DataReader(1000), chunks) == expected, (i, j)


def test_reader_byte_by_byte() -> None:
    raw = b"line\r\n..\r\n.\r\n"
    used, content = read_all(DataReader(1000), [raw[i : i + 1] for i in range(len(raw))])
    assert (used, content) == (len(raw), Content(b"line\r\n.\r\n", 9, None))


def test_reader_content_over_limit_after_unstuffing() -> None:
    used, content = DataReader(10).feed(b"01234567890\r\n.\r\n")
    assert used == 16
    assert content == Content(None, 13, ContentProblem.TOO_BIG)


def test_reader_stuffing_does_not_count_against_the_limit() -> None:
    raw = b"..\r\n" * 3 + b".\r\n"  # 12 octets on the wire, 9 after unstuffing
    assert DataReader(9).feed(raw) == (len(raw), Content(b".\r\n" * 3, 9, None))


def test_reader_far_over_limit_stops_keeping_bytes() -> None:
    reader = DataReader(10)
    chunk = b"x" * 1000 + b"\r\n"
    total = 0
    for _ in range(100):
        assert reader.feed(chunk) == (len(chunk), None)
        total += len(chunk)
    used, content = reader.feed(b".\r\n")
    assert used == 3
    assert content == Content(None, total, ContentProblem.TOO_BIG)
    assert total > 10 + SLACK


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"a\nb\r\n.\r\n", ContentProblem.BARE_NEWLINE),
        (b"a\rb\r\n.\r\n", ContentProblem.BARE_NEWLINE),
        (b"a\n.\nb\r\n.\r\n", ContentProblem.BARE_NEWLINE),
        (b"a" * 999 + b"\r\n.\r\n", ContentProblem.LONG_LINE),
        (b"." + b"a" * 998 + b"\r\n.\r\n", None),  # 998 after unstuffing
    ],
)
def test_reader_content_problems(raw: bytes, problem: ContentProblem | None) -> None:
    used, content = DataReader(100_000).feed(raw)
    assert used == len(raw)
    assert content is not None
    assert content.problem is problem
    assert (content.data is None) is (problem is not None)


def test_reader_never_accepts_a_truncated_message() -> None:
    reader = DataReader(10)
    assert reader.feed(b"hello") == (5, None)
    # This chunk takes the total past max_size + slack, so it is not kept; it ends in "\r\n.".
    big = b"a" * (10 + SLACK - 5 - 2) + b"\r\n."
    assert reader.feed(big) == (len(big), None)
    used, content = reader.feed(b"\r\n")
    assert used == 2
    assert content is not None
    assert content.data is None
    assert content.problem is ContentProblem.TOO_BIG


# --- regressions: EOF after STARTTLS, the size-limit slack boundary ---


@pytest.mark.parametrize("split", [1, 2])
def test_reader_outcome_at_the_slack_boundary_does_not_depend_on_chunking(split: int) -> None:
    max_size = 3 * SLACK
    content = b"..\r\n" * SLACK  # max_size + SLACK octets on the wire, max_size after unstuffing
    raw = content + b".\r\n"
    whole = DataReader(max_size).feed(raw)
    assert whole == (len(raw), Content(b".\r\n" * SLACK, max_size, None))
    cut = len(content) + split  # the first read ends in "." or ".\r"
    assert read_all(DataReader(max_size), [raw[:cut], raw[cut:]]) == whole


# --- dropping, and the long-line check over windows ---


def test_a_dropped_reader_keeps_nothing_and_reports_no_memory() -> None:
    reader = DataReader(10_000)
    used, content = reader.feed(b"abc\r\n")
    assert (used, content, reader.held) == (5, None, 5)
    reader.drop()
    assert reader.held == 0
    reader.feed(b"def\r\n")
    assert reader.held == 0
    _, content = reader.feed(b".\r\n")
    assert content is not None
    assert (content.data, content.problem) == (None, ContentProblem.NO_MEMORY)


@pytest.mark.parametrize("at", [0, 1, (1 << 20) - 500, (1 << 20) - 2, 1 << 20, -1001])
def test_a_long_line_is_found_wherever_the_windows_fall(at: int) -> None:
    line = b"a" * 76 + b"\r\n"
    body = bytearray(line * ((3 << 20) // len(line)))
    at %= len(body)  # negative: from the end (before the last CRLF)
    ok = bytes(body)
    assert check_content(ok, len(ok), 1 << 30).problem is None
    body[at : at + 999] = b"b" * 999  # one line of at least 999 octets
    data = bytes(body)
    assert check_content(data, len(data), 1 << 30).problem is ContentProblem.LONG_LINE


def test_lines_of_998_octets_across_window_edges_are_fine() -> None:
    line = b"c" * 998 + b"\r\n"
    data = line * ((3 << 20) // len(line))
    assert check_content(data, len(data), 1 << 30).problem is None


def test_a_crlf_across_a_window_edge_does_not_make_a_long_line() -> None:
    # A line of 998 octets whose CR is the last octet of the first 1 MiB window.
    first = b"a" * 575 + b"\r\n"
    data = first + (b"b" * 998 + b"\r\n") * 1100
    assert data[(1 << 20) - 1 : (1 << 20) + 1] == b"\r\n"
    assert check_content(data, len(data), 1 << 30).problem is None


def _lines_oracle(data: bytes, final: bool) -> ContentProblem | None:
    """The rules of `lines_problem`, spelt out octet by octet."""
    for at, octet in enumerate(data):
        if octet == 13 and data[at + 1 : at + 2] != b"\n":
            return ContentProblem.BARE_NEWLINE
        if octet == 10 and data[at - 1 : at] != b"\r":
            return ContentProblem.BARE_NEWLINE
    if final and data and not data.endswith(b"\r\n"):
        return ContentProblem.NO_FINAL_CRLF
    if any(len(line) > 998 for line in data.split(b"\r\n")):
        return ContentProblem.LONG_LINE
    return None


@given(
    parts=st.lists(
        st.one_of(
            st.sampled_from([b"\r\n", b"\r", b"\n", b"\n\r", b"\r\r\n", b"a", b"."]),
            st.integers(0, 1200).map(lambda n: b"x" * n),
        ),
        max_size=40,
    ),
    final=st.booleans(),
)
def test_lines_problem_agrees_with_the_octet_by_octet_rules(
    parts: list[bytes], final: bool
) -> None:
    data = b"".join(parts)
    assert lines_problem(data, final=final) == _lines_oracle(data, final)
