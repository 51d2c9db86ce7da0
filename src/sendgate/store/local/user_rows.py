"""The SQLite user store's rows beyond logins and addresses: settings JSON and known networks.

Kept apart from `store.local.users` only for size; these functions run inside that store's
transactions and take its connection.

Security: the settings JSON is written only by `dump_settings`, yet read as untrusted: anything
but an object of known settings with values of the right type is a `StoreError`, so a damaged
or hand-edited row cannot silently loosen a limit. Networks are bound only as SQL parameters.
"""

import functools
import json
import sqlite3
from collections.abc import Iterable
from itertools import groupby
from pathlib import Path
from typing import Any

from sendgate.errors import StoreError
from sendgate.store.users import SETTING_NAMES, KnownNetwork, LoginNote, UserRecord, UserSettings

KNOWN_NETWORKS_SCHEMA = (
    """CREATE TABLE known_networks (
        username TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
        network TEXT NOT NULL,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        PRIMARY KEY (username, network)
    ) STRICT, WITHOUT ROWID""",
    # network_known asks across all accounts, on the login path of a banned network.
    "CREATE INDEX known_networks_by_network ON known_networks (network, last_seen)",
)

_DEFAULTS = UserSettings()


def dump_settings(settings: UserSettings) -> str:
    """The JSON kept for `settings`: the values that differ from the defaults, keys sorted."""
    changed = {
        name: getattr(settings, name)
        for name in SETTING_NAMES
        if getattr(settings, name) != getattr(_DEFAULTS, name)
    }
    return json.dumps(changed, sort_keys=True, separators=(",", ":"))


def load_settings(text: str, username: str, path: Path | str) -> UserSettings:
    """Parse what `dump_settings` wrote; StoreError naming the store (its file or database)
    and the user if it is not that."""
    try:
        return _parsed_settings(text)
    except (ValueError, TypeError, RecursionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StoreError(
            f"user store {path}: settings of user {username} are not valid: {reason}"
        ) from exc


# Every login reads its user's row: its settings are parsed once per distinct text (the
# result is immutable; a failure is not remembered, so each read reports it).
@functools.lru_cache(maxsize=1024)
def _parsed_settings(text: str) -> UserSettings:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    unknown = sorted(set(data) - set(SETTING_NAMES))
    if unknown:
        raise ValueError(f"unknown setting {unknown[0]!r}")
    return UserSettings(**data)


def fold_records(rows: Iterable[Any], where: Path | str) -> list[UserRecord]:
    """Fold joined (username, hash, generation, settings, address) rows into records.

    The rows come sorted by username, so each user's rows are adjacent. Shared with the
    PostgreSQL store, which reads the same columns.
    """
    records = []
    for (username, password_hash, generation, settings), group in groupby(
        rows, key=lambda row: row[:4]
    ):
        addresses = tuple(row[4] for row in group if row[4] is not None)
        records.append(
            UserRecord(
                username=username,
                password_hash=password_hash,
                addresses=addresses,
                generation=int(generation),
                settings=load_settings(settings, username, where),
            )
        )
    return records


def note_login(
    db: sqlite3.Connection, username: str, network: str, at: float, *, memory: float, recent: float
) -> LoginNote:
    """Record the login in the caller's write transaction (the user exists); see UserStore."""
    # What memory has dropped is deleted, so a network seen again later starts afresh and the
    # table keeps only what some answer may still need.
    db.execute(
        "DELETE FROM known_networks WHERE username = ? AND last_seen <= ?",
        (username, at - memory),
    )
    known = db.execute(
        "SELECT network FROM known_networks WHERE username = ?", (username,)
    ).fetchall()
    new = (network,) not in known
    # Two workers may record logins slightly out of order: keep the widest span.
    db.execute(
        """INSERT INTO known_networks (username, network, first_seen, last_seen)
        VALUES (?, ?, ?, ?)
        ON CONFLICT (username, network) DO UPDATE SET
            first_seen = min(first_seen, excluded.first_seen),
            last_seen = max(last_seen, excluded.last_seen)""",
        (username, network, at, at),
    )
    (count,) = db.execute(
        "SELECT count(*) FROM known_networks WHERE username = ? AND last_seen > ?",
        (username, at - recent),
    ).fetchone()
    return LoginNote(new=new, first=not known, recent=count)


def network_known(db: sqlite3.Connection, network: str, at: float, *, memory: float) -> bool:
    """Whether any account logged in from `network` within `memory` seconds before `at`."""
    row = db.execute(
        "SELECT 1 FROM known_networks WHERE network = ? AND last_seen > ? LIMIT 1",
        (network, at - memory),
    ).fetchone()
    return row is not None


def select_known_networks(
    db: sqlite3.Connection, username: str, at: float, *, memory: float
) -> list[KnownNetwork]:
    """The user's networks seen within `memory` before `at`, most recent first, then by name."""
    rows = db.execute(
        """SELECT network, first_seen, last_seen FROM known_networks
        WHERE username = ? AND last_seen > ? ORDER BY last_seen DESC, network""",
        (username, at - memory),
    )
    return [KnownNetwork(*row) for row in rows]
