"""Queueing accepted mail: sending limits, DKIM signature and the durable commit, in groups.

`Submission` hands every accepted message here once its headers are fixed up. The work runs in
the queue's thread pool for every message that arrived while the previous group was being
stored (`handoff.GroupHandoff`), so under load one thread handoff and one durable commit
(`QueueStore.put_many`) serve many messages; the 250 is sent only after that commit returns.
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass, replace

from sendgate.dkim.signer import DkimSigner
from sendgate.handoff import GroupHandoff
from sendgate.policy.quota import SendingLimits, Verdict
from sendgate.store.envelope import Envelope
from sendgate.store.queue import QueueStore
from sendgate.store.users import UserRecord


@dataclass(frozen=True, slots=True)
class StoreJob:
    """One accepted message on its way to the queue."""

    envelope: Envelope
    message: bytes
    signing_domain: str | None
    user: UserRecord | None


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
        self._handoff = GroupHandoff(executor, self.store_many)

    async def store(self, job: StoreJob) -> Stored:
        """Queue one message with the next group; what happened, or the exception raised."""
        return await self._handoff.run(job)

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
        envelope, message, user = job.envelope, job.message, job.user
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
            signature = self.signer.sign(message, job.signing_domain)
            if signature:
                message = signature + message
                envelope = replace(envelope, size=len(message))
        return envelope, message, hold
