"""Queueing accepted mail: sending limits, DKIM signature and the durable commit, in groups.

`Submission` hands every accepted message here once its headers are fixed up. The work runs in
the queue's thread pool for every message that arrived while the previous group was being
stored (`handoff.GroupHandoff`), so under load one thread handoff and one durable commit
(`QueueStore.put_many`) serve many messages; the 250 is sent only after that commit returns.

A large message's body was streamed into the queue as it arrived (`SpooledBody`, hashed for
DKIM on the way): it is queued on its own (`QueueStore.put_streamed`), not in a group, so that
its long sync does not hold back the small messages' 250s.
"""

from __future__ import annotations

import asyncio
import errno
from concurrent.futures import Executor
from dataclasses import dataclass, replace

from sendgate.dkim.bodyhash import RelaxedBodyHash
from sendgate.dkim.signer import DkimSigner
from sendgate.errors import SpoolError, SpoolFullError
from sendgate.handoff import GroupHandoff
from sendgate.policy.quota import SendingLimits, Verdict
from sendgate.store.envelope import Envelope
from sendgate.store.queue import BodyFile, QueueStore
from sendgate.store.users import UserRecord


class SpooledBody:
    """A Session's `BodySink` for one large message: the body into the queue, DKIM-hashed.

    The Session expects OSError from a failed write; the queue's SpoolError becomes one here
    (ENOSPC when storage is full, EIO otherwise), with the queue's message.
    """

    __slots__ = ("file", "handed_over", "hash")

    def __init__(self, file: BodyFile, *, hashing: bool) -> None:
        self.file = file
        self.hash = RelaxedBodyHash() if hashing else None
        self.handed_over = False  # to `Queueing.store`: from then on its thread owns the file

    @property
    def size(self) -> int:
        return self.file.size

    def write(self, data: bytes) -> None:
        try:
            self.file.write(data)
        except SpoolError as exc:
            raise _os_error(exc) from exc
        if self.hash is not None:
            self.hash.update(data)

    def discard(self) -> None:
        """Let go of the body, unless `Queueing.store` has it (its thread discards it then)."""
        if not self.handed_over:
            self.file.discard()


def _retrieve(future: asyncio.Future[Stored]) -> None:
    """Mark a shielded store's outcome as seen: its caller may have gone (cancelled)."""
    if not future.cancelled():
        future.exception()


def _os_error(exc: SpoolError) -> OSError:
    code = errno.ENOSPC if isinstance(exc, SpoolFullError) else errno.EIO
    return OSError(code, str(exc))


@dataclass(frozen=True, slots=True)
class StoreJob:
    """One accepted message on its way to the queue.

    With `body`, `message` is the header section only and the body is in the queue already.
    """

    envelope: Envelope
    message: bytes
    signing_domain: str | None
    user: UserRecord | None
    body: SpooledBody | None = None


@dataclass(frozen=True, slots=True)
class Stored:
    """What `Submission.store` did with one message."""

    size: int
    """The stored size (with the DKIM signature); 0 when not queued."""
    hold: str | None = None
    """Why the queued message is held, or None."""
    refused: Verdict | None = None
    """Why the sending limits kept the message out (then it is not queued), or None."""


class Queueing:
    """Stores accepted messages: `store` from the event loop, `store_many` in the thread."""

    def __init__(
        self,
        queue: QueueStore,
        executor: Executor,
        *,
        signer: DkimSigner | None = None,
        limits: SendingLimits | None = None,
    ) -> None:
        self.queue = queue
        self.signer = signer
        self.limits = limits
        self._executor = executor
        self._handoff = GroupHandoff(executor, self.store_many)

    def open_body(self) -> SpooledBody:
        """A body to stream a large message into (called on the event loop: it is brief).

        OSError (ENOSPC when storage is full) when the queue cannot start one.
        """
        try:
            file = self.queue.new_body()
        except SpoolError as exc:
            raise _os_error(exc) from exc
        return SpooledBody(file, hashing=self.signer is not None and bool(self.signer.domains()))

    async def store(self, job: StoreJob) -> Stored:
        """Queue one message with the next group; what happened, or the exception raised.

        A streamed message (`job.body`) is stored on its own, in the thread pool.
        """
        if job.body is not None:
            job.body.handed_over = True
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(self._executor, self.store_streamed, job)
            # A cancelled caller (its client gone) must not touch the file the thread is
            # writing: the thread finishes the store (or discards) on its own.
            future.add_done_callback(_retrieve)
            return await asyncio.shield(future)
        return await self._handoff.run(job)

    def store_streamed(self, job: StoreJob) -> Stored:
        """`store_many` for one message whose body is in the queue already (blocks)."""
        body = job.body
        assert body is not None
        try:
            prepared = self._prepare(job)
            if isinstance(prepared, Stored):
                return prepared
            envelope, head, hold = prepared
            self.queue.put_streamed(envelope, head, body.file, hold=hold)
            return Stored(envelope.size, hold)
        finally:
            body.file.discard()  # a no-op once queued

    def store_many(self, jobs: list[StoreJob]) -> list[Stored | BaseException]:
        """Take each user's sending limits, sign (when a key exists for the domain) and queue.

        Runs in the queue's thread pool, for every message that arrived while the previous group
        was stored (`handoff.GroupHandoff`): the limits, RSA signing and one durable commit for
        the group (`QueueStore.put_many`) share one handoff. A message over a limit, or from a
        flagged account when such mail is refused, is not queued (and not signed); a flagged
        account's mail is otherwise queued held. A failed commit fails every message in it.
        """
        outcomes: list[Stored | BaseException] = []
        group: list[tuple[int, Envelope, bytes]] = []
        for job in jobs:
            try:
                prepared = self._prepare(job)
                if isinstance(prepared, Stored):
                    outcomes.append(prepared)
                    continue
                envelope, message, hold = prepared
                if hold is not None:
                    self.queue.put(envelope, message, hold=hold)
                    outcomes.append(Stored(len(message), hold))
                    continue
            except Exception as exc:
                outcomes.append(exc)
                continue
            group.append((len(outcomes), envelope, message))
            outcomes.append(Stored(len(message)))
        if group:
            try:
                self.queue.put_many([(envelope, message) for _, envelope, message in group])
            except Exception as exc:
                for index, _, _ in group:
                    outcomes[index] = exc
        return outcomes

    def _prepare(self, job: StoreJob) -> Stored | tuple[Envelope, bytes, str | None]:
        """Limits and signature of one message: Stored when it is kept out, else what to put."""
        envelope, message, user, body = job.envelope, job.message, job.user, job.body
        hold = None
        if user is not None and self.limits is not None:
            verdict = self.limits.check(user, envelope.recipients)
            if verdict.limit is not None:
                return Stored(0, refused=verdict)
            if verdict.flag is not None:
                if not self.limits.hold_flagged:
                    return Stored(0, refused=verdict)
                hold = f"flagged: {verdict.flag.reason}"
        if self.signer is not None and job.signing_domain is not None:
            if body is None:
                signature = self.signer.sign(message, job.signing_domain)
            elif body.hash is not None:
                signature = self.signer.sign_head(message, body.hash.digest(), job.signing_domain)
            else:
                # The body began before the signer had any key (the first keys came with a
                # SIGHUP meanwhile): it was not hashed, so this one message goes unsigned.
                signature = b""
            if signature:
                message = signature + message
                envelope = replace(envelope, size=envelope.size + len(signature))
        return envelope, message, hold
