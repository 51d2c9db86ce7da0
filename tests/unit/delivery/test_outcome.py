"""Tests for sendgate.delivery.outcome: every delivery decision, values in and values out.

No network, no queue, no clock: like the SMTP Session's tests, each case states a transaction's
result or a message's state and checks what the decision says.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sendgate.config.schema import DeliveryConfig
from sendgate.delivery import outcome
from sendgate.delivery.target import Outcome, RemoteReply
from sendgate.smtp.dsn import RcptParameters
from sendgate.store.delivery_state import (
    DELIVERED,
    FAILED,
    PENDING,
    DeliveryState,
    RecipientState,
)
from sendgate.store.envelope import Envelope

NOW = 1_800_000_000.0
BOB, CAROL, DAVE = "bob@example.org", "carol@example.org", "dave@example.org"
SETTINGS = DeliveryConfig()  # retry 300 s doubling to 7200 s, lifetime 5 days, delay notice 4 h


def envelope(*recipients: str, received_at: float = NOW) -> Envelope:
    return Envelope(
        queue_id="01MCC5RM008798QSMC",
        sender="alice@sender.test",
        recipients=recipients or (BOB,),
        user="alice@sender.test",
        received_at=received_at,
        size=10,
    )


def rows(*addresses: str) -> dict[int, RecipientState]:
    return {i: RecipientState(address) for i, address in enumerate(addresses)}


def transaction(
    *,
    failure: str | None = None,
    failure_reply: RemoteReply | None = None,
    **replies: RemoteReply,
) -> Outcome:
    by_address = {name.replace("_", "@", 1) + ".org": reply for name, reply in replies.items()}
    return Outcome("TLSv1.3", "TLS_AES_128_GCM_SHA256", failure, failure_reply, by_address)


OK = RemoteReply(250, "2.0.0 queued")
NO_USER = RemoteReply(550, "5.1.1 no such user")
BUSY = RemoteReply(451, "4.3.0 busy\nsecond line")


# --- enhanced status codes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (550, "5.1.1 No such user", "5.1.1"),
        (250, "2.0.0 Ok: queued", "2.0.0"),
        (451, "4.3.0 Try again", "4.3.0"),
        (550, "5.1.1", "5.1.1"),  # the code alone
        (550, "5.1.1\nsecond line", "5.1.1"),
        (550, "5.123.456 long but valid", "5.123.456"),
        (550, "No such user", "5.0.0"),  # no enhanced code: derived from the basic code
        (451, "Try again", "4.0.0"),
        (550, "4.1.1 class disagrees with the code", "5.0.0"),
        (450, "5.7.1 class disagrees with the code", "4.0.0"),
        (550, "5.1.1x no separator", "5.0.0"),
        (550, "5.1234.1 too many digits", "5.0.0"),
        (550, " 5.1.1 not at the start", "5.0.0"),
        (550, "user 5.1.1 in the middle", "5.0.0"),
        (550, "3.1.1 not a class", "5.0.0"),
        (354, "3.0.0 go ahead", "4.5.0"),
        (334, "", "4.5.0"),
        (554, "", "5.0.0"),
    ],
)
def test_enhanced_code_of_a_reply(code: int, text: str, expected: str) -> None:
    assert outcome.enhanced(RemoteReply(code, text)) == expected


def test_no_reply_at_all_is_4_4_1() -> None:
    assert outcome.enhanced(None) == "4.4.1"


@given(st.integers(200, 599), st.text(max_size=40))
def test_enhanced_code_is_well_formed_and_of_the_reply_class(code: int, text: str) -> None:
    klass, subject, detail = outcome.enhanced(RemoteReply(code, text)).split(".")
    # A 3xx (no final reply where one was due) is a temporary protocol error: RFC 3463 has
    # only the classes 2, 4 and 5.
    assert klass == (str(code)[0] if code // 100 != 3 else "4")
    assert subject.isdigit()
    assert detail.isdigit()
    assert 1 <= len(subject) <= 3
    assert 1 <= len(detail) <= 3


# --- one transaction ---------------------------------------------------------------------------


def test_every_recipient_accepted_is_sent() -> None:
    verdict = outcome.judge_transaction(
        (BOB, CAROL),
        [0, 1],
        rows(BOB, CAROL),
        "mx1",
        transaction(bob_example=OK, carol_example=OK),
        NOW,
    )
    assert verdict.result == "sent"
    assert verdict.reply == "250 2.0.0 queued"
    assert not verdict.try_next_host
    assert verdict.retry_elsewhere == []
    # The host offered no DSN: a report of the relay is owed if the sender asks for one.
    assert verdict.rows[0] == RecipientState(
        BOB, DELIVERED, 1, NOW, "mx1", "250 2.0.0 queued", "2.0.0", relayed=True
    )
    assert verdict.rows[1].status == DELIVERED


def test_a_host_offering_dsn_takes_over_the_reports() -> None:
    reported = dataclasses.replace(transaction(bob_example=OK, carol_example=NO_USER), dsn=True)
    verdict = outcome.judge_transaction(
        (BOB, CAROL), [0, 1], rows(BOB, CAROL), "mx1", reported, NOW
    )
    assert verdict.rows[0].status == DELIVERED
    assert not verdict.rows[0].relayed
    assert not verdict.rows[1].relayed  # failed: never "relayed"


def test_mixed_replies_are_counted_in_the_result() -> None:
    verdict = outcome.judge_transaction(
        (BOB, CAROL, DAVE),
        [0, 1, 2],
        rows(BOB, CAROL, DAVE),
        "mx1",
        transaction(bob_example=OK, carol_example=NO_USER, dave_example=BUSY),
        NOW,
    )
    assert verdict.result == "bounced:1,deferred:1,sent:1"
    assert [verdict.rows[i].status for i in range(3)] == [DELIVERED, FAILED, PENDING]
    assert verdict.rows[2].reply == "451 4.3.0 busy second line"  # one line, always
    assert verdict.rows[1].enhanced == "5.1.1"
    assert not verdict.try_next_host  # the host answered each recipient


def test_a_recipient_without_a_reply_stays_pending() -> None:
    verdict = outcome.judge_transaction(
        (BOB, CAROL), [0, 1], rows(BOB, CAROL), "mx1", transaction(bob_example=OK), NOW
    )
    assert verdict.rows[1] == RecipientState(
        CAROL, PENDING, 1, NOW, "mx1", "no reply for this recipient", "4.4.2"
    )


def test_a_lost_session_defers_and_lets_the_next_host_try() -> None:
    verdict = outcome.judge_transaction(
        (BOB, CAROL), [0, 1], rows(BOB, CAROL), "mx1", transaction(failure="connection lost"), NOW
    )
    assert verdict.result == "deferred"
    assert verdict.retry_elsewhere == [0, 1]
    assert verdict.try_next_host
    assert verdict.rows[0] == RecipientState(
        BOB, PENDING, 1, NOW, "mx1", "connection lost", "4.4.1"
    )


def test_a_permanent_session_reply_fails_everyone_and_stops() -> None:
    refused = RemoteReply(554, "5.7.1 go away")
    verdict = outcome.judge_transaction(
        (BOB,), [0], rows(BOB), "mx1", transaction(failure_reply=refused), NOW
    )
    assert (verdict.result, verdict.try_next_host, verdict.retry_elsewhere) == (
        "bounced",
        False,
        [],
    )
    assert verdict.rows[0].status == FAILED
    assert verdict.rows[0].enhanced == "5.7.1"


def test_an_rcpt_refusal_before_a_failure_stays_final() -> None:
    verdict = outcome.judge_transaction(
        (BOB, CAROL),
        [0, 1],
        rows(BOB, CAROL),
        "mx1",
        transaction(failure="timeout in DATA", carol_example=NO_USER),
        NOW,
    )
    assert verdict.rows[1].status == FAILED
    assert verdict.rows[0].status == PENDING
    assert verdict.retry_elsewhere == [0]
    # Some recipient got an answer from this host: the next host is not tried this time.
    assert not verdict.try_next_host


def test_only_the_open_recipients_are_judged() -> None:
    verdict = outcome.judge_transaction(
        (BOB, CAROL), [1], rows(BOB, CAROL), "mx1", transaction(carol_example=OK), NOW
    )
    assert set(verdict.rows) == {1}


def test_unroutable_recipients_fail_or_wait_as_the_route_says() -> None:
    gone = outcome.unroutable([0], rows(BOB), "no such domain", "5.1.2", NOW, permanent=True)
    later = outcome.unroutable([0], rows(BOB), "SERVFAIL", "4.4.3", NOW, permanent=False)
    assert gone[0] == RecipientState(BOB, FAILED, 1, NOW, None, "no such domain", "5.1.2")
    assert later[0].status == PENDING


# --- the whole message -------------------------------------------------------------------------


def settled(state: DeliveryState, **statuses: str) -> DeliveryState:
    updates = {
        i: dataclasses.replace(row, status=statuses[row.address.split("@")[0]], attempts=1)
        for i, row in enumerate(state.recipients)
        if row.address.split("@")[0] in statuses
    }
    return state.with_results(updates)


def test_an_attempt_is_counted_and_new_failures_are_reported_once() -> None:
    before = settled(DeliveryState.fresh((BOB, CAROL)), bob=FAILED)
    after = settled(before, carol=FAILED)
    verdict = outcome.conclude(before, after, envelope(BOB, CAROL), NOW + 60, SETTINGS)
    assert verdict.failed == [1]  # bob was reported at an earlier attempt
    assert verdict.delayed == []
    assert not verdict.expired
    assert verdict.state.attempts == 1
    assert verdict.state.finished()


def test_the_delay_notice_goes_out_once_after_delay_warning() -> None:
    state = DeliveryState.fresh((BOB,))
    early = outcome.conclude(state, state, envelope(), NOW + 14399, SETTINGS)
    assert early.delayed == []
    due = outcome.conclude(state, state, envelope(), NOW + 14400, SETTINGS)
    assert due.delayed == [0]
    assert due.state.delay_notified
    again = outcome.conclude(due.state, due.state, envelope(), NOW + 20000, SETTINGS)
    assert again.delayed == []


def test_no_delay_notice_when_switched_off() -> None:
    state = DeliveryState.fresh((BOB,))
    off = dataclasses.replace(SETTINGS, delay_warning=0.0)
    assert outcome.conclude(state, state, envelope(), NOW + 86400, off).delayed == []


def test_expiry_fails_what_is_pending_with_4_4_7() -> None:
    state = settled(DeliveryState.fresh((BOB, CAROL)), bob=DELIVERED)
    verdict = outcome.conclude(state, state, envelope(BOB, CAROL), NOW + 432000, SETTINGS)
    assert verdict.expired
    assert verdict.failed == [1]
    assert verdict.state.recipients[1].status == FAILED
    assert verdict.state.recipients[1].enhanced == "4.4.7"
    assert verdict.state.recipients[0].status == DELIVERED
    assert verdict.delayed == []  # an expiry is a failure notice, not a delay notice
    assert not outcome.conclude(state, state, envelope(BOB, CAROL), NOW + 431999, SETTINGS).expired


def test_an_unsent_notice_leaves_those_recipients_owed() -> None:
    state = settled(DeliveryState.fresh((BOB, CAROL)), bob=FAILED)
    state = dataclasses.replace(state, delay_notified=True)
    owed = outcome.unreported(state, [0], [1])
    assert owed.recipients[0].status == PENDING
    assert not owed.delay_notified
    kept = outcome.unreported(state, [0], [])
    assert kept.delay_notified


def test_notices_name_each_reported_recipient_in_envelope_order() -> None:
    state = DeliveryState.fresh((BOB, CAROL, DAVE)).with_results(
        {
            0: RecipientState(BOB, FAILED, 1, NOW, "mx1", "550 5.1.1 no", "5.1.1"),
            2: RecipientState(DAVE, PENDING, 1, NOW, None, None, None),
        }
    )
    notices = outcome.notices(state, envelope(BOB, CAROL, DAVE), [0], [2])
    assert [(n.recipient, n.action, n.status) for n in notices] == [
        (BOB, "failed", "5.1.1"),
        (DAVE, "delayed", "4.0.0"),
    ]
    assert (notices[0].remote_mta, notices[0].diagnostic) == ("mx1", "550 5.1.1 no")
    bare = outcome.notices(DeliveryState.fresh((BOB,)), envelope(BOB), [0], [])
    assert bare[0].status == "5.0.0"
    assert bare[0].original_recipient is None


@pytest.mark.parametrize(
    ("notify", "failed", "delayed", "relayed"),
    [
        (None, True, True, False),  # the default: failures and delays, no success reports
        (("NEVER",), False, False, False),
        (("SUCCESS",), False, False, True),
        (("FAILURE",), True, False, False),
        (("DELAY",), False, True, False),
        (("SUCCESS", "FAILURE", "DELAY"), True, True, True),
    ],
)
def test_notices_follow_each_recipients_notify(
    notify: tuple[str, ...] | None, failed: bool, delayed: bool, relayed: bool
) -> None:
    params = RcptParameters(notify, "rfc822;x+2By@example.org")
    env = dataclasses.replace(envelope(BOB, CAROL, DAVE), rcpt_params=(params,) * 3)
    state = DeliveryState.fresh((BOB, CAROL, DAVE))
    notices = outcome.notices(state, env, [0], [1], [2])
    assert [n.action for n in notices] == [
        action
        for action, wanted in (("failed", failed), ("delayed", delayed), ("relayed", relayed))
        if wanted
    ]
    assert all(n.original_recipient == "rfc822;x+2By@example.org" for n in notices)
    if relayed:
        assert notices[-1].status == "2.0.0"


def test_conclude_names_recipients_newly_relayed() -> None:
    before = DeliveryState.fresh((BOB, CAROL, DAVE)).with_results(
        {2: RecipientState(DAVE, DELIVERED, 1, NOW, "mx1", "250 ok", "2.0.0", relayed=True)}
    )
    after = before.with_results(
        {
            0: RecipientState(BOB, DELIVERED, 1, NOW, "mx1", "250 ok", "2.0.0", relayed=True),
            1: RecipientState(CAROL, DELIVERED, 1, NOW, "mx2", "250 ok", "2.0.0"),
        }
    )
    verdict = outcome.conclude(before, after, envelope(BOB, CAROL, DAVE), NOW, SETTINGS)
    assert verdict.relayed == [0]  # dave was relayed before; carol's host reports itself


# --- the next attempt --------------------------------------------------------------------------


def test_backoff_doubles_from_retry_first_up_to_retry_max_with_ten_percent_jitter() -> None:
    settings = dataclasses.replace(SETTINGS, retry_first=300.0, retry_max=7200.0)
    rng = random.Random(1)
    waits = [outcome.backoff(n, settings, rng.random()) for n in range(1, 41)]
    for attempts, wait in enumerate(waits, start=1):
        base = min(300.0 * 2 ** (attempts - 1), 7200.0)
        assert 0.9 * base <= wait <= 1.1 * base, (attempts, wait)
    assert waits[0] < 330
    assert min(waits[10:]) >= 7200 * 0.9
    assert len(set(waits)) == len(waits)  # jittered: no two equal
    assert outcome.backoff(1, settings, 0.0) == 270.0
    assert outcome.backoff(1, settings, 0.5) == 300.0


@given(
    jitter=st.floats(0, 1, exclude_max=True),
    attempts=st.integers(1, 10**9),
    first=st.floats(1, 86400),
    extra=st.floats(0, 86400),
)
def test_backoff_stays_within_bounds_for_any_attempt_count(
    jitter: float, attempts: int, first: float, extra: float
) -> None:
    maximum = min(first + extra, 86400.0)
    settings = dataclasses.replace(SETTINGS, retry_first=first, retry_max=maximum)
    wait = outcome.backoff(attempts, settings, jitter)
    base = min(first * 2.0 ** min(attempts - 1, 30), maximum)
    assert 0.9 * base <= wait <= 1.1 * base
    assert wait <= 1.1 * maximum


def test_the_next_attempt_never_falls_after_expiry() -> None:
    state = dataclasses.replace(DeliveryState.fresh((BOB,)), attempts=3)
    soon = outcome.schedule(state, envelope(), NOW + 600, SETTINGS, 0.5)
    assert soon.next_attempt == NOW + 600 + 1200
    late = outcome.schedule(state, envelope(), NOW + 431900, SETTINGS, 0.5)
    assert late.next_attempt == NOW + 432000  # the expiry, not now + 1200
    past = outcome.schedule(state, envelope(), NOW + 500000, SETTINGS, 0.5)
    assert past.next_attempt == NOW + 500000


def test_retry_until_is_the_expiry() -> None:
    assert outcome.retry_until(envelope(), SETTINGS) == NOW + 432000
