"""DKIM key rotation without a gap in signing: stage a key, switch to it, retire the old one.

A domain's keys move through three places under `<key_dir>/<domain>/`:

- `staged/<selector>.<algorithm>.key`: made by `stage_key`. Its record is printed (and listed by
  `sendgate dns`) to be published; nothing signs with it yet, since receivers could not verify
  a signature before DNS has the record.
- `<selector>.<algorithm>.key`: the active key, the one `load_keys` gives the signer.
- `retired/<selector>.<algorithm>.record`: what is left of a key `switch_key` replaced: its public
  record and the time until which it must stay published (mail signed with it may still wait in
  queues, ours or others', and be verified later). The private key is deleted at the switch: it
  has no use left, and a key that no longer exists cannot leak.

`switch_key` writes the retired record first, then removes the old key, then moves the staged key
in, each step durable; run again after a crash, it finishes from wherever it stopped. A running
server signs with the new key once it reloads its keys (SIGHUP).

Security: record files are read back with the same care as keys (size bound, layout, a value
that must be a DKIM key record), so a stray file is refused with its name, never half-read.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from sendgate.dkim.keys import (
    ALGORITHMS,
    RETIRED_DIR,
    STAGED_DIR,
    DkimKey,
    check_selector_free,
    default_selector,
    domain_keys,
    ensure_private_dir,
    entries,
    read_key,
    user_domain,
    user_selector,
    write_new_key,
)
from sendgate.errors import ConfigError, UserError
from sendgate.fsutil import fsync_dir, write_file_durably

RECORD_SUFFIX = ".record"
_MAX_RECORD_FILE_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class RetiredRecord:
    """A replaced key's DNS record, to stay published until `until` (epoch seconds)."""

    domain: str
    selector: str
    algorithm: str
    public_record: str
    retired: float
    until: float


@dataclass(frozen=True, slots=True)
class Switched:
    """What `switch_key` did: the key now signing, and what became of the one before."""

    new: DkimKey
    retired: RetiredRecord | None  # None when the domain had no active key of that algorithm


def staged_keys(key_dir: Path) -> tuple[DkimKey, ...]:
    """Every staged key, by domain and file name; ConfigError (naming the file) as `load_keys`."""
    found: list[DkimKey] = []
    for domain_dir in _domain_dirs(key_dir):
        place = domain_dir / STAGED_DIR
        if place.is_dir():
            found += (read_key(path, domain_dir.name) for path in entries(place))
    return tuple(found)


def retired_records(key_dir: Path) -> tuple[RetiredRecord, ...]:
    """Every retired record, by domain and file name; ConfigError names a broken file.

    Leftovers of an interrupted switch (`*.tmp`) are skipped: the switch had not happened.
    """
    found: list[RetiredRecord] = []
    for domain_dir in _domain_dirs(key_dir):
        place = domain_dir / RETIRED_DIR
        if place.is_dir():
            found += (
                _read_record(path, domain_dir.name)
                for path in entries(place)
                if not path.name.endswith(".tmp")
            )
    return tuple(found)


def stage_key(
    key_dir: Path, domain: str, algorithm: str | None, selector: str | None, now: float
) -> DkimKey:
    """Make the key that is to replace `domain`'s active key of `algorithm`, in staged/.

    `algorithm` None means the algorithm of the domain's one key; `selector` None means the
    month's default (`sgYYYYMM`), or the day's (`sgYYYYMMDD`) when the month's is taken.
    UserError (one line) for a domain without a key to replace, an unclear algorithm, a key
    already staged, a selector already used by one of the domain's keys, or a failed write.
    """
    name = user_domain(domain)
    active = {key.algorithm: key for key in domain_keys(key_dir, name)}
    algorithm = _algorithm(name, algorithm, sorted(active), staged=False)
    if algorithm not in active:
        raise UserError(
            f"{name} has no {algorithm} key to rotate; make one with `sendgate dkim keygen "
            f"{name} --algorithm {algorithm}`"
        )
    domain_dir = key_dir / name
    waiting = _staged(domain_dir, algorithm)
    if waiting is not None:
        raise UserError(
            f"an {algorithm} key is staged for {name} already ({waiting}); switch to it with "
            f"`sendgate dkim switch {name}`, or delete the file to stage another"
        )
    if selector is None:
        selector = _free_default_selector(domain_dir, now)
    else:
        selector = user_selector(selector)
        check_selector_free(domain_dir, selector)
    path = domain_dir / STAGED_DIR / f"{selector}.{algorithm}.key"
    return write_new_key(key_dir, path, algorithm)


def switch_key(
    key_dir: Path, domain: str, algorithm: str | None, keep_for: float, now: float
) -> Switched:
    """Make `domain`'s staged key of `algorithm` the active one; the old one's record is kept
    published (listed as retired) for `keep_for` seconds from `now`.

    UserError (one line) when nothing is staged or the algorithm is unclear; OSError from the
    file system is reported as UserError naming the file.
    """
    name = user_domain(domain)
    domain_dir = key_dir / name
    place = domain_dir / STAGED_DIR
    staged = [read_key(path, name) for path in entries(place)] if place.is_dir() else []
    algorithm = _algorithm(name, algorithm, [key.algorithm for key in staged], staged=True)
    new = next((key for key in staged if key.algorithm == algorithm), None)
    if new is None:
        raise UserError(
            f"no {algorithm} key is staged for {name}; stage one with `sendgate dkim rotate {name}`"
        )
    old = next((key for key in domain_keys(key_dir, name) if key.algorithm == algorithm), None)
    retired = None
    try:
        if old is not None:
            retired = RetiredRecord(
                name, old.selector, algorithm, old.public_record, now, now + keep_for
            )
            _write_record(domain_dir / RETIRED_DIR, retired)
            (domain_dir / f"{old.selector}.{algorithm}.key").unlink()
            fsync_dir(domain_dir)
        staged_path = place / f"{new.selector}.{algorithm}.key"
        os.rename(staged_path, domain_dir / staged_path.name)
        fsync_dir(place)
        fsync_dir(domain_dir)
    except OSError as exc:
        where = exc.filename or domain_dir
        raise UserError(f"cannot switch keys: {where}: {exc.strerror}") from None
    return Switched(new, retired)


def prune_retired(key_dir: Path, now: float) -> list[RetiredRecord]:
    """Delete the retired records whose time is over; return them (their DNS records may go)."""
    pruned = []
    for record in retired_records(key_dir):
        if record.until <= now:
            place = key_dir / record.domain / RETIRED_DIR
            try:
                (place / _record_name(record.selector, record.algorithm)).unlink()
                fsync_dir(place)
            except OSError as exc:
                raise UserError(f"cannot remove {exc.filename or place}: {exc.strerror}") from None
            pruned.append(record)
    return pruned


def _domain_dirs(key_dir: Path) -> list[Path]:
    if not key_dir.is_dir():
        return []
    return [path for path in entries(key_dir) if path.is_dir()]


def _algorithm(domain: str, wanted: str | None, present: list[str], *, staged: bool) -> str:
    """The algorithm to act on: `wanted`, else the only one `present`; UserError otherwise."""
    if wanted is not None:
        if wanted not in ALGORITHMS:
            known = ", ".join(ALGORITHMS)
            raise UserError(f"unknown DKIM algorithm {wanted!r}: use one of {known}")
        return wanted
    if len(present) == 1:
        return present[0]
    if present:
        kind = "staged keys" if staged else "keys"
        raise UserError(f"{domain} has {' and '.join(present)} {kind}: choose one with --algorithm")
    if staged:
        raise UserError(
            f"no key is staged for {domain}; stage one with `sendgate dkim rotate {domain}`"
        )
    raise UserError(
        f"{domain} has no DKIM key to rotate; make one with `sendgate dkim keygen {domain}`"
    )


def _staged(domain_dir: Path, algorithm: str) -> Path | None:
    place = domain_dir / STAGED_DIR
    found = sorted(place.glob(f"*.{algorithm}.key")) if place.is_dir() else []
    return found[0] if found else None


def _free_default_selector(domain_dir: Path, now: float) -> str:
    month = default_selector(now)
    day = f"{month}{time.gmtime(now).tm_mday:02d}"
    for selector in (month, day):
        try:
            check_selector_free(domain_dir, selector)
        except UserError:
            continue
        return selector
    raise UserError(
        f"selectors {month} and {day} are taken for {domain_dir.name}: choose one with --selector"
    )


def _record_name(selector: str, algorithm: str) -> str:
    return f"{selector}.{algorithm}{RECORD_SUFFIX}"


def _write_record(place: Path, record: RetiredRecord) -> None:
    """Write a retired record under its final name atomically (temporary file, rename)."""
    ensure_private_dir(place)
    final = place / _record_name(record.selector, record.algorithm)
    temporary = final.with_name(final.name + ".tmp")
    document = {
        "record": record.public_record,
        "retired": int(record.retired),
        "until": int(record.until),
    }
    write_file_durably(temporary, json.dumps(document).encode("ascii"), exclusive=False)
    try:
        os.rename(temporary, final)
    except OSError:
        temporary.unlink()
        raise
    fsync_dir(place)


def _read_record(path: Path, domain: str) -> RetiredRecord:
    """Read one retired record; ConfigError (naming the file) for anything out of shape."""
    parts = path.name.split(".")
    if len(parts) != 3 or parts[1] not in ALGORITHMS or "." + parts[2] != RECORD_SUFFIX:
        raise ConfigError(
            f"{path}: not a retired DKIM record (<selector>.<algorithm>{RECORD_SUFFIX})"
        )
    try:
        selector = user_selector(parts[0])
        with path.open("rb") as stream:
            data = stream.read(_MAX_RECORD_FILE_BYTES + 1)
        if len(data) > _MAX_RECORD_FILE_BYTES:
            raise ValueError("too large")
        document = json.loads(data)
        value, retired, until = document["record"], document["retired"], document["until"]
        if not isinstance(value, str) or "p=" not in value or not value.isprintable():
            raise ValueError("no DKIM key record")
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in (retired, until)):
            raise ValueError("times are not whole seconds")
    except (OSError, ValueError, KeyError, TypeError, UserError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) else str(exc) or type(exc).__name__
        raise ConfigError(f"{path}: not a readable retired DKIM record: {detail}") from None
    return RetiredRecord(domain, selector, parts[1], value, float(retired), float(until))
