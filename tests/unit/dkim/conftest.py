"""Shared by the DKIM tests: a sample message, two generated keys, and small helpers."""

import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from dkim.util import parse_tag_value

from sendgate.dkim.keys import DkimKey, generate_key, load_keys
from sendgate.errors import SendgateError

DOMAIN = "example.org"
MESSAGE = (
    b"Received: from client (client [192.0.2.1]) by sendgate\r\n"
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.net>\r\n"
    b"Cc: carol@example.net\r\n"
    b"Subject: quarterly\r\n"
    b"  figures\r\n"
    b"Date: Mon, 02 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <1@example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b"X-Mailer: test\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b"\r\n"
    b"the figures are  attached.  \r\n"
)

DnsFunc = Callable[..., bytes | None]
T = TypeVar("T")


def dns_for(*keys: DkimKey) -> DnsFunc:
    """A dkimpy dnsfunc answering the TXT query of each key with its public record."""
    records = {
        f"{key.selector}._domainkey.{key.domain}.".encode(): key.public_record.encode()
        for key in keys
    }

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name)

    return lookup


def verify(message: bytes, dnsfunc: DnsFunc, index: int = 0) -> bool:
    """Verify the index-th DKIM-Signature of `message` with dkimpy."""
    try:
        result = dkim.DKIM(message).verify(idx=index, dnsfunc=dnsfunc)
    except dkim.DKIMException:
        # dkimpy raises (rather than returns False) for a body hash mismatch.
        return False
    return result is True


def signature_tags(field: bytes) -> dict[bytes, bytes]:
    """Parse the tags of one DKIM-Signature field (name included)."""
    name, _, value = field.partition(b":")
    assert name == b"DKIM-Signature"
    tags: dict[bytes, bytes] = parse_tag_value(value)
    return tags


def split_fields(header_block: bytes) -> list[bytes]:
    """Split a block of CRLF-terminated header fields into fields."""
    return [f for f in re.split(rb"\r\n(?![ \t])", header_block) if f]


def attempt(call: Callable[[], T]) -> T | SendgateError:
    """Return what `call` returns, or the SendgateError it raises (anything else propagates)."""
    try:
        return call()
    except SendgateError as exc:
        return exc


def is_one_line(text: str) -> bool:
    return "\n" not in text and "\r" not in text and text != ""


def ed_pem(encryption: serialization.KeySerializationEncryption | None = None) -> bytes:
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        encryption or serialization.NoEncryption(),
    )


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "dkim"
    generate_key(path, DOMAIN, "sg202611", "rsa")
    generate_key(path, DOMAIN, "ed202611", "ed25519")
    return path


@pytest.fixture(scope="module")
def keys(key_dir: Path) -> dict[str, DkimKey]:
    return {key.algorithm: key for key in load_keys(key_dir)}
