"""DKIM signing of submitted messages with the keys loaded by `sendgate.dkim.keys`.

Signatures use relaxed/relaxed canonicalization, no l= tag, and over-sign From so that a second
From cannot be added without breaking them; a domain with keys of both algorithms gets two
signatures, RSA first. dkimpy parses, canonicalizes, hashes and lays out the field; the
private-key operations run in `cryptography` (OpenSSL). A body streamed to the spool is hashed
as it arrives (`sendgate.dkim.bodyhash`) and only its header section is signed here.

Security: `DkimSigner.sign` parses message bytes sent by an authenticated but untrusted client
(with dkimpy); a message dkimpy cannot parse raises `DkimError`, never a stray exception. dkimpy
holds a few copies of the message in memory, so the submission size limit must apply before
signing.
"""

import base64
import binascii
import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import dkim
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils
from dkim.canonicalization import CanonicalizationPolicy

from sendgate.dkim.keys import ALGORITHMS, DkimKey, domain_or_none, normalize_domain
from sendgate.errors import SendgateError

_DETAIL_MAX = 200
_FIELD_NAME = b"DKIM-Signature"
_CANONICALIZATION = b"relaxed/relaxed"

# The fields a reader sees as the message's identity and meaning; only those present are signed.
_SIGNED_FIELDS = frozenset(
    {
        b"from",
        b"sender",
        b"reply-to",
        b"to",
        b"cc",
        b"subject",
        b"date",
        b"message-id",
        b"in-reply-to",
        b"references",
        b"mime-version",
        b"content-type",
        b"content-transfer-encoding",
        b"list-unsubscribe",
    }
)


class DkimError(SendgateError):
    """A message could not be DKIM-signed (dkimpy could not parse it); the message says why."""


@dataclass(frozen=True, slots=True)
class _SigningKey:
    """A key with, for RSA, its private key parsed once into a `cryptography` object."""

    key: DkimKey
    rsa_key: rsa.RSAPrivateKey | None
    ed25519_key: ed25519.Ed25519PrivateKey | None


class DkimSigner:
    """Signs messages for the domains that have keys; safe across threads.

    `replace` swaps the whole key set at once (a reload): a signature in progress uses the set
    it started with, never a mix.
    """

    __slots__ = ("_keys",)

    def __init__(self, keys: Sequence[DkimKey]) -> None:
        """Index `keys` by domain; ValueError for an unknown algorithm, a bad domain, a twin or
        an RSA key whose `private` is not a PEM RSA private key.
        """
        self._keys = _index(keys)

    def replace(self, keys: Sequence[DkimKey]) -> None:
        """Sign with `keys` from now on; ValueError as for the constructor (nothing changes)."""
        self._keys = _index(keys)

    def keys(self) -> tuple[DkimKey, ...]:
        """The keys it signs with, by domain, RSA first."""
        return tuple(signing.key for _, slot in sorted(self._keys.items()) for signing in slot)

    def domains(self) -> frozenset[str]:
        """Return the (A-label, lower-case) domains that have at least one key."""
        return frozenset(self._keys)

    def sign(self, message: bytes, domain: str) -> bytes:
        """Return the DKIM-Signature field(s) to prepend to `message`, or b"" without a key.

        `message` is the complete CRLF message as it will be stored; `domain` (any case, U- or
        A-label) is the verified header From domain and becomes d=. The fields come RSA first,
        each CRLF-terminated. Raises DkimError when dkimpy cannot parse the message.
        """
        return self._sign(message, domain, None)

    def sign_head(self, head: bytes, body_hash: bytes, domain: str) -> bytes:
        """`sign` for a message whose body is not at hand (streamed to the spool).

        `head` is the header section with the empty line that ends it; `body_hash` is the
        `RelaxedBodyHash` digest of the body. The fields are those `sign` gives for the whole
        message.
        """
        return self._sign(head, domain, body_hash)

    def _sign(self, message: bytes, domain: str, body_hash: bytes | None) -> bytes:
        by_domain = self._keys  # read once: a reload swaps the whole mapping
        if not by_domain:
            return b""
        ascii_domain = domain_or_none(domain)
        keys = by_domain.get(ascii_domain, ()) if ascii_domain is not None else ()
        if not keys:
            return b""
        if not message:
            # dkimpy would fail with a TypeError deep in canonicalization.
            raise DkimError(f"cannot DKIM-sign for {ascii_domain}: the message is empty")
        try:
            parsed = dkim.DKIM(message, linesep=b"\r\n")
        except IndexError:
            # dkimpy's parser indexes a missing field when a continuation line comes first.
            raise DkimError(
                f"cannot DKIM-sign for {ascii_domain}: a header continuation line has no field"
            ) from None
        except dkim.DKIMException as exc:
            raise DkimError(f"cannot DKIM-sign for {ascii_domain}: {_detail(exc)}") from exc
        include = [bytes(name).lower() for name, _ in parsed.headers]
        include = [name for name in include if name in _SIGNED_FIELDS]
        include.append(b"from")  # over-signed: a From added later breaks the signature
        if body_hash is None:
            policy = CanonicalizationPolicy.from_c_value(_CANONICALIZATION)
            body_hash = hashlib.sha256(policy.canonicalize_body(parsed.body)).digest()
        now = int(time.time())
        fields: list[bytes] = []
        for signing in keys:
            try:
                fields.append(_field(parsed, signing, include, body_hash, now))
            except dkim.DKIMException as exc:
                raise DkimError(f"cannot DKIM-sign for {ascii_domain}: {_detail(exc)}") from exc
        return b"".join(fields)


def _index(keys: Sequence[DkimKey]) -> Mapping[str, tuple[_SigningKey, ...]]:
    """The keys by (A-label) domain, RSA first; ValueError as `DkimSigner` documents."""
    by_domain: dict[str, dict[str, _SigningKey]] = {}
    for key in keys:
        if key.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown DKIM algorithm {key.algorithm!r}")
        try:
            domain = normalize_domain(key.domain)
        except ValueError as exc:
            raise ValueError(f"not a domain name: {key.domain!r}: {exc}") from None
        slot = by_domain.setdefault(domain, {})
        if key.algorithm in slot:
            raise ValueError(f"two {key.algorithm} keys for {domain}")
        rsa_key = _rsa_private_key(key) if key.algorithm == "rsa" else None
        ed_key = _ed25519_private_key(key) if key.algorithm == "ed25519" else None
        slot[key.algorithm] = _SigningKey(key, rsa_key, ed_key)
    return {
        domain: tuple(slot[alg] for alg in ALGORITHMS if alg in slot)
        for domain, slot in by_domain.items()
    }


def _ed25519_private_key(key: DkimKey) -> ed25519.Ed25519PrivateKey:
    """Parse an Ed25519 DkimKey's base64 seed; ValueError (naming it) when it is not one."""
    try:
        return ed25519.Ed25519PrivateKey.from_private_bytes(base64.b64decode(key.private))
    except (TypeError, ValueError, binascii.Error):
        raise ValueError(
            f"the ed25519 key {key.selector} of {key.domain} is not a base64 32-octet seed"
        ) from None


def _rsa_private_key(key: DkimKey) -> rsa.RSAPrivateKey:
    """Parse an RSA DkimKey's PEM; ValueError (naming domain and selector) when it is not one."""
    try:
        parsed = serialization.load_pem_private_key(key.private, password=None)
    except (TypeError, ValueError, UnsupportedAlgorithm):
        parsed = None
    if not isinstance(parsed, rsa.RSAPrivateKey):
        raise ValueError(f"the rsa key {key.selector} of {key.domain} is not a PEM RSA private key")
    return parsed


def _field(
    parsed: dkim.DKIM,
    signing: _SigningKey,
    include: Sequence[bytes],
    body_hash: bytes,
    now: int,
) -> bytes:
    """Return the CRLF-terminated DKIM-Signature field for the parsed header section.

    dkimpy's own RSA code is pure Python (slow: several ms per signature, holding the GIL) and
    neither blinded nor constant time, and its signing hashes the body itself; so the field is
    laid out here and the private-key operation runs in `cryptography`. Everything follows
    dkimpy's DKIM.sign and gen_header step by step, giving the same bytes: same tags in the
    same order, folded by dkimpy's fold, b= filled in and refolded.
    """
    key = signing.key
    policy = CanonicalizationPolicy.from_c_value(_CANONICALIZATION)
    domain = key.domain.encode("ascii")
    algorithm = b"rsa-sha256" if signing.rsa_key is not None else b"ed25519-sha256"
    tags = [
        (b"v", b"1"),
        (b"a", algorithm),
        (b"c", policy.to_c_value()),
        (b"d", domain),
        (b"i", b"@" + domain),
        (b"q", b"dns/txt"),
        (b"s", key.selector.encode("ascii")),
        (b"t", str(now).encode("ascii")),
        (b"h", b" : ".join(include)),
        (b"bh", base64.b64encode(body_hash)),
        # dkimpy's placeholder: it puts b= on a line of its own when the field is hashed.
        (b"b", b"0" * 60),
    ]
    unsigned = dkim.fold(_join_tags(tags), namelen=len(_FIELD_NAME), linesep=b"\r\n")
    hasher = hashlib.sha256()
    # hash_headers drops the b= value itself (RE_BTAG) and hashes this field last, without CRLF.
    dkim.hash_headers(
        hasher,
        policy,
        policy.canonicalize_headers(parsed.headers),
        tuple(include),
        (_FIELD_NAME, b" " + unsigned),
        dict(tags),
    )
    if signing.rsa_key is not None:
        signature = signing.rsa_key.sign(
            hasher.digest(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())
        )
    else:
        assert signing.ed25519_key is not None
        # RFC 8463: Ed25519 signs the SHA-256 digest of the signed header fields.
        signature = signing.ed25519_key.sign(hasher.digest())
    tags[-1] = (b"b", base64.b64encode(signature))
    value = dkim.fold(_join_tags(tags) + b"\r\n", namelen=len(_FIELD_NAME), linesep=b"\r\n")
    field_bytes: bytes = _FIELD_NAME + b": " + value
    return field_bytes


def _join_tags(tags: Sequence[tuple[bytes, bytes]]) -> bytes:
    """Lay tags out as dkimpy does: "name=value" joined by "; "."""
    return b"; ".join(name + b"=" + value for name, value in tags)


def _detail(exc: Exception) -> str:
    """Return an exception's text as one bounded line (dkimpy quotes message bytes in it)."""
    return " ".join(str(exc).split())[:_DETAIL_MAX]
