"""Admission: a connection is let in with the handler that will answer it, or refused with a reply.

The handler factory (submission's) is asked once per connection, after the connection caps and
before any TLS work or banner, so a refused client costs no handshake. It answers at once or
after I/O (a store lookup in a thread). A worker that is stopping refuses without asking, and a
factory that fails, now or later, refuses with 421 instead of leaving the client waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeAlias, runtime_checkable

from sendgate.log import EventSink
from sendgate.smtp import replies
from sendgate.smtp.events import Event
from sendgate.smtp.replies import Reply
from sendgate.smtp.session import Session, SessionSettings
from sendgate.smtp.spill import BodySink


class ConnectionHandler(Protocol):
    """Answers a Session's decisions (implemented by submission.SubmissionConnection)."""

    def handle(self, event: Event, session: Session) -> Reply | Awaitable[Reply]: ...


@runtime_checkable
class Spilling(Protocol):
    """A handler that takes large message bodies as they arrive (`sendgate.smtp.spill`)."""

    def open_body(self) -> BodySink: ...


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refusal with the policy's reason (and the ban key behind it) for the log line."""

    reply: Reply
    reason: str
    key: str | None = None


@dataclass(frozen=True, slots=True)
class Local:
    """A local client's admission (the sendmail socket): its handler and its own Session
    settings (no TLS to offer, no AUTH to ask for: the peer's user id said who it is)."""

    handler: ConnectionHandler
    settings: SessionSettings


# A connection is admitted with the handler that will answer its decisions, or refused with a
# reply (sent in plaintext on 587; on 465 the socket is just closed, before any handshake).
Admission: TypeAlias = ConnectionHandler | Refusal | Reply | Local
# (client_ip, conn_id) -> admission, possibly after I/O (a store lookup in a thread).
HandlerFactory = Callable[[str, str], Admission | Awaitable[Admission]]


def ask(
    factory: HandlerFactory, client_ip: str, conn_id: str, log: EventSink, *, draining: bool
) -> Admission | Awaitable[Admission]:
    """Return the factory's verdict, or an awaitable of it that never raises but is cancellable.

    `draining` (the worker is stopping) refuses with 421 without asking; a factory that raises
    is logged as admission_error and refused with 421.
    """
    if draining:  # accepted just before the listener closed
        return replies.SHUTTING_DOWN
    try:
        admission = factory(client_ip, conn_id)
    except Exception as exc:
        return _failed(log, exc)
    if isinstance(admission, Awaitable):
        return _settle(admission, log)
    return admission


def log_refusal(log: EventSink, refusal: Refusal | Reply) -> Reply:
    """Log that the factory refused the connection (reason, key, codes); return the reply."""
    if isinstance(refusal, Reply):
        refusal = Refusal(refusal, "admission")
    reply = refusal.reply
    code = f"{reply.code} {reply.enhanced}"
    if refusal.key is None:
        log.event("refused", "warning", reason=refusal.reason, code=code)
    else:
        log.event("refused", "warning", reason=refusal.reason, key=refusal.key, code=code)
    return reply


async def _settle(pending: Awaitable[Admission], log: EventSink) -> Admission:
    try:
        return await pending
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return _failed(log, exc)


def _failed(log: EventSink, exc: Exception) -> Reply:
    log.event("admission_error", "error", error=repr(exc))
    return replies.SERVICE_UNAVAILABLE
