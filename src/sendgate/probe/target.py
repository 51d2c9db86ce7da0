"""What the probe is pointed at, and the connections every check starts from."""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from sendgate.probe.wire import Reply, Wire, WireError

SUBMISSION = 587
SUBMISSIONS = 465


class ProbeError(WireError):
    """The probe could not run at all (no connection, no greeting): exit status 2."""


@dataclass(frozen=True, slots=True)
class Credentials:
    user: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Target:
    """A submission server: where it listens, how it starts TLS, the name clients know it by."""

    host: str
    port: int
    implicit_tls: bool = False
    server_name: str = ""  # the name its certificate must carry; default `host`
    cafile: Path | None = None  # trust these CAs instead of the system's
    timeout: float = 10.0

    @property
    def name(self) -> str:
        return self.server_name or self.host

    @property
    def sni(self) -> str | None:
        """The name to send in SNI: a DNS name, never an address literal (RFC 6066 3)."""
        try:
            ipaddress.ip_address(self.name)
        except ValueError:
            return self.name
        return None

    @property
    def shown(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def verifying_context(self) -> ssl.SSLContext:
        """Chain verification against the CA file or the system store; names are checked
        separately (`certificate.matches`), so that each problem is its own finding."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        if self.cafile is not None:
            ctx.load_verify_locations(cafile=self.cafile)
        else:
            ctx.load_default_certs()
        return ctx


def lenient_context() -> ssl.SSLContext:
    """Any certificate, any version the local OpenSSL still has: to see what a server offers."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def ehlo_name(wire: Wire) -> str:
    """An address literal of our end: always valid EHLO syntax, and the truth."""
    try:
        address = ipaddress.ip_address(wire.sock.getsockname()[0])
    except (OSError, ValueError):
        return "[127.0.0.1]"
    return f"[IPv6:{address}]" if address.version == 6 else f"[{address}]"


def connect(target: Target, context: ssl.SSLContext | None = None) -> tuple[Wire, Reply]:
    """A connection and its greeting; on an implicit-TLS port, TLS first with `context`.

    ProbeError when there is no connection or no 220 greeting: nothing else can be tested.
    """
    try:
        wire = Wire.open(target.host, target.port, target.timeout)
    except WireError as exc:
        raise ProbeError(str(exc)) from exc
    try:
        if target.implicit_tls:
            wire.starttls(context or lenient_context(), target.sni)
    except WireError:
        wire.close()
        raise
    try:
        banner = wire.reply()
    except WireError as exc:
        wire.close()
        hint = "" if target.implicit_tls else " (a port for implicit TLS? try --implicit-tls)"
        raise ProbeError(f"no greeting from {target.shown}: {exc}{hint}") from exc
    if banner.code != 220:
        wire.close()
        raise ProbeError(f"{target.shown} refused the connection: {banner.shown()}")
    return wire, banner


def ehlo(wire: Wire) -> Reply:
    reply = wire.command(f"EHLO {ehlo_name(wire)}")
    if reply.code != 250:
        raise ProbeError(f"EHLO refused: {reply.shown()}")
    return reply


def ready_for_tls(target: Target) -> Wire:
    """A connection at the point where the next bytes are our ClientHello."""
    if target.implicit_tls:
        try:
            return Wire.open(target.host, target.port, target.timeout)
        except WireError as exc:
            raise ProbeError(str(exc)) from exc
    wire, _ = connect(target)
    try:
        ehlo(wire)
        reply = wire.command("STARTTLS")
    except WireError:
        wire.close()
        raise
    if reply.code != 220:
        wire.close()
        raise ProbeError(f"STARTTLS refused: {reply.shown()}")
    return wire
