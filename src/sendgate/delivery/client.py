"""The outbound SMTP client: one mail transaction to one destination host, TLS policy enforced.

`deliver` opens the TCP connection itself (to the IP address the router chose), hands the socket
to aiosmtplib with the host NAME for SNI and certificate checks, and reports the final reply for
each recipient or the one reason the session failed. It raises only for misuse (ValueError);
network and remote errors are reported in the returned `Outcome`. With a `ConnectionCache`,
a healthy session stays open for a while after its transaction and carries the next one for
the same destination, TLS requirement and identity (as Postfix's connection cache does).
The parts: the values in target.py, the bytes sent in payload.py, one session's dialogue in
attempt.py, certificate checks in certnames.py, the cache in connections.py.

Security: everything the remote side sends is untrusted (see attempt.py). The certificate is
checked by OpenSSL ("pkix": chain and host name), by `certificate_problem` (other acceptable
names, parsed by cryptography) and by the caller's `leaf_check` ("dane"); after a failed check
no MAIL FROM is sent. The stored message is sent exactly as stored (dot-stuffed only): a bare
CR or LF refuses it before any connection (see payload.py). A cached session is reused only
under the key it was set up and verified with (see connections.py).
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Sequence

from sendgate.delivery.attempt import Attempt
from sendgate.delivery.connections import ConnectionCache, session_key
from sendgate.delivery.payload import (
    NO_DSN_REQUEST,
    DsnRequest,
    Job,
    check_envelope,
    data_payload,
    has_bare_line_ending,
)
from sendgate.delivery.target import Outcome, RemoteReply, Target, Timeouts, TlsRequirement

_TIMEOUTS = Timeouts()  # frozen: one shared default is safe


async def deliver(
    target: Target,
    *,
    helo: str,
    sender: str,
    recipients: Sequence[str],
    message: bytes,
    smtputf8: bool,
    eight_bit: bool,
    ssl_context: ssl.SSLContext,
    timeouts: Timeouts = _TIMEOUTS,
    cache: ConnectionCache | None = None,
    requiretls: bool = False,
    dsn: DsnRequest = NO_DSN_REQUEST,
) -> Outcome:
    """Run one SMTP transaction with `target` for `recipients`; never raises for remote errors.

    `sender` is "" for the null reverse-path. `ssl_context` holds the trust store for verify
    "pkix" and must verify (CERT_REQUIRED, check_hostname, TLS >= 1.2); OpenSSL then checks
    `target.host`, and when that host is not itself among the acceptable `names`, one of them
    must be covered by the certificate too. "none" and "dane" use a non-verifying context.
    With a `cache`, an idle session for the same key carries the transaction when there is
    one (a session found dead before MAIL FROM is answered is replaced by a new connection,
    unseen in the outcome), and a healthy session goes back to the cache instead of QUIT.
    With `requiretls` (RFC 8689) the message goes only over TLS whose certificate the target's
    requirement verified, to a host offering REQUIRETLS; else every recipient is refused with
    5.7.30. `dsn` goes to a host that offers DSN (RFC 3461).
    """
    check_envelope(helo, sender, recipients, smtputf8=smtputf8)
    if has_bare_line_ending(message):
        refusal = RemoteReply(554, "5.6.0 (local) message has a bare CR or LF; not sent")
        return Outcome(None, None, None, None, dict.fromkeys(recipients, refusal))
    size = len(message) if message.endswith(b"\r\n") else len(message) + 2
    job = Job(
        helo,
        sender,
        tuple(recipients),
        data_payload(message),
        size,
        smtputf8,
        eight_bit,
        requiretls,
        dsn,
    )
    context = _tls_context(target.tls, ssl_context)
    key = session_key(target, helo, context) if cache is not None else None
    reused = cache.take(key) if cache is not None and key is not None else None
    if reused is not None:
        attempt = Attempt(
            target, job, context, timeouts, starttls=True, cache=cache, key=key, reuse=reused
        )
        outcome = await attempt.run()
        if not attempt.stale:
            return outcome
    attempt = Attempt(target, job, context, timeouts, starttls=True, cache=cache, key=key)
    outcome = await attempt.run()
    if attempt.handshake_failed and target.tls.mode == "opportunistic" and not requiretls:
        # As Postfix does: a broken TLS stack at the peer must not block mail TLS was optional for.
        attempt = Attempt(target, job, context, timeouts, starttls=False, cache=cache, key=key)
        outcome = await attempt.run()
    return outcome


def _tls_context(tls: TlsRequirement, trust: ssl.SSLContext) -> ssl.SSLContext | None:
    if tls.mode == "none":
        return None
    if tls.verify == "pkix":
        if not (
            trust.verify_mode == ssl.CERT_REQUIRED
            and trust.check_hostname
            and trust.minimum_version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)
        ):
            raise ValueError("ssl_context must verify (CERT_REQUIRED, check_hostname, TLS >= 1.2)")
        return trust
    return _unverified_context()


@functools.cache
def _unverified_context() -> ssl.SSLContext:
    """One context for every "dane" and "none" session: making one costs about 0.1 ms, and
    opportunistic TLS to MX hosts needs it for nearly every message."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # "dane" checks the leaf itself; "none" checks nothing
    return context
