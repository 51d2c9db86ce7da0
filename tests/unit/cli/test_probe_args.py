"""`sendgate probe HOST[:PORT]`: the server argument."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sendgate.cli.probe import parse_server


@pytest.mark.parametrize(
    ("text", "implicit", "expected"),
    [
        ("mail.example.test", False, ("mail.example.test", 587)),
        ("mail.example.test", True, ("mail.example.test", 465)),
        ("mail.example.test:2525", False, ("mail.example.test", 2525)),
        ("127.0.0.1:465", False, ("127.0.0.1", 465)),
        ("[::1]:587", True, ("::1", 587)),
        ("[::1]", True, ("::1", 465)),
        ("::1", False, ("::1", 587)),
        ("2001:db8::25", False, ("2001:db8::25", 587)),
    ],
)
def test_accepted(text: str, implicit: bool, expected: tuple[str, int]) -> None:
    assert parse_server(text, implicit) == expected


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "'': no host"),
        (":587", "':587': no host"),
        ("host:", "'host:': port must be a number from 1 to 65535"),
        ("host:0", "'host:0': port must be a number from 1 to 65535"),
        ("host:65536", "'host:65536': port must be a number from 1 to 65535"),
        ("host:-1", "'host:-1': port must be a number from 1 to 65535"),
        ("host:\u0663", "'host:\u0663': port must be a number from 1 to 65535"),
        ("[::1", "'[::1': expected [IPV6]:PORT"),
        ("[::1]587", "'[::1]587': expected [IPV6]:PORT"),
        ("[nothost]:25", "'[nothost]:25': not a host name or address"),
        ("a:b:c", "'a:b:c': not a host name or address"),
    ],
)
def test_refused(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=r"^'") as caught:
        parse_server(text, False)
    assert str(caught.value) == error


@given(st.ip_addresses(v=6), st.integers(min_value=1, max_value=65535))
def test_bracketed_ipv6_round_trips(address: ipaddress.IPv6Address, port: int) -> None:
    assert parse_server(f"[{address}]:{port}", False) == (str(address), port)


@given(st.text(max_size=30))
def test_any_text_is_parsed_or_refused_with_a_value_error(text: str) -> None:
    problem = ""
    try:
        host, port = parse_server(text, False)
    except ValueError as exc:
        problem = str(exc)
    if problem:
        assert problem.startswith(repr(text) + ": ")
    else:
        assert host
        assert 0 < port < 65536
