"""TLS contexts for tests from a trustme CA: a server presenting a leaf, a client trusting the CA.

trustme has no type hints, so its CA and LeafCert come in as `Any`.
"""

from __future__ import annotations

import ssl
from typing import Any


def server_context(leaf: Any) -> ssl.SSLContext:
    """A server context presenting `leaf` (a trustme.LeafCert) with the stdlib's defaults."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(context)
    return context


def client_context(ca: Any) -> ssl.SSLContext:
    """A verifying client context (the stdlib's defaults) that also trusts `ca` (a trustme.CA)."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def client_hello(context: ssl.SSLContext | None = None) -> bytes:
    """The first flight of a TLS client (its ClientHello), made without a socket."""
    context = context or ssl.create_default_context()
    outgoing = ssl.MemoryBIO()
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        hello = outgoing.read()
        assert hello[:1] == b"\x16", "not a TLS handshake record"
        return hello
    raise AssertionError("a TLS handshake completed without a server")
