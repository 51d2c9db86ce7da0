"""The TLS handshakes of one connection: 465 on the accepted socket, 587 STARTTLS, and their log.

Both run with the worker's front context (server.tls) and the same time limits: the worker's
handshake timeout, and a short wait for the client's close_notify when the connection ends.

Security: a handshake is started only for an admitted client (465) or after the Session has
discarded everything pipelined behind STARTTLS (587); a failure is the caller's to log and
close, one connection at a time.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

from sendgate.log import EventSink
from sendgate.server.tls import describe
from sendgate.smtp.events import TlsInfo

# Seconds to wait for the client's TLS close_notify after we close; a silent client must not
# hold its connection slot (or a graceful stop) for asyncio's default 30 s.
SSL_SHUTDOWN_TIMEOUT = 5.0
_DETAIL_CHARS = 200


async def accept_tls(
    loop: asyncio.AbstractEventLoop,
    protocol: asyncio.Protocol,
    sock: socket.socket,
    context: ssl.SSLContext,
    timeout: float,
) -> None:
    """465: shake hands on an accepted socket; `protocol.connection_made` follows on success."""
    await loop.connect_accepted_socket(
        lambda: protocol,
        sock,
        ssl=context,
        ssl_handshake_timeout=timeout,
        ssl_shutdown_timeout=SSL_SHUTDOWN_TIMEOUT,
    )


async def start_tls(
    loop: asyncio.AbstractEventLoop,
    transport: asyncio.Transport,
    protocol: asyncio.Protocol,
    context: ssl.SSLContext,
    timeout: float,
) -> asyncio.Transport | None:
    """587: upgrade a plain transport (its reading paused) in place; None if it went away."""
    return await loop.start_tls(
        transport,
        protocol,
        context,
        server_side=True,
        ssl_handshake_timeout=timeout,
        ssl_shutdown_timeout=SSL_SHUTDOWN_TIMEOUT,
    )


def established(transport: asyncio.BaseTransport, log: EventSink, seconds: float) -> TlsInfo:
    """Describe the TLS session of `transport` for the Session, and log it with the handshake's
    duration (`seconds`)."""
    ssl_object = transport.get_extra_info("ssl_object")
    info = TlsInfo(*describe(ssl_object))
    log.event(
        "tls",
        version=info.version,
        cipher=info.cipher,
        resumed=bool(getattr(ssl_object, "session_reused", False)),
        seconds=seconds,
    )
    return info


def log_failure(log: EventSink, exc: Exception) -> None:
    """Log a failed handshake: the error's type and its text, shortened."""
    log.event("tls_failed", "warning", error=type(exc).__name__, detail=str(exc)[:_DETAIL_CHARS])
