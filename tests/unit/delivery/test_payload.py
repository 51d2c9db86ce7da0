"""Tests for sendgate.delivery.payload: bare line endings, dot-stuffing and the SIZE keyword."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sendgate.delivery.payload import data_payload, has_bare_line_ending, size_limit

line_bytes = st.binary(max_size=40) | st.lists(
    st.sampled_from([b"\r\n", b".", b"\r", b"\n", b"a", b" "]), max_size=30
).map(b"".join)


@given(line_bytes)
def test_bare_line_ending_matches_its_definition(message: bytes) -> None:
    reference = re.search(rb"\r(?!\n)|(?<!\r)\n", message) is not None
    assert has_bare_line_ending(message) == reference


@given(st.lists(st.sampled_from([b".", b"..", b"a", b" ", b"\r\n", b".\r\n"]), max_size=30))
def test_data_payload_round_trips_and_ends_once(parts: list[bytes]) -> None:
    message = b"".join(parts)
    payload = data_payload(message)
    assert payload.endswith(b"\r\n.\r\n") or (payload == b".\r\n" and message == b"")
    # Seen from the peer (DATA starts a line): the only end-of-data mark is the last one.
    wire = b"\r\n" + payload
    assert wire.find(b"\r\n.\r\n") == len(wire) - 5
    lines = payload[:-3].split(b"\r\n")[:-1]
    unstuffed = b"".join(
        line[1:] + b"\r\n" if line.startswith(b".") else line + b"\r\n" for line in lines
    )
    assert unstuffed == (message if message.endswith(b"\r\n") else message + b"\r\n")


@given(st.text(max_size=30))
def test_size_limit_reads_only_plain_numbers(text: str) -> None:
    value = size_limit(text)
    if value is not None:
        assert value > 0
        assert str(value) == text.strip().lstrip("0")


@pytest.mark.parametrize(
    ("parameter", "limit"),
    [
        ("1000", 1000),
        (" 52428800 ", 52428800),
        ("0", None),
        ("", None),
        ("1e6", None),
        ("\u0661", None),
    ],
)
def test_size_limit_examples(parameter: str, limit: int | None) -> None:
    assert size_limit(parameter) == limit
