"""Tests for the streamed body hash and `sign_head`: the same signature as for the whole message."""

import hashlib

import dkim
import pytest
from dkim.canonicalization import CanonicalizationPolicy
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.unit.dkim.conftest import DOMAIN, MESSAGE, dns_for, signature_tags
from tests.unit.dkim.test_signer import dkimpy_sign, same_second

from sendgate.dkim.bodyhash import RelaxedBodyHash
from sendgate.dkim.keys import DkimKey
from sendgate.dkim.signer import DkimSigner

RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
LINE = st.one_of(
    st.text(alphabet=" \tab.\x00\xe9", max_size=12).map(lambda t: t.encode("utf-8")),
    st.sampled_from([b"", b" ", b"\t\t", b"x  y \t", b"  lead"]),
)


def dkimpy_hash(body: bytes) -> bytes:
    return hashlib.sha256(RELAXED.canonicalize_body(body)).digest()


def streamed_hash(blocks: list[bytes]) -> bytes:
    hasher = RelaxedBodyHash()
    for block in blocks:
        hasher.update(block)
    return hasher.digest()


@settings(max_examples=400, deadline=None)
@given(lines=st.lists(LINE, max_size=30), data=st.data())
def test_streamed_hash_equals_dkimpys_for_any_split_at_line_ends(
    lines: list[bytes], data: st.DataObject
) -> None:
    body = b"".join(line + b"\r\n" for line in lines)
    ends = sorted(set(data.draw(st.lists(st.integers(0, len(lines)), max_size=6))))
    blocks = []
    start = 0
    for end in [*ends, len(lines)]:
        blocks.append(b"".join(line + b"\r\n" for line in lines[start:end]))
        start = max(start, end)
    assert b"".join(blocks) == body
    assert streamed_hash(blocks) == dkimpy_hash(body)


@pytest.mark.parametrize(
    "body",
    [b"", b"\r\n", b"\r\n" * 5, b"a\r\n" + b"\r\n" * 70_000, b" \t \r\n\r\n", b"x \r\n \r\n"],
)
def test_empty_and_trailing_empty_lines(body: bytes) -> None:
    assert streamed_hash([body]) == dkimpy_hash(body)
    cut = body.find(b"\r\n") + 2  # blocks always end at a line's end
    assert streamed_hash([body[:cut], body[cut:]]) == dkimpy_hash(body)


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_sign_head_gives_the_bytes_sign_gives(keys: dict[str, DkimKey], algorithm: str) -> None:
    signer = DkimSigner([keys[algorithm]])
    end = MESSAGE.index(b"\r\n\r\n") + 4
    head, body = MESSAGE[:end], MESSAGE[end:]
    _, (whole, streamed) = same_second(
        lambda: signer.sign(MESSAGE, DOMAIN),
        lambda: signer.sign_head(head, streamed_hash([body]), DOMAIN),
    )
    assert streamed == whole
    assert dkim.verify(streamed + MESSAGE, dnsfunc=dns_for(keys[algorithm])) is True


def test_ed25519_field_is_byte_identical_to_dkimpy(keys: dict[str, DkimKey]) -> None:
    key = keys["ed25519"]
    include = [b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"mime-version"]
    include += [b"content-type", b"from"]
    _, (ours, theirs) = same_second(
        lambda: DkimSigner([key]).sign(MESSAGE, DOMAIN),
        lambda: dkimpy_sign(key, MESSAGE, include, b"ed25519-sha256"),
    )
    assert signature_tags(ours)[b"a"] == b"ed25519-sha256"
    assert ours == theirs


def test_a_wrong_body_hash_does_not_verify(keys: dict[str, DkimKey]) -> None:
    end = MESSAGE.index(b"\r\n\r\n") + 4
    field = DkimSigner([keys["rsa"]]).sign_head(
        MESSAGE[:end], streamed_hash([b"other\r\n"]), DOMAIN
    )
    assert dkim.verify(field + MESSAGE, dnsfunc=dns_for(keys["rsa"])) is False
