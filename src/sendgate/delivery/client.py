"""The outbound SMTP client: one mail transaction to one destination host, TLS policy enforced.

`deliver` opens the TCP connection itself (to the IP address the router chose), hands the socket
to aiosmtplib with the host NAME for SNI and certificate checks, and reports the final reply for
each recipient or the one reason the session failed. It raises only for misuse (ValueError);
network and remote errors are reported in the returned `Outcome`. With a `ConnectionCache`,
a healthy session stays open for a while after its transaction and carries the next one for
the same destination, TLS requirement and identity (as Postfix's connection cache does).

Security: everything the remote side sends is untrusted. Replies must carry a code from 200 to
599 (else the session ends as "malformed"); aiosmtplib caps one reply at 32 KiB and its text is
cut to MAX_REPLY_TEXT characters here, with control characters replaced. The SIZE keyword is
parsed strictly. The certificate is checked by OpenSSL ("pkix": chain and host name), by
`certificate_matches` (other acceptable names, parsed by cryptography) and by the caller's
`leaf_check` ("dane"); after a failed check no MAIL FROM is sent. Credentials go only over TLS,
or in plaintext to a loopback smarthost whose TLS mode is "none". The stored message is sent
exactly as stored (dot-stuffed only): a bare CR or LF refuses it before any connection, so no
byte we send can end the DATA section early at a lenient peer (SMTP smuggling). A cached
session is reused only under the key it was set up and verified with (address, port, host name,
TLS mode, verify, names, implicit TLS, trust store, AUTH user, HELO name); DANE sessions are
never cached, and idle sessions are bounded in number, idle time, age and transactions.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import aiosmtplib
from aiosmtplib import (
    SMTPException,
    SMTPHeloError,
    SMTPResponseException,
    SMTPTimeoutError,
)
from cryptography import x509

from sendgate.smtp.address import AddressError, parse_path

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
    (its RCPT rejection, or the end-of-data reply for accepted ones).
    """

    tls_version: str | None
    tls_cipher: str | None
    failure: str | None
    failure_reply: RemoteReply | None
    recipients: Mapping[str, RemoteReply]


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds to wait (RFC 5321 section 4.5.3.2): TCP connect, each reply, end of data."""

    connect: float = 30.0
    command: float = 300.0
    data: float = 600.0


@dataclass(frozen=True, slots=True)
class _Key:
    """Everything that decided how a session was set up and verified: equal keys may share it."""

    address: str
    port: int
    host: str
    mode: str
    verify: str
    names: tuple[str, ...]
    implicit: bool
    trust: ssl.SSLContext | None  # verify "pkix": the trust store that checked the chain
    username: str | None
    helo: str


def _cache_key(target: Target, helo: str, context: ssl.SSLContext | None) -> _Key | None:
    """The key `target` shares sessions under; None for DANE (its leaf_check belongs to a plan)."""
    tls = target.tls
    if tls.verify == "dane":
        return None
    return _Key(
        target.address,
        target.port,
        target.host,
        tls.mode,
        tls.verify,
        tls.names,
        tls.implicit,
        context if tls.verify == "pkix" else None,
        target.auth[0] if target.auth is not None else None,
        helo,
    )


@dataclass(slots=True, eq=False)
class _Session:
    """An established session between transactions: greeted, TLS and AUTH done."""

    smtp: aiosmtplib.SMTP
    transport: asyncio.BaseTransport | None
    tls_version: str | None
    tls_cipher: str | None
    born: float  # cache clock when it connected
    transactions: int = 0
    idle_since: float = 0.0

    @property
    def alive(self) -> bool:
        return self.smtp.is_connected

    def drop(self) -> None:
        if self.transport is not None:
            cast(asyncio.Transport, self.transport).abort()
        self.smtp.close()


class ConnectionCache:
    """Idle SMTP sessions that `deliver` may reuse, so that a busy route skips connect and EHLO.

    A session is taken out while it carries a transaction (never shared by two at once) and
    comes back only if it is healthy. Limits: `idle_time` seconds idle (Postfix's
    smtp_connection_cache_time_limit), `max_age` seconds since it connected,
    `max_transactions` per session, `per_key` idle sessions per destination and `total`
    overall. Expired sessions are closed in the background (QUIT, at most `quit_timeout`
    seconds) by a timer on the running loop; `close` QUITs every idle session and should be
    awaited once no delivery runs (the cache stays usable afterwards). `clock` is injectable
    for tests; it must count seconds.
    """

    def __init__(
        self,
        *,
        idle_time: float = 2.0,
        max_age: float = 300.0,
        max_transactions: int = 100,
        per_key: int = 20,
        total: int = 100,
        quit_timeout: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        limits = {
            "idle_time": idle_time,
            "max_age": max_age,
            "max_transactions": max_transactions,
            "per_key": per_key,
            "total": total,
            "quit_timeout": quit_timeout,
        }
        for name, value in limits.items():
            if not value > 0:
                raise ValueError(f"connection cache {name} must be positive, not {value!r}")
        self._idle_time = idle_time
        self._max_age = max_age
        self._max_transactions = max_transactions
        self._per_key = per_key
        self._total = total
        self._quit_timeout = quit_timeout
        self._clock = clock
        self._idle: dict[_Key, list[_Session]] = {}
        self._count = 0
        self._timer: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def idle(self) -> int:
        """How many sessions wait for a transaction now."""
        return self._count

    async def close(self) -> None:
        """QUIT every idle session, and wait for the sessions already being closed."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        idle, self._idle, self._count = self._idle, {}, 0
        for sessions in idle.values():
            for session in sessions:
                self._discard(session)
        while self._closing:
            await asyncio.gather(*self._closing)

    def _usable(self, session: _Session, now: float) -> bool:
        return (
            now - session.idle_since < self._idle_time
            and now - session.born < self._max_age
            and session.transactions < self._max_transactions
            and session.alive
        )

    def _take(self, key: _Key) -> _Session | None:
        """An idle session for `key`, now owned by the caller; expired ones are closed."""
        sessions = self._idle.pop(key, [])
        now = self._clock()
        found = None
        while sessions and found is None:
            session = sessions.pop()  # the most recently used: the least likely to be closed
            self._count -= 1
            if self._usable(session, now):
                found = session
            else:
                self._discard(session)
        if sessions:
            self._idle[key] = sessions
        return found

    def _give(self, key: _Key, session: _Session) -> bool:
        """Keep `session` for `key`; False when a limit says to close it instead."""
        now = self._clock()
        session.idle_since = now
        sessions = self._idle.get(key, [])
        if (
            not self._usable(session, now)
            or len(sessions) >= self._per_key
            or self._count >= self._total
        ):
            return False
        sessions.append(session)
        self._idle[key] = sessions
        self._count += 1
        self._schedule()
        return True

    def _schedule(self) -> None:
        if self._timer is not None or not self._count:
            return
        oldest = min(s.idle_since for sessions in self._idle.values() for s in sessions)
        delay = max(oldest + self._idle_time - self._clock(), 0.0)
        self._timer = asyncio.get_running_loop().call_later(delay, self._reap)

    def _reap(self) -> None:
        self._timer = None
        now = self._clock()
        for key, sessions in list(self._idle.items()):
            kept = [s for s in sessions if self._usable(s, now)]
            for session in sessions:
                if session not in kept:
                    self._discard(session)
            self._count -= len(sessions) - len(kept)
            if kept:
                self._idle[key] = kept
            else:
                del self._idle[key]
        self._schedule()

    def _discard(self, session: _Session) -> None:
        """Close `session` in the background: delivery never waits for a goodbye."""
        task = asyncio.get_running_loop().create_task(self._shut(session))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _shut(self, session: _Session) -> None:
        try:
            if session.alive:
                with contextlib.suppress(SMTPException, OSError):
                    await session.smtp.quit(timeout=self._quit_timeout)
        finally:
            session.drop()


def has_bare_line_ending(message: bytes) -> bool:
    """True if `message` holds a CR not followed by LF, or an LF not preceded by CR."""
    pairs = message.count(b"\r\n")
    return message.count(b"\r") != pairs or message.count(b"\n") != pairs


def data_payload(message: bytes) -> bytes:
    """What follows DATA's 354: the message dot-stuffed, ending in CRLF, then ".\\r\\n"."""
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + b".\r\n"


def size_limit(parameter: str) -> int | None:
    """The limit a server's SIZE keyword announces (RFC 1870); None for none, 0 or unreadable."""
    text = parameter.strip()
    if not text or len(text) > 20 or not text.isascii() or not text.isdigit():
        return None
    return int(text) or None


def dns_name_matches(pattern: str, name: str) -> bool:
    """Whether a certificate's DNS name `pattern` covers host `name` (RFC 6125 6.4.3, strict).

    Case-insensitive, A-labels only. A wildcard counts only as the whole left-most label of a
    pattern with at least three labels, and stands for exactly one label of `name`.
    """
    pattern = pattern.lower().removesuffix(".")
    name = name.lower().removesuffix(".")
    if not (pattern.isascii() and name.isascii()) or not name or "*" in name:
        return False
    if not pattern.startswith("*."):
        return "*" not in pattern and pattern == name
    suffix = pattern[1:]
    if "*" in suffix or suffix.count(".") < 2:
        return False
    first, dot, rest = name.partition(".")
    return bool(first) and bool(dot) and "." + rest == suffix


def certificate_matches(der: bytes, names: Iterable[str]) -> bool:
    """Whether the DER certificate's DNS subjectAltNames cover one of `names`.

    Only the SAN extension counts (no Common Name fallback); unparsable certificates never match.
    """
    try:
        certificate = x509.load_der_x509_certificate(der)
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        patterns = san.get_values_for_type(x509.DNSName)
    except (ValueError, x509.ExtensionNotFound, x509.DuplicateExtension):
        return False
    wanted = tuple(names)
    return any(dns_name_matches(pattern, name) for pattern in patterns for name in wanted)


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
    timeouts: Timeouts = Timeouts(),  # frozen: one shared default is safe
    cache: ConnectionCache | None = None,
) -> Outcome:
    """Run one SMTP transaction with `target` for `recipients`; never raises for remote errors.

    `sender` is "" for the null reverse-path. `ssl_context` holds the trust store for verify
    "pkix" and must verify (CERT_REQUIRED, check_hostname, TLS >= 1.2); OpenSSL then checks
    `target.host`, and when that host is not itself among the acceptable `names`, one of them
    must be covered by the certificate too. "none" and "dane" use a non-verifying context.
    With a `cache`, an idle session for the same key carries the transaction when there is
    one (a session found dead before MAIL FROM is answered is replaced by a new connection,
    unseen in the outcome), and a healthy session goes back to the cache instead of QUIT.
    """
    _check_envelope(helo, sender, recipients, smtputf8=smtputf8)
    if has_bare_line_ending(message):
        refusal = RemoteReply(554, "5.6.0 (local) message has a bare CR or LF; not sent")
        return Outcome(None, None, None, None, dict.fromkeys(recipients, refusal))
    size = len(message) if message.endswith(b"\r\n") else len(message) + 2
    job = _Job(helo, sender, tuple(recipients), data_payload(message), size, smtputf8, eight_bit)
    context = _tls_context(target.tls, ssl_context)
    key = _cache_key(target, helo, context) if cache is not None else None
    reused = cache._take(key) if cache is not None and key is not None else None
    if reused is not None:
        attempt = _Attempt(
            target, job, context, timeouts, starttls=True, cache=cache, key=key, reuse=reused
        )
        outcome = await attempt.run()
        if not attempt.stale:
            return outcome
    attempt = _Attempt(target, job, context, timeouts, starttls=True, cache=cache, key=key)
    outcome = await attempt.run()
    if attempt.handshake_failed and target.tls.mode == "opportunistic":
        # As Postfix does: a broken TLS stack at the peer must not block mail TLS was optional for.
        attempt = _Attempt(target, job, context, timeouts, starttls=False, cache=cache, key=key)
        outcome = await attempt.run()
    return outcome


@dataclass(frozen=True, slots=True)
class _Job:
    helo: str
    sender: str
    recipients: tuple[str, ...]
    payload: bytes  # exactly the bytes after DATA's 354
    size: int  # the message size for SIZE (RFC 1870): before dot-stuffing
    smtputf8: bool
    eight_bit: bool


def _check_envelope(helo: str, sender: str, recipients: Sequence[str], *, smtputf8: bool) -> None:
    """Refuse arguments no caller should pass (the spool holds only parsed addresses)."""
    if not helo or not helo.isascii() or not helo.isprintable() or " " in helo:
        raise ValueError(f"HELO name {helo!r} is not a host name or address literal")
    if not recipients:
        raise ValueError("no recipients")
    if len(set(recipients)) != len(recipients):
        raise ValueError("duplicate recipients")
    # The addresses go onto command lines: only what the strict parser accepts may.
    for address, null_ok in ((sender, True), *((r, False) for r in recipients)):
        try:
            parse_path(f"<{address}>", smtputf8=smtputf8, allow_null=null_ok)
        except AddressError as exc:
            raise ValueError(f"address {address!r} is not valid: {exc}") from None


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
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # "dane" checks the leaf itself; "none" checks nothing
    return context


def _clean(text: str) -> str:
    """Bound an untrusted reply text and replace characters that could forge log lines."""
    kept = text[:MAX_REPLY_TEXT]
    cleaned = "".join(c if c == "\n" or c.isprintable() else "?" for c in kept)
    return cleaned + "..." if len(text) > MAX_REPLY_TEXT else cleaned


class _SessionError(Exception):
    """Ends one attempt with a one-line reason (temporary) or the remote reply that failed it."""

    def __init__(
        self,
        reason: str | None = None,
        reply: RemoteReply | None = None,
        *,
        handshake: bool = False,
        dropped: bool = False,
    ) -> None:
        super().__init__(reason if reason is not None else str(reply))
        self.reason = reason
        self.reply = reply
        self.handshake = handshake
        self.dropped = dropped  # the connection failed (not a timeout, not a reply)


class _Attempt:
    """One session with the target (a new connection, or a cached one) and the dialogue on it."""

    def __init__(
        self,
        target: Target,
        job: _Job,
        context: ssl.SSLContext | None,
        timeouts: Timeouts,
        *,
        starttls: bool,
        cache: ConnectionCache | None = None,
        key: _Key | None = None,
        reuse: _Session | None = None,
    ) -> None:
        self.target = target
        self.job = job
        self.context = context
        self.timeouts = timeouts
        self.use_starttls = starttls
        self.cache = cache if key is not None else None
        self.key = key
        self.session = reuse  # the cached session this attempt runs on, if any
        self.transport: asyncio.BaseTransport | None
        if reuse is None:
            self.smtp = aiosmtplib.SMTP(
                hostname=target.host,
                local_hostname=job.helo,
                timeout=timeouts.command,
                use_tls=target.tls.implicit,
                start_tls=False,
                tls_context=context,
            )
            self.transport = None
            self.tls_version: str | None = None
            self.tls_cipher: str | None = None
        else:
            self.smtp, self.transport = reuse.smtp, reuse.transport
            self.tls_version, self.tls_cipher = reuse.tls_version, reuse.tls_cipher
        self.born = self.cache._clock() if self.cache is not None else 0.0
        self.stage = "connect"
        self.quit_allowed = True  # False once the stream is broken or out of step
        self.handshake_failed = False
        self.ready = reuse is not None  # greeted, TLS and AUTH done: it can carry a transaction
        self.mail_answered = False
        self.in_transaction = False  # MAIL FROM sent and no end-of-data reply: RSET before reuse
        self.stale = False  # a reused session was found dead: the caller tries a new one
        self.recipients: dict[str, RemoteReply] = {}

    @property
    def peer(self) -> str:
        return f"{self.target.host}[{self.target.address}]:{self.target.port}"

    async def run(self) -> Outcome:
        """Run the dialogue; then keep the session in the cache, or end it."""
        reused = self.session is not None
        failure: str | None = None
        failure_reply: RemoteReply | None = None
        try:
            if not reused:
                await self._converse()
            else:
                await self._transaction()
        except _SessionError as end:
            failure, failure_reply, self.handshake_failed = end.reason, end.reply, end.handshake
            lost = end.dropped or (end.reply is not None and end.reply.code == 421)
            # A server may close an idle session at any time: that is no news about this message.
            self.stale = reused and lost and not self.mail_answered
        except BaseException:
            self._abort()
            raise
        kept = False
        try:
            if not self.stale:
                kept = await self._keep(failure, failure_reply)
                if not kept:
                    await self._quit()
        finally:
            if not kept:
                self._abort()
        return Outcome(self.tls_version, self.tls_cipher, failure, failure_reply, self.recipients)

    async def _keep(self, failure: str | None, failure_reply: RemoteReply | None) -> bool:
        """Hand a healthy session back to the cache (after RSET if a transaction is open)."""
        if self.cache is None or self.key is None or failure is not None or not self.ready:
            return False
        if failure_reply is not None and failure_reply.code == 421:
            return False
        if not self.quit_allowed or not self.smtp.is_connected:
            return False
        if self.in_transaction:
            try:
                reply = await self._command("RSET", b"RSET")
            except _SessionError:
                return False
            if reply.code != 250:
                return False
            self.in_transaction = False
        session = self.session or _Session(
            self.smtp, self.transport, self.tls_version, self.tls_cipher, self.born
        )
        session.transactions += 1
        return self.cache._give(self.key, session)

    async def _converse(self) -> None:
        sock = await self._connect()
        tls = self.target.tls
        with self._step("greeting"):
            await self.smtp.connect(sock=sock, timeout=self.timeouts.command)
        self.transport = self.smtp.transport
        if tls.implicit:
            self._check_tls()
        await self._hello()
        if tls.mode != "none" and not tls.implicit and self.use_starttls:
            await self._starttls()
        if self.target.auth is not None:
            await self._authenticate(*self.target.auth)
        self.ready = True
        await self._transaction()

    async def _connect(self) -> socket.socket:
        address = ipaddress.ip_address(self.target.address)
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            connecting = asyncio.get_running_loop().sock_connect(
                sock, (self.target.address, self.target.port)
            )
            await asyncio.wait_for(connecting, self.timeouts.connect)
        except TimeoutError:
            sock.close()
            raise _SessionError(
                f"timeout ({self.timeouts.connect:g}s) connecting to {self.peer}"
            ) from None
        except OSError as exc:
            sock.close()
            # asyncio's message repeats the address; the errno's text says it better.
            detail = os.strerror(exc.errno) if exc.errno else str(exc)
            raise _SessionError(f"cannot connect to {self.peer}: {detail}") from None
        except BaseException:
            sock.close()
            raise
        return sock

    @contextlib.contextmanager
    def _step(self, stage: str, timeout: float | None = None) -> Iterator[None]:
        """Turn what aiosmtplib raises during `stage` into the reason the session ended."""
        self.stage = stage
        try:
            yield
        except SMTPResponseException as exc:
            raise _SessionError(reply=self._reply(exc.code, exc.message)) from None
        except (SMTPException, OSError) as exc:
            self.quit_allowed = False
            handshake = stage == "STARTTLS" or _ssl_error(exc) is not None
            if isinstance(exc, TimeoutError | SMTPTimeoutError):
                seconds = self.timeouts.command if timeout is None else timeout
                reason = f"timeout ({seconds:g}s) in {stage}"
            elif handshake:
                reason = self._tls_failure(exc)
            else:
                reason = f"connection lost in {stage}"
            dropped = not isinstance(exc, TimeoutError | SMTPTimeoutError)
            raise _SessionError(reason, handshake=handshake, dropped=dropped) from None

    def _reply(self, code: int, text: str) -> RemoteReply:
        if not 200 <= code <= 599:
            self.quit_allowed = False
            raise _SessionError(f"malformed reply in {self.stage}")
        return RemoteReply(code, _clean(text))

    def _tls_failure(self, exc: BaseException) -> str:
        policy = (
            f"TLS policy ({self.target.tls.reason}): " if self.target.tls.mode == "required" else ""
        )
        error = _ssl_error(exc)
        if isinstance(error, ssl.SSLCertVerificationError):
            return f"{policy}certificate not accepted: {error.verify_message}"
        if error is not None:
            return f"{policy}TLS handshake failed: {error.reason or error}"
        return f"{policy}TLS handshake failed: connection lost"

    def _check_tls(self) -> None:
        """Record the TLS parameters; apply the checks OpenSSL did not do."""
        tls = self.target.tls
        with self._step("TLS handshake"):
            ssl_object = self.smtp.get_transport_info("ssl_object")
        if not isinstance(ssl_object, ssl.SSLObject):
            raise _SessionError(f"no TLS session after the handshake with {self.peer}")
        self.tls_version = ssl_object.version()
        cipher = ssl_object.cipher()
        self.tls_cipher = cipher[0] if cipher else None
        leaf = ssl_object.getpeercert(binary_form=True)
        if tls.verify == "dane":
            check = tls.leaf_check
            if leaf is None or check is None or not check(leaf):
                raise _SessionError(f"TLS policy ({tls.reason}): certificate does not match TLSA")
        elif tls.verify == "pkix" and not self._names_covered(leaf):
            names = ", ".join(tls.names)
            raise _SessionError(f"TLS policy ({tls.reason}): certificate is not valid for {names}")

    def _names_covered(self, leaf: bytes | None) -> bool:
        """OpenSSL matched target.host; is that an acceptable name, or is one of them covered?"""
        names = self.target.tls.names
        if any(dns_name_matches(name, self.target.host) for name in names):
            return True
        return leaf is not None and certificate_matches(leaf, names)

    async def _hello(self) -> None:
        with self._step("EHLO"):
            try:
                await self.smtp.ehlo(timeout=self.timeouts.command)
                return
            except SMTPHeloError as exc:
                # A 421, a malformed reply or a dropped line ends the session; else try HELO.
                if exc.code == 421 or not 200 <= exc.code <= 599 or not self.smtp.is_connected:
                    raise
        with self._step("HELO"):
            await self.smtp.helo(timeout=self.timeouts.command)

    async def _starttls(self) -> None:
        tls = self.target.tls
        if not self.smtp.supports_extension("starttls"):
            if tls.mode == "required":
                raise _SessionError(f"TLS required by {tls.reason} but STARTTLS not offered")
            return
        self.stage = "STARTTLS"
        try:
            with self._step("STARTTLS"):
                await self.smtp.starttls(
                    server_hostname=self.target.host,
                    tls_context=self.context,
                    timeout=self.timeouts.command,
                )
        except _SessionError as end:
            refused = end.reply
            if refused is None or refused.code == 421:
                raise
            if tls.mode == "required":
                raise _SessionError(
                    f"TLS required by {tls.reason} but STARTTLS refused: {refused}"
                ) from None
            return  # opportunistic: the refusal leaves the plaintext session usable
        self.transport = self.smtp.transport
        self._check_tls()
        await self._hello()

    async def _authenticate(self, username: str, password: str) -> None:
        tls = self.target.tls
        loopback = ipaddress.ip_address(self.target.address).is_loopback
        if self.tls_version is None and not (tls.mode == "none" and loopback):
            raise _SessionError(
                "AUTH needs TLS (plaintext only to a loopback smarthost with TLS mode none)"
            )
        methods = self.smtp.server_auth_methods
        try:
            with self._step("AUTH"):
                if "plain" in methods:
                    await self.smtp.auth_plain(username, password, timeout=self.timeouts.command)
                elif "login" in methods:
                    await self.smtp.auth_login(username, password, timeout=self.timeouts.command)
                else:
                    raise _SessionError(f"{self.peer} offers neither AUTH PLAIN nor AUTH LOGIN")
        except _SessionError as refused:
            if refused.reply is None or refused.reply.code < 500:
                raise
            # A refused login is the route's fault, not the message's: defer it (as Postfix's
            # smtp_sasl_auth_soft_bounce does) so that fixing the password delivers the queue.
            raise _SessionError(f"{self.peer} refused AUTH: {refused.reply}") from None

    async def _transaction(self) -> None:
        job, smtp, host = self.job, self.smtp, self.target.host
        if job.smtputf8 and not smtp.supports_extension("smtputf8"):
            self._refuse_all(
                553, f"5.6.7 (local) {host} does not offer SMTPUTF8, which this message needs"
            )
            return
        limit = size_limit(smtp.esmtp_extensions.get("size", ""))
        if limit is not None and job.size > limit:
            self._refuse_all(
                552, f"5.3.4 (local) message of {job.size} octets exceeds {host}'s SIZE {limit}"
            )
            return
        options: list[bytes] = []
        if smtp.supports_extension("size"):
            options.append(b"SIZE=%d" % job.size)
        if job.eight_bit and smtp.supports_extension("8bitmime"):
            options.append(b"BODY=8BITMIME")  # when not offered, sent as is (as Postfix does)
        if job.smtputf8:
            options.append(b"SMTPUTF8")
        encoding = "utf-8" if job.smtputf8 else "ascii"

        self.in_transaction = True
        reply = await self._command(
            "MAIL FROM", b"MAIL", _path(b"FROM:", job.sender, encoding), *options
        )
        self.mail_answered = reply.code != 421  # a 421 here says the session is gone, not why
        if reply.code // 100 != 2:
            raise _SessionError(reply=reply)
        accepted: list[str] = []
        for recipient in job.recipients:
            reply = await self._command("RCPT TO", b"RCPT", _path(b"TO:", recipient, encoding))
            if reply.code == 421:
                raise _SessionError(reply=reply)
            if reply.code // 100 == 2:
                accepted.append(recipient)
            else:
                self.recipients[recipient] = reply
        if not accepted:
            return
        reply = await self._command("DATA", b"DATA")
        if reply.code != 354:
            raise _SessionError(reply=reply)
        # Not aiosmtplib's data(): it cannot tell a refused DATA from a refused message, and
        # writing the payload ourselves keeps the bytes on the wire exactly `data_payload`.
        with self._step("message data", self.timeouts.data):
            protocol = smtp.protocol
            if protocol is None:
                raise aiosmtplib.SMTPServerDisconnected("connection lost")
            protocol.write(job.payload)
            response = await protocol.read_response(timeout=self.timeouts.data)
        reply = self._reply(response.code, response.message)
        self.in_transaction = False  # any final reply to the data ends the transaction
        for recipient in accepted:
            self.recipients[recipient] = reply

    async def _command(self, stage: str, *words: bytes) -> RemoteReply:
        with self._step(stage):
            response = await self.smtp.execute_command(*words, timeout=self.timeouts.command)
        return self._reply(response.code, response.message)

    def _refuse_all(self, code: int, text: str) -> None:
        reply = RemoteReply(code, text)
        for recipient in self.job.recipients:
            self.recipients[recipient] = reply

    async def _quit(self) -> None:
        if self.quit_allowed and self.smtp.is_connected:
            with contextlib.suppress(SMTPException, OSError):
                await self.smtp.quit(timeout=self.timeouts.command)

    def _abort(self) -> None:
        """Drop the connection now: after QUIT or a failure, a TLS goodbye is not worth a wait."""
        if self.transport is not None:
            cast(asyncio.Transport, self.transport).abort()
        self.smtp.close()


def _path(prefix: bytes, address: str, encoding: str) -> bytes:
    return prefix + b"<" + address.encode(encoding) + b">"


def _ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind `exc` (aiosmtplib wraps handshake errors of implicit TLS)."""
    for candidate in (exc, exc.__cause__):
        if isinstance(candidate, ssl.SSLError):
            return candidate
    return None
