"""Tests for the address parser: SMTP paths, local parts, domains, literals, header mailboxes."""

import inspect
import sys

import pytest

from sendgate.smtp.address import (
    MAX_COMMENT_DEPTH,
    MAX_DOMAIN,
    MAX_LOCAL_PART,
    MAX_PATH,
    Address,
    AddressError,
    parse_domain,
    parse_header_mailboxes,
    parse_local,
    parse_mailbox,
    parse_path,
    quote_local,
    split_path,
)


def domain_of_length(n: int) -> str:
    """An LDH domain of exactly n octets made of labels of at most 63 octets."""
    labels: list[str] = []
    left = n
    while left > 64:
        labels.append("a" * 63)
        left -= 64
    labels.append("b" * left)
    domain = ".".join(labels)
    assert len(domain) == n
    return domain


def test_limits() -> None:
    assert (MAX_LOCAL_PART, MAX_DOMAIN, MAX_PATH) == (64, 255, 256)


# --- mailboxes ---


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("alice@example.org", Address("alice", "example.org")),
        ("Alice.Smith@EXAMPLE.Org", Address("Alice.Smith", "example.org")),
        ("!#$%&'*+-/=?^_`{|}~@example.org", Address("!#$%&'*+-/=?^_`{|}~", "example.org")),
        ('"john doe"@example.org', Address("john doe", "example.org")),
        ('"a\\"b"@example.org', Address('a"b', "example.org")),
        ('"a\\\\b"@example.org', Address("a\\b", "example.org")),
        ('"a\\xb"@example.org', Address("axb", "example.org")),
        ('"a@b"@example.org', Address("a@b", "example.org")),
        ('"plain"@example.org', Address("plain", "example.org")),
        ('".."@example.org', Address("..", "example.org")),
        ("a@x", Address("a", "x")),
        ("a@123.example", Address("a", "123.example")),
        ("a@xn--bcher-kva.example", Address("a", "xn--bcher-kva.example")),
        ("a@[192.0.2.1]", Address("a", "[192.0.2.1]")),
        ("a@[IPv6:2001:DB8:0:0:0:0:0:1]", Address("a", "[IPv6:2001:db8::1]")),
        ("a@[ipv6:::1]", Address("a", "[IPv6:::1]")),
        ("a@[IPv6:::ffff:192.0.2.1]", Address("a", "[IPv6:::ffff:c000:201]")),
        ("a" * 64 + "@example.org", Address("a" * 64, "example.org")),
        ("a@" + domain_of_length(255), Address("a", domain_of_length(255))),
        ("a@" + "c" * 63 + ".org", Address("a", "c" * 63 + ".org")),
    ],
)
def test_parse_mailbox_ascii(text: str, address: Address) -> None:
    assert parse_mailbox(text) == address
    assert parse_mailbox(text, smtputf8=True) == address


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("j\u00f6rg@b\u00fccher.example", Address("j\u00f6rg", "b\u00fccher.example")),
        ("j\u00f6rg@B\u00dcCHER.Example", Address("j\u00f6rg", "b\u00fccher.example")),
        (
            "\u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a",
            Address("\u7528\u6237", "\u4f8b\u5b50.\u5e7f\u544a"),
        ),
        ('"j\u00f6rg m"@example.org', Address("j\u00f6rg m", "example.org")),
        ("\u00e9" * 32 + "@example.org", Address("\u00e9" * 32, "example.org")),
        ("a@\u00e9x-1.example", Address("a", "\u00e9x-1.example")),
        ("a@\u0915\u093f.example", Address("a", "\u0915\u093f.example")),  # letter + mark
    ],
)
def test_parse_mailbox_utf8(text: str, address: Address) -> None:
    assert parse_mailbox(text, smtputf8=True) == address
    assert not address.is_ascii
    with pytest.raises(AddressError) as info:
        parse_mailbox(text)
    assert info.value.non_ascii


@pytest.mark.parametrize(
    "text",
    [
        "",
        "alice",
        "@example.org",
        "alice@",
        "alice@@example.org",
        "a..b@example.org",
        ".a@example.org",
        "a.@example.org",
        "a b@example.org",
        "a(b)@example.org",
        "a,b@example.org",
        '"unterminated@example.org',
        '""@example.org',
        '"a"b@example.org',
        '"a\x01"@example.org',
        '"a\\\x01"@example.org',
        '"a"@',
        "a" * 65 + "@example.org",
        '"' + "a" * 65 + '"@example.org',
        "a@-x.org",
        "a@x-.org",
        "a@x..org",
        "a@x.org.",
        "a@.x.org",
        "a@x_y.org",
        "a@x y.org",
        "a@" + "c" * 64 + ".org",
        "a@" + domain_of_length(256),
        "a@[1.2.3]",
        "a@[01.2.3.4]",
        "a@[256.1.1.1]",
        "a@[1.2.3.4",
        "a@[]",
        "a@[foo]",
        "a@[IPv4:1.2.3.4]",
        "a@[IPv6:zz::1]",
        "a@[IPv6:1.2.3.4]",
        "a@[IPv6:1::2::3]",
    ],
)
def test_parse_mailbox_refuses(text: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_mailbox(text, smtputf8=True)
    assert not info.value.non_ascii


@pytest.mark.parametrize(
    "text",
    [
        "\u00e9" * 33 + "@example.org",  # 66 octets
        "a@-\u00e9.example",
        "a@\u00e9-.example",
        "a@\u2603.example",  # a symbol, not a letter
        "a@\u00e9_x.example",
        "a@\u00e9 x.example",
        "a@\u00e9\u200b.example",  # a format character
        "a@" + "\u00e9" * 60 + ".example",  # the A-label would be over 63 octets
    ],
)
def test_parse_mailbox_refuses_utf8(text: str) -> None:
    with pytest.raises(AddressError):
        parse_mailbox(text, smtputf8=True)


def test_address_error_is_a_value_error() -> None:
    error = AddressError("x")
    assert isinstance(error, ValueError)
    assert not error.non_ascii
    assert str(error) == "x"


def test_parse_local_and_domain_directly() -> None:
    assert parse_local('"a b"', smtputf8=False) == "a b"
    assert parse_domain("Example.ORG", smtputf8=False) == "example.org"
    with pytest.raises(AddressError) as info:
        parse_domain("b\u00fccher.example", smtputf8=False)
    assert info.value.non_ascii
    with pytest.raises(AddressError):
        parse_domain("", smtputf8=False)
    with pytest.raises(AddressError):
        parse_local('"j\u00f6rg"', smtputf8=False)


# --- canonical form ---


@pytest.mark.parametrize(
    ("local", "written"),
    [
        ("alice", "alice"),
        ("a.b+c", "a.b+c"),
        ("j\u00f6rg", "j\u00f6rg"),
        ("john doe", '"john doe"'),
        ("a..b", '"a..b"'),
        (".a", '".a"'),
        ('a"b', '"a\\"b"'),
        ("a\\b", '"a\\\\b"'),
        ("a@b", '"a@b"'),
    ],
)
def test_quote_local(local: str, written: str) -> None:
    assert quote_local(local) == written
    assert parse_local(written, smtputf8=True) == local


def test_address_str_round_trips() -> None:
    address = Address('john "jd" doe', "example.org")
    assert str(address) == '"john \\"jd\\" doe"@example.org'
    assert parse_mailbox(str(address)) == address
    assert address.is_ascii


@pytest.mark.parametrize(
    "text",
    [
        "\u212a.example",  # KELVIN SIGN lower-cases to ASCII "k"
        "B\u00dcCHER.example",
        # U+0130 lower-cases to two code points: the canonical form is longer than the input.
        pytest.param("\u0130" * 29 + ".example", id="dotted-capital-i-label"),
        pytest.param(".".join(["\u0130" * 10] * 12), id="dotted-capital-i-domain"),
    ],
)
def test_canonical_domain_is_itself_valid(text: str) -> None:
    try:
        canonical = parse_domain(text, smtputf8=True)
    except AddressError:
        return  # refusing the input is fine; accepting it with an invalid canonical form is not
    assert parse_domain(canonical, smtputf8=True) == canonical


@pytest.mark.parametrize("literal", ["[IPv6:fe80::1%eth0]", "[IPv6:fe80::1%x y]"])
def test_ipv6_literal_refuses_zone_identifier(literal: str) -> None:
    # RFC 5321 4.1.3 IPv6-addr has no zone; Python's ipaddress accepts "%zone" since 3.9.
    with pytest.raises(AddressError):
        parse_domain(literal, smtputf8=False)


# --- paths ---


@pytest.mark.parametrize(
    ("argument", "split"),
    [
        ("<a@b.org>", ("<a@b.org>", "")),
        ("<>", ("<>", "")),
        ("<a@b.org> SIZE=1  BODY=7BIT ", ("<a@b.org>", "SIZE=1  BODY=7BIT")),
        ('<"a>b"@c.org>', ('<"a>b"@c.org>', "")),
        ('<"a\\">"@c.org> X', ('<"a\\">"@c.org>', "X")),
        ("<a\\b@c.org>", ("<a\\b@c.org>", "")),
    ],
)
def test_split_path(argument: str, split: tuple[str, str]) -> None:
    assert split_path(argument) == split


@pytest.mark.parametrize(
    "argument",
    ["", "a@b.org", " <a@b.org>", "<a@b.org", "<a@b.org>SIZE=1", '<"a@b.org>', '<"a\\">'],
)
def test_split_path_refuses(argument: str) -> None:
    with pytest.raises(AddressError):
        split_path(argument)


def test_parse_path_null() -> None:
    assert parse_path("<>", smtputf8=False, allow_null=True) is None
    with pytest.raises(AddressError):
        parse_path("<>", smtputf8=False, allow_null=False)


@pytest.mark.parametrize(
    "path",
    [
        "<alice@example.org>",
        "<@relay.example:alice@example.org>",
        "<@relay.example,@[192.0.2.1],@hop.example:alice@example.org>",
    ],
)
def test_parse_path_ignores_source_routes(path: str) -> None:
    address = parse_path(path, smtputf8=False, allow_null=False)
    assert address == Address("alice", "example.org")


@pytest.mark.parametrize(
    "path",
    [
        "<@relay.example>",
        "<@relay.example alice@example.org>",
        "<@relay.example,hop.example:alice@example.org>",
        "<@-bad.example:alice@example.org>",
        "<@relay.example:>",
        "<@:alice@example.org>",
        "<alice>",
    ],
)
def test_parse_path_refuses(path: str) -> None:
    with pytest.raises(AddressError):
        parse_path(path, smtputf8=False, allow_null=True)


def test_parse_path_length_limit() -> None:
    # "<" + 64 + "@" + domain + ">": 256 octets is the most RFC 5321 4.5.3.1.3 allows.
    longest = "<" + "a" * 64 + "@" + domain_of_length(189) + ">"
    assert len(longest) == MAX_PATH
    assert parse_path(longest, smtputf8=False, allow_null=False) is not None
    too_long = "<" + "a" * 64 + "@" + domain_of_length(190) + ">"
    with pytest.raises(AddressError):
        parse_path(too_long, smtputf8=False, allow_null=False)


def test_parse_path_utf8_needs_smtputf8() -> None:
    path = "<j\u00f6rg@example.org>"
    assert parse_path(path, smtputf8=True, allow_null=False) == Address("j\u00f6rg", "example.org")
    with pytest.raises(AddressError) as info:
        parse_path(path, smtputf8=False, allow_null=False)
    assert info.value.non_ascii


# --- header mailboxes ---


@pytest.mark.parametrize(
    ("value", "addresses"),
    [
        ("alice@example.org", [Address("alice", "example.org")]),
        ("Alice <alice@EXAMPLE.org>", [Address("alice", "example.org")]),
        (
            "alice@example.org, Bob <bob@example.net>",
            [Address("alice", "example.org"), Address("bob", "example.net")],
        ),
        ('"John Doe" <"john doe"@example.org>', [Address("john doe", "example.org")]),
        ("=?utf-8?q?J=C3=B6rg?= <joerg@example.org>", [Address("joerg", "example.org")]),
        ("(comment) alice@example.org", [Address("alice", "example.org")]),
        ("j\u00f6rg@b\u00fccher.example", [Address("j\u00f6rg", "b\u00fccher.example")]),
        ("a@[192.0.2.1]", [Address("a", "[192.0.2.1]")]),
    ],
)
def test_header_mailboxes(value: str, addresses: list[Address]) -> None:
    assert parse_header_mailboxes("From", value) == addresses


@pytest.mark.parametrize(
    "value",
    [
        "",
        '"',
        "<",
        "a@",
        "<alice@example.org",
        "alice@example.org>",
        "a@b@example.org",
        "<>",
        '""@example.org',
        "undisclosed-recipients:;",
        "team: alice@example.org;",
        "a@x_y.org",
        "Alice <a@[foo]>",
        "<@relay.example:alice@example.org>",
    ],
)
def test_header_mailboxes_refused(value: str) -> None:
    with pytest.raises(AddressError):
        parse_header_mailboxes("From", value)


def test_header_mailboxes_utf8_needs_smtputf8() -> None:
    with pytest.raises(AddressError) as info:
        parse_header_mailboxes("Sender", "j\u00f6rg@example.org", smtputf8=False)
    assert info.value.non_ascii


@pytest.mark.parametrize("value", ["a@[", ".:", "\t.)"])
def test_header_mailboxes_never_raise_anything_else(value: str) -> None:
    with pytest.raises(AddressError):
        parse_header_mailboxes("From", value)


def test_nested_comments_are_refused_before_the_stdlib_recurses() -> None:
    deepest = "(" * MAX_COMMENT_DEPTH + ")" * MAX_COMMENT_DEPTH + " alice@example.org"
    assert parse_header_mailboxes("From", deepest) == [Address("alice", "example.org")]
    # One level more, or thousands (the stdlib parser raised RecursionError at a few hundred).
    for depth in (MAX_COMMENT_DEPTH + 1, 5000):
        with pytest.raises(AddressError, match=r"^address header nested too deeply$"):
            parse_header_mailboxes("From", "(" * depth + "alice@example.org")


@pytest.mark.parametrize(
    "value",
    [
        '"' + "(" * 100 + '" <alice@example.org>',  # inside a quoted string: not comments
        "(" + "\\(" * 100 + ") alice@example.org",  # escaped: one comment
        '("' + "()" * 50 + '") alice@example.org',  # a quote inside a comment is a character
    ],
)
def test_only_real_comment_nesting_counts(value: str) -> None:
    assert parse_header_mailboxes("From", value) == [Address("alice", "example.org")]


def test_a_recursion_in_the_stdlib_parser_is_a_refusal() -> None:
    # A caller already deep in its stack: the allowed nesting overflows it (the backstop).
    value = "(" * MAX_COMMENT_DEPTH + "alice@example.org"
    depth = len(inspect.stack(0))
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + 60)
    try:
        with pytest.raises(AddressError, match=r"^unparsable address header$"):
            parse_header_mailboxes("From", value)
    finally:
        sys.setrecursionlimit(limit)
