"""DKIM signing keys: generation, the key directory, the DNS record to publish, name checks.

Keys live in a key directory as `<key_dir>/<domain>/<selector>.<algorithm>.key`: the domain in
lower-case ASCII (internationalised names as IDNA 2008 A-labels, converted label by label with
dnspython's `dns.name.IDNA_2008_Practical` codec, which applies the UTS #46 mapping), the
selector one lower-case DNS label, the algorithm "rsa" (PKCS#1 PEM, at least 2048 bits) or
"ed25519" (PKCS#8 PEM). A domain has at most one key per algorithm, and no two of its keys share
a selector (one selector is one DNS name, which holds one record). A domain directory may also
hold `staged/` and `retired/`, the keys of a rotation (`sendgate.dkim.rotation`); `load_keys`
leaves them out: only the keys beside them sign.

Security: key files are operator input, yet `load_keys` refuses a key open to group or other, an
RSA key under 2048 bits, a second key for one (domain, algorithm) and any name outside the
layout, so a stray or weak key is never used silently.
"""

import base64
import errno
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.name
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from sendgate.errors import ConfigError, UserError
from sendgate.fsutil import fsync_dir, write_file_durably
from sendgate.smtp.address import is_ldh_label

ALGORITHMS: tuple[str, ...] = ("rsa", "ed25519")

_RSA_BITS = 2048
_MAX_KEY_FILE_BYTES = 64 * 1024
# dkimpy's fold() breaks a longer d= (or i=) value inside the name, which no verifier accepts;
# such domains are refused rather than signed wrongly.
_MAX_DOMAIN_LENGTH = 68
_TXT_STRING_MAX = 255
_LAYOUT = "<key_dir>/<domain>/<selector>.<algorithm>.key"
STAGED_DIR = "staged"
RETIRED_DIR = "retired"


@dataclass(frozen=True, slots=True)
class DkimKey:
    """One signing key: where it signs (domain, selector), how, and the record to publish."""

    domain: str
    selector: str
    algorithm: str
    private: bytes = field(repr=False)
    public_record: str


def default_selector(now: float) -> str:
    """Return the selector for a key made at `now` (epoch seconds): "sg" + year + month, UTC."""
    moment = time.gmtime(now)
    return f"sg{moment.tm_year:04d}{moment.tm_mon:02d}"


def key_path(key_dir: Path, domain: str, selector: str, algorithm: str) -> Path:
    """Return where the key for (domain, selector, algorithm) lives; UserError if one is bad.

    The domain is converted to its lower-case A-label form and the selector to lower case.
    """
    ascii_domain = user_domain(domain)
    return key_dir / ascii_domain / _key_file_name(user_selector(selector), algorithm)


def generate_key(
    key_dir: Path, domain: str, selector: str, algorithm: str = "rsa"
) -> tuple[Path, str]:
    """Create a new key and return (its path, the DNS TXT record line to publish).

    RSA keys have 2048 bits. The file is created exclusively with mode 0600 and fsync'd, and
    missing directories are made with mode 0700. Raises UserError (one line) for a bad domain,
    selector or algorithm, when the domain already has a key of this algorithm (one per
    algorithm is the rule), when the selector is taken by another of its keys (active, staged
    or retired), or when the file cannot be written.
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
    check_selector_free(path.parent, path.name.split(".")[0])
    key = write_new_key(key_dir, path, algorithm)
    return path, dns_record(key)


def check_selector_free(domain_dir: Path, selector: str) -> None:
    """UserError when one of the domain's keys (active, staged or retired) has `selector`.

    Receivers cache a selector's record: a new key under an old name would fail their checks
    until the cache expires.
    """
    for place in (domain_dir, domain_dir / STAGED_DIR, domain_dir / RETIRED_DIR):
        taken = sorted(place.glob(f"{selector}.*")) if place.is_dir() else []
        if taken:
            raise UserError(
                f"selector {selector} is taken for {domain_dir.name} ({taken[0]}); "
                "choose another with --selector"
            )


def write_new_key(key_dir: Path, path: Path, algorithm: str) -> DkimKey:
    """Generate a key into `path` (a new file, 0600, fsync'd; directories made 0700 up to
    `key_dir`) and return it; UserError (one line) when it exists or cannot be written.
    """
    pem = _new_private_pem(algorithm)
    try:
        directory = key_dir
        ensure_private_dir(directory)
        for part in path.parent.relative_to(key_dir).parts:
            directory /= part
            ensure_private_dir(directory)
        write_file_durably(path, pem, exclusive=True, mode=0o600)
        fsync_dir(path.parent)
    except FileExistsError:
        raise UserError(
            f"{path} already exists; remove it first or choose another selector"
        ) from None
    except OSError as exc:
        raise UserError(f"cannot write {exc.filename or path}: {exc.strerror}") from None
    private, public_record = _parse_private_pem(pem, algorithm)
    selector = path.name.split(".")[0]
    return DkimKey(_domain_of(key_dir, path), selector, algorithm, private, public_record)


def _domain_of(key_dir: Path, path: Path) -> str:
    """The domain directory's name for a key file anywhere under it."""
    return path.relative_to(key_dir).parts[0]


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
    two keys for one (domain, algorithm) or one (domain, selector).
    """
    try:
        domain_dirs = sorted(key_dir.iterdir())
    except FileNotFoundError:
        return ()
    except OSError as exc:
        raise ConfigError(f"dkim key directory {key_dir}: {exc.strerror}") from None
    keys: list[DkimKey] = []
    for domain_dir in domain_dirs:
        if not domain_dir.is_dir() or domain_or_none(domain_dir.name) != domain_dir.name:
            raise ConfigError(
                f"{domain_dir}: not a domain directory of the dkim key layout {_LAYOUT} "
                "(domain in lower-case ASCII)"
            )
        keys += _domain_keys(domain_dir, entries(domain_dir))
    return tuple(keys)


def domain_keys(key_dir: Path, domain: str) -> tuple[DkimKey, ...]:
    """The active keys of one (normalized) domain, checked as `load_keys` checks them."""
    domain_dir = key_dir / domain
    if not domain_dir.is_dir():
        return ()
    return tuple(_domain_keys(domain_dir, entries(domain_dir)))


def entries(directory: Path) -> list[Path]:
    """A directory's entries, sorted; ConfigError (naming it) when it cannot be listed."""
    try:
        return sorted(directory.iterdir())
    except OSError as exc:
        raise ConfigError(f"{directory}: {exc.strerror}") from None


def _domain_keys(domain_dir: Path, key_files: list[Path]) -> list[DkimKey]:
    """Load a domain directory's key files: one per algorithm, one per selector."""
    keys: list[DkimKey] = []
    by_algorithm: dict[str, Path] = {}
    by_selector: dict[str, Path] = {}
    for path in key_files:
        if path.name in (STAGED_DIR, RETIRED_DIR) and path.is_dir():
            continue
        key = read_key(path, domain_dir.name)
        if key.algorithm in by_algorithm:
            raise ConfigError(
                f"{path}: second {key.algorithm} key for {key.domain} "
                f"(also {by_algorithm[key.algorithm].name}); keep one per algorithm"
            )
        if key.selector in by_selector:
            raise ConfigError(
                f"{path}: second key with selector {key.selector} for {key.domain} "
                f"(also {by_selector[key.selector].name}); a selector names one DNS record"
            )
        by_algorithm[key.algorithm] = by_selector[key.selector] = path
        keys.append(key)
    return keys


def normalize_domain(domain: str) -> str:
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


def domain_or_none(domain: str) -> str | None:
    """Return the normalized domain, or None when `domain` is not a domain name."""
    try:
        return normalize_domain(domain)
    except ValueError:
        return None


def user_domain(domain: str) -> str:
    """Normalize a domain given by a user; UserError names the domain and the problem."""
    try:
        return normalize_domain(domain)
    except ValueError as exc:
        raise UserError(f"not a domain name: {domain!r}: {exc}") from None


def user_selector(selector: str) -> str:
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


def ensure_private_dir(path: Path) -> None:
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


def read_key(path: Path, domain: str) -> DkimKey:
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
