"""MTA-STS policy text (RFC 8461): the _mta-sts TXT record, the policy file, what a policy allows.

Pure parsing, no I/O: `parse_txt` finds the policy id in the TXT records, `parse_policy` reads a
fetched policy file into an `StsPolicy`, and `StsPolicy.allows` matches MX host names against
its patterns. Discovery, the HTTPS fetch and the cache are `sendgate.delivery.mtasts`.

Security: the TXT records and the policy body are untrusted. Parsing follows the RFC's grammar
strictly and raises only `MtaStsError`, whose one-line messages show remote text escaped and
shortened.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass

from sendgate.errors import SendgateError
from sendgate.smtp.address import is_domain_name

MAX_AGE_LIMIT = 31557600  # RFC 8461 section 3.2: about one year
MODES = ("enforce", "testing", "none")
_SHOWN_CHARS = 60

_TXT_ID = re.compile(r"[A-Za-z0-9]{1,32}", re.ASCII)
_TXT_EXT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}", re.ASCII)
_TXT_EXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+", re.ASCII)
_TXT_WSP = " \t"
_POLICY_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}", re.ASCII)
# RFC 8461 sts-policy-ext-value: visible characters with inner spaces, no control characters.
_POLICY_VALUE = re.compile(r"[^\x00-\x20\x7f](?:[^\x00-\x1f\x7f]*[^\x00-\x20\x7f])?")
_MAX_AGE = re.compile(r"[0-9]{1,10}", re.ASCII)


class MtaStsError(SendgateError):
    """An MTA-STS policy could not be fetched or parsed; the message is one line."""


@dataclass(frozen=True, slots=True)
class StsPolicy:
    """One domain's parsed policy and when it was fetched (seconds on the injected clock)."""

    mode: str
    mx: tuple[str, ...]
    max_age: int
    policy_id: str
    fetched_at: float

    def expired(self, now: float) -> bool:
        """Tell whether the policy's max_age has run out at time `now`."""
        return now >= self.fetched_at + self.max_age

    def allows(self, host: str) -> bool:
        """Tell whether MX host `host` matches a pattern; "*." stands for one label (4.1)."""
        name = host.lower().removesuffix(".")
        if not name:
            return False
        for pattern in self.mx:
            if pattern.startswith("*."):
                first, dot, rest = name.partition(".")
                if first and dot and rest == pattern[2:]:
                    return True
            elif name == pattern:
                return True
        return False


def parse_txt(records: Sequence[bytes]) -> str | None:
    """Return the id of the one "v=STSv1" TXT record, or None when there is not exactly one.

    Records not starting with "v=STSv1" are ignored; a lone STSv1 record that breaks the
    grammar of RFC 8461 section 3.1 (or has no id, or two) also yields None, which the RFC
    says to treat as "no policy".
    """
    candidates = [record for record in records if _is_sts_record(record)]
    if len(candidates) != 1:
        return None
    try:
        text = candidates[0].decode("ascii")
    except UnicodeDecodeError:
        return None
    fields = text.split(";")
    if fields[-1].strip(_TXT_WSP) == "" and len(fields) > 1:
        fields.pop()  # one optional trailing delimiter
    if fields[0].rstrip(_TXT_WSP) != "v=STSv1" or len(fields) < 2:
        return None
    policy_id: str | None = None
    for field in fields[1:]:
        name, eq, value = field.strip(_TXT_WSP).partition("=")
        if not eq:
            return None
        if name == "id":
            if policy_id is not None or not _TXT_ID.fullmatch(value):
                return None
            policy_id = value
        elif not (_TXT_EXT_NAME.fullmatch(name) and _TXT_EXT_VALUE.fullmatch(value)):
            return None
    return policy_id


def _is_sts_record(record: bytes) -> bool:
    """RFC 8461 section 3.1: only records starting with "v=STSv1" take part."""
    return record.startswith(b"v=STSv1") and record[7:8] in (b"", b";", b" ", b"\t")


def parse_policy(body: bytes, *, policy_id: str, fetched_at: float) -> StsPolicy:
    """Parse a policy file (RFC 8461 section 3.2) or raise MtaStsError naming what is wrong.

    Lines end in LF or CRLF; empty lines are skipped. Unknown keys are ignored; for keys other
    than "mx" the first occurrence wins (section 3.2). version, mode and max_age are required,
    and at least one mx unless the mode is "none". max_age is capped at 31557600.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MtaStsError(f"MTA-STS policy is not UTF-8 (byte {exc.start})") from None
    fields: dict[str, str] = {}
    mx: list[str] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        if not line:
            continue
        key, colon, rest = line.partition(":")
        value = rest.lstrip(" \t").rstrip(" \t")
        if not colon or not _POLICY_KEY.fullmatch(key) or not _POLICY_VALUE.fullmatch(value):
            raise MtaStsError(f"MTA-STS policy line {number} is malformed: {shown(line)}")
        if key == "mx":
            mx.append(_mx_pattern(value, number))
        else:
            fields.setdefault(key, value)
    version = fields.get("version")
    if version != "STSv1":
        what = "has no version" if version is None else f"has version {shown(version)}"
        raise MtaStsError(f"MTA-STS policy {what}, expected STSv1")
    mode = fields.get("mode")
    if mode not in MODES:
        what = "has no mode" if mode is None else f"has unknown mode {shown(mode)}"
        raise MtaStsError(f"MTA-STS policy {what}")
    max_age_text = fields.get("max_age")
    if max_age_text is None or not _MAX_AGE.fullmatch(max_age_text):
        what = "no max_age" if max_age_text is None else f"max_age {shown(max_age_text)}"
        raise MtaStsError(f"MTA-STS policy has {what}, expected 1 to 10 digits")
    if not mx and mode != "none":
        raise MtaStsError(f"MTA-STS policy in mode {mode} has no mx")
    return StsPolicy(
        mode=mode,
        mx=tuple(mx),
        max_age=min(int(max_age_text), MAX_AGE_LIMIT),
        policy_id=policy_id,
        fetched_at=fetched_at,
    )


def _mx_pattern(value: str, number: int) -> str:
    # Checked before lower-casing, which maps some non-ASCII letters to ASCII (U+212A to "k").
    if not is_domain_name(value.removeprefix("*.")):
        raise MtaStsError(f"MTA-STS policy line {number}: bad mx pattern {shown(value)}")
    return value.lower()


def shown(text: str, limit: int = _SHOWN_CHARS) -> str:
    """Quote remote text for a one-line message: escaped (repr) and shortened."""
    if len(text) > limit:
        return repr(text[:limit]) + "..."
    return repr(text)
