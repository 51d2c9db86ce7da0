"""TLS server contexts: TLS 1.2+ with AEAD ECDHE suites, and certificate reloading.

Security: the context refuses TLS < 1.2 (unless the config's unsafe override allowed it),
offers only ECDHE key exchange with AEAD ciphers for TLS 1.2 (TLS 1.3 suites are all AEAD),
disables compression and renegotiation, and keeps session tickets on (one per handshake) so
returning clients resume cheaply. A reload builds a complete new context first and swaps it in
only when every certificate and key loaded, so a broken file never leaves a half-configured
server.
"""

from __future__ import annotations

import os
import ssl
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from sendgate.errors import TlsConfigError

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
_VERSIONS = {
    "1.0": ssl.TLSVersion.TLSv1,
    "1.1": ssl.TLSVersion.TLSv1_1,
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}


class CertFiles(Protocol):
    """A certificate chain file and its private key file (config.CertPair fits)."""

    @property
    def cert(self) -> Path: ...

    @property
    def key(self) -> Path: ...


def build_context(certificates: Sequence[CertFiles], min_version: str = "1.2") -> ssl.SSLContext:
    """A server context for the given certificate/key pairs (e.g. one RSA and one ECDSA)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if min_version in ("1.0", "1.1"):
        # Only reachable through the "tls_below_1_2" override: those versions need CBC suites
        # and OpenSSL's security level 0, and Python warns that they are deprecated.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = _VERSIONS[min_version]
        ctx.set_ciphers(TLS12_CIPHERS + ":ECDHE+AES+SHA1:@SECLEVEL=0")
    else:
        ctx.minimum_version = _VERSIONS[min_version]
        ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options &= ~ssl.OP_NO_TICKET
    # One TLS 1.3 ticket per handshake, not OpenSSL's two: a mail client resumes one connection
    # at a time, and each ticket costs an encryption and about 250 octets on every connection.
    ctx.num_tickets = 1
    for pair in certificates:
        for path in (pair.cert, pair.key):
            if not os.path.exists(path):  # ssl's own error does not name the file
                raise TlsConfigError(f"{path}: file not found")
        try:
            ctx.load_cert_chain(pair.cert, pair.key)
        except (ssl.SSLError, OSError) as exc:
            raise TlsConfigError(f"{pair.cert}, {pair.key}: cannot load: {exc}") from exc
    return ctx


def _stamp(certificates: Sequence[CertFiles]) -> tuple[tuple[int, int, int], ...]:
    stamps = []
    for pair in certificates:
        for path in (pair.cert, pair.key):
            try:
                st = os.stat(path)
                stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                stamps.append((0, 0, 0))
    return tuple(stamps)


class TlsContextHolder:
    """The current server context; `reload()` swaps in a new one when the files changed.

    Listeners hand `front` to asyncio once, at start. Its SNI callback (OpenSSL calls it for
    every ClientHello, with or without a server name) switches the connection to the current
    `context`, so a reload reaches new connections on both 587 and 465 without touching the
    listeners, and session tickets stay valid across reloads (OpenSSL keeps issuing them with
    the front context's keys, which the forked workers share).
    """

    def __init__(self, certificates: Sequence[CertFiles], min_version: str = "1.2") -> None:
        self._certificates = tuple(certificates)
        self._min_version = min_version
        self.front = build_context(self._certificates, min_version)
        self.front.sni_callback = self._select
        self.context = self.front  # until the first reload, nothing to switch to
        self._stamp = _stamp(self._certificates)

    def _select(self, ssl_object: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        if self.context is not self.front:
            ssl_object.context = self.context

    def changed(self) -> bool:
        return _stamp(self._certificates) != self._stamp

    def reload(self, *, force: bool = False) -> bool:
        """Rebuild the context if files changed (or `force`); TlsConfigError keeps the old one."""
        stamp = _stamp(self._certificates)
        if not force and stamp == self._stamp:
            return False
        self.context = build_context(self._certificates, self._min_version)
        self._stamp = stamp
        return True


def describe(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> tuple[str, str, int]:
    """(version, cipher, secret bits) of an established connection."""
    if ssl_object is None:
        return ("unknown", "unknown", 0)
    version = ssl_object.version() or "unknown"
    cipher = ssl_object.cipher()
    if cipher is None:
        return (version, "unknown", 0)
    return (version, cipher[0], cipher[2])
