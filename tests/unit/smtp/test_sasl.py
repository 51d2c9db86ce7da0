"""Tests for the SASL exchanges: PLAIN and LOGIN, initial responses, cancel, strict decoding."""

import base64

import pytest

from sendgate.smtp import replies
from sendgate.smtp.sasl import MECHANISMS, Challenge, Credentials, SaslExchange


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_mechanisms() -> None:
    assert MECHANISMS == ("PLAIN", "LOGIN")


@pytest.mark.parametrize("mechanism", ["CRAM-MD5", "plain", "", "XOAUTH2"])
def test_unknown_mechanism_is_a_programming_error(mechanism: str) -> None:
    with pytest.raises(ValueError, match=mechanism or "^$"):
        SaslExchange(mechanism)


def test_plain_without_initial_response_sends_empty_challenge() -> None:
    exchange = SaslExchange("PLAIN")
    assert exchange.start(None) == Challenge("")
    step = exchange.respond(b64(b"\0alice\0s3cret"))
    assert step == Credentials("PLAIN", "", "alice", "s3cret")


def test_plain_with_initial_response() -> None:
    step = SaslExchange("PLAIN").start(b64(b"admin\0alice\0s3cret"))
    assert step == Credentials("PLAIN", "admin", "alice", "s3cret")


def test_plain_utf8_credentials() -> None:
    raw = "\0j\u00f6rg\0p\u00e4ss w\u00f6rd".encode()
    step = SaslExchange("PLAIN").start(b64(raw))
    assert step == Credentials("PLAIN", "", "j\u00f6rg", "p\u00e4ss w\u00f6rd")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"alice",
        b"\0alice",
        b"\0alice\0pw\0",
        b"\0\0pw",
        b"\0alice\0",
        b"\xff\0alice\0pw",
        b"\0\xffalice\0pw",
        b"\0alice\0\xff",
    ],
)
def test_plain_refuses_malformed_messages(raw: bytes) -> None:
    assert SaslExchange("PLAIN").start(b64(raw) or "=") is replies.BAD_BASE64


def test_equals_sign_is_an_empty_response() -> None:
    # RFC 4954: "=" is an empty initial response; for PLAIN and LOGIN that is no credentials.
    assert SaslExchange("PLAIN").start("=") is replies.BAD_BASE64
    assert SaslExchange("LOGIN").start("=") is replies.BAD_BASE64


@pytest.mark.parametrize(
    "line", ["!!!!", "YWJ", "YW Jj", "YWJj\n", "YWI==", "YQ==YQ==", "Y\u00e9Jj", "\u00e9", "====="]
)
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_strict_base64(mechanism: str, line: str) -> None:
    exchange = SaslExchange(mechanism)
    exchange.start(None)
    assert exchange.respond(line) is replies.BAD_BASE64


def test_login_without_initial_response() -> None:
    exchange = SaslExchange("LOGIN")
    first = exchange.start(None)
    assert isinstance(first, Challenge)
    assert base64.b64decode(first.text) == b"Username:"
    second = exchange.respond(b64(b"alice"))
    assert isinstance(second, Challenge)
    assert base64.b64decode(second.text) == b"Password:"
    assert exchange.respond(b64("s3cr\u00e9t".encode())) == Credentials(
        "LOGIN", "", "alice", "s3cr\u00e9t"
    )


def test_login_with_initial_response_skips_the_username_prompt() -> None:
    exchange = SaslExchange("LOGIN")
    step = exchange.start(b64(b"alice"))
    assert isinstance(step, Challenge)
    assert base64.b64decode(step.text) == b"Password:"
    assert exchange.respond(b64(b"pw")) == Credentials("LOGIN", "", "alice", "pw")


@pytest.mark.parametrize("raw", [b"", b"al\0ice", b"\xffalice"])
def test_login_refuses_bad_username(raw: bytes) -> None:
    exchange = SaslExchange("LOGIN")
    exchange.start(None)
    assert exchange.respond(b64(raw)) is replies.BAD_BASE64


@pytest.mark.parametrize("raw", [b"", b"p\0w", b"\xc3"])
def test_login_refuses_bad_password(raw: bytes) -> None:
    exchange = SaslExchange("LOGIN")
    exchange.start(b64(b"alice"))
    assert exchange.respond(b64(raw)) is replies.BAD_BASE64


def test_star_cancels_at_every_step() -> None:
    assert SaslExchange("PLAIN").start("*") is replies.AUTH_CANCELLED
    plain = SaslExchange("PLAIN")
    plain.start(None)
    assert plain.respond("*") is replies.AUTH_CANCELLED
    login = SaslExchange("LOGIN")
    login.start(None)
    assert login.respond("*") is replies.AUTH_CANCELLED
    login = SaslExchange("LOGIN")
    login.start(b64(b"alice"))
    assert login.respond("*") is replies.AUTH_CANCELLED


def test_credentials_repr_hides_the_password() -> None:
    credentials = Credentials("PLAIN", "admin", "alice", "correct horse battery")
    assert "correct horse battery" not in repr(credentials)
    assert "correct horse battery" not in str(credentials)
    assert "alice" in repr(credentials)
