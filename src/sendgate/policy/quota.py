"""Sending limits of authenticated accounts, and the flag an account earns by going over one.

`SendingLimits.check` runs once per message, when the message has ended (only then is the
number of recipients final), in the thread that then signs and queues it. It reads the
account's flag (one read of the user store): a flagged account's mail is not counted against
its sending budgets; the caller refuses it, or holds it within a held-mail budget of a day's
messages (so held mail cannot fill the spool). Otherwise every limit is taken in one all-or-nothing
`LimitStore.take_all` (one write transaction): messages per hour and per day and recipients
per day are GCRA budgets (exact, no window edge lets a burst through twice), distinct
recipients per day a distinct-members limit; recipients per message needs no store. A message
over any limit uses up none of the others, and flags the account (`event=flagged`).

Cost: 50 to 65 us of CPU per message of 1 to 3 recipients, twice that with the spool
threads and workers contending for the store (bench/quota.py). An account far from its limits
(a busy application's, not one on the defaults) spends most messages from its worker's
`Allowances` instead: about 6 us (24 us with 8 threads); see `policy.allowance` for what that
keeps exact.

Limits come from `[sending_limits]`, overridden per user by `UserSettings` (None: the default,
0: unlimited). When several limits are reached, the first in `LIMITS` is named.

Security: recipient addresses come from clients; the store only ever sees a hash prefix of
each (`recipient_hash`), and keys are made by `policy.keys`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sendgate.config.schema import SendingLimitsConfig
from sendgate.errors import UserError
from sendgate.log import EventLog
from sendgate.policy.allowance import Allowances, Batch, Budgets
from sendgate.policy.keys import sending_key
from sendgate.store.limits import DistinctRequest, LimitStore, RateRequest, Taken
from sendgate.store.users import Flag, UserRecord, UserSettings

MESSAGES_PER_HOUR = "messages_per_hour"
MESSAGES_PER_DAY = "messages_per_day"
RECIPIENTS_PER_MESSAGE = "recipients_per_message"
RECIPIENTS_PER_DAY = "recipients_per_day"
NEW_RECIPIENTS_PER_DAY = "new_recipients_per_day"
LIMITS = (
    RECIPIENTS_PER_MESSAGE,
    MESSAGES_PER_HOUR,
    MESSAGES_PER_DAY,
    RECIPIENTS_PER_DAY,
    NEW_RECIPIENTS_PER_DAY,
)
HOUR = 3600.0
DAY = 86400.0
HELD = "held_per_day"  # the budget of held mail of a flagged account
HELD_PER_DAY = 1000
# 64 bits: no two of an account's recipients in a day collide in practice.
RECIPIENT_HASH_CHARS = 16


class Flags(Protocol):
    """The part of `UserStore` the limits use: the accounts' flags."""

    def flag_of(self, username: str) -> Flag | None: ...

    def set_flag(self, username: str, reason: str, at: float) -> Flag: ...


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits that apply to one account; 0 is unlimited."""

    messages_per_hour: int
    messages_per_day: int
    recipients_per_message: int
    recipients_per_day: int
    new_recipients_per_day: int


def limits_for(config: SendingLimitsConfig, settings: UserSettings) -> Limits:
    """The configured defaults with the user's own settings (those not None) in their place."""

    def pick(own: int | None, default: int) -> int:
        return default if own is None else own

    return Limits(
        messages_per_hour=pick(settings.messages_per_hour, config.messages_per_hour),
        messages_per_day=pick(settings.messages_per_day, config.messages_per_day),
        recipients_per_message=pick(settings.recipients_per_message, config.recipients_per_message),
        recipients_per_day=pick(settings.recipients_per_day, config.recipients_per_day),
        new_recipients_per_day=pick(settings.new_recipients_per_day, config.new_recipients_per_day),
    )


def recipient_hash(recipient: str) -> str:
    """What the store keeps of a recipient address: a prefix of the SHA-256 of its lower case."""
    digest = hashlib.sha256(recipient.lower().encode("utf-8", "surrogatepass")).hexdigest()
    return digest[:RECIPIENT_HASH_CHARS]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer of `SendingLimits.check` for one message."""

    limit: str | None = None
    """The limit the message would go over (one of `LIMITS`, or `HELD`); None when within."""
    retry_after: float = 0.0
    """Seconds until that limit would allow the message (0 when unknown or never)."""
    flag: Flag | None = None
    """The account's flag: set earlier (then no limit was applied) or because of this message."""
    flagged_now: bool = False
    """This message's limit flagged the account."""

    @property
    def allowed(self) -> bool:
        return self.limit is None and self.flag is None


class SendingLimits:
    """Per-account sending limits and the containment flag (see the module docstring).

    `check` blocks on the stores: call it from a thread pool. Thread-safe.
    """

    def __init__(
        self,
        limits: LimitStore,
        users: Flags,
        config: SendingLimitsConfig,
        log: EventLog,
    ) -> None:
        self._limits = limits
        self._users = users
        self._config = config
        self._log = log
        self._allowances: Allowances[Limits] = Allowances()

    @property
    def hold_flagged(self) -> bool:
        """Mail of a flagged account is held (True) or refused (False)."""
        return self._config.flagged == "hold"

    def check(self, user: UserRecord, recipients: Sequence[str]) -> Verdict:
        """Count this message against the account's limits, or say why it may not be sent."""
        name = user.username
        limits = limits_for(self._config, user.settings)
        count = len(recipients)
        hashes: tuple[str, ...] = ()
        if limits.new_recipients_per_day:
            hashes = tuple(recipient_hash(recipient) for recipient in recipients)
        within = not limits.recipients_per_message or count <= limits.recipients_per_message
        now = self._limits.now()
        if within and self._allowances.spend(name, limits, count, hashes, now):
            return Verdict()
        flag = self._users.flag_of(name)
        if flag is not None:
            self._allowances.drop(name)
            if not self.hold_flagged:
                return Verdict(flag=flag)
            return self._hold(user, flag)
        if within and self._allowances.spend(name, limits, count, hashes, now, flag_read=True):
            return Verdict()
        limit, retry_after = self._take(name, limits, count, hashes, now)
        if limit is None:
            return Verdict()
        self._allowances.drop(name)
        reason = f"{limit} exceeded"
        at = self._limits.now()
        try:
            flag = self._users.set_flag(name, reason, at)
        except UserError:
            # A login only Dovecot knows (auth.backend): refused, but no flag can be kept.
            self._log.event("flag_impossible", "warning", user=name, reason=reason)
            return Verdict(limit, retry_after)
        # Another process may have flagged the account meanwhile: set_flag kept its flag.
        flagged_now = (flag.since, flag.reason) == (at, reason)
        if flagged_now:
            self._log.event("flagged", "warning", user=name, reason=reason)
        return Verdict(limit, retry_after, flag, flagged_now)

    def _hold(self, user: UserRecord, flag: Flag) -> Verdict:
        """A flagged account's mail is held, within a budget of its own.

        Not its sending budgets: it is held because it went over one. But a spam run that
        gets 250s must not fill the spool with held mail: at most a day's worth of messages
        (messages_per_day, or HELD_PER_DAY when that is unlimited) is held per rolling day.
        """
        per_day = limits_for(self._config, user.settings).messages_per_day or HELD_PER_DAY
        taken = self._limits.take_all([RateRequest(sending_key(HELD, user.username), per_day, DAY)])
        if taken.allowed:
            return Verdict(flag=flag)
        return Verdict(HELD, taken.rates[0].retry_after, flag)

    def _take(
        self, name: str, limits: Limits, count: int, hashes: Sequence[str], now: float
    ) -> tuple[str | None, float]:
        """Take the message from every budget at once; the first limit that refused, if any.

        A busy account's take also charges spare units for its allowance (see
        `policy.allowance`); if that is refused, the message alone is asked for.
        """
        if limits.recipients_per_message and count > limits.recipients_per_message:
            return RECIPIENTS_PER_MESSAGE, 0.0
        if limits.recipients_per_day and count > limits.recipients_per_day:
            return RECIPIENTS_PER_DAY, 0.0  # more than a whole day's budget: never allowed
        spare = _within(self._allowances.batch(name, limits, now), limits, count)
        taken, names = self._take_all(name, limits, count, hashes, spare)
        if taken is not None and not taken.allowed and (spare.messages or spare.recipients):
            spare = Batch(drops=spare.drops)
            taken, names = self._take_all(name, limits, count, hashes, spare)
        if taken is None:
            return None, 0.0
        if taken.allowed:
            left = dict(zip(names, (verdict.remaining for verdict in taken.rates), strict=True))
            messages = [left[key] for key in (MESSAGES_PER_HOUR, MESSAGES_PER_DAY) if key in left]
            budgets = Budgets(min(messages, default=None), left.get(RECIPIENTS_PER_DAY))
            self._allowances.taken(name, limits, spare, budgets, hashes, now, count)
            return None, 0.0
        for limit, verdict in zip(names, taken.rates, strict=True):
            if not verdict.allowed:
                return limit, verdict.retry_after
        return NEW_RECIPIENTS_PER_DAY, 0.0

    def _take_all(
        self,
        name: str,
        limits: Limits,
        count: int,
        hashes: Sequence[str],
        spare: Batch,
    ) -> tuple[Taken | None, list[str]]:
        """One `take_all` of a message (and `spare` units); None when nothing is limited."""
        spare_messages, spare_recipients = spare.messages, spare.recipients
        names: list[str] = []
        rates: list[RateRequest] = []
        for limit_name, limit, period, cost in (
            (MESSAGES_PER_HOUR, limits.messages_per_hour, HOUR, 1 + spare_messages),
            (MESSAGES_PER_DAY, limits.messages_per_day, DAY, 1 + spare_messages),
            (RECIPIENTS_PER_DAY, limits.recipients_per_day, DAY, count + spare_recipients),
        ):
            if limit and cost:
                names.append(limit_name)
                rates.append(RateRequest(sending_key(limit_name, name), limit, period, cost))
        distinct: list[DistinctRequest] = []
        if limits.new_recipients_per_day and hashes:
            key = sending_key(NEW_RECIPIENTS_PER_DAY, name)
            distinct.append(DistinctRequest(key, tuple(hashes), limits.new_recipients_per_day, DAY))
        if not rates and not distinct:
            return None, names
        return self._limits.take_all(rates, distinct), names


def _within(spare: Batch, limits: Limits, count: int) -> Batch:
    """`spare` cut so that no budget is asked for more than its limit (never clipped later)."""
    messages, recipients = spare.messages, spare.recipients
    for limit in (limits.messages_per_hour, limits.messages_per_day):
        if limit:
            messages = min(messages, limit - 1)
    if limits.recipients_per_day:
        recipients = min(recipients, limits.recipients_per_day - count)
    return Batch(max(0, messages), max(0, recipients), spare.drops)
