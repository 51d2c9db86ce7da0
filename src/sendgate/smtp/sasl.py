"""SASL exchanges for SMTP AUTH: PLAIN (RFC 4616) and LOGIN, with or without initial response.

Security: every response line is client input. Base64 is decoded strictly, names and passwords
must be valid UTF-8 without NUL, and a "*" line cancels the exchange (RFC 4954 section 4).
The password only ever lives in a `Credentials` field that is excluded from repr.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass, field

from sendgate.smtp import replies
from sendgate.smtp.replies import Reply

MECHANISMS = ("PLAIN", "LOGIN")
_USERNAME_PROMPT = "VXNlcm5hbWU6"  # base64("Username:"), what LOGIN clients expect
_PASSWORD_PROMPT = "UGFzc3dvcmQ6"  # noqa: S105 - base64("Password:"), a prompt


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a finished exchange yields; the password never appears in repr or logs."""

    mechanism: str
    authzid: str
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send `334 <text>` and wait for the next response line."""

    text: str


Step = Challenge | Credentials | Reply


def _decode(line: str) -> bytes | None:
    if line == "=":  # RFC 4954: "=" is an empty initial response
        return b""
    try:
        return binascii.a2b_base64(line.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        return None


def _text(data: bytes) -> str | None:
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


class SaslExchange:
    """One AUTH exchange in progress; `start` then `respond` until it yields a non-Challenge."""

    def __init__(self, mechanism: str) -> None:
        if mechanism not in MECHANISMS:
            raise ValueError(mechanism)
        self.mechanism = mechanism
        self._username: str | None = None

    def start(self, initial: str | None) -> Step:
        if initial is None:
            return Challenge("" if self.mechanism == "PLAIN" else _USERNAME_PROMPT)
        return self.respond(initial)

    def respond(self, line: str) -> Step:
        if line == "*":
            return replies.AUTH_CANCELLED
        data = _decode(line)
        if data is None:
            return replies.BAD_BASE64
        if self.mechanism == "PLAIN":
            return self._plain(data)
        text = _text(data)
        if text is None or not text:
            return replies.BAD_BASE64
        if self._username is None:
            self._username = text
            return Challenge(_PASSWORD_PROMPT)
        return Credentials("LOGIN", "", self._username, text)

    def _plain(self, data: bytes) -> Step:
        parts = data.split(b"\0")
        if len(parts) != 3:
            return replies.BAD_BASE64
        texts = [_text(part) for part in parts]
        authzid, username, password = texts
        if authzid is None or not username or not password:
            return replies.BAD_BASE64
        return Credentials("PLAIN", authzid, username, password)
