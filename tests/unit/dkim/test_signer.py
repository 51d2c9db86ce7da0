"""Tests for sendgate.dkim.signer: signatures verified by dkimpy, byte-equal to dkimpy's own."""

import time
from collections.abc import Callable
from pathlib import Path

import dkim
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.unit.dkim.conftest import (
    DOMAIN,
    MESSAGE,
    attempt,
    dns_for,
    ed_pem,
    is_one_line,
    signature_tags,
    split_fields,
    verify,
)

from sendgate.dkim.keys import ALGORITHMS, DkimKey, generate_key, load_keys
from sendgate.dkim.signer import DkimError, DkimSigner
from sendgate.errors import SendgateError, UserError


@pytest.fixture(scope="module")
def both(keys: dict[str, DkimKey]) -> DkimSigner:
    return DkimSigner(list(keys.values()))


# --- signing -------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_signature_verifies(keys: dict[str, DkimKey], algorithm: str) -> None:
    key = keys[algorithm]
    header = DkimSigner([key]).sign(MESSAGE, DOMAIN)
    tags = signature_tags(header)
    assert tags[b"a"] == (b"rsa-sha256" if algorithm == "rsa" else b"ed25519-sha256")
    assert tags[b"d"] == DOMAIN.encode()
    assert dkim.verify(header + MESSAGE, dnsfunc=dns_for(key)) is True


def test_both_algorithms_side_by_side_rsa_first(keys: dict[str, DkimKey], both: DkimSigner) -> None:
    block = both.sign(MESSAGE, DOMAIN)
    fields = split_fields(block)
    assert [signature_tags(f)[b"a"] for f in fields] == [b"rsa-sha256", b"ed25519-sha256"]
    signed = block + MESSAGE
    dnsfunc = dns_for(*keys.values())
    assert verify(signed, dnsfunc, 0)
    assert verify(signed, dnsfunc, 1)


def test_signature_fails_without_the_published_key(keys: dict[str, DkimKey]) -> None:
    signed = DkimSigner([keys["rsa"]]).sign(MESSAGE, DOMAIN) + MESSAGE
    assert not verify(signed, dns_for(keys["ed25519"]))


@pytest.mark.parametrize("index", [0, 1])
def test_changed_body_fails(keys: dict[str, DkimKey], both: DkimSigner, index: int) -> None:
    signed = both.sign(MESSAGE, DOMAIN) + MESSAGE
    tampered = signed.replace(b"figures are", b"figures were")
    assert tampered != signed
    assert not verify(tampered, dns_for(*keys.values()), index)


@pytest.mark.parametrize("index", [0, 1])
@pytest.mark.parametrize("where", ["top", "bottom"])
def test_added_second_from_fails(
    keys: dict[str, DkimKey], both: DkimSigner, index: int, where: str
) -> None:
    block = both.sign(MESSAGE, DOMAIN)
    evil = b"From: Mallory <ceo@example.org>\r\n"
    head, _, body = MESSAGE.partition(b"\r\n\r\n")
    tampered = (
        block + evil + MESSAGE if where == "top" else block + head + b"\r\n" + evil + b"\r\n" + body
    )
    assert not verify(tampered, dns_for(*keys.values()), index)


def test_signed_fields_are_those_present_with_from_oversigned(both: DkimSigner) -> None:
    for field in split_fields(both.sign(MESSAGE, DOMAIN)):
        tags = signature_tags(field)
        signed = [name.strip() for name in tags[b"h"].split(b":")]
        assert signed == [
            b"from",
            b"to",
            b"cc",
            b"subject",
            b"date",
            b"message-id",
            b"mime-version",
            b"content-type",
            b"from",
        ]
        assert tags[b"c"] == b"relaxed/relaxed"
        assert b"l" not in tags
        assert b"t" in tags


def test_signature_is_only_prepended(both: DkimSigner) -> None:
    original = bytes(MESSAGE)
    block = both.sign(MESSAGE, DOMAIN)
    assert original == MESSAGE
    assert block.startswith(b"DKIM-Signature: ")
    assert block.endswith(b"\r\n")
    assert b"\r\n\r\n" not in block
    # Every line is CRLF-terminated (no bare LF) and continuation lines start with a space.
    lines = block.split(b"\r\n")[:-1]
    assert all(b"\n" not in line and b"\r" not in line for line in lines)
    assert all(line.startswith((b"DKIM-Signature: ", b" ")) for line in lines)
    assert block.count(b"DKIM-Signature:") == 2


def test_no_key_for_domain_gives_nothing(both: DkimSigner) -> None:
    assert both.sign(MESSAGE, "example.net") == b""
    assert both.sign(MESSAGE, "not a domain") == b""
    assert DkimSigner([]).sign(MESSAGE, DOMAIN) == b""


def test_domain_lookup_ignores_case(keys: dict[str, DkimKey], both: DkimSigner) -> None:
    block = both.sign(MESSAGE, "Example.ORG.")
    fields = split_fields(block)
    assert len(fields) == 2
    assert {signature_tags(f)[b"d"] for f in fields} == {b"example.org"}
    assert both.domains() == frozenset({DOMAIN})


def test_u_label_domain_signs_with_its_a_label(tmp_path: Path, keys: dict[str, DkimKey]) -> None:
    path, _ = generate_key(tmp_path, "Bücher.Example", "s1", "ed25519")
    assert path == tmp_path / "xn--bcher-kva.example" / "s1.ed25519.key"
    (key,) = load_keys(tmp_path)
    signer = DkimSigner([key])
    assert signer.domains() == frozenset({"xn--bcher-kva.example"})
    header = signer.sign(MESSAGE, "bücher.example")
    assert signature_tags(header)[b"d"] == b"xn--bcher-kva.example"
    assert dkim.verify(header + MESSAGE, dnsfunc=dns_for(key)) is True


@pytest.mark.parametrize(
    "message",
    [
        b" leading continuation\r\nFrom: a@example.org\r\n\r\nbody\r\n",
        b"From: a@example.org\r\nthis line has no colon\r\n\r\nbody\r\n",
        b"From \r\n continued\r\n\r\nbody\r\n",
        b"",
    ],
)
def test_unparsable_message_raises_dkim_error(both: DkimSigner, message: bytes) -> None:
    with pytest.raises(DkimError) as caught:
        both.sign(message, DOMAIN)
    assert is_one_line(str(caught.value))
    assert DOMAIN in str(caught.value)


def test_utf8_header_and_8bit_body_sign_and_verify(
    keys: dict[str, DkimKey], both: DkimSigner
) -> None:
    message = (
        MESSAGE.replace(b"quarterly", "Quartalszahlen für Köln".encode()) + "Grüße\r\n".encode()
    )
    signed = both.sign(message, DOMAIN) + message
    assert verify(signed, dns_for(*keys.values()), 0)
    assert verify(signed, dns_for(*keys.values()), 1)


def test_signer_rejects_two_keys_of_one_algorithm(keys: dict[str, DkimKey]) -> None:
    twin = DkimKey(DOMAIN.upper(), "other", "rsa", keys["rsa"].private, "v=DKIM1; p=")
    with pytest.raises(ValueError, match="two rsa keys"):
        DkimSigner([keys["rsa"], twin])


def test_key_repr_hides_the_private_key(keys: dict[str, DkimKey]) -> None:
    for key in keys.values():
        assert key.private.decode() not in repr(key)
        assert "private" not in repr(key)


def test_message_without_signed_headers_still_signs_from(keys: dict[str, DkimKey]) -> None:
    message = b"X-Only: this\r\n\r\nbody\r\n"
    header = DkimSigner([keys["rsa"]]).sign(message, DOMAIN)
    assert signature_tags(header)[b"h"] == b"from"
    assert dkim.verify(header + message, dnsfunc=dns_for(keys["rsa"])) is True
    assert not dkim.verify(
        header + b"From: x@example.org\r\n" + message, dnsfunc=dns_for(keys["rsa"])
    )


def same_second(*calls: Callable[[], bytes]) -> tuple[int, list[bytes]]:
    """Run `calls` within one wall-clock second; return that second (the t= value) and results.

    dkimpy's sign() takes t= from time.time() with no way to pass it, so instead of patching
    the clock the calls are repeated until none of them straddles a second boundary.
    """
    for _ in range(20):
        second = int(time.time())
        results = [call() for call in calls]
        if int(time.time()) == second:
            return second, results
    raise AssertionError("could not sign twice within one second")


def dkimpy_sign(
    key: DkimKey, message: bytes, include: list[bytes], algorithm: bytes = b"rsa-sha256"
) -> bytes:
    """dkimpy's own signature (its pure-Python RSA) with the parameters DkimSigner uses."""
    field: bytes = dkim.sign(
        message,
        key.selector.encode(),
        key.domain.encode(),
        key.private,
        canonicalize=(b"relaxed", b"relaxed"),
        signature_algorithm=algorithm,
        include_headers=include,
        length=False,
        linesep=b"\r\n",
    )
    return field


def signed_names(field: bytes) -> list[bytes]:
    return [name.strip() for name in signature_tags(field)[b"h"].split(b":")]


def test_rsa_field_is_byte_identical_to_dkimpy(keys: dict[str, DkimKey]) -> None:
    key = keys["rsa"]
    include = [b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"mime-version"]
    include += [b"content-type", b"from"]
    second, (ours, theirs) = same_second(
        lambda: DkimSigner([key]).sign(MESSAGE, DOMAIN),
        lambda: dkimpy_sign(key, MESSAGE, include),
    )
    assert signed_names(ours) == include
    assert signature_tags(ours)[b"t"] == str(second).encode()
    assert ours == theirs
    assert dkim.verify(ours + MESSAGE, dnsfunc=dns_for(key)) is True


def test_rsa_private_key_operation_is_not_dkimpys(keys: dict[str, DkimKey]) -> None:
    # dkimpy's own RSA code reads only LF-terminated PEM; this key signs, so it did not run.
    crlf = DkimKey(
        DOMAIN,
        "crlf",
        "rsa",
        keys["rsa"].private.replace(b"\n", b"\r\n"),
        keys["rsa"].public_record,
    )
    with pytest.raises(dkim.KeyFormatError):
        dkimpy_sign(crlf, MESSAGE, [b"from"])
    header = DkimSigner([crlf]).sign(MESSAGE, DOMAIN)
    assert signature_tags(header)[b"a"] == b"rsa-sha256"
    assert dkim.verify(header + MESSAGE, dnsfunc=dns_for(crlf)) is True


# d=, i= and s= lengths move every fold point after them.
_LONGEST_FOLDABLE = "x" * 50 + "." + "y" * 13 + ".org"  # 68 characters, see below
_NAME_LENGTHS = [
    ("a.io", "s"),
    ("mail.a-rather-long-subdomain-name.department.example.org", "k" * 63),
    (_LONGEST_FOLDABLE, "k" * 63),
]


def key_named(key: DkimKey, domain: str, selector: str) -> DkimKey:
    return DkimKey(domain, selector, key.algorithm, key.private, key.public_record)


@pytest.mark.parametrize(("domain", "selector"), _NAME_LENGTHS)
def test_rsa_field_matches_dkimpy_for_any_name_length(
    keys: dict[str, DkimKey], domain: str, selector: str
) -> None:
    key = key_named(keys["rsa"], domain, selector)
    message = MESSAGE.replace(b"example.org", domain.encode())
    include = [b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"mime-version"]
    include += [b"content-type", b"from"]
    _, (ours, theirs) = same_second(
        lambda: DkimSigner([key]).sign(message, domain),
        lambda: dkimpy_sign(key, message, include),
    )
    assert ours == theirs


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize(("domain", "selector"), _NAME_LENGTHS)
def test_long_names_sign_and_verify(
    keys: dict[str, DkimKey], algorithm: str, domain: str, selector: str
) -> None:
    key = key_named(keys[algorithm], domain, selector)
    message = MESSAGE.replace(b"example.org", domain.encode())
    header = DkimSigner([key]).sign(message, domain)
    assert signature_tags(header)[b"d"] == domain.encode()
    assert dkim.verify(header + message, dnsfunc=dns_for(key)) is True


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_domain_over_68_characters_is_refused_not_signed_wrongly(
    keys: dict[str, DkimKey], algorithm: str, tmp_path: Path
) -> None:
    # dkimpy's fold() would cut the d= value inside a longer name: no verifier accepts that.
    domain = "z" + _LONGEST_FOLDABLE
    with pytest.raises(ValueError, match="longer than 68 characters"):
        DkimSigner([key_named(keys[algorithm], domain, "k" * 63)])
    with pytest.raises(UserError, match="longer than 68 characters") as caught:
        generate_key(tmp_path / "dkim", domain, "s1", algorithm)
    assert is_one_line(str(caught.value))
    assert not (tmp_path / "dkim").exists()


def test_signer_rejects_an_rsa_key_that_does_not_parse(keys: dict[str, DkimKey]) -> None:
    for private in (b"", b"garbage", keys["ed25519"].private, ed_pem()):
        broken = DkimKey(DOMAIN, "s1", "rsa", private, "v=DKIM1; p=")
        with pytest.raises(ValueError, match="not a PEM RSA private key") as caught:
            DkimSigner([broken])
        assert is_one_line(str(caught.value))
        assert f"rsa key s1 of {DOMAIN}" in str(caught.value)


# --- property tests ----------------------------------------------------------------------

_VALUE_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.just("\t")
_NAME_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=":")
_KNOWN_NAMES = ["From", "To", "Cc", "Subject", "Date", "Message-ID", "References", "Sender"]


@st.composite
def header_fields(draw: st.DrawFn) -> bytes:
    name = draw(st.sampled_from(_KNOWN_NAMES) | st.text(_NAME_CHARS, min_size=1, max_size=20))
    # A value of one or more lines; continuation lines start with a space or a tab.
    pieces = draw(st.lists(st.text(_VALUE_CHARS, max_size=60), min_size=1, max_size=3))
    folds = [draw(st.sampled_from([" ", "\t"])) + p for p in pieces[1:]]
    return "\r\n".join([f"{name}:{pieces[0]}", *folds]).encode("ascii") + b"\r\n"


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    fields = draw(st.lists(header_fields(), max_size=8))
    sender = b"From: " + draw(st.text(_VALUE_CHARS, max_size=40)).encode("ascii") + b"\r\n"
    fields.insert(draw(st.integers(0, len(fields))), sender)
    lines = draw(st.lists(st.text(_VALUE_CHARS, max_size=80), max_size=10))
    body = "".join(line + "\r\n" for line in lines).encode("ascii")
    return b"".join(fields) + b"\r\n" + body


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(message=messages())
def test_any_ascii_message_signs_and_verifies(
    keys: dict[str, DkimKey], both: DkimSigner, message: bytes
) -> None:
    signed = both.sign(message, DOMAIN) + message
    dnsfunc = dns_for(*keys.values())
    assert verify(signed, dnsfunc, 0)
    assert verify(signed, dnsfunc, 1)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(message=messages())
def test_any_ascii_message_rsa_field_equals_dkimpys(
    keys: dict[str, DkimKey], message: bytes
) -> None:
    key = keys["rsa"]
    signer = DkimSigner([key])
    include = signed_names(signer.sign(message, DOMAIN))
    _, (ours, theirs) = same_second(
        lambda: signer.sign(message, DOMAIN), lambda: dkimpy_sign(key, message, include)
    )
    assert ours == theirs


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(message=st.binary(max_size=300) | messages().map(lambda m: m.replace(b"\r\n", b"\n")))
def test_any_bytes_sign_or_raise_dkim_error(keys: dict[str, DkimKey], message: bytes) -> None:
    signer = DkimSigner([keys["ed25519"]])
    header = attempt(lambda: signer.sign(message, DOMAIN))
    if isinstance(header, SendgateError):
        assert isinstance(header, DkimError)
        assert is_one_line(str(header))
    else:
        assert header.startswith(b"DKIM-Signature: ")
        assert header.endswith(b"\r\n")
