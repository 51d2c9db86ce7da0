"""STARTTLS command injection (CVE-2011-0411): plaintext pipelined behind STARTTLS.

The probe sends `STARTTLS` and an unknown command in one write. A safe server discards the
second line (or refuses the STARTTLS); a vulnerable one keeps it in its buffer and answers it
after the handshake, as if it had come over TLS. An unknown command is used because every
server answers it with 500 or 502, which no server answers EHLO with: the first reply after
our post-TLS EHLO says which command it belongs to.
"""

from __future__ import annotations

from sendgate.findings import Finding, Severity
from sendgate.probe.target import Target, connect, ehlo, ehlo_name, lenient_context
from sendgate.probe.wire import WireError, shown_bytes

INJECTED = b"XSENDGATEPROBE injected\r\n"


def injection_findings(target: Target) -> list[Finding]:
    if target.implicit_tls:
        return []
    wire, _ = connect(target)
    try:
        if "STARTTLS" not in ehlo(wire).keywords:
            return []  # reported by the session already
        sent = b"STARTTLS\r\n" + INJECTED
        wire.send(sent)
        reply = wire.reply()
        if reply.code != 220:
            return []  # refusing a pipelined STARTTLS is one of the safe answers
        early = wire.pending()
        if early:
            # It answered the pipelined line in plaintext, before TLS: not an injection, but
            # TLS cannot start on this connection.
            return [
                Finding(
                    "probe.starttls_pipelining_answered",
                    Severity.INFO,
                    "a command pipelined behind STARTTLS was answered before the handshake",
                    f"sent {shown_bytes(sent)}; after 220 came {shown_bytes(early[:80])}",
                )
            ]
        wire.starttls(lenient_context(), target.sni)
        first = wire.command(f"EHLO {ehlo_name(wire)}")
        if first.code in (500, 502) and wire.reply().code == 250:
            return [
                Finding(
                    "probe.starttls_injection",
                    Severity.CRITICAL,
                    "plaintext sent behind STARTTLS is executed after the handshake "
                    "(CVE-2011-0411): a man in the middle can inject commands",
                    f"sent {shown_bytes(sent)} in one write; after TLS, EHLO was answered "
                    f"first by {first.shown()}",
                    "discard the input buffer when STARTTLS is accepted (RFC 3207 4.2)",
                )
            ]
        return []
    except WireError as exc:
        return [
            Finding(
                "probe.injection_untested",
                Severity.INFO,
                "STARTTLS injection not tested: the session broke off",
                str(exc),
            )
        ]
    finally:
        wire.close()
