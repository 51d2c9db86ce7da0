"""Tests for sendgate.dkim: signatures verified by dkimpy, key files, load errors, DNS records."""

import os
import re
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dkim.util import parse_tag_value
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sendgate.dkim import (
    ALGORITHMS,
    DkimError,
    DkimKey,
    DkimSigner,
    default_selector,
    dns_record,
    generate_key,
    key_path,
    load_keys,
)
from sendgate.errors import ConfigError, SendgateError, UserError

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


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "dkim"
    generate_key(path, DOMAIN, "sg202611", "rsa")
    generate_key(path, DOMAIN, "ed202611", "ed25519")
    return path


@pytest.fixture(scope="module")
def keys(key_dir: Path) -> dict[str, DkimKey]:
    return {key.algorithm: key for key in load_keys(key_dir)}


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


def dkimpy_sign(key: DkimKey, message: bytes, include: list[bytes]) -> bytes:
    """dkimpy's own signature (its pure-Python RSA) with the parameters DkimSigner uses."""
    field: bytes = dkim.sign(
        message,
        key.selector.encode(),
        key.domain.encode(),
        key.private,
        canonicalize=(b"relaxed", b"relaxed"),
        signature_algorithm=b"rsa-sha256",
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


@given(st.text(max_size=80))
def test_domain_parser_accepts_only_dns_names(domain: str) -> None:
    base = Path("/keys")
    path = attempt(lambda: key_path(base, domain, "s", "rsa"))
    if isinstance(path, SendgateError):
        assert isinstance(path, UserError)
        assert is_one_line(str(path))
    else:
        name = path.parent.name
        assert path.parent.parent == base
        assert name.isascii()
        assert name == name.lower()
        assert re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)+", name)
        assert len(name) <= 253
        # The stored form is a fixed point: converting it again changes nothing.
        assert key_path(base, name, "s", "rsa") == path


@given(st.text(max_size=70))
def test_selector_parser_accepts_only_dns_labels(selector: str) -> None:
    path = attempt(lambda: key_path(Path("/keys"), DOMAIN, selector, "ed25519"))
    if isinstance(path, SendgateError):
        assert isinstance(path, UserError)
        assert is_one_line(str(path))
    else:
        assert re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", selector.lower())
        assert path.name == f"{selector.lower()}.ed25519.key"


_FILE_NAME_CHARS = st.sampled_from("abcSZ09-_.") | st.sampled_from(["rsa", "ed25519", "key"])


@settings(max_examples=60)
@given(
    st.lists(_FILE_NAME_CHARS, min_size=1, max_size=8)
    .map("".join)
    .filter(lambda name: name not in {".", ".."})
)
def test_key_file_name_parser(name: str) -> None:
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / DOMAIN / name
        path.parent.mkdir()
        path.write_bytes(pem)
        path.chmod(0o600)
        valid = re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.ed25519\.key", name)
        loaded = attempt(lambda: load_keys(Path(tmp)))
        if isinstance(loaded, SendgateError):
            assert isinstance(loaded, ConfigError)
            assert not valid
            assert str(path) in str(loaded)
            assert is_one_line(str(loaded))
        else:
            assert valid
            assert [(k.domain, k.selector, k.algorithm) for k in loaded] == [
                (DOMAIN, name.split(".")[0], "ed25519")
            ]


# --- key generation --------------------------------------------------------------------------


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generate_key_writes_0600_in_0700_dirs(tmp_path: Path) -> None:
    key_dir = tmp_path / "dkim"
    previous = os.umask(0o022)
    try:
        path, record = generate_key(key_dir, "Example.COM", "Sel-1")
    finally:
        os.umask(previous)
    assert path == key_path(key_dir, "example.com", "sel-1", "rsa")
    assert path == key_dir / "example.com" / "sel-1.rsa.key"
    assert mode_of(path) == 0o600
    assert mode_of(key_dir) == 0o700
    assert mode_of(path.parent) == 0o700
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(loaded, rsa.RSAPrivateKey)
    assert loaded.key_size == 2048
    (key,) = load_keys(key_dir)
    assert record == dns_record(key)
    assert record.startswith("sel-1._domainkey.example.com. IN TXT ( ")


def test_generate_key_refuses_to_overwrite(tmp_path: Path) -> None:
    path, _ = generate_key(tmp_path, DOMAIN, "s1", "ed25519")
    before = path.read_bytes()
    with pytest.raises(UserError, match="already exists") as caught:
        generate_key(tmp_path, DOMAIN, "S1", "ed25519")
    assert str(path) in str(caught.value)
    assert is_one_line(str(caught.value))
    assert path.read_bytes() == before


def test_generate_key_refuses_a_second_key_of_one_algorithm(tmp_path: Path) -> None:
    first, _ = generate_key(tmp_path, DOMAIN, "s1", "ed25519")
    with pytest.raises(UserError, match="already has an ed25519 key") as caught:
        generate_key(tmp_path, DOMAIN, "s2", "ed25519")
    assert str(first) in str(caught.value)
    assert not (tmp_path / DOMAIN / "s2.ed25519.key").exists()


@pytest.mark.parametrize(
    ("domain", "selector", "algorithm", "named"),
    [
        ("exa mple.org", "s1", "rsa", "exa mple.org"),
        ("localhost", "s1", "rsa", "localhost"),
        ("-bad.example", "s1", "rsa", "-bad.example"),
        ("a..example", "s1", "rsa", "a..example"),
        ("a" * 64 + ".example", "s1", "rsa", "a" * 64),
        (("a" * 60 + ".") * 5 + "org", "s1", "rsa", "68"),
        ("ex\\097mple.org", "s1", "rsa", "ex"),
        (DOMAIN, "s_1", "rsa", "s_1"),
        (DOMAIN, "s.1", "rsa", "s.1"),
        (DOMAIN, "", "rsa", "''"),
        (DOMAIN, "-s", "rsa", "-s"),
        (DOMAIN, "s1", "dsa", "dsa"),
    ],
)
def test_generate_key_rejects_bad_names(
    tmp_path: Path, domain: str, selector: str, algorithm: str, named: str
) -> None:
    with pytest.raises(UserError) as caught:
        generate_key(tmp_path / "dkim", domain, selector, algorithm)
    assert is_one_line(str(caught.value))
    assert named in str(caught.value)
    assert not (tmp_path / "dkim").exists()


def test_generate_key_reports_an_unwritable_place(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(UserError, match="cannot write") as caught:
        generate_key(blocker / "dkim", DOMAIN, "s1", "ed25519")
    assert is_one_line(str(caught.value))


@pytest.mark.parametrize(
    ("now", "expected"),
    [(0.0, "sg197001"), (1_793_491_199.0, "sg202610"), (1_793_491_200.0, "sg202611")],
)
def test_default_selector_is_year_and_month_in_utc(now: float, expected: str) -> None:
    assert default_selector(now) == expected


def test_default_selector_is_a_valid_selector(tmp_path: Path) -> None:
    selector = default_selector(time.time())
    assert key_path(tmp_path, DOMAIN, selector, "rsa").name == f"{selector}.rsa.key"


# --- loading -----------------------------------------------------------------------------------


def test_load_keys_of_a_missing_directory_is_empty(tmp_path: Path) -> None:
    assert load_keys(tmp_path / "absent") == ()


def test_load_keys_reads_both_algorithms(key_dir: Path, keys: dict[str, DkimKey]) -> None:
    assert set(keys) == {"rsa", "ed25519"}
    assert keys["rsa"].selector == "sg202611"
    assert keys["rsa"].public_record.startswith("v=DKIM1; k=rsa; p=MIIB")
    assert keys["ed25519"].public_record.startswith("v=DKIM1; k=ed25519; p=")
    assert len(load_keys(key_dir)) == 2


def write_key(path: Path, pem: bytes, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pem)
    path.chmod(mode)
    return path


def rsa_pem(bits: int) -> bytes:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def ed_pem(encryption: serialization.KeySerializationEncryption | None = None) -> bytes:
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        encryption or serialization.NoEncryption(),
    )


def assert_config_error(key_dir: Path, named: Path, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_keys(key_dir)
    message = str(caught.value)
    assert is_one_line(message)
    assert str(named) in message
    assert fragment in message


@pytest.mark.parametrize(
    "name", ["s1.key", "s1.dsa.key", "S1.ed25519.key", "s1.ed25519.pem", "a.b.ed25519.key", "x"]
)
def test_load_keys_rejects_names_outside_the_layout(tmp_path: Path, name: str) -> None:
    path = write_key(tmp_path / DOMAIN / name, ed_pem())
    assert_config_error(tmp_path, path, "layout")


@pytest.mark.parametrize("name", ["Example.org", "localhost", "bücher.example"])
def test_load_keys_rejects_bad_domain_directories(tmp_path: Path, name: str) -> None:
    write_key(tmp_path / name / "s1.ed25519.key", ed_pem())
    assert_config_error(tmp_path, tmp_path / name, "domain directory")


def test_load_keys_rejects_a_file_beside_the_domains(tmp_path: Path) -> None:
    stray = tmp_path / "example.com"
    stray.write_bytes(b"")
    assert_config_error(tmp_path, stray, "domain directory")


def test_load_keys_rejects_a_key_open_to_others(tmp_path: Path) -> None:
    path = write_key(tmp_path / DOMAIN / "s1.ed25519.key", ed_pem(), mode=0o640)
    assert_config_error(tmp_path, path, "0640")


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage\n", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"],
)
def test_load_keys_rejects_unparsable_keys(tmp_path: Path, content: bytes) -> None:
    path = write_key(tmp_path / DOMAIN / "s1.ed25519.key", content)
    assert_config_error(tmp_path, path, "not a PEM private key")


def test_load_keys_rejects_an_encrypted_key(tmp_path: Path) -> None:
    pem = ed_pem(serialization.BestAvailableEncryption(b"secret"))
    path = write_key(tmp_path / DOMAIN / "s1.ed25519.key", pem)
    assert_config_error(tmp_path, path, "encrypted")


def test_load_keys_rejects_an_unreadable_key(tmp_path: Path) -> None:
    path = tmp_path / DOMAIN / "s1.rsa.key"
    path.parent.mkdir()
    path.symlink_to(tmp_path / "nowhere")
    assert_config_error(tmp_path, path, "cannot read")


def test_load_keys_rejects_a_directory_named_like_a_key(tmp_path: Path) -> None:
    path = tmp_path / DOMAIN / "s1.rsa.key"
    path.mkdir(parents=True, mode=0o700)
    assert_config_error(tmp_path, path, "not a regular file")


def test_load_keys_rejects_a_short_rsa_key(tmp_path: Path) -> None:
    path = write_key(tmp_path / DOMAIN / "s1.rsa.key", rsa_pem(1024))
    assert_config_error(tmp_path, path, "1024 bits")


def test_load_keys_rejects_a_key_of_the_other_algorithm(tmp_path: Path) -> None:
    path = write_key(tmp_path / DOMAIN / "s1.rsa.key", ed_pem())
    assert_config_error(tmp_path, path, "not an RSA key")


def test_load_keys_rejects_two_keys_for_one_algorithm(tmp_path: Path) -> None:
    write_key(tmp_path / DOMAIN / "a1.ed25519.key", ed_pem())
    second = write_key(tmp_path / DOMAIN / "b1.ed25519.key", ed_pem())
    assert_config_error(tmp_path, second, "second ed25519 key")


def test_load_keys_accepts_pkcs8_rsa_keys(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_key(tmp_path / DOMAIN / "s1.rsa.key", pem.replace(b"\n", b"\r\n"))
    (loaded,) = load_keys(tmp_path)
    header = DkimSigner([loaded]).sign(MESSAGE, DOMAIN)
    assert dkim.verify(header + MESSAGE, dnsfunc=dns_for(loaded)) is True


# --- DNS records ---------------------------------------------------------------------------------


def txt_strings(record: str) -> list[str]:
    match = re.fullmatch(r"(\S+) IN TXT \( (.*) \)", record)
    assert match is not None
    return [
        s.replace('\\"', '"').replace("\\\\", "\\")
        for s in re.findall(r'"((?:[^"\\]|\\.)*)"', match[2])
    ]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_dns_record_splits_long_strings(keys: dict[str, DkimKey], algorithm: str) -> None:
    key = keys[algorithm]
    record = dns_record(key)
    assert record.startswith(f"{key.selector}._domainkey.{DOMAIN}. IN TXT ( ")
    strings = txt_strings(record)
    assert all(0 < len(s) <= 255 for s in strings)
    assert "".join(strings) == key.public_record
    assert strings[0] == f"v=DKIM1; k={algorithm}; "
    if algorithm == "rsa":
        assert len(strings) == 3


@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=900))
def test_dns_record_round_trips_any_value(value: str) -> None:
    key = DkimKey(DOMAIN, "s1", "rsa", b"", value)
    strings = txt_strings(dns_record(key))
    assert all(0 < len(s) <= 255 for s in strings)
    assert "".join(strings) == value
