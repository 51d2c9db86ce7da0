"""Delivery state of one queued message: per-recipient outcome, attempts and the next due time.

It is part of the queue's data model (`QueueStore.update` stores it, `Claim.state` gives it
back), so a restarted runner, or another node, continues where the last attempt stopped:
delivered recipients are never tried again, failed ones were already reported (a crash between
queueing the DSN and storing the state can report them twice). A message delivered in one
attempt never gets a stored state. Recipients are kept in envelope order (a list, not a
mapping), so an envelope that names the same address twice stays consistent.

Security: the stored form is written by the delivery runner only, but read back strictly (exact
keys and types, finite times); remote reply texts in it are untrusted and were made one-line and
bounded before storing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any

from sendgate.errors import SpoolError
from sendgate.text import one_line

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"
_STATUSES = (PENDING, DELIVERED, FAILED)
_VERSION = 1


@dataclass(frozen=True, slots=True)
class RecipientState:
    """Where one recipient stands after the attempts so far."""

    address: str
    status: str = PENDING
    attempts: int = 0
    last_attempt: float | None = None
    host: str | None = None  # the host that gave `reply`, if any
    reply: str | None = None  # remote reply or local reason, one line
    enhanced: str | None = None  # enhanced status code for a DSN, e.g. "5.1.1"
    # Delivered to a host that does not offer DSN (RFC 3461): a "relayed" report is due if the
    # sender asked for NOTIFY=SUCCESS. Written only when true.
    relayed: bool = False


@dataclass(frozen=True, slots=True)
class DeliveryState:
    """All recipients of a message, the next due time and whether the delay notice went out."""

    recipients: tuple[RecipientState, ...]
    next_attempt: float = 0.0
    attempts: int = 0
    delay_notified: bool = False

    @classmethod
    def fresh(cls, recipients: tuple[str, ...], due: float = 0.0) -> DeliveryState:
        return cls(tuple(RecipientState(address) for address in recipients), next_attempt=due)

    def pending(self) -> list[int]:
        """Indexes of recipients still to be delivered."""
        return [i for i, rcpt in enumerate(self.recipients) if rcpt.status == PENDING]

    def finished(self) -> bool:
        return not self.pending()

    def with_results(self, updates: dict[int, RecipientState]) -> DeliveryState:
        rows = list(self.recipients)
        for index, row in updates.items():
            rows[index] = row
        return replace(self, recipients=tuple(rows))

    def to_json(self) -> bytes:
        record = {
            "version": _VERSION,
            "next_attempt": self.next_attempt,
            "attempts": self.attempts,
            "delay_notified": self.delay_notified,
            "recipients": [_recipient_record(r) for r in self.recipients],
        }
        return json.dumps(record, ensure_ascii=False, sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes, recipients: tuple[str, ...]) -> DeliveryState:
        """Parse what `to_json` wrote for an envelope with these `recipients`."""
        try:
            raw = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
            _exact_keys(raw, _STATE_KEYS)
            if raw["version"] != _VERSION:
                raise SpoolError(f"state: unsupported version {raw['version']!r}")
            if not isinstance(raw["recipients"], list):
                raise TypeError("recipients is not a list")
            rows = tuple(_recipient(item) for item in raw["recipients"])
            state = cls(
                recipients=rows,
                next_attempt=_time(raw["next_attempt"]),
                attempts=_count(raw["attempts"]),
                delay_notified=_bool(raw["delay_notified"]),
            )
        except SpoolError:
            raise
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise SpoolError(f"state: malformed ({type(exc).__name__}: {exc})") from None
        if tuple(row.address for row in rows) != recipients:
            raise SpoolError("state: recipients do not match the envelope")
        return state


_STATE_KEYS = frozenset({"version", "next_attempt", "attempts", "delay_notified", "recipients"})
_RECIPIENT_KEYS = frozenset(
    {"address", "status", "attempts", "last_attempt", "host", "reply", "enhanced"}
)


def _recipient_record(row: RecipientState) -> dict[str, Any]:
    record: dict[str, Any] = {
        "address": row.address,
        "status": row.status,
        "attempts": row.attempts,
        "last_attempt": row.last_attempt,
        "host": row.host,
        "reply": None if row.reply is None else one_line(row.reply),
        "enhanced": row.enhanced,
    }
    if row.relayed:
        record["relayed"] = True
    return record


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def _exact_keys(raw: Any, keys: frozenset[str]) -> None:
    if not isinstance(raw, dict):
        raise TypeError("expected an object")
    if raw.keys() != keys:
        odd = sorted(raw.keys() ^ keys)
        raise KeyError(f"unexpected or missing keys: {', '.join(odd)}")


def _recipient(item: Any) -> RecipientState:
    relayed = isinstance(item, dict) and item.get("relayed") is True
    if relayed:
        item = {key: value for key, value in item.items() if key != "relayed"}
    _exact_keys(item, _RECIPIENT_KEYS)
    status = item["status"]
    if status not in _STATUSES:
        raise ValueError(f"unknown status {status!r}")
    last = item["last_attempt"]
    return RecipientState(
        address=_str(item["address"]),
        status=status,
        attempts=_count(item["attempts"]),
        last_attempt=None if last is None else _time(last),
        host=_opt_str(item["host"]),
        reply=_opt_str(item["reply"]),
        enhanced=_opt_str(item["enhanced"]),
        relayed=relayed,
    )


def _time(value: Any) -> float:
    """A unix time: finite and not negative (NaN would never fall due, stalling the queue)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a time, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"expected a time, got {value!r}")
    return float(value)


def _count(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise TypeError(f"expected a count, got {value!r}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _opt_str(value: Any) -> str | None:
    return None if value is None else _str(value)
