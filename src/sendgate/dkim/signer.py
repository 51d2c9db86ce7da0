"""DKIM signing of submitted messages with the keys loaded by `sendgate.dkim.keys`.

Signatures use relaxed/relaxed canonicalization, no l= tag, and over-sign From so that a second
From cannot be added without breaking them; a domain with keys of both algorithms gets two
signatures, RSA first. dkimpy parses, canonicalizes, hashes and lays out the field; the RSA
private-key operation itself runs in `cryptography` (OpenSSL), and Ed25519 in dkimpy (PyNaCl).

Security: `DkimSigner.sign` parses message bytes sent by an authenticated but untrusted client
(with dkimpy); a message dkimpy cannot parse raises `DkimError`, never a stray exception. dkimpy
holds a few copies of the message in memory, so the submission size limit must apply before
signing.
"""

import base64
import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import dkim
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
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


class DkimSigner:
    """Signs messages for the domains that have keys; immutable once built, safe across threads."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Sequence[DkimKey]) -> None:
        """Index `keys` by domain; ValueError for an unknown algorithm, a bad domain, a twin or
        an RSA key whose `private` is not a PEM RSA private key.
        """
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
            slot[key.algorithm] = _SigningKey(key, rsa_key)
        self._keys: Mapping[str, tuple[_SigningKey, ...]] = {
            domain: tuple(slot[alg] for alg in ALGORITHMS if alg in slot)
            for domain, slot in by_domain.items()
        }

    def domains(self) -> frozenset[str]:
        """Return the (A-label, lower-case) domains that have at least one key."""
        return frozenset(self._keys)

    def sign(self, message: bytes, domain: str) -> bytes:
        """Return the DKIM-Signature field(s) to prepend to `message`, or b"" without a key.

        `message` is the complete CRLF message as it will be stored; `domain` (any case, U- or
        A-label) is the verified header From domain and becomes d=. The fields come RSA first,
        each CRLF-terminated. Raises DkimError when dkimpy cannot parse the message.
        """
        ascii_domain = domain_or_none(domain)
        keys = self._keys.get(ascii_domain, ()) if ascii_domain is not None else ()
        if not keys:
            return b""
        if not message:
            # dkimpy would fail with a TypeError deep in canonicalization.
            raise DkimError(f"cannot DKIM-sign for {ascii_domain}: the message is empty")
        try:
            signer = dkim.DKIM(message, linesep=b"\r\n")
        except IndexError:
            # dkimpy's parser indexes a missing field when a continuation line comes first.
            raise DkimError(
                f"cannot DKIM-sign for {ascii_domain}: a header continuation line has no field"
            ) from None
        except dkim.DKIMException as exc:
            raise DkimError(f"cannot DKIM-sign for {ascii_domain}: {_detail(exc)}") from exc
        include = [bytes(name).lower() for name, _ in signer.headers]
        include = [name for name in include if name in _SIGNED_FIELDS]
        include.append(b"from")  # over-signed: a From added later breaks the signature
        fields: list[bytes] = []
        for signing in keys:
            key = signing.key
            try:
                if signing.rsa_key is not None:
                    field_bytes = _rsa_field(
                        signer, key, signing.rsa_key, include, int(time.time())
                    )
                else:
                    field_bytes = signer.sign(
                        key.selector.encode("ascii"),
                        key.domain.encode("ascii"),
                        key.private,
                        signature_algorithm=b"ed25519-sha256",
                        canonicalize=(b"relaxed", b"relaxed"),
                        include_headers=include,
                        length=False,
                    )
            except dkim.DKIMException as exc:
                raise DkimError(f"cannot DKIM-sign for {ascii_domain}: {_detail(exc)}") from exc
            fields.append(field_bytes)
        return b"".join(fields)


def _rsa_private_key(key: DkimKey) -> rsa.RSAPrivateKey:
    """Parse an RSA DkimKey's PEM; ValueError (naming domain and selector) when it is not one."""
    try:
        parsed = serialization.load_pem_private_key(key.private, password=None)
    except (TypeError, ValueError, UnsupportedAlgorithm):
        parsed = None
    if not isinstance(parsed, rsa.RSAPrivateKey):
        raise ValueError(f"the rsa key {key.selector} of {key.domain} is not a PEM RSA private key")
    return parsed


def _rsa_field(
    parsed: dkim.DKIM, key: DkimKey, private: rsa.RSAPrivateKey, include: Sequence[bytes], now: int
) -> bytes:
    """Return the CRLF-terminated rsa-sha256 DKIM-Signature field for the parsed message.

    dkimpy's own RSA code is pure Python (slow: several ms per signature, holding the GIL) and
    neither blinded nor constant time, so only the private-key operation moves to `cryptography`.
    Everything else follows dkimpy's DKIM.sign and gen_header step by step, giving the same
    bytes: same tags in the same order, folded by dkimpy's fold, b= filled in and refolded.
    """
    policy = CanonicalizationPolicy.from_c_value(_CANONICALIZATION)
    body_hash = hashlib.sha256(policy.canonicalize_body(parsed.body)).digest()
    domain = key.domain.encode("ascii")
    tags = [
        (b"v", b"1"),
        (b"a", b"rsa-sha256"),
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
    signature = private.sign(hasher.digest(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
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
