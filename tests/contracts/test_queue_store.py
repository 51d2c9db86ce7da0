"""The QueueStore contract: what every queue backend must do (run once per backend)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from tests.contracts.backends import StoreBackend
from tests.support.mail import make_envelope

from sendgate.errors import LeaseLostError, SpoolError, UnknownQueueIdError
from sendgate.store.delivery_state import DELIVERED, PENDING, DeliveryState
from sendgate.store.queue import Claim, QueueStore, Recovery

MESSAGE = b"From: <alice@example.com>\r\nSubject: hi\r\n\r\n8-bit \xff body\r\n..dot\r\n"
LEASE = 600.0

STORE = "queue"  # the backends that offer it run this module (conftest.py)


def put(
    queue: QueueStore, message: bytes = MESSAGE, *, hold: str | None = None, **changes: object
) -> str:
    queue_id = str(changes.pop("queue_id", None) or queue.new_id())
    queue.put(make_envelope(queue_id, message, **changes), message, hold=hold)
    return queue_id


def claim_one(queue: QueueStore) -> Claim:
    [claim] = queue.claim(10, LEASE).claims
    return claim


def later(state: DeliveryState, at: float) -> DeliveryState:
    delivered = dataclasses.replace(state.recipients[0], status=DELIVERED, attempts=1)
    return dataclasses.replace(
        state.with_results({0: delivered}), next_attempt=at, attempts=state.attempts + 1
    )


@pytest.fixture
def queue(backend: StoreBackend) -> QueueStore:
    return backend.queue()


# --- put and read ------------------------------------------------------------------------------


def test_put_reads_back_byte_identical_through_another_handle(backend: StoreBackend) -> None:
    writer, reader = backend.queue(), backend.queue()
    queue_id = put(writer)
    assert reader.ids() == [queue_id]
    assert reader.message(queue_id) == MESSAGE
    envelope = reader.envelope(queue_id)
    assert (envelope.queue_id, envelope.recipients, envelope.size) == (
        queue_id,
        ("bob@example.org", "carol@example.net"),
        len(MESSAGE),
    )
    assert reader.delivery_state(queue_id) is None


def test_ids_are_unique_and_listed_oldest_first(queue: QueueStore, backend: StoreBackend) -> None:
    made = []
    for _ in range(5):
        made.append(put(queue))
        backend.advance(0.01)
    assert len(set(made)) == 5
    assert queue.ids() == made == sorted(made)


def test_an_id_cannot_be_put_twice(queue: QueueStore) -> None:
    queue_id = put(queue)
    with pytest.raises(SpoolError):
        put(queue, b"other\r\n", queue_id=queue_id)
    assert queue.message(queue_id) == MESSAGE


def test_put_many_queues_every_message_and_each_is_claimed_and_completed_alone(
    backend: StoreBackend,
) -> None:
    writer, runner = backend.queue(), backend.queue()
    messages = [b"first\r\n", MESSAGE, b""]
    ids = [writer.new_id() for _ in messages]
    writer.put_many([(make_envelope(q, m), m) for q, m in zip(ids, messages, strict=True)])
    assert sorted(runner.ids()) == sorted(ids)
    for queue_id, message in zip(ids, messages, strict=True):
        assert runner.message(queue_id) == message
    claims = {c.queue_id: c for c in runner.claim(10, LEASE).claims}
    assert sorted(claims) == sorted(ids)
    runner.complete(claims[ids[1]])
    assert sorted(runner.ids()) == sorted([ids[0], ids[2]])
    assert runner.message(ids[0]) == b"first\r\n"


def test_put_many_with_an_id_in_use_queues_none_of_the_group(queue: QueueStore) -> None:
    taken = put(queue)
    fresh = queue.new_id()
    new = b"new\r\n"
    with pytest.raises(SpoolError):
        queue.put_many([(make_envelope(fresh, new), new), (make_envelope(taken, MESSAGE), MESSAGE)])
    assert queue.ids() == [taken]
    with pytest.raises(UnknownQueueIdError):
        queue.envelope(fresh)


@pytest.mark.parametrize(
    "operation",
    [
        "envelope",
        "message",
        "delivery_state",
        "remove",
        "request_retry",
        "hold",
        "unhold",
        "hold_reason",
    ],
)
def test_an_unknown_id_is_refused(queue: QueueStore, operation: str) -> None:
    unknown = queue.new_id()
    calls: dict[str, Callable[[str], object]] = {
        "envelope": queue.envelope,
        "message": queue.message,
        "delivery_state": queue.delivery_state,
        "remove": queue.remove,
        "request_retry": queue.request_retry,
        "hold": lambda queue_id: queue.hold(queue_id, "operator"),
        "unhold": queue.unhold,
        "hold_reason": queue.hold_reason,
    }
    with pytest.raises(UnknownQueueIdError):
        calls[operation](unknown)


def test_remove_takes_a_message_out_for_good(backend: StoreBackend) -> None:
    queue, other = backend.queue(), backend.queue()
    queue_id = put(queue)
    other.remove(queue_id)
    assert queue.ids() == []
    assert queue.claim(10, LEASE).claims == ()
    with pytest.raises(UnknownQueueIdError):
        queue.envelope(queue_id)


def test_recover_of_a_clean_queue_finds_nothing(queue: QueueStore) -> None:
    put(queue)
    assert queue.recover() == Recovery(removed_partial=0, corrupt=(), unknown_entries=0)
    assert len(queue.ids()) == 1


# --- claims ------------------------------------------------------------------------------------


def test_nothing_queued_claims_nothing(queue: QueueStore) -> None:
    claimed = queue.claim(10, LEASE)
    assert claimed.claims == ()
    assert isinstance(claimed.next_check, float)


def test_a_new_message_is_claimed_with_a_fresh_state(backend: StoreBackend) -> None:
    writer, runner = backend.queue(), backend.queue()
    queue_id = put(writer)
    claim = claim_one(runner)
    assert claim.queue_id == queue_id
    assert claim.envelope == writer.envelope(queue_id)
    assert claim.state.pending() == [0, 1]
    assert claim.state.attempts == 0
    assert claim.state_problem is None


def test_claims_come_oldest_first_up_to_the_limit(queue: QueueStore, backend: StoreBackend) -> None:
    made = []
    for _ in range(3):
        made.append(put(queue))
        backend.advance(0.01)
    first = queue.claim(2, LEASE).claims
    assert [claim.queue_id for claim in first] == made[:2]
    assert [claim.queue_id for claim in queue.claim(2, LEASE).claims] == made[2:]


def test_a_leased_message_is_not_claimed_again(backend: StoreBackend) -> None:
    queue = backend.queue()
    put(queue)
    claim_one(queue)
    backend.advance(LEASE - 1)
    assert queue.claim(10, LEASE).claims == ()


def test_update_stores_the_state_and_the_due_time(backend: StoreBackend) -> None:
    queue = backend.queue()
    queue_id = put(queue)
    claim = claim_one(queue)
    state = later(claim.state, claim.lease_until - LEASE + 300)
    queue.update(claim, state)
    assert backend.queue().delivery_state(queue_id) == state
    backend.advance(299)
    assert queue.claim(10, LEASE).claims == ()
    backend.advance(1)
    again = claim_one(queue)
    assert again.state == state
    assert again.state.pending() == [1]
    assert again.token > claim.token


def test_complete_takes_the_message_out(queue: QueueStore) -> None:
    queue_id = put(queue)
    queue.complete(claim_one(queue))
    assert queue.ids() == []
    with pytest.raises(UnknownQueueIdError):
        queue.message(queue_id)


def test_release_gives_a_message_back_unchanged(queue: QueueStore) -> None:
    put(queue)
    claim = claim_one(queue)
    queue.release(claim)
    again = claim_one(queue)
    assert again.state == claim.state
    assert again.token > claim.token


def test_release_with_a_due_time_defers_it(backend: StoreBackend) -> None:
    queue = backend.queue()
    put(queue)
    claim = claim_one(queue)
    queue.release(claim, claim.lease_until - LEASE + 60)
    assert queue.claim(10, LEASE).claims == ()
    backend.advance(60)
    assert len(queue.claim(10, LEASE).claims) == 1


def test_a_lease_that_runs_out_is_claimed_again_and_fences_the_old_holder(
    backend: StoreBackend,
) -> None:
    queue = backend.queue()
    put(queue)
    stale = claim_one(queue)
    backend.advance(LEASE)
    fresh = claim_one(queue)
    assert fresh.token > stale.token
    with pytest.raises(LeaseLostError):
        queue.update(stale, later(stale.state, 0.0))
    with pytest.raises(LeaseLostError):
        queue.complete(stale)
    queue.release(stale)  # ignored: the lease is not the caller's any more
    assert queue.claim(10, LEASE).claims == ()
    queue.complete(fresh)
    assert queue.ids() == []


def test_renew_keeps_a_lease_alive(backend: StoreBackend) -> None:
    queue = backend.queue()
    put(queue)
    claim = claim_one(queue)
    backend.advance(LEASE / 2)
    [renewed] = queue.renew([claim], LEASE)
    assert renewed.token == claim.token
    assert renewed.lease_until > claim.lease_until
    backend.advance(LEASE / 2 + 1)
    assert queue.claim(10, LEASE).claims == ()
    queue.complete(renewed)


def test_renew_leaves_out_a_lost_lease(backend: StoreBackend) -> None:
    queue = backend.queue()
    put(queue)
    stale = claim_one(queue)
    backend.advance(LEASE)
    claim_one(queue)
    assert queue.renew([stale], LEASE) == []


def test_a_message_removed_during_its_attempt_refuses_the_result(backend: StoreBackend) -> None:
    queue = backend.queue()
    queue_id = put(queue)
    claim = claim_one(queue)
    backend.queue().remove(queue_id)
    with pytest.raises(UnknownQueueIdError):
        queue.update(claim, later(claim.state, 0.0))
    assert queue.ids() == []


def test_retry_makes_a_waiting_message_due_now(backend: StoreBackend) -> None:
    queue = backend.queue()
    queue_id = put(queue)
    claim = claim_one(queue)
    queue.update(claim, later(claim.state, claim.lease_until + 3600))
    backend.queue().request_retry(queue_id)
    assert claim_one(queue).queue_id == queue_id


def test_a_message_put_by_the_claiming_handle_is_claimable_at_once(queue: QueueStore) -> None:
    first = put(queue)
    queue.complete(claim_one(queue))
    second = put(queue, sender="")  # as the runner queues a DSN
    claim = claim_one(queue)
    assert (claim.queue_id, claim.envelope.sender) == (second, "")
    assert first != second


def test_the_next_check_is_no_later_than_the_next_due_message(backend: StoreBackend) -> None:
    queue = backend.queue()
    put(queue)
    claim = claim_one(queue)
    due = claim.lease_until - LEASE + 120
    queue.update(claim, later(claim.state, due))
    claimed = queue.claim(10, LEASE)
    assert claimed.claims == ()
    assert claimed.next_check <= due
    assert [row.status for row in claim.state.recipients] == [PENDING, PENDING]


# --- holds -------------------------------------------------------------------------------------


def test_a_message_put_held_is_never_claimed_until_released(backend: StoreBackend) -> None:
    writer, runner = backend.queue(), backend.queue()
    queue_id = put(writer, hold="account suspended")
    other = put(writer)
    [claim] = runner.claim(10, LEASE).claims
    assert claim.queue_id == other
    runner.complete(claim)
    backend.advance(3600)
    assert runner.claim(10, LEASE).claims == ()
    assert runner.ids() == [queue_id]
    assert runner.message(queue_id) == MESSAGE
    assert backend.queue().hold_reason(queue_id) == "account suspended"
    assert backend.queue().unhold(queue_id) is True
    assert runner.hold_reason(queue_id) is None
    assert claim_one(runner).queue_id == queue_id


def test_a_hold_set_through_another_handle_stops_the_next_claim(backend: StoreBackend) -> None:
    runner, operator = backend.queue(), backend.queue()
    first, second = put(runner), put(runner)
    runner.claim(0, LEASE)  # the runner has indexed both, due now
    operator.hold(first, "operator")
    assert [claim.queue_id for claim in runner.claim(10, LEASE).claims] == [second]
    assert runner.hold_reason(first) == "operator"


def test_unhold_makes_a_waiting_message_due_now(backend: StoreBackend) -> None:
    runner, operator = backend.queue(), backend.queue()
    queue_id = put(runner)
    claim = claim_one(runner)
    runner.update(claim, later(claim.state, claim.lease_until + 3600))
    operator.hold(queue_id, "operator")
    backend.advance(LEASE + 3600)
    assert runner.claim(10, LEASE).claims == ()
    assert operator.unhold(queue_id) is True
    again = claim_one(runner)
    assert (again.queue_id, again.state.pending()) == (queue_id, [1])


def test_unhold_through_the_claiming_handle_is_due_at_once(queue: QueueStore) -> None:
    queue_id = put(queue)
    queue.hold(queue_id, "operator")
    assert queue.claim(10, LEASE).claims == ()
    assert queue.unhold(queue_id) is True
    assert claim_one(queue).queue_id == queue_id


@pytest.mark.parametrize("end", ["update", "release", "lease runs out"])
def test_a_message_leased_when_held_is_held_after_its_attempt(
    backend: StoreBackend, end: str
) -> None:
    runner = backend.queue()
    queue_id = put(runner)
    claim = claim_one(runner)
    backend.queue().hold(queue_id, "operator")
    if end == "update":
        runner.update(claim, later(claim.state, claim.lease_until - LEASE))
    elif end == "release":
        runner.release(claim)
    backend.advance(LEASE)
    assert runner.claim(10, LEASE).claims == ()
    assert backend.queue().unhold(queue_id) is True
    again = claim_one(runner)
    assert again.token > claim.token


def test_a_hold_survives_a_new_handle(backend: StoreBackend) -> None:
    queue = backend.queue()
    queue_id = put(queue)
    queue.hold(queue_id, "first")
    queue.hold(queue_id, "second")  # replaces the reason
    queue.close()
    fresh = backend.queue()
    assert fresh.recover().corrupt == ()
    assert fresh.hold_reason(queue_id) == "second"
    assert fresh.claim(10, LEASE).claims == ()


def test_unhold_of_a_message_not_held_is_false(queue: QueueStore) -> None:
    queue_id = put(queue)
    assert queue.hold_reason(queue_id) is None
    assert queue.unhold(queue_id) is False
    assert claim_one(queue).queue_id == queue_id


def test_a_reason_is_kept_as_one_printable_line(queue: QueueStore) -> None:
    queue_id = put(queue)
    queue.hold(queue_id, "line one\nline \x1b[2J two \u202e")
    reason = queue.hold_reason(queue_id)
    assert reason is not None
    assert reason.isprintable()
    assert reason.startswith("line one")
    assert "two" in reason
    assert "\x1b" not in reason


def test_a_held_message_can_be_removed(backend: StoreBackend) -> None:
    queue = backend.queue()
    queue_id = put(queue, hold="operator")
    queue.remove(queue_id)
    assert queue.ids() == []
    with pytest.raises(UnknownQueueIdError):
        queue.hold_reason(queue_id)
    # The id is free of every trace: nothing held, nothing claimable.
    assert backend.queue().claim(10, LEASE).claims == ()


def test_a_claim_carries_the_stored_bytes_or_none(backend: StoreBackend) -> None:
    writer, runner = backend.queue(), backend.queue()
    put(writer)
    [claim] = runner.claim(10, LEASE).claims
    assert claim.message in (None, MESSAGE)


# --- streamed bodies -----------------------------------------------------------------------


HEAD = b"From: <alice@example.com>\r\nSubject: big\r\n\r\n"
BODY_LINE = b"a body line with 8-bit \xff and ..dots\r\n"


def put_streamed(
    queue: QueueStore, blocks: int = 3, *, hold: str | None = None, queue_id: str | None = None
) -> tuple[str, bytes]:
    """Stream `blocks` blocks of body into the queue and put them; (queue id, message)."""
    queue_id = queue_id or queue.new_id()
    body = queue.new_body()
    written = b""
    for index in range(blocks):
        block = BODY_LINE * (1000 + index)
        body.write(block)
        written += block
    assert body.size == len(written)
    message = HEAD + written
    queue.put_streamed(make_envelope(queue_id, message), HEAD, body, hold=hold)
    return queue_id, message


def test_a_streamed_message_reads_back_as_head_and_body(backend: StoreBackend) -> None:
    writer, reader = backend.queue(), backend.queue()
    queue_id, message = put_streamed(writer)
    assert reader.ids() == [queue_id]
    assert reader.message(queue_id) == message
    assert reader.envelope(queue_id).size == len(message)
    claim = claim_one(writer)
    assert claim.queue_id == queue_id
    assert (claim.message or writer.message(queue_id)) == message
    writer.complete(claim)
    assert writer.ids() == []


def test_a_streamed_message_with_an_empty_body(queue: QueueStore) -> None:
    queue_id, message = put_streamed(queue, blocks=0)
    assert queue.message(queue_id) == message == HEAD


def test_a_discarded_body_leaves_nothing_queued(queue: QueueStore) -> None:
    body = queue.new_body()
    body.write(BODY_LINE)
    body.discard()
    body.discard()  # idempotent
    assert queue.ids() == []
    assert queue.claim(10, LEASE).claims == ()


def test_a_streamed_put_with_an_id_in_use_fails_and_uses_the_body_up(queue: QueueStore) -> None:
    queue_id = put(queue)
    with pytest.raises(SpoolError):
        put_streamed(queue, queue_id=queue_id)
    assert queue.message(queue_id) == MESSAGE
    assert queue.ids() == [queue_id]


def test_a_streamed_message_put_held_is_not_claimed(queue: QueueStore) -> None:
    queue_id, _ = put_streamed(queue, hold="flagged: test")
    assert queue.hold_reason(queue_id) == "flagged: test"
    assert queue.claim(10, LEASE).claims == ()
    assert queue.unhold(queue_id)
    assert claim_one(queue).queue_id == queue_id


def test_a_streamed_put_whose_size_is_wrong_is_refused(queue: QueueStore) -> None:
    body = queue.new_body()
    body.write(BODY_LINE)
    with pytest.raises(ValueError, match="size"):
        queue.put_streamed(make_envelope(queue.new_id(), HEAD), HEAD, body)
    assert queue.ids() == []
