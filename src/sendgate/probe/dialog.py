"""The probe's main session: what an anonymous client sees before and after TLS.

Harmless by design: no message is sent. AUTH is started and cancelled with `*` (RFC 4954
4), never given a credential; MAIL and RCPT are answered by a RSET.
"""

from __future__ import annotations

import ssl
from datetime import UTC, datetime

from cryptography import x509

from sendgate.findings import Finding, Severity
from sendgate.probe.certificate import cert_findings
from sendgate.probe.target import ProbeError, Target, connect, ehlo, lenient_context
from sendgate.probe.wire import CertificateVerifyError, HandshakeError, Reply, Wire, WireError

# Addresses for the relay test: reserved for documentation (RFC 2606), never delivered to.
OUTSIDE_SENDER = "probe@example.net"
OUTSIDE_RECIPIENT = "probe@example.org"


def session_findings(target: Target) -> list[Finding]:
    """Banner, EHLO, AUTH before TLS, STARTTLS, the certificate, and what works without AUTH."""
    findings: list[Finding] = []
    verifying = target.verifying_context()
    try:
        wire, banner = connect(target, verifying)
    except CertificateVerifyError as exc:
        findings.append(_untrusted(target, exc))
        wire, banner = connect(target, lenient_context())
    wires = [wire]
    try:
        _session(target, wires, banner, findings)
    except WireError as exc:
        findings.append(
            Finding(
                "probe.dialog_broken",
                Severity.WARNING,
                "the server broke off the probe's session",
                str(exc),
                "see the server's log for why it closed",
            )
        )
    finally:
        for each in wires:
            each.close()
    return findings


def _session(target: Target, wires: list[Wire], banner: Reply, findings: list[Finding]) -> None:
    """`wires` holds the connection in use last (a second one if the first was given up)."""
    wire = wires[-1]
    hello = ehlo(wire)
    findings.append(
        Finding(
            "probe.greeting",
            Severity.INFO,
            "an SMTP server answers",
            f"{banner.shown()} ; EHLO: {', '.join(hello.keywords) or 'no extensions'}",
        )
    )
    if not target.implicit_tls:
        upgraded = _before_tls(target, wires, hello, findings)
        if upgraded is None:
            return
        wire, hello = upgraded
    tls = wire.tls
    if tls is not None:
        findings.extend(_tls_findings(target, tls))
    if "AUTH" not in hello.keywords:
        findings.append(
            Finding(
                "probe.auth_missing",
                Severity.WARNING,
                "AUTH is not offered over TLS: clients cannot log in",
                "EHLO over TLS: no AUTH keyword",
                "offer SMTP AUTH on the submission ports (RFC 6409 4.3)",
            )
        )
    findings.extend(_anonymous_commands(wire))


def _before_tls(
    target: Target, wires: list[Wire], hello: Reply, findings: list[Finding]
) -> tuple[Wire, Reply] | None:
    """The plaintext part of a STARTTLS port; the connection and its EHLO answer after TLS."""
    wire = wires[-1]
    if "AUTH" in hello.keywords:
        findings.append(
            Finding(
                "probe.auth_before_tls",
                Severity.CRITICAL,
                "AUTH is offered before TLS: passwords may cross the network in plaintext",
                f"EHLO in plaintext: 250-AUTH {hello.keywords['AUTH']}",
                "offer AUTH only after STARTTLS (sendgate: remove the plaintext_auth override)",
            )
        )
    mechanism = (hello.keywords.get("AUTH", "").split() or ["PLAIN"])[0].upper()
    attempt = wire.command(f"AUTH {mechanism}")
    if attempt.code == 334:
        wire.command("*")
        findings.append(
            Finding(
                "probe.auth_accepted_before_tls",
                Severity.CRITICAL,
                "the server takes credentials before TLS",
                f"AUTH {mechanism} in plaintext: {attempt.shown()}",
                "refuse AUTH until TLS is up (RFC 4954 4: 538 5.7.11)",
            )
        )
    if "STARTTLS" not in hello.keywords:
        findings.append(
            Finding(
                "probe.starttls_missing",
                Severity.CRITICAL,
                "STARTTLS is not offered: everything, logins included, crosses in plaintext",
                "EHLO in plaintext: no STARTTLS keyword",
                "configure a certificate and offer STARTTLS (RFC 3207)",
            )
        )
        findings.extend(_anonymous_commands(wire))
        return None
    reply = wire.command("STARTTLS")
    if reply.code != 220:
        findings.append(
            Finding(
                "probe.starttls_refused",
                Severity.CRITICAL,
                "STARTTLS is offered but refused",
                f"STARTTLS: {reply.shown()}",
                "check the server's certificate and TLS settings",
            )
        )
        return None
    try:
        wire.starttls(target.verifying_context(), target.sni)
    except CertificateVerifyError as exc:
        findings.append(_untrusted(target, exc))
        # Again, accepting any certificate, to test what lies behind TLS.
        wire = connect(target)[0]
        wires.append(wire)
        ehlo(wire)
        if wire.command("STARTTLS").code != 220:
            raise ProbeError("STARTTLS refused on a second connection") from exc
        wire.starttls(lenient_context(), target.sni)
    except HandshakeError as exc:
        findings.append(
            Finding(
                "probe.starttls_failed",
                Severity.CRITICAL,
                "STARTTLS is accepted but the TLS handshake fails",
                str(exc),
                "check the server's certificate, key and TLS settings",
            )
        )
        return None
    return wire, ehlo(wire)


def _untrusted(target: Target, exc: CertificateVerifyError) -> Finding:
    trusted = str(target.cafile) if target.cafile else "the system's CA store"
    return Finding(
        "probe.cert_untrusted",
        Severity.CRITICAL,
        f"the certificate does not verify: {exc.reason}",
        f"TLS handshake verified against {trusted}: {exc.reason}",
        "use a certificate from a CA clients trust, with its intermediate certificates",
    )


def _tls_findings(target: Target, tls: ssl.SSLSocket) -> list[Finding]:
    version = tls.version() or "?"
    cipher = (tls.cipher() or ("?", "", 0))[0]
    findings = [
        Finding(
            "probe.tls",
            Severity.INFO,
            f"TLS works: {version} with {cipher}",
            f"negotiated by a client that offers TLS 1.2 and 1.3: {version}, {cipher}",
        )
    ]
    if version != "TLSv1.3":
        findings.append(
            Finding(
                "probe.tls13_missing",
                Severity.INFO,
                "TLS 1.3 is not offered",
                f"a client that offers TLS 1.3 got {version}",
                "enable TLS 1.3 (faster handshakes, no weak suites)",
            )
        )
    der = tls.getpeercert(binary_form=True)
    if der:
        cert = x509.load_der_x509_certificate(der)
        findings.extend(cert_findings(cert, target.name, datetime.now(UTC), "probe"))
    return findings


def _anonymous_commands(wire: Wire) -> list[Finding]:
    """VRFY, EXPN, MAIL and RCPT without a login: what they give an anonymous client."""
    findings = []
    for verb, code in (("VRFY", "probe.vrfy_answers"), ("EXPN", "probe.expn_answers")):
        reply = wire.command(f"{verb} postmaster")
        if reply.code in (250, 251):
            findings.append(
                Finding(
                    code,
                    Severity.WARNING,
                    f"{verb} tells anonymous clients which addresses exist",
                    f"{verb} postmaster: {reply.shown()}",
                    f"refuse {verb} or answer 252 (Postfix: disable_vrfy_command = yes)",
                )
            )
    mail = wire.command(f"MAIL FROM:<{OUTSIDE_SENDER}>")
    if mail.code == 250:
        rcpt = wire.command(f"RCPT TO:<{OUTSIDE_RECIPIENT}>")
        said = f"MAIL FROM:<{OUTSIDE_SENDER}>: {mail.shown()} ; RCPT TO:<{OUTSIDE_RECIPIENT}>: "
        if rcpt.code in (250, 251):
            findings.append(
                Finding(
                    "probe.relay_without_auth",
                    Severity.CRITICAL,
                    "the server takes mail for other domains from anyone: an open relay",
                    said + rcpt.shown(),
                    "require AUTH before MAIL on the submission ports",
                )
            )
        else:
            findings.append(
                Finding(
                    "probe.mail_without_auth",
                    Severity.INFO,
                    "MAIL is accepted without AUTH (RCPT was refused)",
                    said + rcpt.shown(),
                    "refuse MAIL before AUTH (530 5.7.0) to save work on anonymous clients",
                )
            )
        wire.command("RSET")
    return findings
