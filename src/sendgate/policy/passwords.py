"""Decide whether a new password is acceptable, and hash passwords with argon2id.

Security: the password is typed by an administrator or user at the CLI. Its length is checked
first (at most MAX_LENGTH characters) so the later checks stay cheap; the password is never put
into a message or a log. zxcvbn is imported only when a password is checked, so server workers,
which only hash and verify, do not load its word lists.
"""

import unicodedata

from argon2 import PasswordHasher
from argon2.profiles import RFC_9106_LOW_MEMORY

MIN_LENGTH = 12
MAX_LENGTH = 1024

# Local parts shorter than this are not searched for inside passwords: "contains the local part"
# would otherwise refuse, for user "al", every password with those two letters in a row.
_MIN_LOCAL_PART_SEARCHED = 3


def password_problem(password: str, username: str) -> str | None:
    """Return None if `password` is acceptable for `username`, else a one-line reason."""
    if len(password) < MIN_LENGTH:
        return f"password is too short (minimum {MIN_LENGTH} characters)"
    if len(password) > MAX_LENGTH:
        return f"password is too long (maximum {MAX_LENGTH} characters)"
    categories = {unicodedata.category(char) for char in password}
    if "Cc" in categories:
        return "password contains control characters"
    if "Cs" in categories:
        # Lone surrogates (from undecodable terminal input) cannot be encoded to hash them.
        return "password contains invalid characters (unpaired surrogates)"
    local_part = username.rpartition("@")[0] or username
    # Equal to the local part is a special case of containing it, as MIN_LENGTH exceeds 3.
    if len(local_part) >= _MIN_LOCAL_PART_SEARCHED and local_part.casefold() in password.casefold():
        return "password contains the user name"
    if _is_common(password):
        return "password is a commonly used password"
    return None


def _is_common(password: str) -> bool:
    """Return True if zxcvbn matches the whole password to an entry of its password list.

    zxcvbn's matcher lower-cases, un-l33ts and reverses for us. We read all its matches, not the
    zxcvbn() result: that keeps only the cheapest-to-guess sequence, which for about one listed
    password in nine is something else (a repeat, or two shorter words).
    """
    from zxcvbn import matching  # here, not at the top: see the module docstring

    common = matching.RANKED_DICTIONARIES["passwords"]
    # The matcher is quadratic in the length (about 45 s at 1024 characters), and a password
    # longer than every listed one cannot be a whole match.
    if len(password) > max(map(len, common)):
        return False
    return any(
        match["pattern"] == "dictionary"
        and match["dictionary_name"] == "passwords"
        and match["i"] == 0
        and match["j"] == len(password) - 1
        for match in matching.omnimatch(password)
    )


def new_hasher() -> PasswordHasher:
    """Return the argon2id hasher that sendgate hashes new passwords with."""
    # RFC 9106's second recommended option (64 MiB, t=3, p=4) rather than its first (2 GiB):
    # many logins are verified at once in a small worker pool. It equals argon2-cffi's
    # current defaults, but is named so that a library upgrade cannot change it silently.
    return PasswordHasher.from_parameters(RFC_9106_LOW_MEMORY)


def hash_password(hasher: PasswordHasher, password: str) -> str:
    """Return the encoded argon2 hash of `password`, with `hasher`'s parameters and a new salt."""
    return hasher.hash(password)
