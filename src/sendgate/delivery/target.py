"""What one delivery is about: the destination, its TLS requirement, and what came of it.

Plain frozen values shared by the planner (which builds `Target` and `TlsRequirement`), the
client (which takes them and returns an `Outcome`) and the scheduler (which reads it). They
check their own fields on construction, so a nonsensical requirement fails where it is made.

Security: `Target.auth` holds a password and is left out of the repr. `RemoteReply.text` comes
from the network: the client bounds it to MAX_REPLY_TEXT characters and replaces control
characters before it builds one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

MAX_REPLY_TEXT = 2000  # characters of a remote reply kept (for logs and bounces)

_MODES = ("none", "opportunistic", "required")
_VERIFY = ("none", "pkix", "dane")


@dataclass(frozen=True, slots=True)
class TlsRequirement:
    """How the session must be protected, and why (the `reason` names the policy in errors).

    mode "none" never sends STARTTLS (plaintext smarthosts on loopback); "opportunistic" uses
    STARTTLS when offered, without checking the certificate, and retries once in plaintext on a
    new connection when the handshake fails; "required" delivers over TLS or not at all.
    verify "pkix" checks the chain against the caller's trust store and the name (see
    `deliver`); `names` are host names or "*.domain" patterns (as in MTA-STS "mx" lines).
    verify "dane" hands the leaf certificate (DER) to `leaf_check`. `implicit` means TLS
    from the first byte (port 465).
    """

    mode: str
    verify: str
    names: tuple[str, ...] = ()
    leaf_check: Callable[[bytes], bool] | None = None
    implicit: bool = False
    reason: str = "opportunistic"

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"TLS mode must be one of {', '.join(_MODES)}, not {self.mode!r}")
        if self.verify not in _VERIFY:
            raise ValueError(f"TLS verify must be one of {', '.join(_VERIFY)}, not {self.verify!r}")
        if self.verify != "none" and self.mode != "required":
            raise ValueError(f"TLS verify {self.verify!r} needs mode 'required'")
        if self.implicit and self.mode != "required":
            raise ValueError("implicit TLS needs mode 'required'")
        if self.verify == "pkix" and not self.names:
            raise ValueError("TLS verify 'pkix' needs at least one acceptable name")
        if self.verify == "dane" and self.leaf_check is None:
            raise ValueError("TLS verify 'dane' needs a leaf_check")


@dataclass(frozen=True, slots=True)
class Target:
    """One destination: its host name (SNI, certificate checks), the IP address and port."""

    host: str
    address: str
    port: int
    tls: TlsRequirement
    auth: tuple[str, str] | None = field(default=None, repr=False)  # (username, password)

    def __post_init__(self) -> None:
        if not self.host or not self.host.isascii() or any(c.isspace() for c in self.host):
            raise ValueError(f"target host {self.host!r} is not a host name")
        try:
            ipaddress.ip_address(self.address)
        except ValueError:
            raise ValueError(f"target address {self.address!r} is not an IP address") from None
        if not 0 < self.port < 65536:
            raise ValueError(f"target port {self.port} is out of range")


@dataclass(frozen=True, slots=True)
class RemoteReply:
    """A reply code and its text lines joined with "\\n" (bounded, controls replaced).

    Replies that sendgate makes up itself (a message the peer cannot take) say "(local)" after
    the enhanced status code, so a bounce never blames the remote server for them.
    """

    code: int
    text: str

    def __str__(self) -> str:
        return " ".join([str(self.code), *self.text.split("\n")]).rstrip()


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one `deliver` call achieved.

    `failure`: why the session ended before every recipient got a final answer (connection
    refused, timeout, TLS policy, lost connection); such failures are temporary.
    `failure_reply`: the remote reply that failed the whole transaction (greeting, EHLO, AUTH,
    MAIL FROM, DATA, or any 421). `recipients`: the final reply of each recipient that got one
    (its RCPT rejection, or the end-of-data reply for accepted ones). `dsn`: the host offered
    DSN (RFC 3461) and took the transaction with the sender's requests, so delivery reports from
    here on are its to send.
    """

    tls_version: str | None
    tls_cipher: str | None
    failure: str | None
    failure_reply: RemoteReply | None
    recipients: Mapping[str, RemoteReply]
    dsn: bool = False


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds to wait (RFC 5321 section 4.5.3.2): TCP connect, each reply, end of data."""

    connect: float = 30.0
    command: float = 300.0
    data: float = 600.0
