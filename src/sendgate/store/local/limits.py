"""`LimitStore` kept in one SQLite file (WAL mode) that every process on the host opens.

Each operation is one write transaction (BEGIN IMMEDIATE), so concurrent workers never lose an
update and a restart or a SIGKILL keeps what was committed. Rows carry the time after which
nobody needs them (`expires`), and every `PRUNE_EVERY` writes a process deletes what has
expired everywhere, so keys that are never touched again (an attacker's address) do not pile up.

Security: keys and members are chosen by the policy (networks, hashed names), bound only as SQL
parameters; the file is created owner-only (see `store.local.sqlite`).
"""

import json
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sendgate.store.limits import (
    Ban,
    DistinctRequest,
    DistinctVerdict,
    RateRequest,
    RateVerdict,
    Taken,
    check_rate,
    check_requests,
)
from sendgate.store.local.changes import ChangeMark, KeptReads
from sendgate.store.local.sqlite import Database

SCHEMA_VERSION = 1
PRUNE_EVERY = 1000
# Float slack for GCRA comparisons: limit/period rarely divides evenly, and a budget's last
# unit must not be refused for a rounding error.
_SLACK = 1e-9

_SCHEMA = (
    """CREATE TABLE members (
        key TEXT NOT NULL,
        member TEXT NOT NULL,
        at REAL NOT NULL,
        expires REAL NOT NULL,
        PRIMARY KEY (key, member)
    ) STRICT, WITHOUT ROWID""",
    "CREATE INDEX members_by_expiry ON members (expires)",
    "CREATE TABLE rates (key TEXT PRIMARY KEY, tat REAL NOT NULL) STRICT",
    """CREATE TABLE bans (
        key TEXT PRIMARY KEY,
        since REAL NOT NULL,
        until REAL NOT NULL,
        reason TEXT NOT NULL,
        offences INTEGER NOT NULL,
        expires REAL NOT NULL
    ) STRICT""",
)


class LocalLimitStore:
    """`LimitStore` on SQLite; one connection per instance, shared by threads under a lock."""

    def __init__(
        self, path: Path, *, clock: Callable[[], float] = time.time, busy_timeout: float = 5.0
    ) -> None:
        self._db = Database(
            path,
            name="limit store",
            schema=_SCHEMA,
            version=SCHEMA_VERSION,
            busy_timeout=busy_timeout,
        )
        self._clock = clock
        self._writes = 0
        self._writes_lock = threading.Lock()
        # Renewed after every change of a ban (not of the counters, written with every message):
        # the event loop's ban reads are kept until then (`store.local.changes`).
        self._bans_mark = ChangeMark(path.with_name(path.name + "-bans"), owner_of=path)
        self._bans_kept: KeptReads[tuple[str, ...], list[Any]] = KeptReads(self._bans_mark)

    def now(self) -> float:
        return self._clock()

    # --- members in a sliding window ----------------------------------------------------------

    def record(self, key: str, member: str, window: float) -> int:
        now = self._clock()
        with self._db.writing() as db:
            db.execute("DELETE FROM members WHERE key = ? AND at <= ?", (key, now - window))
            db.execute(
                "INSERT OR REPLACE INTO members (key, member, at, expires) VALUES (?, ?, ?, ?)",
                (key, member, now, now + window),
            )
            count = int(
                db.execute("SELECT count(*) FROM members WHERE key = ?", (key,)).fetchone()[0]
            )
            self._maybe_prune(db, now)
        return count

    def count(self, key: str, window: float) -> int:
        now = self._clock()
        with self._db.reading() as db:
            row = db.execute(
                "SELECT count(*) FROM members WHERE key = ? AND at > ?", (key, now - window)
            ).fetchone()
        return int(row[0])

    def seen(self, key: str, member: str, window: float) -> bool:
        now = self._clock()
        with self._db.reading() as db:
            row = db.execute(
                "SELECT 1 FROM members WHERE key = ? AND member = ? AND at > ?",
                (key, member, now - window),
            ).fetchone()
        return row is not None

    def forget(self, key: str) -> None:
        with self._db.writing() as db:
            db.execute("DELETE FROM members WHERE key = ?", (key,))
            db.execute("DELETE FROM rates WHERE key = ?", (key,))

    # --- GCRA -----------------------------------------------------------------------------------

    def take(self, key: str, limit: int, period: float, cost: int = 1) -> RateVerdict:
        check_rate(limit, period, cost)
        now = self._clock()
        with self._db.writing() as db:
            verdict, tat = _gcra(_tat(db, key), now, limit, period, cost)
            if verdict.allowed:
                db.execute("INSERT OR REPLACE INTO rates (key, tat) VALUES (?, ?)", (key, tat))
                self._maybe_prune(db, now)
        return verdict

    def take_all(
        self, rates: Sequence[RateRequest], distinct: Sequence[DistinctRequest] = ()
    ) -> Taken:
        check_requests(rates, distinct)
        with self._db.writing() as db:
            now = self._clock()
            stored = _tats(db, [rate.key for rate in rates])
            rate_verdicts: list[RateVerdict] = []
            tats: list[tuple[str, float]] = []
            for rate in rates:
                verdict, tat = _gcra(stored.get(rate.key), now, rate.limit, rate.period, rate.cost)
                rate_verdicts.append(verdict)
                tats.append((rate.key, tat))
            distinct_verdicts = [_distinct(db, request, now) for request in distinct]
            allowed = all(v.allowed for v in rate_verdicts) and all(
                v.allowed for v in distinct_verdicts
            )
            if allowed:
                db.executemany("INSERT OR REPLACE INTO rates (key, tat) VALUES (?, ?)", tats)
                for request in distinct:
                    db.executemany(
                        "INSERT OR REPLACE INTO members (key, member, at, expires)"
                        " VALUES (?, ?, ?, ?)",
                        [
                            (request.key, member, now, now + request.window)
                            for member in set(request.members)
                        ],
                    )
                self._maybe_prune(db, now)
            return Taken(allowed, tuple(rate_verdicts), tuple(distinct_verdicts))

    # --- bans -----------------------------------------------------------------------------------

    def ban(self, key: str, duration: float, reason: str, *, memory: float) -> Ban:
        now = self._clock()
        with self._db.writing() as db:
            row = db.execute(
                "SELECT since, until, offences FROM bans WHERE key = ?", (key,)
            ).fetchone()
            offences, since, until = 1, now, now + duration
            if row is not None:
                old_since, old_until, old_offences = float(row[0]), float(row[1]), int(row[2])
                if old_until > now:  # active: never shortened, keeps its start
                    since, until = old_since, max(until, old_until)
                if now - old_until <= memory:
                    offences = old_offences + 1
            db.execute(
                "INSERT OR REPLACE INTO bans (key, since, until, reason, offences, expires)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (key, since, until, reason, offences, until + memory),
            )
            self._maybe_prune(db, now)
        self._bans_mark.renew()
        return Ban(key, since, until, reason, offences)

    def ban_of(self, key: str) -> Ban | None:
        now = self._clock()
        with self._db.reading() as db:
            row = db.execute(
                "SELECT key, since, until, reason, offences FROM bans WHERE key = ? AND until > ?",
                (key, now),
            ).fetchone()
        return None if row is None else _ban(row)

    def active_bans(self, keys: Sequence[str]) -> list[Ban]:
        if not keys:
            return []
        now = self._clock()
        with self._db.reading() as db:
            rows = db.execute(_bans_query(len(keys)), (*keys, now)).fetchall()
        return _in_order(keys, rows)

    def active_bans_at_once(self, keys: Sequence[str]) -> list[Ban] | None:
        if not keys:
            return []
        wanted, now = tuple(keys), self._clock()
        seen = self._bans_kept.seen()
        rows = self._bans_kept.get(wanted, seen)
        if rows is None:
            # The keys' bans whatever their end: kept, they are filtered by the time of each ask.
            query = _bans_query(len(wanted), active_only=False)
            rows = self._db.read_at_once(lambda db: db.execute(query, wanted).fetchall())
            if rows is None:
                return None
            self._bans_kept.keep(wanted, seen, rows)
        return _in_order(keys, [row for row in rows if float(row[2]) > now])

    def offences(self, key: str, *, memory: float) -> int:
        now = self._clock()
        with self._db.reading() as db:
            row = db.execute("SELECT until, offences FROM bans WHERE key = ?", (key,)).fetchone()
        if row is None or now - float(row[0]) > memory:
            return 0
        return int(row[1])

    def unban(self, key: str) -> bool:
        now = self._clock()
        with self._db.writing() as db:
            cursor = db.execute(
                "UPDATE bans SET until = ?, expires = expires - (until - ?)"
                " WHERE key = ? AND until > ?",
                (now, now, key, now),
            )
            lifted = cursor.rowcount > 0
        self._bans_mark.renew()
        return lifted

    def bans(self) -> list[Ban]:
        now = self._clock()
        with self._db.reading() as db:
            rows = db.execute(
                "SELECT key, since, until, reason, offences FROM bans WHERE until > ? ORDER BY key",
                (now,),
            ).fetchall()
        return [_ban(row) for row in rows]

    def close(self) -> None:
        self._db.close()
        self._bans_mark.close()

    def _maybe_prune(self, db: sqlite3.Connection, now: float) -> None:
        """Every PRUNE_EVERY writes of this process, delete what nobody needs any more."""
        with self._writes_lock:
            self._writes += 1
            due = self._writes % PRUNE_EVERY == 0
        if due:
            db.execute("DELETE FROM members WHERE expires <= ?", (now,))
            db.execute("DELETE FROM rates WHERE tat <= ?", (now,))
            db.execute("DELETE FROM bans WHERE expires <= ?", (now,))


def _bans_query(count: int, *, active_only: bool = True) -> str:
    """The bans among `count` keys, bound as parameters; `active_only`: then the time."""
    marks = ",".join("?" * count)
    # Only "?" placeholders are formatted in; the keys themselves are bound.
    query = f"SELECT key, since, until, reason, offences FROM bans WHERE key IN ({marks})"  # noqa: S608
    return query + " AND until > ?" if active_only else query


def _in_order(keys: Sequence[str], rows: list[Any]) -> list[Ban]:
    found = {row[0]: _ban(row) for row in rows}
    return [found[key] for key in dict.fromkeys(keys) if key in found]


def _tats(db: sqlite3.Connection, keys: list[str]) -> dict[str, float]:
    """The stored theoretical arrival times of `keys` (one query for all of them)."""
    if not keys:
        return {}
    rows = db.execute(
        "SELECT key, tat FROM rates WHERE key IN (SELECT value FROM json_each(?))",
        (json.dumps(keys),),
    ).fetchall()
    return {key: float(tat) for key, tat in rows}


def _tat(db: sqlite3.Connection, key: str) -> float | None:
    row = db.execute("SELECT tat FROM rates WHERE key = ?", (key,)).fetchone()
    return None if row is None else float(row[0])


def _gcra(
    stored: float | None, now: float, limit: int, period: float, cost: int
) -> tuple[RateVerdict, float]:
    """The verdict for taking `cost` units, and the theoretical arrival time if they are taken."""
    interval = period / limit  # one unit comes back every `interval` seconds
    # The theoretical arrival time: when the budget would be full again.
    tat = now if stored is None else max(stored, now)
    wanted = tat + cost * interval
    if wanted - now > period * (1 + _SLACK):
        verdict = RateVerdict(
            allowed=False,
            retry_after=wanted - period - now,
            remaining=_units(period - (tat - now), interval),
        )
        return verdict, tat
    return RateVerdict(True, 0.0, _units(period - (wanted - now), interval)), wanted


def _distinct(db: sqlite3.Connection, request: DistinctRequest, now: float) -> DistinctVerdict:
    """Whether `request.members` fit under the key's limit, and how many of them are new."""
    since = now - request.window
    wanted = sorted(set(request.members))
    # One parameter for any number of members (a JSON array), not one "?" per member.
    known = int(
        db.execute(
            "SELECT count(*) FROM members WHERE key = ? AND at > ?"
            " AND member IN (SELECT value FROM json_each(?))",
            (request.key, since, json.dumps(wanted)),
        ).fetchone()[0]
    )
    new = len(wanted) - known
    if new == 0:
        # The usual case (mail to known correspondents): nothing to count, it cannot grow.
        return DistinctVerdict(True, 0)
    present = int(
        db.execute(
            "SELECT count(*) FROM members WHERE key = ? AND at > ?", (request.key, since)
        ).fetchone()[0]
    )
    return DistinctVerdict(present + new <= request.limit, new)


def _units(room: float, interval: float) -> int:
    """Whole units that fit in `room` seconds of budget."""
    return max(0, math.floor(room / interval + _SLACK))


def _ban(row: Any) -> Ban:
    key, since, until, reason, offences = row
    return Ban(key, float(since), float(until), reason, int(offences))
