"""One attempt at a transaction: a session with one target (new or cached) and its dialogue.

`Attempt.run` connects or takes over a cached session; greets, upgrades to TLS and checks the
certificate as the `TlsRequirement` says, logs in, runs its `Job`'s transaction, then hands a
healthy session to the cache or ends it. `deliver` (client.py) decides which attempts to make.

Security: everything the remote side sends is untrusted. Replies must carry a code from 200 to
599 (else the session ends as "malformed"); aiosmtplib caps one reply at 32 KiB (`pipeline`
caps the pipelined ones by line length and count), and its text is cut to MAX_REPLY_TEXT
characters here with control characters replaced. After a failed
certificate check no MAIL FROM is sent; credentials go only over TLS, or in plaintext to a
loopback smarthost whose TLS mode is "none".
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import ssl
from collections.abc import Iterator
from typing import cast

import aiosmtplib
from aiosmtplib import SMTPException, SMTPHeloError, SMTPResponseException, SMTPTimeoutError

from sendgate.delivery.certnames import certificate_problem, ssl_error, tls_failure
from sendgate.delivery.connections import CachedSession, ConnectionCache, SessionKey
from sendgate.delivery.payload import Job, size_limit, smtp_path
from sendgate.delivery.pipeline import Exchange, open_socket
from sendgate.delivery.target import MAX_REPLY_TEXT, Outcome, RemoteReply, Target, Timeouts
from sendgate.text import reply_text


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


class Attempt:
    """One session with the target (a new connection, or a cached one) and the dialogue on it."""

    def __init__(
        self,
        target: Target,
        job: Job,
        context: ssl.SSLContext | None,
        timeouts: Timeouts,
        *,
        starttls: bool,
        cache: ConnectionCache | None = None,
        key: SessionKey | None = None,
        reuse: CachedSession | None = None,
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
        self.born = self.cache.now() if self.cache is not None else 0.0
        self.stage = "connect"
        self.quit_allowed = True  # False once the stream is broken or out of step
        self.handshake_failed = False
        self.ready = reuse is not None  # greeted, TLS and AUTH done: it can carry a transaction
        self.mail_answered = False
        self.in_transaction = False  # MAIL FROM sent and no end-of-data reply: RSET before reuse
        self.stale = False  # a reused session was found dead: the caller tries a new one
        self.recipients: dict[str, RemoteReply] = {}
        self.dsn = False  # the peer offered DSN and got the sender's requests

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
        return Outcome(
            self.tls_version, self.tls_cipher, failure, failure_reply, self.recipients, self.dsn
        )

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
        session = self.session or CachedSession(
            self.smtp, self.transport, self.tls_version, self.tls_cipher, self.born
        )
        session.transactions += 1
        return self.cache.give(self.key, session)

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
        try:
            return await open_socket(self.target.address, self.target.port, self.timeouts.connect)
        except TimeoutError:
            raise _SessionError(
                f"timeout ({self.timeouts.connect:g}s) connecting to {self.peer}"
            ) from None
        except OSError as exc:
            # asyncio's message repeats the address; the errno's text says it better.
            detail = os.strerror(exc.errno) if exc.errno else str(exc)
            raise _SessionError(f"cannot connect to {self.peer}: {detail}") from None

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
            handshake = stage == "STARTTLS" or ssl_error(exc) is not None
            if isinstance(exc, TimeoutError | SMTPTimeoutError):
                seconds = self.timeouts.command if timeout is None else timeout
                reason = f"timeout ({seconds:g}s) in {stage}"
            elif handshake:
                reason = tls_failure(self.target.tls, exc)
            else:
                reason = f"connection lost in {stage}"
            dropped = not isinstance(exc, TimeoutError | SMTPTimeoutError)
            raise _SessionError(reason, handshake=handshake, dropped=dropped) from None

    def _reply(self, code: int, text: str) -> RemoteReply:
        if not 200 <= code <= 599:
            self.quit_allowed = False
            raise _SessionError(f"malformed reply in {self.stage}")
        return RemoteReply(code, reply_text(text, MAX_REPLY_TEXT))

    def _check_tls(self) -> None:
        """Record the TLS parameters; apply the checks OpenSSL did not do."""
        with self._step("TLS handshake"):
            ssl_object = self.smtp.get_transport_info("ssl_object")
        if not isinstance(ssl_object, ssl.SSLObject):
            raise _SessionError(f"no TLS session after the handshake with {self.peer}")
        self.tls_version = ssl_object.version()
        cipher = ssl_object.cipher()
        self.tls_cipher = cipher[0] if cipher else None
        problem = certificate_problem(self.target, ssl_object.getpeercert(binary_form=True))
        if problem is not None:
            raise _SessionError(f"TLS policy ({self.target.tls.reason}): {problem}")

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
        if job.requiretls:
            problem = self._requiretls_problem()
            if problem is not None:
                self._refuse_all(550, f"5.7.30 (local) {problem}")
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
        if job.requiretls:
            options.append(b"REQUIRETLS")
        self.dsn = smtp.supports_extension("dsn")
        if self.dsn:
            options += job.dsn.mail_options()
        encoding = "utf-8" if job.smtputf8 else "ascii"

        self.in_transaction = True
        commands = [b" ".join((b"MAIL", smtp_path(b"FROM:", job.sender, encoding), *options))]
        for recipient in job.recipients:
            rcpt_options = job.dsn.rcpt_options(recipient) if self.dsn else []
            path = smtp_path(b"TO:", recipient, encoding)
            commands.append(b" ".join((b"RCPT", path, *rcpt_options)))
        if smtp.supports_extension("pipelining"):
            replies = await self._pipelined([*commands, b"DATA"])
        else:
            replies = [await self._command("MAIL FROM", commands[0])]
        reply = replies[0]
        self.mail_answered = reply.code != 421  # a 421 here says the session is gone, not why
        if reply.code // 100 != 2:
            raise _SessionError(reply=reply)
        accepted: list[str] = []
        for index, recipient in enumerate(job.recipients, 1):
            if index < len(replies):
                reply = replies[index]
            else:
                reply = await self._command("RCPT TO", commands[index])
            if reply.code == 421:
                raise _SessionError(reply=reply)
            if reply.code // 100 == 2:
                accepted.append(recipient)
            else:
                self.recipients[recipient] = reply
        if not accepted:
            return
        reply = (
            replies[-1] if len(replies) > len(commands) else await self._command("DATA", b"DATA")
        )
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

    def _requiretls_problem(self) -> str | None:
        """Why this session may not carry a REQUIRETLS message (RFC 8689 4.2.1), if it may not."""
        host = self.target.host
        if self.tls_version is None:
            return f"no TLS with {host}, and the message requires TLS (REQUIRETLS)"
        if self.target.tls.verify == "none":
            return f"the certificate of {host} was not verified, and the message requires it"
        if not self.smtp.supports_extension("requiretls"):
            return f"{host} does not offer REQUIRETLS, which this message requires"
        return None

    async def _pipelined(self, commands: list[bytes]) -> list[RemoteReply]:
        """MAIL, every RCPT and DATA in one write (RFC 2920); their replies, in order.

        A 421 ends the reading (the server is closing) and stands for the replies after it.
        """
        stages = ["MAIL FROM"] + ["RCPT TO"] * (len(commands) - 2) + ["DATA"]
        replies: list[RemoteReply] = []
        with self._step("MAIL FROM"):
            exchange = Exchange(self.smtp.transport, commands)
        try:
            for stage in stages:
                with self._step(stage):
                    replies.append(self._reply(*await exchange.reply(self.timeouts.command)))
                if replies[-1].code == 421:
                    return replies + replies[-1:] * (len(stages) - len(replies))
            if replies[-1].code == 354 and all(r.code // 100 != 2 for r in replies[1:-1]):
                with self._step("message data", self.timeouts.data):
                    await exchange.end_empty_data(self.timeouts.data)  # RFC 2920 section 3.1
        finally:
            exchange.finish()
        return replies

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
