"""The MSA's rules for one connection: how each Session decision is answered.

This is the file to read to know what happens to mail. AUTH goes to the authenticator (argon2
in a thread pool, verified-login cache); MAIL FROM must be an address the user owns; at the end
of the message the header From: (and Sender:) must be owned too; then the message gets its
Received/Message-ID/Date fix-ups, the account's sending limits are taken (a flagged account's
mail is held or refused instead), and it is written durably to the queue. Only after
`QueueStore.put` returns does the client get `250 2.0.0 queued as <id>`.
"""

from __future__ import annotations

import asyncio
import pwd
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from dataclasses import replace

from sendgate.counters import Counters
from sendgate.dkim.signer import DkimError, DkimSigner
from sendgate.errors import SpoolError, SpoolFullError, StoreError
from sendgate.log import EventLog, Value
from sendgate.message import HeaderError, fix_up, now_utc, received_header, summarize
from sendgate.policy.auth import Authenticator
from sendgate.policy.guard import LoginGuard
from sendgate.policy.login import LoginRequest, LoginResult, Logins
from sendgate.policy.networks import ClientNetworks
from sendgate.policy.quota import SendingLimits, Verdict
from sendgate.policy.refused import RecentlyRefused
from sendgate.policy.sender import may_send_as
from sendgate.queueing import Queueing, SpooledBody, StoreJob
from sendgate.server.admission import Admission, Local, Refusal
from sendgate.smtp import replies
from sendgate.smtp.address import Address
from sendgate.smtp.events import AuthAttempt, Event, MailFrom, MessageReceived, RcptTo, StartTls
from sendgate.smtp.replies import Reply
from sendgate.smtp.session import Session, SessionSettings
from sendgate.store.envelope import Envelope
from sendgate.store.queue import QueueStore
from sendgate.store.users import UserRecord, UserStore
from sendgate.text import iso_utc

ANONYMOUS = "anonymous"


class Submission:
    """Server-wide MSA rules and resources; `connection()` makes the per-connection handler."""

    def __init__(
        self,
        *,
        hostname: str,
        authenticator: Authenticator,
        queue: QueueStore,
        executor: Executor,
        log: EventLog,
        clock: Callable[[], float],
        received_client_ip: bool = False,
        signer: DkimSigner | None = None,
        logins: Logins | None = None,
        limits: SendingLimits | None = None,
        counters: Counters | None = None,
        users: UserStore | None = None,
        local_accounts: Mapping[str, str] | None = None,
        local_settings: SessionSettings | None = None,
    ) -> None:
        """`users`, `local_accounts` (local user -> account) and `local_settings` (TLS and
        AUTH off) serve the sendmail socket; without them its clients are refused."""
        self.hostname = hostname
        self.authenticator = authenticator
        self.queue = queue
        self.executor = executor
        self.log = log
        self.clock = clock
        self.received_client_ip = received_client_ip
        self.logins = logins
        self.counters = counters if counters is not None else Counters()
        self._refused = RecentlyRefused(clock)
        self.queueing = Queueing(queue, executor, signer=signer, limits=limits)
        self._users = users
        self._local_accounts = dict(local_accounts or {})
        self._local_settings = local_settings

    def connection(
        self, client_ip: str, conn_id: str, client: ClientNetworks | None = None
    ) -> SubmissionConnection:
        """The handler of one admitted connection (`client`: its networks, for login limits)."""
        return SubmissionConnection(self, client_ip, conn_id, client)

    def admit_local(self, uid: int, conn_id: str) -> Awaitable[Admission]:
        """The sendmail socket's handler factory: the peer's user id says which account it is.

        Unmapped users, and accounts that do not exist, are refused at the greeting (554).
        """
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self.executor, self._local_admission, uid, conn_id)

    def _local_admission(self, uid: int, conn_id: str) -> Admission:
        try:
            name = pwd.getpwuid(uid).pw_name  # NSS may ask a network service: in the thread
        except KeyError:
            name = str(uid)
        account = self._local_accounts.get(name)
        if account is None or self._users is None or self._local_settings is None:
            return Refusal(replies.LOCAL_NOT_ALLOWED, "local_user", name)
        record = self._users.get_user(account)
        if record is None:
            return Refusal(replies.LOCAL_NOT_ALLOWED, "local_account_missing", account)
        handler = SubmissionConnection(self, "local", conn_id, None)
        handler.user = record
        self.log.event("local_user", conn=conn_id, unix_user=name, user=account)
        # The greeting names the account: `sendgate sendmail` sends as it when not told.
        greeting = f"ESMTP local submission as {account}"
        return Local(handler, replace(self._local_settings, greeting=greeting))

    def admit(self, client_ip: str, conn_id: str) -> Admission | Awaitable[Admission]:
        """The I/O shell's handler factory: a banned network is refused here, before any TLS."""
        if self.logins is None:
            return self.connection(client_ip, conn_id)
        ban = self._refused.get(client_ip)
        if ban is not None:  # refused moments ago: again, without a store read
            return Refusal(replies.BANNED, "banned", ban.key)
        try:
            client = ClientNetworks.of(client_ip)
        except ValueError:  # not an IP peer (a test's socketpair): nothing to count
            return self.connection(client_ip, conn_id)
        guard = self.logins.guard
        if guard.admits_at_once(client):
            return self.connection(client_ip, conn_id, client)
        return self._admit(guard, client, client_ip, conn_id)

    async def _admit(
        self, guard: LoginGuard, client: ClientNetworks, client_ip: str, conn_id: str
    ) -> Admission:
        loop = asyncio.get_running_loop()
        verdict = await loop.run_in_executor(self.executor, guard.admit, client)
        if verdict.refuse and verdict.ban is not None:
            self._refused.add(client_ip, verdict.ban)
            return Refusal(replies.BANNED, "banned", verdict.ban.key)
        return self.connection(client_ip, conn_id, client)


class SubmissionConnection:
    """Answers the decisions of one SMTP session."""

    def __init__(
        self,
        server: Submission,
        client_ip: str,
        conn_id: str,
        client: ClientNetworks | None,
    ) -> None:
        self._server = server
        self._client = client
        self._log = server.log.bind(conn=conn_id, client=client_ip)
        self.client_ip = client_ip
        self.conn_id = conn_id
        self.user: UserRecord | None = None

    def handle(self, event: Event, session: Session) -> Reply | Awaitable[Reply]:
        if isinstance(event, AuthAttempt):
            return self._authenticate(event, session)
        if isinstance(event, MailFrom):
            return self._mail_from(event)
        if isinstance(event, RcptTo):
            return replies.RECIPIENT_OK
        if isinstance(event, MessageReceived):
            return self._accept(event, session)
        assert isinstance(event, StartTls)  # the I/O shell answers STARTTLS itself
        return replies.TLS_NOT_AVAILABLE

    def open_body(self) -> SpooledBody:
        """Where the Session streams a large message's body (`sendgate.smtp.spill`)."""
        return self._server.queueing.open_body()

    def _reject(self, reason: str, reply: Reply, **fields: Value) -> Reply:
        # Not the bound log: this line has always carried its details before conn= and client=.
        fields.update(
            conn=self.conn_id,
            client=self.client_ip,
            user=self.user.username if self.user else None,
            reason=reason,
            code=f"{reply.code} {reply.enhanced}",
        )
        self._server.log.event("rejected", **fields)
        return reply

    def _authenticate(self, event: AuthAttempt, session: Session) -> Reply | Awaitable[Reply]:
        """The everyday login is answered here, at once; anything else costs a thread hop."""
        username = event.username.lower()
        if event.authzid and event.authzid.lower() != username:
            # Acting as another identity is not offered; answer as for a wrong password.
            self._log.event("auth_fail", "warning", user=username, mechanism=event.mechanism)
            return replies.AUTH_FAILED
        logins = self._server.logins
        if logins is None or self._client is None:
            return self._verify_only(event, username)
        request = LoginRequest(
            client=self._client,
            client_ip=self.client_ip,
            username=username,
            password=event.password,
            client_name=session.client_name,
            tls_version=session.tls.version if session.tls else None,
        )
        try:
            result = logins.attempt_at_once(request)
        except Exception as exc:
            return self._auth_error(username, exc)
        if result is None:
            return self._attempt(event, request, logins)
        return self._answer(event, result)  # decided at once: never a wait

    def _auth_error(self, username: str, exc: Exception) -> Reply:
        """The login could not be decided (a store or a thread failed): ask for a retry."""
        self._log.event("auth_error", "error", user=username, error=type(exc).__name__)
        return replies.AUTH_TEMPORARY_FAILURE

    async def _attempt(self, event: AuthAttempt, request: LoginRequest, logins: Logins) -> Reply:
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(
                self._server.authenticator.executor, logins.attempt, request
            )
        except Exception as exc:
            return self._auth_error(request.username, exc)
        if result.wait > 0:
            await asyncio.sleep(result.wait)  # a timer: the worker serves others meanwhile
        return self._answer(event, result)

    def _answer(self, event: AuthAttempt, result: LoginResult) -> Reply:
        log = self._log
        username = event.username.lower()
        failure = result.failure
        if result.refused is not None:
            reason, ban = result.refused
            log.event("auth_refused", "warning", user=username, reason=reason, key=ban.key)
        elif result.user is None:
            log.event(
                "auth_fail",
                "warning",
                user=username,
                mechanism=event.mechanism,
                failures=failure.failures if failure else None,
                delay=failure.delay if failure else None,
                repeated=failure.repeated if failure else None,
            )
        for ban in failure.bans if failure else ():
            log.event(
                "ban",
                "warning",
                key=ban.key,
                until=iso_utc(ban.until),
                offences=ban.offences,
                reason=ban.reason,
            )
        if result.refused is not None:
            return replies.AUTH_REFUSED
        if result.user is None:
            return replies.AUTH_FAILED
        user = result.user
        self.user = user
        note = result.note
        log.event(
            "auth_ok",
            user=user.username,
            mechanism=event.mechanism,
            cached=result.cached,
            app_password=result.app_password,
            new_network=note.new if note else False,
        )
        if result.flagged is not None:
            log.event("flagged", "warning", user=user.username, reason=result.flagged.reason)
        return replies.AUTH_OK

    async def _verify_only(self, event: AuthAttempt, username: str) -> Reply:
        """Without login limits (tests of the session alone): verify and answer."""
        try:
            result = await self._server.authenticator.verify(username, event.password)
        except Exception as exc:
            return self._auth_error(username, exc)
        if result.user is None:
            self._log.event("auth_fail", "warning", user=username, mechanism=event.mechanism)
            return replies.AUTH_FAILED
        self.user = result.user
        self._log.event(
            "auth_ok", user=result.user.username, mechanism=event.mechanism, cached=result.cached
        )
        return replies.AUTH_OK

    def _owns(self, address: Address) -> bool:
        # Without a user (only possible with the "no_auth" override) there is nobody to check.
        return self.user is None or may_send_as(self.user.addresses, str(address))

    def _mail_from(self, event: MailFrom) -> Reply:
        if event.sender is None:
            if self.user is None:
                return replies.SENDER_OK
            return self._reject("null_sender", replies.SENDER_NOT_OWNED)
        if not self._owns(event.sender):
            return self._reject(
                "sender_not_owned", replies.SENDER_NOT_OWNED, sender=str(event.sender)
            )
        return replies.SENDER_OK

    async def _accept(self, event: MessageReceived, session: Session) -> Reply:
        body = event.spilled
        if body is not None and not isinstance(body, SpooledBody):
            body.discard()  # not one of ours: cannot be queued
            return replies.LOCAL_ERROR
        try:
            return await self._accept_content(event, session, body, time.monotonic())
        finally:
            if body is not None:
                body.discard()  # a no-op once queued; else nothing of the message stays

    async def _accept_content(
        self, event: MessageReceived, session: Session, body: SpooledBody | None, began: float
    ) -> Reply:
        server = self._server
        try:
            summary = summarize(event.content, smtputf8=event.smtputf8)
        except HeaderError as exc:
            return self._reject("bad_header", replies.BAD_HEADER, detail=str(exc))
        if not summary.from_:
            return self._reject("missing_from", replies.MISSING_FROM)
        for address in summary.from_:
            if not self._owns(address):
                return self._reject(
                    "from_not_owned", replies.HEADER_FROM_NOT_OWNED, header_from=str(address)
                )
        for address in summary.sender:
            if not self._owns(address):
                return self._reject(
                    "sender_header_not_owned",
                    replies.HEADER_SENDER_NOT_OWNED,
                    header_sender=str(address),
                )
        queue_id = server.queue.new_id()
        unix = server.clock()
        now = now_utc(unix)
        received = received_header(
            helo=session.client_name,
            client_ip=self.client_ip if server.received_client_ip else None,
            hostname=server.hostname,
            queue_id=queue_id,
            tls=session.tls,
            authenticated=self.user is not None,
            smtputf8=event.smtputf8,
            now=now,
        )
        message = fix_up(
            event.content, summary, received, hostname=server.hostname, queue_id=queue_id, now=now
        )
        try:
            envelope = Envelope(
                queue_id=queue_id,
                sender=str(event.sender) if event.sender else "",
                recipients=tuple(str(r) for r in event.recipients),
                # Without a login (only with the "no_auth" override) there is no account name;
                # logins are mailboxes, so a name without "@" cannot be mistaken for one.
                user=self.user.username if self.user else ANONYMOUS,
                received_at=unix,
                size=len(message) + (body.size if body is not None else 0),
                smtputf8=event.smtputf8,
                body=event.body,
                ret=event.ret,
                envid=event.envid,
                requiretls=event.requiretls,
                rcpt_params=event.rcpt_params,
            )
            stored = await server.queueing.store(
                StoreJob(envelope, message, summary.from_[0].domain, self.user, body)
            )
        except SpoolFullError as exc:
            self._server.log.event("spool_error", "error", conn=self.conn_id, error=str(exc))
            return replies.STORAGE_FULL
        except (SpoolError, OSError) as exc:
            self._server.log.event("spool_error", "error", conn=self.conn_id, error=str(exc))
            return replies.LOCAL_ERROR
        except StoreError as exc:
            # The limits or the flag could not be read: ask for a retry rather than let
            # unlimited mail through.
            self._log.event("limits_error", "error", user=envelope.user, error=str(exc))
            return replies.LOCAL_ERROR
        except DkimError as exc:
            # The same message would fail the same way again: refuse it, do not ask for a retry.
            return self._reject("dkim_error", replies.BAD_HEADER, detail=str(exc))
        if stored.refused is not None:
            return self._refused(envelope, stored.refused)
        if stored.hold is not None:
            server.counters.add("held", reason="flagged")
        self._log.event(
            "accepted",
            user=envelope.user,
            queue_id=queue_id,
            size=stored.size,
            recipients=len(envelope.recipients),
            **({"held": stored.hold} if stored.hold is not None else {}),
            seconds=time.monotonic() - began,
        )
        return replies.QUEUED.with_text(f"queued as {queue_id}")

    def _refused(self, envelope: Envelope, verdict: Verdict) -> Reply:
        """The reply (and log line, and count) for a message the sending limits kept out."""
        counters = self._server.counters
        if verdict.flagged_now:
            counters.add("flagged", reason="sending_limit")
        if verdict.limit is None:
            counters.add("refused", reason="flagged")
            flag = verdict.flag.reason if verdict.flag is not None else ""
            return self._reject("flagged", replies.ACCOUNT_SUSPENDED, flag=flag)
        counters.add("sending_limit", limit=verdict.limit)
        self._log.event(
            "sending_limit",
            "warning",
            user=envelope.user,
            limit=verdict.limit,
            recipients=len(envelope.recipients),
            retry_after=verdict.retry_after,
            queue_id=envelope.queue_id,
        )
        return replies.sending_limit(verdict.limit)
