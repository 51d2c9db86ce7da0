"""Reloading the signing keys of a running process (on SIGHUP, and when a child starts).

A reload reads the key directory as the start did. When it cannot (a broken or weak key file),
the process keeps signing with the keys it had and logs why: a mistake in the key directory
must not turn signing off.
"""

from __future__ import annotations

from pathlib import Path

from sendgate.dkim.keys import DkimKey, load_keys
from sendgate.dkim.rotation import staged_keys
from sendgate.dkim.signer import DkimSigner
from sendgate.errors import ConfigError
from sendgate.log import EventLog


def _files(key_dir: Path) -> frozenset[tuple[str, int, int, int]]:
    """What the active key files are now: name, inode, size and change time of each."""
    found = set()
    for path in key_dir.glob("*/*.key"):
        try:
            info = path.stat()
        except OSError:
            continue  # gone meanwhile, or unreadable: `reload` will say which
        found.add((str(path), info.st_ino, info.st_size, info.st_mtime_ns))
    return frozenset(found)


def describe(keys: tuple[DkimKey, ...]) -> str:
    """The keys as one log value: domain:selector:algorithm, comma-separated ("" for none)."""
    return ",".join(f"{key.domain}:{key.selector}:{key.algorithm}" for key in keys)


def _check_not_switching(
    key_dir: Path, before: tuple[DkimKey, ...], keys: tuple[DkimKey, ...]
) -> None:
    """ConfigError when a key in use is gone while one of its kind is still staged: a reload
    in the middle of `dkim switch` (which removes the old key, then moves the new one in)
    would sign that domain's mail with nothing until the next reload."""
    present = {(key.domain, key.algorithm) for key in keys}
    staged = {(key.domain, key.algorithm) for key in staged_keys(key_dir)}
    for key in before:
        if (key.domain, key.algorithm) not in present and (key.domain, key.algorithm) in staged:
            raise ConfigError(
                f"a key switch is under way for {key.domain} ({key.algorithm}): reload again "
                "once `sendgate dkim switch` has finished"
            )


class KeyReloader:
    """Calling it loads the key directory into the signer if it changed, and logs the outcome."""

    def __init__(self, key_dir: Path, signer: DkimSigner, log: EventLog) -> None:
        """`signer` holds the keys of `key_dir` as they are now."""
        self._key_dir = key_dir
        self._signer = signer
        self._log = log
        self._seen = _files(key_dir)

    def refresh(self) -> bool:
        """`reload` only if a key file changed since the last look (a child started after a
        SIGHUP); the usual answer costs a few stat calls, not a parse of every key."""
        if _files(self._key_dir) == self._seen:
            return False
        return self()

    def __call__(self) -> bool:
        """Reload; True when the signer now has a different key set."""
        self._seen = _files(self._key_dir)
        before = self._signer.keys()
        try:
            keys = load_keys(self._key_dir)
            if frozenset(keys) == frozenset(before):
                return False
            _check_not_switching(self._key_dir, before, keys)
            self._signer.replace(keys)
        except (ConfigError, ValueError) as exc:
            self._log.event("dkim_reload_failed", "error", error=str(exc), keeping=describe(before))
            return False
        self._log.event("dkim_reloaded", keys=describe(keys), before=describe(before))
        return True
