"""One message's recipients in one domain, carried to the hosts the planner names, in turn.

The courier asks the planner for the domain's targets, runs one transaction per target with the
outbound client (at most `concurrency` at once across all domains, reusing idle sessions from
its connection cache), lets `outcome.judge_transaction` settle the recipients, logs one
`event=delivery` line per transaction, and moves to the next host only while the outcome says
so. It never raises for a remote or local failure: whatever happens, every recipient it was
given comes back settled, deferred at worst.

Security: remote replies are untrusted; `outcome` makes them one-line and bounded before they
are logged.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence

from sendgate.delivery.client import deliver
from sendgate.delivery.connections import ConnectionCache
from sendgate.delivery.outcome import (
    LOCAL_ERROR,
    RESULT,
    judge_transaction,
    settle,
    unroutable,
)
from sendgate.delivery.payload import NO_DSN_REQUEST, DsnRequest
from sendgate.delivery.plan import Planner
from sendgate.delivery.route import RouteError
from sendgate.delivery.target import Outcome, Target, Timeouts
from sendgate.log import EventLog
from sendgate.smtp.dsn import RcptParameters
from sendgate.store.delivery_state import FAILED, PENDING, RecipientState
from sendgate.store.envelope import Envelope
from sendgate.text import one_line


class Courier:
    """Carries recipients of one domain to its hosts (see the module docstring)."""

    def __init__(
        self,
        *,
        planner: Planner,
        helo: str,
        ssl_context: ssl.SSLContext,
        timeouts: Timeouts,
        concurrency: int,
        log: EventLog,
    ) -> None:
        self._planner = planner
        self._helo = helo
        self._ssl_context = ssl_context
        self._timeouts = timeouts
        self._log = log
        self._connections = asyncio.Semaphore(concurrency)
        # Idle sessions are kept a moment for the next message to the same host (like Postfix's
        # connection cache): connect + EHLO + STARTTLS cost more than a transaction.
        self._cache = ConnectionCache()

    async def close(self) -> None:
        """Say goodbye to the idle sessions; call once no delivery runs."""
        await self._cache.close()

    async def carry(
        self,
        envelope: Envelope,
        message: bytes,
        domain: str,
        indexes: Sequence[int],
        rows: dict[int, RecipientState],
        now: float,
    ) -> dict[int, RecipientState]:
        """The new state of each recipient in `indexes` (all of `domain`) after this attempt."""
        settled: dict[int, RecipientState] = {}
        try:
            await self._try_targets(envelope, message, domain, list(indexes), rows, settled, now)
        except Exception as exc:
            # A bug (or an error nobody foresaw) must still conclude the attempt, so that the
            # other domains' results are kept and expiry and bounces happen.
            self._log.event("delivery_bug", "error", queue_id=envelope.queue_id, error=repr(exc))
        reason, code = LOCAL_ERROR
        for index in indexes:
            if index not in settled:
                settled[index] = settle(rows[index], PENDING, now, None, reason, code)
        return settled

    async def _try_targets(
        self,
        envelope: Envelope,
        message: bytes,
        domain: str,
        open_: list[int],
        rows: dict[int, RecipientState],
        settled: dict[int, RecipientState],
        now: float,
    ) -> None:
        try:
            targets = await self._planner.targets(domain, requiretls=envelope.requiretls)
        except RouteError as exc:
            result = RESULT[FAILED if exc.permanent else PENDING]
            self._log_attempt(envelope, domain, None, None, result, str(exc))
            settled.update(
                unroutable(open_, rows, str(exc), exc.status, now, permanent=exc.permanent)
            )
            return
        dsn = _dsn_request(envelope)
        for target in targets:
            async with self._connections:
                outcome = await deliver(
                    target,
                    helo=self._helo,
                    sender=envelope.sender,
                    # An envelope may name a recipient twice: send it once.
                    recipients=list(dict.fromkeys(envelope.recipients[i] for i in open_)),
                    message=message,
                    smtputf8=envelope.smtputf8,
                    eight_bit=envelope.body == "8BITMIME",
                    ssl_context=self._ssl_context,
                    timeouts=self._timeouts,
                    cache=self._cache,
                    requiretls=envelope.requiretls,
                    dsn=dsn,
                )
            # A recipient a host deferred counts one more attempt at each further host.
            current = {**rows, **settled}
            verdict = judge_transaction(
                envelope.recipients, open_, current, target.host, outcome, now
            )
            settled.update(verdict.rows)
            self._log_attempt(envelope, domain, target, outcome, verdict.result, verdict.reply)
            if not verdict.try_next_host:
                return
            open_ = verdict.retry_elsewhere

    def _log_attempt(
        self,
        envelope: Envelope,
        domain: str,
        target: Target | None,
        outcome: Outcome | None,
        result: str,
        reply: str,
    ) -> None:
        self._log.event(
            "delivery",
            "info" if result == "sent" else "warning",
            queue_id=envelope.queue_id,
            domain=domain,
            host=target.host if target else None,
            address=target.address if target else None,
            tls=(outcome.tls_version if outcome else None) or "none",
            policy=target.tls.reason if target else None,
            result=result,
            reply=one_line(reply),
        )


def _dsn_request(envelope: Envelope) -> DsnRequest:
    """The sender's RFC 3461 requests, for a next hop that offers DSN."""
    if envelope.ret is None and envelope.envid is None and not envelope.rcpt_params:
        return NO_DSN_REQUEST
    by_address: dict[str, RcptParameters] = {}
    for address, params in zip(envelope.recipients, envelope.rcpt_params, strict=False):
        by_address.setdefault(address, params)  # a recipient named twice is sent once
    return DsnRequest(envelope.ret, envelope.envid, by_address)
