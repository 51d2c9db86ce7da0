"""Tests for sendgate.config.kinds: the value parsers shared with `sendgate init`."""

import re
from pathlib import Path

import pytest
from tests.unit.config.conftest import ANY_V4

from sendgate.config.echo import Where
from sendgate.config.kinds import (
    Bool,
    Choice,
    Domains,
    Float,
    HostName,
    HostPort,
    HostPortKind,
    HostPorts,
    Int,
    Kind,
    OptionalPath,
    Overrides,
    PathKind,
    Secret,
    StoreUrl,
    Text,
    is_loopback,
    parse_hostname,
)
from sendgate.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("0.0.0.0:587", ANY_V4, 587),
        ("127.0.0.1:0", "127.0.0.1", 0),
        ("[::1]:587", "::1", 587),
        ("[::]:465", "::", 465),
        ("localhost:65535", "localhost", 65535),
        ("mail.example.com:25", "mail.example.com", 25),
    ],
)
def test_host_port_parses_and_prints_back(text: str, host: str, port: int) -> None:
    address = HostPort.parse(text)

    assert address == HostPort(host, port)
    assert str(address) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", 'expected HOST:PORT, got ""'),
        (":587", 'expected HOST:PORT, got ":587"'),
        ("[::1]", 'expected HOST:PORT, got "[::1]"'),
        ("[127.0.0.1]:587", 'expected an IPv6 address inside [...], got "[127.0.0.1]:587"'),
        ("host:", 'expected a port from 0 to 65535 after the host, got "host:"'),
        ("host:-1", 'expected a port from 0 to 65535 after the host, got "host:-1"'),
        ("host:\u0661\u0662", 'expected a port from 0 to 65535 after the host, got "host:١٢"'),
        ("host:0000587", 'expected a port from 0 to 65535 after the host, got "host:0000587"'),
        ("1.2.3:587", 'expected an IP address or host name before the port, got "1.2.3:587"'),
    ],
)
def test_host_port_rejects_with_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        HostPort.parse(text)


@pytest.mark.parametrize(
    "name", ["localhost", "mail.example.com", "a-b.c-d.example", "x" * 63 + ".example"]
)
def test_parse_hostname_accepts_dns_names(name: str) -> None:
    assert parse_hostname(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "-mail.example.com",
        "mail-.example.com",
        "mail..example.com",
        "mail.example.com.",
        "x" * 64 + ".example",
        "mail_1.example.com",
        "b\u00fccher.example",
        "10.0.0.1",
        ".".join(["abcdefghi"] * 26),
    ],
)
def test_parse_hostname_rejects_other_text(name: str) -> None:
    with pytest.raises(ValueError, match=r'^expected a host name like "mail\.example\.com", got '):
        parse_hostname(name)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost", True),
        ("LocalHost", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("192.0.2.1", False),
        ("relay.example.net", False),
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


@pytest.mark.parametrize(
    ("kind", "raw", "message"),
    [
        (HostName(), 1, ': expected a host name like "mail.example.com", got 1'),
        (HostPortKind(), ["a:1"], ": expected HOST:PORT, got an array"),
        (HostPorts(), ["a:1", 2], "[1]: expected HOST:PORT, got 2"),
        (Text(), "a\x00b", ': must be a string of printable characters, got "a\\u0000b"'),
        (Secret(), "pass\nword", ": must be a string of printable characters"),
        (
            Domains(),
            ["*", "-a.example"],
            '[1]: expected a domain, ".domain" or "*", got "-a.example"',
        ),
        (Overrides(("a", "b")), ["c"], '[0]: unknown override "c"; known: "a", "b"'),
        # A store URL may hold a password: the message never shows it.
        (
            StoreUrl(("redis",)),
            "redis:/u:s3cret@h",
            ': must be "local", or a URL (redis://), got a URL of another form',
        ),
        (
            StoreUrl(("redis",)),
            "mysql://u:s3cret@h",
            ': must be "local", or a URL (redis://), got a URL of another form',
        ),
        (
            StoreUrl(("redis",)),
            "redis://",
            ': must be "local", or a URL (redis://), got a URL of another form',
        ),
        # urllib cannot read these: refused here, not a traceback at the unsafe-setting check.
        (
            StoreUrl(("redis",)),
            "redis://:s3cret@[::1:6379/0",
            ': must be "local", or a URL (redis://), got a URL of another form',
        ),
        (
            StoreUrl(("redis",)),
            "redis://:s3cret@h:port/0",
            ': must be "local", or a URL (redis://), got a URL of another form',
        ),
        (StoreUrl(("redis",)), "redis://u:s3 cret@h", ': must be "local", or a URL (redis://)'),
        (StoreUrl(("redis",)), 7, ': must be "local", or a URL (redis://)'),
    ],
)
def test_kinds_refuse_with_one_line_naming_the_spot(kind: Kind, raw: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        kind.parse(raw, Where("f.toml", "k", Path("/etc")))

    assert str(caught.value) == "f.toml: k" + message


KINDS: list[Kind] = [
    Bool(),
    Int(1, 2),
    Float(0.5, 2),
    Choice(("a",)),
    Text(),
    Secret(),
    HostName(),
    PathKind(),
    OptionalPath(),
    HostPortKind(),
    HostPorts(),
    Domains(),
    Overrides(("a",)),
    StoreUrl(("redis", "unix")),
]


@pytest.mark.parametrize("raw", ["local", "redis://127.0.0.1:6379/0", "unix:///run/redis.sock"])
def test_a_store_url_is_local_or_a_url_of_a_known_scheme(raw: str) -> None:
    assert StoreUrl(("redis", "unix")).parse(raw, Where("f.toml", "k", Path("/etc"))) == raw


@pytest.mark.parametrize("kind", KINDS, ids=[type(kind).__name__ for kind in KINDS])
def test_every_kind_describes_itself_in_one_line(kind: Kind) -> None:
    text = kind.describe()

    assert text
    assert text.isprintable()
