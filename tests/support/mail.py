"""Envelopes and messages for tests that need queued mail but not a particular one."""

from __future__ import annotations

import dataclasses
from typing import Any

from sendgate.store.envelope import Envelope

# 8-bit header and body bytes, a leading dot and bare line endings: stored exactly as given.
MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"Subject: caf\xc3\xa9\r\n"
    b"\r\n"
    b"8-bit body \xff\xfe\x00 bytes\r\n"
    b"..leading dot kept as stored\r\n"
    b"bare \n and \r inside stay as they are\r\n"
)


def make_envelope(queue_id: str, message: bytes = MESSAGE, **changes: Any) -> Envelope:
    """An envelope for `message` from alice@example.com to two recipients; `changes` override."""
    envelope = Envelope(
        queue_id=queue_id,
        sender="alice@example.com",
        recipients=("bob@example.org", "carol@example.net"),
        user="alice",
        received_at=1_714_564_800.25,
        size=len(message),
    )
    return dataclasses.replace(envelope, **changes)
