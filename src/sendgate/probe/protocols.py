"""Which old protocol versions and weak cipher suites a server would accept.

Each question is one connection that offers only the versions or suites in question (a hand
made ClientHello, `hello`) and reads the ServerHello, if any; the handshake is then dropped.
Categories and severities follow testssl.sh's, so that both tools name the same problem.
"""

from __future__ import annotations

from dataclasses import dataclass

from sendgate.findings import Finding, Severity
from sendgate.probe.hello import (
    LEGACY_SUITES,
    SSL3,
    SUITES,
    TLS10,
    TLS11,
    TLS12,
    Accepted,
    client_hello,
    server_choice,
)
from sendgate.probe.target import Target, ready_for_tls
from sendgate.probe.wire import WireError


@dataclass(frozen=True, slots=True)
class Question:
    code: str
    severity: Severity
    what: str
    version: int
    suites: tuple[int, ...]
    fix: str


QUESTIONS = (
    Question(
        "probe.ssl3_accepted", Severity.CRITICAL, "SSL 3.0 is accepted (POODLE)", SSL3,
        LEGACY_SUITES, "allow TLS 1.2 and later only",
    ),
    Question(
        "probe.tls10_accepted", Severity.WARNING, "TLS 1.0 is accepted (RFC 8996 forbids it)",
        TLS10, LEGACY_SUITES, "allow TLS 1.2 and later only (sendgate: remove tls_below_1_2)",
    ),
    Question(
        "probe.tls11_accepted", Severity.WARNING, "TLS 1.1 is accepted (RFC 8996 forbids it)",
        TLS11, LEGACY_SUITES, "allow TLS 1.2 and later only (sendgate: remove tls_below_1_2)",
    ),
    Question(
        "probe.suite_null", Severity.CRITICAL, "NULL cipher suites (no encryption) are accepted",
        TLS12, SUITES["null"], "remove NULL suites (OpenSSL: add !eNULL to the cipher list)",
    ),
    Question(
        "probe.suite_anonymous", Severity.CRITICAL,
        "anonymous cipher suites (no server authentication) are accepted", TLS12,
        SUITES["anonymous"], "remove anonymous suites (OpenSSL: !aNULL; Postfix: "
        "smtpd_tls_exclude_ciphers = aNULL)",
    ),
    Question(
        "probe.suite_export", Severity.CRITICAL, "export cipher suites are accepted", TLS12,
        SUITES["export"], "remove export suites (OpenSSL: !EXPORT)",
    ),
    Question(
        "probe.suite_low", Severity.CRITICAL, "RC4 or single-DES cipher suites are accepted",
        TLS12, SUITES["low"], "remove RC4 and DES suites (OpenSSL: !RC4:!DES)",
    ),
    Question(
        "probe.suite_3des", Severity.WARNING, "3DES or IDEA cipher suites are accepted (SWEET32)",
        TLS12, SUITES["3des"], "remove 3DES and IDEA suites (OpenSSL: !3DES:!IDEA)",
    ),
    Question(
        "probe.suite_cbc", Severity.WARNING, "CBC-mode cipher suites are accepted", TLS12,
        SUITES["cbc"], "offer AEAD suites only (sendgate's default: ECDHE with AES-GCM or "
        "ChaCha20-Poly1305)",
    ),
)  # fmt: skip


# Screening questions: one connection each answers "none of these" for a well-set server, and
# only a yes is broken down into its questions (a server that takes TLS 1.0 answers a TLS 1.1
# hello with 1.0 or 1.1; one that takes any weak suite picks one from the union). A clean
# server costs three connections here instead of nine, which keeps the probe under the rate at
# which defended servers refuse an address.
_SCREENS = (
    (TLS11, LEGACY_SUITES, QUESTIONS[:3]),
    (TLS12, tuple(s for q in QUESTIONS[3:8] for s in q.suites), QUESTIONS[3:8]),
    (TLS12, SUITES["cbc"], QUESTIONS[8:]),
)


def protocol_findings(target: Target) -> list[Finding]:
    """One finding per question the server said yes to."""
    findings = []
    for version, suites, questions in _SCREENS:
        try:
            screened = ask(target, version, suites)
            if screened is None:
                continue
            for question in questions:
                if len(questions) == 1:
                    accepted: Accepted | None = screened
                else:
                    accepted = ask(target, question.version, question.suites)
                # A version question is answered by that version only, not an older fallback.
                if accepted is not None and (
                    question.version == TLS12 or accepted.version == question.version
                ):
                    findings.append(_found(question, accepted))
        except WireError as exc:
            findings.append(
                Finding(
                    "probe.tls_untested",
                    Severity.INFO,
                    "not tested: " + ", ".join(q.code.removeprefix("probe.") for q in questions),
                    str(exc),
                )
            )
    return findings


def _found(question: Question, accepted: Accepted) -> Finding:
    return Finding(
        question.code,
        question.severity,
        question.what,
        f"ClientHello offering only {_offer(question)}: ServerHello chose "
        f"{accepted.version_name}, suite 0x{accepted.suite:04X}",
        question.fix,
    )


def ask(target: Target, version: int, suites: tuple[int, ...]) -> Accepted | None:
    """Offer `version` and `suites` on a fresh connection; what the server picked, or None."""
    wire = ready_for_tls(target)
    try:
        wire.send(client_hello(version, suites, target.sni))
        accepted = server_choice(wire.sock)
    finally:
        wire.close()
    if accepted is not None and (accepted.version > version or accepted.suite not in suites):
        return None  # not an answer to this offer (RFC 5246 7.4.1.3)
    return accepted


def _offer(question: Question) -> str:
    names = {SSL3: "SSL 3.0", TLS10: "TLS 1.0", TLS11: "TLS 1.1", TLS12: "TLS 1.2"}
    return f"{names[question.version]} with {len(question.suites)} suites"
