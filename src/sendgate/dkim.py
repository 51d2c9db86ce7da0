"""DKIM signing of submitted messages, with key generation and the DNS records to publish.

Keys live in a key directory as `<key_dir>/<domain>/<selector>.<algorithm>.key`: the domain in
lower-case ASCII (internationalised names as IDNA 2008 A-labels, converted label by label with
dnspython's `dns.name.IDNA_2008_Practical` codec, which applies the UTS #46 mapping), the
selector one lower-case DNS label, the algorithm "rsa" (PKCS#1 PEM, at least 2048 bits) or
"ed25519" (PKCS#8 PEM). A domain has at most one key per algorithm; with both, a message carries
two signatures, RSA first. Signatures use relaxed/relaxed canonicalization, no l= tag, and
over-sign From so that a second From cannot be added without breaking them. dkimpy parses,
canonicalizes, hashes and lays out the field; the RSA private-key operation itself runs in
`cryptography` (OpenSSL), and Ed25519 in dkimpy (PyNaCl).

Security: `DkimSigner.sign` parses message bytes sent by an authenticated but untrusted client
(with dkimpy); a message dkimpy cannot parse raises `DkimError`, never a stray exception. dkimpy
holds a few copies of the message in memory, so the submission size limit must apply before
signing. Key files are operator input, yet `load_keys` refuses a key open to group or other, an
RSA key under 2048 bits, a second key for one (domain, algorithm) and any name outside the
layout, so a stray or weak key is never used silently.
"""

import base64
import errno
import hashlib
import os
import stat
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dkim
import dns.exception
import dns.name
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils
from dkim.canonicalization import CanonicalizationPolicy

from sendgate.errors import ConfigError, SendgateError, UserError
from sendgate.fsutil import fsync_dir, write_file_durably
from sendgate.smtp.address import is_ldh_label

ALGORITHMS: tuple[str, ...] = ("rsa", "ed25519")

_RSA_BITS = 2048
_MAX_KEY_FILE_BYTES = 64 * 1024
# dkimpy's fold() breaks a longer d= (or i=) value inside the name, which no verifier accepts;
# such domains are refused rather than signed wrongly.
_MAX_DOMAIN_LENGTH = 68
_TXT_STRING_MAX = 255
_DETAIL_MAX = 200
_LAYOUT = "<key_dir>/<domain>/<selector>.<algorithm>.key"
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
class DkimKey:
    """One signing key: where it signs (domain, selector), how, and the record to publish."""

    domain: str
    selector: str
    algorithm: str
    private: bytes = field(repr=False)
    public_record: str


@dataclass(frozen=True, slots=True)
class _SigningKey:
    """A key with, for RSA, its private key parsed once into a `cryptography` object."""

    key: DkimKey
    rsa_key: rsa.RSAPrivateKey | None


def default_selector(now: float) -> str:
    """Return the selector for a key made at `now` (epoch seconds): "sg" + year + month, UTC."""
    moment = time.gmtime(now)
    return f"sg{moment.tm_year:04d}{moment.tm_mon:02d}"


def key_path(key_dir: Path, domain: str, selector: str, algorithm: str) -> Path:
    """Return where the key for (domain, selector, algorithm) lives; UserError if one is bad.

    The domain is converted to its lower-case A-label form and the selector to lower case.
    """
    ascii_domain = _user_domain(domain)
    return key_dir / ascii_domain / _key_file_name(_user_selector(selector), algorithm)


def generate_key(
    key_dir: Path, domain: str, selector: str, algorithm: str = "rsa"
) -> tuple[Path, str]:
    """Create a new key and return (its path, the DNS TXT record line to publish).

    RSA keys have 2048 bits. The file is created exclusively with mode 0600 and fsync'd, and
    missing directories are made with mode 0700. Raises UserError (one line) for a bad domain,
    selector or algorithm, when the file exists, when the domain already has a key of this
    algorithm (one per algorithm is the rule), or when the file cannot be written.
    """
    path = key_path(key_dir, domain, selector, algorithm)
    if path.exists():
        raise UserError(f"{path} already exists; remove it first or choose another selector")
    others = sorted(path.parent.glob(f"*.{algorithm}.key")) if path.parent.is_dir() else []
    if others:
        raise UserError(
            f"{path.parent.name} already has an {algorithm} key ({others[0]}); "
            "a domain may have one key per algorithm"
        )
    pem = _new_private_pem(algorithm)
    try:
        _ensure_private_dir(key_dir)
        _ensure_private_dir(path.parent)
        write_file_durably(path, pem, exclusive=True, mode=0o600)
        fsync_dir(path.parent)
    except FileExistsError:
        raise UserError(
            f"{path} already exists; remove it first or choose another selector"
        ) from None
    except OSError as exc:
        raise UserError(f"cannot write {exc.filename or path}: {exc.strerror}") from None
    private, public_record = _parse_private_pem(pem, algorithm)
    key = DkimKey(path.parent.name, path.name.split(".")[0], algorithm, private, public_record)
    return path, dns_record(key)


def dns_record(key: DkimKey) -> str:
    """Return the zone-file line publishing `key`, its TXT value split into <= 255-char strings.

    The value is cut before "p=" (so the tags and the key read apart) and the key data every
    255 characters; the strings joined give back `key.public_record`.
    """
    head, mark, tail = key.public_record.partition("p=")
    strings = _cut(head, _TXT_STRING_MAX) + _cut(mark + tail, _TXT_STRING_MAX)
    quoted = " ".join('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"' for s in strings)
    return f"{key.selector}._domainkey.{key.domain}. IN TXT ( {quoted} )"


def load_keys(key_dir: Path) -> tuple[DkimKey, ...]:
    """Load every key under `key_dir` (() when it does not exist), sorted by domain and file name.

    Raises ConfigError (one line, naming the file) for a name outside the layout, a key that
    cannot be read or parsed, a key file open to group or other, an RSA key under 2048 bits, or
    two keys for one (domain, algorithm).
    """
    try:
        domain_dirs = sorted(key_dir.iterdir())
    except FileNotFoundError:
        return ()
    except OSError as exc:
        raise ConfigError(f"dkim key directory {key_dir}: {exc.strerror}") from None
    keys: list[DkimKey] = []
    for domain_dir in domain_dirs:
        if not domain_dir.is_dir() or _domain_or_none(domain_dir.name) != domain_dir.name:
            raise ConfigError(
                f"{domain_dir}: not a domain directory of the dkim key layout {_LAYOUT} "
                "(domain in lower-case ASCII)"
            )
        try:
            key_files = sorted(domain_dir.iterdir())
        except OSError as exc:
            raise ConfigError(f"{domain_dir}: {exc.strerror}") from None
        taken: dict[str, Path] = {}
        for path in key_files:
            key = _load_key(path, domain_dir.name)
            if key.algorithm in taken:
                raise ConfigError(
                    f"{path}: second {key.algorithm} key for {key.domain} "
                    f"(also {taken[key.algorithm].name}); keep one per algorithm"
                )
            taken[key.algorithm] = path
            keys.append(key)
    return tuple(keys)


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
                domain = _normalize_domain(key.domain)
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
        ascii_domain = _domain_or_none(domain)
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


def _normalize_domain(domain: str) -> str:
    """Return `domain` as lower-case A-labels without a final dot; ValueError says what is wrong."""
    name = domain.removesuffix(".")
    labels: list[str] = []
    for label in name.split("."):
        if label.isascii():
            ascii_label = label.lower()
        else:
            try:
                ascii_label = dns.name.IDNA_2008_Practical.encode(label).decode("ascii")
            except (dns.exception.DNSException, UnicodeError):
                raise ValueError(f"label {label!r} is not a valid IDNA label") from None
        if not is_ldh_label(ascii_label):
            raise ValueError(f"label {label!r} must be 1-63 letters, digits or inner hyphens")
        labels.append(ascii_label)
    if len(labels) < 2:
        raise ValueError("it needs at least two labels")
    result = ".".join(labels)
    if len(result) > _MAX_DOMAIN_LENGTH:
        raise ValueError(
            f"it is longer than {_MAX_DOMAIN_LENGTH} characters, the longest DKIM domain "
            "sendgate can sign for"
        )
    return result


def _domain_or_none(domain: str) -> str | None:
    """Return the normalized domain, or None when `domain` is not a domain name."""
    try:
        return _normalize_domain(domain)
    except ValueError:
        return None


def _user_domain(domain: str) -> str:
    """Normalize a domain given by a user; UserError names the domain and the problem."""
    try:
        return _normalize_domain(domain)
    except ValueError as exc:
        raise UserError(f"not a domain name: {domain!r}: {exc}") from None


def _user_selector(selector: str) -> str:
    """Lower-case a selector given by a user; UserError unless it is one DNS label."""
    lowered = selector.lower()
    if not selector.isascii() or not is_ldh_label(lowered):
        raise UserError(
            f"not a DKIM selector: {selector!r}: use 1-63 letters, digits or inner hyphens"
        )
    return lowered


def _key_file_name(selector: str, algorithm: str) -> str:
    """Return the key file name; UserError for an unknown algorithm."""
    if algorithm not in ALGORITHMS:
        raise UserError(f"unknown DKIM algorithm {algorithm!r}: use one of {', '.join(ALGORITHMS)}")
    return f"{selector}.{algorithm}.key"


def _cut(text: str, size: int) -> list[str]:
    """Split `text` into pieces of at most `size` characters (none for an empty text)."""
    return [text[i : i + size] for i in range(0, len(text), size)]


def _ensure_private_dir(path: Path) -> None:
    """Create directory `path` with mode 0700 if missing, durably; leave an existing one alone."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        if not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path)) from None
        return
    os.chmod(path, 0o700)  # mkdir's mode is masked by the umask
    fsync_dir(path.parent)


def _new_private_pem(algorithm: str) -> bytes:
    """Generate a private key and return it as PEM (PKCS#1 for RSA, PKCS#8 for Ed25519)."""
    no_password = serialization.NoEncryption()
    if algorithm == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, no_password
        )
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, no_password
    )


def _parse_private_pem(pem: bytes, algorithm: str) -> tuple[bytes, str]:
    """Return (the key as dkimpy's sign() takes it, the TXT value) for a PEM key file's bytes.

    ValueError (one line) when the bytes are not an unencrypted key of `algorithm`, or an RSA
    key is too short.
    """
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise ValueError("the key is encrypted; store it without a passphrase") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError("not a PEM private key") from None
    raw = serialization.Encoding.Raw
    if algorithm == "rsa":
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"holds a {type(key).__name__}, not an RSA key")
        if key.key_size < _RSA_BITS:
            raise ValueError(f"RSA key has {key.key_size} bits; at least {_RSA_BITS} are required")
        # Re-encoded as PKCS#1 PEM with LF line ends, the one form dkimpy's own RSA code reads.
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return private, f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode('ascii')}"
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError(f"holds a {type(key).__name__}, not an Ed25519 key")
    seed = key.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    public = key.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
    # dkimpy (PyNaCl) takes the 32-byte seed in base64.
    return base64.b64encode(
        seed
    ), f"v=DKIM1; k=ed25519; p={base64.b64encode(public).decode('ascii')}"


def _load_key(path: Path, domain: str) -> DkimKey:
    """Read and check one key file of `domain`'s directory; ConfigError names the file."""
    parts = path.name.split(".")
    if (
        len(parts) != 3
        or parts[2] != "key"
        or parts[1] not in ALGORITHMS
        or not is_ldh_label(parts[0])
        or parts[0] != parts[0].lower()
    ):
        raise ConfigError(
            f"{path}: not a key file of the dkim key layout {_LAYOUT} "
            f"(lower-case selector, algorithm one of {', '.join(ALGORITHMS)})"
        )
    selector, algorithm = parts[0], parts[1]
    try:
        # O_NONBLOCK: a FIFO put here by mistake must not hang the start.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the key: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path}: not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"{path}: key file mode {mode:04o} lets group or other in; chmod 600 it"
            )
        pem = _read_at_most(fd, _MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the key: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(pem) > _MAX_KEY_FILE_BYTES:
        raise ConfigError(f"{path}: larger than {_MAX_KEY_FILE_BYTES} bytes, not a key file")
    try:
        private, public_record = _parse_private_pem(pem, algorithm)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return DkimKey(domain, selector, algorithm, private, public_record)


def _read_at_most(fd: int, limit: int) -> bytes:
    """Read from `fd` until end of file or `limit` bytes, whichever comes first."""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        part = os.read(fd, limit - size)
        if not part:
            break
        parts.append(part)
        size += len(part)
    return b"".join(parts)
