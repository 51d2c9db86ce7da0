"""A queued message's envelope and its queue id: the values every queue backend stores.

Security: queue ids come from the command line and from directory listings, so `checked_id`
holds every id to a strict pattern before it names anything (no ``../``). Envelopes are checked
on construction and parsed back strictly (exact keys, exact types, no control characters in
addresses), so an envelope that was written can always be read back.
"""

import json
import math
import os
import random
import re
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from sendgate.errors import SpoolError
from sendgate.smtp.commands import parse_rcpt_parameters
from sendgate.smtp.dsn import RcptParameters, is_envelope_id

# Crockford base32, in ascending ASCII order so that ids sort like the numbers they encode.
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ID_CHARS = 18
RANDOM_BYTES = 5
# 48 bits of time + 40 random bits fill 88 of 90 bits: the first character is at most "7".
_QUEUE_ID_RE = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{17}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_ENVELOPE_VERSION = 1
_BODY_TYPES = frozenset({"7BIT", "8BITMIME"})
# Written only when set, so that the envelope of plain mail stays as it always was.
_OPTIONAL = frozenset({"ret", "envid", "requiretls", "rcpt_params"})

_T = TypeVar("_T")

# Random bits that must be unique, not secret (queue ids, spool file names): a private
# generator, seeded from the OS and again in every forked child, costs no system call per use.
UNIQUE = random.Random()
os.register_at_fork(after_in_child=UNIQUE.seed)


def new_queue_id(now: float, rand: bytes) -> str:
    """Return the queue id for unix time `now` and 5 random bytes `rand`; pure.

    The id is 18 characters of Crockford base32 (0-9 and A-Z without I, L, O, U) encoding the
    48-bit milliseconds since the epoch followed by the 40 random bits, so ids sort by time.
    """
    if len(rand) != RANDOM_BYTES:
        raise ValueError(f"queue id needs {RANDOM_BYTES} random bytes, got {len(rand)}")
    millis = int(now * 1000)
    if not 0 <= millis < 1 << 48:
        raise ValueError(f"time {now!r} is outside the queue id range")
    value = millis << (8 * RANDOM_BYTES) | int.from_bytes(rand, "big")
    chars = []
    for _ in range(_ID_CHARS):
        chars.append(_CROCKFORD[value & 0x1F])
        value >>= 5
    return "".join(reversed(chars))


def queue_id_share(queue_id: str, count: int) -> int:
    """Which of `count` delivery runners sharing one spool delivers `queue_id` (0 to count-1).

    An id ends in random bits, so ids split evenly; and every process computes the same share
    (Python's own string hash is salted per process).
    """
    return _CROCKFORD.index(queue_id[-1]) % count


def queue_id_time(queue_id: str) -> float:
    """The unix time `new_queue_id` encoded in a well-formed `queue_id`; pure."""
    value = 0
    for char in checked_id(queue_id):
        value = value << 5 | _CROCKFORD.index(char)
    return (value >> (8 * RANDOM_BYTES)) / 1000


def is_queue_id(text: str) -> bool:
    """Tell whether `text` is a well-formed queue id (as `new_queue_id` makes them)."""
    return _QUEUE_ID_RE.fullmatch(text) is not None


def checked_id(queue_id: str) -> str:
    """Return `queue_id` if it is a well-formed queue id, else raise SpoolError."""
    if not _QUEUE_ID_RE.fullmatch(queue_id):
        raise SpoolError(f"invalid queue id {queue_id!r}")
    return queue_id


@dataclass(frozen=True, slots=True)
class Envelope:
    """What the server knows about one accepted message besides its bytes.

    Values are checked on construction (SpoolError naming the field), so an envelope that was
    written can always be read back.
    """

    queue_id: str
    sender: str  # reverse-path mailbox ("" for the null sender)
    recipients: tuple[str, ...]
    user: str  # authenticated login
    received_at: float  # unix time
    size: int  # len(message bytes)
    smtputf8: bool = False
    body: str = "7BIT"  # "7BIT" | "8BITMIME"
    ret: str | None = None  # RFC 3461 RET: "FULL" | "HDRS"
    envid: str | None = None  # RFC 3461 ENVID, decoded
    requiretls: bool = False  # RFC 8689: deliver over verified TLS to a REQUIRETLS peer or bounce
    rcpt_params: tuple[RcptParameters, ...] = ()  # RFC 3461 NOTIFY/ORCPT, one per recipient

    def __post_init__(self) -> None:
        try:
            checked_id(self.queue_id)
        except SpoolError as exc:
            raise SpoolError(f"envelope field 'queue_id': {exc}") from None
        _check_text("sender", self.sender)
        if not self.recipients:
            raise SpoolError("envelope field 'recipients': must not be empty")
        for recipient in self.recipients:
            _check_text("recipients", recipient, allow_empty=False)
        _check_text("user", self.user, allow_empty=False)
        if not math.isfinite(self.received_at) or self.received_at < 0:
            raise SpoolError("envelope field 'received_at': must be a finite time >= 0")
        if self.size < 0:
            raise SpoolError("envelope field 'size': must be >= 0")
        if self.body not in _BODY_TYPES:
            raise SpoolError(f"envelope field 'body': unknown body type {self.body!r}")
        if self.ret not in (None, "FULL", "HDRS"):
            raise SpoolError(f"envelope field 'ret': must be FULL or HDRS, not {self.ret!r}")
        if self.envid is not None and not is_envelope_id(self.envid):
            raise SpoolError("envelope field 'envid': must be 1 to 100 printable ASCII characters")
        if self.rcpt_params and len(self.rcpt_params) != len(self.recipients):
            raise SpoolError("envelope field 'rcpt_params': not one per recipient")
        for params in self.rcpt_params:
            text = _rcpt_text(params)
            if text and parse_rcpt_parameters(text) != params:
                raise SpoolError(f"envelope field 'rcpt_params': malformed {params!r}")

    def notify(self, index: int) -> tuple[str, ...] | None:
        """The NOTIFY words recipient `index` gave (None: not given, the default applies)."""
        return self.rcpt_params[index].notify if self.rcpt_params else None

    def orcpt(self, index: int) -> str | None:
        """The ORCPT recipient `index` gave ("addr-type;xtext"), if any."""
        return self.rcpt_params[index].orcpt if self.rcpt_params else None

    def to_json(self) -> bytes:
        """Serialise as UTF-8 JSON (non-ASCII addresses stay readable, keys sorted)."""
        record = {
            "version": _ENVELOPE_VERSION,
            "queue_id": self.queue_id,
            "sender": self.sender,
            "recipients": list(self.recipients),
            "user": self.user,
            "received_at": self.received_at,
            "size": self.size,
            "smtputf8": self.smtputf8,
            "body": self.body,
        }
        if self.ret is not None:
            record["ret"] = self.ret
        if self.envid is not None:
            record["envid"] = self.envid
        if self.requiretls:
            record["requiretls"] = True
        if self.rcpt_params:
            record["rcpt_params"] = [_rcpt_text(params) for params in self.rcpt_params]
        return json.dumps(record, ensure_ascii=False, sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> "Envelope":
        """Parse what `to_json` wrote; SpoolError naming the field on anything malformed."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SpoolError("envelope is not valid UTF-8") from None
        try:
            raw = json.loads(text, object_pairs_hook=_unique_keys)
        except RecursionError:
            raise SpoolError("envelope is not valid JSON: nested too deeply") from None
        except ValueError as exc:
            raise SpoolError(f"envelope is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise SpoolError("envelope is not a JSON object")
        expected = {"version", *(field.name for field in fields(cls))}
        missing = sorted(expected - raw.keys() - _OPTIONAL)
        if missing:
            raise SpoolError(f"envelope field {missing[0]!r}: missing")
        unknown = sorted(raw.keys() - expected)
        if unknown:
            raise SpoolError(f"envelope field {unknown[0]!r}: not a known field")
        version = raw["version"]
        if type(version) is not int or version != _ENVELOPE_VERSION:
            raise SpoolError(f"envelope field 'version': unsupported version {version!r}")
        recipients = _typed(raw, "recipients", list, "a list")
        for recipient in recipients:
            if not isinstance(recipient, str):
                raise SpoolError("envelope field 'recipients': expected a list of strings")
        received_at = raw["received_at"]
        if type(received_at) not in (int, float) or abs(received_at) > 1e15:
            raise SpoolError("envelope field 'received_at': expected a unix time")
        ret = raw.get("ret")
        if ret is not None and not isinstance(ret, str):
            raise SpoolError("envelope field 'ret': expected a string")
        envid = raw.get("envid")
        if envid is not None and not isinstance(envid, str):
            raise SpoolError("envelope field 'envid': expected a string")
        if raw.get("requiretls", True) is not True:
            raise SpoolError("envelope field 'requiretls': expected true when present")
        return cls(
            queue_id=_typed(raw, "queue_id", str, "a string"),
            sender=_typed(raw, "sender", str, "a string"),
            recipients=tuple(recipients),
            user=_typed(raw, "user", str, "a string"),
            received_at=float(received_at),
            size=_typed(raw, "size", int, "an integer"),
            smtputf8=_typed(raw, "smtputf8", bool, "true or false"),
            body=_typed(raw, "body", str, "a string"),
            ret=ret,
            envid=envid,
            requiretls="requiretls" in raw,
            rcpt_params=_rcpt_params(raw.get("rcpt_params", [])),
        )


def _rcpt_text(params: RcptParameters) -> str:
    """The RCPT parameters as written on the command line ("" for none), the stored form."""
    words = []
    if params.notify is not None:
        words.append("NOTIFY=" + ",".join(params.notify))
    if params.orcpt is not None:
        words.append("ORCPT=" + params.orcpt)
    return " ".join(words)


def _rcpt_params(value: Any) -> tuple[RcptParameters, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise SpoolError("envelope field 'rcpt_params': expected a list of strings")
    parsed = []
    for item in value:
        params = parse_rcpt_parameters(item) if item else RcptParameters()
        if not isinstance(params, RcptParameters):
            raise SpoolError(f"envelope field 'rcpt_params': malformed {item!r}")
        parsed.append(params)
    return tuple(parsed)


def _check_text(field: str, value: str, *, allow_empty: bool = True) -> None:
    """Reject control characters (never valid in a mailbox or login) and unwanted emptiness."""
    if not value and not allow_empty:
        raise SpoolError(f"envelope field {field!r}: must not be empty")
    if _CONTROL_RE.search(value):
        raise SpoolError(f"envelope field {field!r}: contains a control character")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Build a JSON object, refusing a key given twice (json would silently keep the last)."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise SpoolError(f"envelope field {key!r}: given twice")
        result[key] = value
    return result


def _typed(raw: dict[str, Any], field: str, kind: type[_T], description: str) -> _T:
    """Return raw[field] if it is exactly of type `kind` (so True is not an int)."""
    value = raw[field]
    if type(value) is not kind:
        raise SpoolError(f"envelope field {field!r}: expected {description}")
    return value
