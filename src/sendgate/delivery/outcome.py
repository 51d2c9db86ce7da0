"""What delivery results mean: replies to recipient states, states to retries, expiry and notices.

Pure: no I/O and no clock of its own; the scheduler passes the time, the settings and the jitter
in, and does what the answers say (store the state, queue a DSN, log). So every decision about
one message can be tested like the SMTP Session: values in, values out.

- `judge_transaction`: one SMTP transaction's `Outcome` -> the recipients it settled, the ones
  another host may still take, and the log words for it.
- `conclude`: the state after an attempt -> expiry (4.4.7), the one delay notice, the recipients
  newly failed; `unreported` undoes the reporting when the notice could not be queued.
- `schedule`: the next attempt, with exponential backoff and jitter, never past expiry.
- `notices`: the per-recipient blocks of the DSN to send, as each recipient's NOTIFY asked
  (RFC 3461: by default failures and delays; "relayed" only on request).

Security: remote replies are untrusted; they are made one-line and bounded (`one_line`) before
they enter a state, and so before any log line, stored state or DSN.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from sendgate.config.schema import DeliveryConfig
from sendgate.delivery.bounce import RecipientNotice
from sendgate.delivery.target import Outcome, RemoteReply
from sendgate.store.delivery_state import (
    DELIVERED,
    FAILED,
    PENDING,
    DeliveryState,
    RecipientState,
)
from sendgate.store.envelope import Envelope
from sendgate.text import one_line

_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")
# Log words for recipient states: stable, scripts parse them.
RESULT = {DELIVERED: "sent", PENDING: "deferred", FAILED: "bounced"}
LOCAL_ERROR = ("local error; will retry", "4.3.0")


def settle(
    row: RecipientState, status: str, now: float, host: str | None, reply: str, enhanced: str
) -> RecipientState:
    """`row` after one more attempt that ended in `status` with `reply` from `host`."""
    return replace(
        row,
        status=status,
        attempts=row.attempts + 1,
        last_attempt=now,
        host=host,
        reply=one_line(reply),
        enhanced=enhanced,
    )


def is_permanent(reply: RemoteReply | None) -> bool:
    return reply is not None and reply.code >= 500


def enhanced(reply: RemoteReply | None) -> str:
    """The enhanced status code of a reply (RFC 3463), or one derived from its basic code."""
    if reply is None:
        return "4.4.1"  # no answer from the host
    klass = str(reply.code)[0]
    if klass not in "245":
        # A 3xx where a final reply was due: a protocol error, retried as a temporary failure
        # (RFC 3463 has no class 3, and a DSN's Status must be 2, 4 or 5).
        return "4.5.0"
    found = _ENHANCED.match(reply.text)
    if found and found[1] == klass:
        return found.group(0)
    return f"{klass}.0.0"


@dataclass(frozen=True, slots=True)
class HostVerdict:
    """What one transaction with one host settled."""

    rows: dict[int, RecipientState]
    """The new state of every recipient the transaction was for (by envelope index)."""
    retry_elsewhere: list[int]
    """Recipients deferred by a failed session: the next host of the domain may take them."""
    try_next_host: bool
    """Whether the next host of the domain should be tried now."""
    result: str
    """The log word: "sent", "deferred", "bounced", or counts like "bounced:1,sent:2"."""
    reply: str
    """The reply to log: the one that failed the session, else the first recipient's."""


def judge_transaction(
    recipients: Sequence[str],
    open_: Sequence[int],
    rows: dict[int, RecipientState],
    host: str,
    outcome: Outcome,
    now: float,
) -> HostVerdict:
    """Settle the recipients `open_` (indexes into `recipients`) after `outcome` from `host`."""
    settled: dict[int, RecipientState] = {}
    if outcome.failure_reply is not None or outcome.failure is not None:
        reply = outcome.failure_reply
        text = str(reply) if reply is not None else f"{outcome.failure}"
        status = FAILED if is_permanent(reply) else PENDING
        remaining = []
        for index in open_:
            got = outcome.recipients.get(recipients[index])
            if got is not None and got.code >= 500:
                # Refused at RCPT before the session failed: that answer is final.
                settled[index] = settle(rows[index], FAILED, now, host, str(got), enhanced(got))
                continue
            settled[index] = settle(rows[index], status, now, host, text, enhanced(reply))
            if status == PENDING:
                remaining.append(index)
        return HostVerdict(
            rows=settled,
            retry_elsewhere=remaining,
            try_next_host=bool(remaining) and not outcome.recipients and not is_permanent(reply),
            result=RESULT[status],
            reply=one_line(text),
        )
    summary: dict[str, int] = {}
    for index in open_:
        got = outcome.recipients.get(recipients[index])
        if got is None:  # the client answers every recipient when the session did not fail
            settled[index] = settle(
                rows[index], PENDING, now, host, "no reply for this recipient", "4.4.2"
            )
            continue
        status = DELIVERED if got.code < 300 else FAILED if got.code >= 500 else PENDING
        summary[status] = summary.get(status, 0) + 1
        row = settle(rows[index], status, now, host, str(got), enhanced(got))
        # A host without DSN reports nothing further: the sender may want to hear that.
        settled[index] = replace(row, relayed=status == DELIVERED and not outcome.dsn)
    first = next(iter(outcome.recipients.values()), None)
    named = {RESULT[status]: count for status, count in summary.items()}
    if len(named) == 1:
        result = next(iter(named))
    else:
        result = ",".join(f"{name}:{count}" for name, count in sorted(named.items()))
    # The host answered each recipient: another host is not tried this time.
    return HostVerdict(settled, [], False, result, one_line(str(first or "")))


def unroutable(
    indexes: Sequence[int],
    rows: dict[int, RecipientState],
    reason: str,
    status_code: str,
    now: float,
    *,
    permanent: bool,
) -> dict[int, RecipientState]:
    """The recipients' new states when no host could be found for their domain."""
    status = FAILED if permanent else PENDING
    return {i: settle(rows[i], status, now, None, reason, status_code) for i in indexes}


@dataclass(frozen=True, slots=True)
class Verdict:
    """What an attempt means for the whole message."""

    state: DeliveryState
    """The state to keep: one more attempt counted, expiry and the delay notice applied."""
    failed: list[int]
    """Recipients that failed in this attempt (to report to the sender)."""
    delayed: list[int]
    """Recipients to tell the sender about as delayed (once per message)."""
    relayed: list[int]
    """Recipients delivered in this attempt to a host that sends no DSN of its own."""
    expired: bool
    """The message ran out of queue lifetime; its pending recipients failed with 4.4.7."""


def conclude(
    before: DeliveryState,
    after: DeliveryState,
    envelope: Envelope,
    now: float,
    settings: DeliveryConfig,
) -> Verdict:
    """Judge the message after an attempt moved it from `before` to `after`."""
    already = {i for i, row in enumerate(before.recipients) if row.status == FAILED}
    state = replace(after, attempts=after.attempts + 1)
    expired = False
    delayed: list[int] = []
    if state.pending() and now >= retry_until(envelope, settings):
        expired = True
        state = state.with_results(
            {
                i: replace(row, status=FAILED, enhanced="4.4.7")
                for i, row in enumerate(state.recipients)
                if row.status == PENDING
            }
        )
    elif (
        state.pending()
        and settings.delay_warning
        and not state.delay_notified
        and now >= envelope.received_at + settings.delay_warning
    ):
        delayed = state.pending()
        state = replace(state, delay_notified=True)
    failed = [
        i for i, row in enumerate(state.recipients) if row.status == FAILED and i not in already
    ]
    relayed = [
        i
        for i, row in enumerate(state.recipients)
        if row.relayed and row.status == DELIVERED and before.recipients[i].status != DELIVERED
    ]
    return Verdict(state, failed, delayed, relayed, expired)


def unreported(
    state: DeliveryState, failed: Sequence[int], delayed: Sequence[int]
) -> DeliveryState:
    """The state when the sender could not be told: failed recipients are tried (and, failing
    again, reported) at the next attempt, and the delay notice is still owed."""
    state = state.with_results({i: replace(state.recipients[i], status=PENDING) for i in failed})
    return replace(state, delay_notified=state.delay_notified and not delayed)


def backoff(attempts: int, settings: DeliveryConfig, jitter: float) -> float:
    """Seconds before the next attempt: retry_first doubling per attempt up to retry_max, times
    0.9 to 1.1 for `jitter` in [0, 1) (so that a burst of failures does not retry in step)."""
    base = min(settings.retry_first * 2.0 ** min(attempts - 1, 30), settings.retry_max)
    return base * (0.9 + 0.2 * jitter)


def schedule(
    state: DeliveryState, envelope: Envelope, now: float, settings: DeliveryConfig, jitter: float
) -> DeliveryState:
    """`state` with its next attempt set; never later than the message's expiry."""
    expires = retry_until(envelope, settings)
    wait = backoff(state.attempts, settings, jitter)
    return replace(state, next_attempt=min(now + wait, max(expires, now)))


def retry_until(envelope: Envelope, settings: DeliveryConfig) -> float:
    """When delivery stops being tried: the message's expiry (a delay notice's
    Will-Retry-Until)."""
    return envelope.received_at + settings.queue_lifetime


def notices(
    state: DeliveryState,
    envelope: Envelope,
    failed: Sequence[int],
    delayed: Sequence[int],
    relayed: Sequence[int] = (),
) -> list[RecipientNotice]:
    """The DSN's per-recipient blocks, in envelope order, for the recipients whose NOTIFY asks
    for them: failures and delays unless NOTIFY says otherwise, relays only on request."""
    out = []
    for i, row in enumerate(state.recipients):
        notify = envelope.notify(i)
        if i in failed:
            action, wanted, default = "failed", "FAILURE", "5.0.0"
        elif i in delayed:
            action, wanted, default = "delayed", "DELAY", "4.0.0"
        elif i in relayed:
            action, wanted, default = "relayed", "SUCCESS", "2.0.0"
        else:
            continue
        # Without NOTIFY: failures and delays are reported, successes are not.
        if wanted not in (notify or ("FAILURE", "DELAY")):
            continue
        out.append(
            RecipientNotice(
                recipient=row.address,
                action=action,
                status=row.enhanced or default,
                remote_mta=row.host,
                diagnostic=row.reply,
                last_attempt=row.last_attempt,
                original_recipient=envelope.orcpt(i),
            )
        )
    return out
