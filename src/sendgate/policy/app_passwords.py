"""Make app passwords and their lookups: random secrets a user gives one device each.

An app password is 20 random characters from the 32 of lower-case base32 (100 bits from
`secrets`), in four groups of five joined by "-": easy to type on a phone, long enough that
nobody guesses it, so it needs no strength check. Its lookup (the first 4 bytes of its SHA-256,
in hex) is stored beside its argon2id hash so that a login verifies one hash, not all of them.

Security: `lookup_of` runs on passwords from the AUTH exchange; it only hashes them. A stolen
store gives an attacker the lookups, which narrow a 100-bit guess by 32 bits: still 2^68
candidates, each needing an argon2 verification.
"""

import hashlib
import secrets

ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
GROUPS = 4
GROUP_LENGTH = 5
LOOKUP_BYTES = 4


def generate() -> str:
    """A new app password, e.g. ``k3xqa-7mbze-pq2wd-h5tnc``."""
    return "-".join(
        "".join(secrets.choice(ALPHABET) for _ in range(GROUP_LENGTH)) for _ in range(GROUPS)
    )


def lookup_of(password: str) -> str:
    """The 8 hex digits that pick the stored hash a password may match."""
    # surrogatepass: a lone surrogate from a client must give some lookup, not raise.
    digest = hashlib.sha256(password.encode("utf-8", "surrogatepass")).digest()
    return digest[:LOOKUP_BYTES].hex()
