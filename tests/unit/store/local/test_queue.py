"""Tests for sendgate.store.local.queue beyond the contract: the runner's index and its inputs.

The contract tests (tests/contracts/test_queue_store.py) check what every queue does; these
check how the local one learns about mail (announcements, scans, batches), what it reports
instead of logging, and how it keeps a state it could not write.
"""

from __future__ import annotations

import dataclasses
import os
import select
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.clock import FakeClock

from sendgate.errors import SpoolError
from sendgate.store import local
from sendgate.store.delivery_state import DELIVERED, DeliveryState
from sendgate.store.envelope import Envelope, queue_id_share
from sendgate.store.local.announce import AnnouncePipe, AnnounceReader, AnnounceWriter
from sendgate.store.local.queue import CLAIM_READ_MAX, LocalQueueStore
from sendgate.store.queue import Claim

MESSAGE = b"From: <alice@example.com>\r\n\r\nhi\r\n"
LEASE = 600.0


class Pair:
    """An acceptor's handle and the runner's, on one spool, joined by an announce pipe."""

    def __init__(self, root: Path, scan_interval: float = 3600.0) -> None:
        self.clock = FakeClock()
        self.pipe = AnnouncePipe()
        self.root = root
        self.acceptor = LocalQueueStore(
            root, clock=self.clock, announce_to=AnnounceWriter(self.pipe.write_fds)
        )
        self.runner = LocalQueueStore(
            root,
            clock=self.clock,
            scan_interval=scan_interval,
            announced=AnnounceReader(self.pipe.read_fds[0]),
        )
        self.quiet = LocalQueueStore(root, clock=self.clock)  # puts without announcing

    def put(self, store: LocalQueueStore | None = None) -> str:
        store = store or self.acceptor
        queue_id = store.new_id()
        _put(store, queue_id)
        self.clock.advance(0.01)
        return queue_id

    def claim(self, limit: int = 10) -> list[Claim]:
        return list(self.runner.claim(limit, LEASE).claims)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    made = Pair(tmp_path / "spool")
    yield made
    made.pipe.close()


def readable(fd: int | None) -> bool:
    assert fd is not None
    return bool(select.select([fd], [], [], 0)[0])


def test_an_announced_message_is_claimable_before_the_next_scan(pair: Pair) -> None:
    assert pair.claim() == []  # the first claim scans; the next scan is an hour away
    fd = pair.runner.arrivals_fd()
    assert fd == pair.pipe.read_fds[0]
    assert not readable(fd)
    queue_id = pair.put()
    assert readable(fd)
    assert [claim.queue_id for claim in pair.claim()] == [queue_id]
    assert not readable(fd)  # the claim consumed the announcement


def test_an_unannounced_message_waits_for_the_scan(pair: Pair) -> None:
    assert pair.claim() == []
    queue_id = pair.put(pair.quiet)
    assert pair.claim() == []
    claimed = pair.runner.claim(10, LEASE)
    assert claimed.next_check == pytest.approx(pair.clock.now + 3600, abs=1)
    pair.clock.advance(3600)
    assert [claim.queue_id for claim in pair.claim()] == [queue_id]


def test_handles_that_never_claim_keep_no_index_and_no_pipe(pair: Pair) -> None:
    assert pair.quiet.arrivals_fd() is None
    assert pair.acceptor.arrivals_fd() is None
    pair.put()
    assert pair.acceptor.claim(10, LEASE).claims != ()  # any handle may still claim


def test_a_claim_of_nothing_reads_the_spool_without_leasing(pair: Pair) -> None:
    queue_id = pair.put()
    assert pair.runner.claim(0, LEASE).claims == ()
    assert [claim.queue_id for claim in pair.claim()] == [queue_id]


def test_an_unreadable_state_starts_the_message_over_and_says_why(pair: Pair) -> None:
    queue_id = pair.put()
    (pair.root / "state" / queue_id).write_bytes(b"{not json")
    [claim] = pair.claim()
    assert claim.state == DeliveryState.fresh(("bob@example.org",), claim.state.next_attempt)
    assert claim.state_problem is not None
    assert claim.state_problem.startswith("state: ")


def test_a_corrupt_envelope_is_reported_and_the_rest_still_flows(pair: Pair) -> None:
    bad = pair.put(pair.quiet)
    good = pair.put(pair.quiet)
    (pair.root / "queue" / bad).write_bytes(b"not an envelope\n")
    claimed = pair.runner.claim(10, LEASE)
    assert [claim.queue_id for claim in claimed.claims] == [good]
    [problem] = claimed.problems
    assert bad in problem


def replace_by_file(directory: Path) -> Path:
    """Put a file where `directory` was, so that listing it, or making or removing a file in it,
    fails even for root (ENOTDIR); return where the directory was moved."""
    aside = directory.rename(directory.with_name(directory.name + "-aside"))
    directory.write_bytes(b"")
    return aside


def claim_at_next_scan(pair: Pair) -> tuple[list[str], list[str]]:
    """The ids and the problems of a claim made when the next scan is due."""
    pair.clock.advance(3600)
    claimed = pair.runner.claim(10, LEASE)
    return [claim.queue_id for claim in claimed.claims], list(claimed.problems)


def test_an_unlistable_spool_is_reported_and_the_index_kept(pair: Pair) -> None:
    queue_id = pair.put()
    pair.runner.claim(0, LEASE)  # indexed
    replace_by_file(pair.root / "queue")
    ids, [problem] = claim_at_next_scan(pair)
    assert ids == [queue_id]
    assert problem.startswith("cannot list spool directory")


def test_unreadable_retry_flags_do_not_keep_a_scan_from_finding_mail(pair: Pair) -> None:
    assert pair.claim() == []
    queue_id = pair.put(pair.quiet)  # not announced: only a scan finds it
    replace_by_file(pair.root / "retry")
    ids, [problem] = claim_at_next_scan(pair)
    assert ids == [queue_id]
    assert problem.startswith("cannot read retry flags")


def test_a_big_backlog_is_read_in_batches(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local.queue, "LOAD_BATCH", 2)
    made = [pair.put(pair.quiet) for _ in range(5)]
    first = pair.runner.claim(10, LEASE)
    assert [claim.queue_id for claim in first.claims] == made[:2]
    assert first.next_check == pair.clock.now  # more to read: call again at once
    rest = [claim.queue_id for claim in pair.claim()] + [c.queue_id for c in pair.claim()]
    assert rest == made[2:]


def test_a_completion_is_not_held_up_by_a_claim_reading_the_spool(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The runner completes on its event loop while a claim reads files in a pool thread: the
    # index's lock must not be held across those reads.
    pair.put()
    [first] = pair.claim()
    later = pair.put()
    reading, release = threading.Event(), threading.Event()
    released_in_time: list[bool] = []
    read_state = pair.runner._spool.read_state

    def slow_read(queue_id: str) -> bytes | None:
        reading.set()
        released_in_time.append(release.wait(5.0))
        return read_state(queue_id)

    monkeypatch.setattr(pair.runner._spool, "read_state", slow_read)
    claimed: list[Claim] = []
    claiming = threading.Thread(target=lambda: claimed.extend(pair.claim()))
    claiming.start()
    assert reading.wait(5.0)
    pair.runner.complete(first)  # with the lock held by the claim, this waits for its read
    release.set()
    claiming.join()
    assert released_in_time == [True]
    assert [claim.queue_id for claim in claimed] == pair.runner.ids() == [later]


def test_a_release_is_not_held_up_by_a_claim_listing_the_hold_files(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue_id = pair.put()
    [first] = pair.claim()
    pair.clock.advance(LEASE + 1)  # the lease ran out: the next claim lists the hold files
    listing, release = threading.Event(), threading.Event()
    released_in_time: list[bool] = []
    held_ids = pair.runner._spool.holds.ids

    def slow_listing() -> set[str]:
        listing.set()
        released_in_time.append(release.wait(5.0))
        return held_ids()

    monkeypatch.setattr(pair.runner._spool.holds, "ids", slow_listing)
    claimed: list[Claim] = []
    claiming = threading.Thread(target=lambda: claimed.extend(pair.claim()))
    claiming.start()
    assert listing.wait(5.0)
    # The claim ended the lease already: the release changes nothing but takes the lock, and
    # with the lock held by the claim it would wait for the listing.
    pair.runner.release(first)
    release.set()
    claiming.join()
    assert released_in_time == [True]
    assert [claim.queue_id for claim in claimed] == [queue_id]
    assert claimed[0].token > first.token


def test_a_held_put_by_the_runner_is_never_due(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    assert pair.claim() == []  # the runner indexes its own puts from now on
    queue_id = pair.runner.new_id()
    envelope = Envelope(
        queue_id, "alice@example.com", ("bob@example.org",), "alice", 0.0, len(MESSAGE)
    )
    # As if a claim had listed the hold files just before this put wrote its own.
    monkeypatch.setattr(pair.runner._spool.holds, "ids", set)
    pair.runner.put(envelope, MESSAGE, hold="suspended")
    assert pair.claim() == []
    monkeypatch.undo()
    assert pair.runner.unhold(queue_id)
    assert [claim.queue_id for claim in pair.claim()] == [queue_id]


def test_a_put_does_not_undo_the_lease_of_a_claim_that_loaded_it_first(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert pair.claim() == []  # the runner indexes its own puts from now on
    pair.clock.advance(3600)  # the next claim scans
    spool_put = pair.runner._spool.put
    claimed: list[Claim] = []

    def put_then_claim(envelope: Envelope, message: bytes, *, hold: str | None = None) -> None:
        spool_put(envelope, message, hold=hold)
        claimed.extend(pair.claim())  # listed and leased before the put indexes it

    monkeypatch.setattr(pair.runner._spool, "put", put_then_claim)
    queue_id = pair.put(pair.runner)
    [claim] = claimed
    assert claim.queue_id == queue_id
    assert pair.claim() == []  # still leased, not claimable a second time
    pair.runner.complete(claim)  # the lease holds: no LeaseLostError
    assert pair.runner.ids() == []


def test_a_message_put_by_the_runner_during_a_scan_stays_in_its_index(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert pair.claim() == []  # the runner indexes from now on
    pair.clock.advance(3600)  # the next claim scans
    listing = pair.runner._spool.ids
    put: list[str] = []

    def listed_then_put() -> list[str]:
        ids = listing()
        putting = threading.Thread(target=lambda: put.append(pair.put(pair.runner)))
        putting.start()
        putting.join(5.0)
        assert not putting.is_alive(), "a put waited for the scan's listing"
        return ids

    monkeypatch.setattr(pair.runner._spool, "ids", listed_then_put)
    assert [claim.queue_id for claim in pair.claim()] == put  # not dropped as unlisted
    assert len(put) == 1


def test_a_state_that_cannot_be_written_is_kept_while_the_lease_holds(pair: Pair) -> None:
    queue_id = pair.put()
    [claim] = pair.claim()
    delivered = dataclasses.replace(claim.state.recipients[0], status=DELIVERED)
    state = dataclasses.replace(claim.state.with_results({0: delivered}), next_attempt=0.0)
    replace_by_file(pair.root / "state")
    with pytest.raises(SpoolError, match="cannot write state file"):
        pair.runner.update(claim, state)
    assert pair.claim() == []  # still leased
    pair.runner.release(claim, pair.clock.now)
    [again] = pair.claim()
    assert again.queue_id == queue_id
    assert again.state == state  # not on disk, but this runner remembers what it delivered


def test_a_message_removed_by_another_handle_leaves_the_index_at_the_scan(pair: Pair) -> None:
    queue_id = pair.put()
    pair.runner.claim(0, LEASE)
    pair.quiet.remove(queue_id)
    pair.clock.advance(3600)
    assert pair.claim() == []
    assert pair.runner.ids() == []


def test_close_closes_the_pipe_ends(tmp_path: Path) -> None:
    pipe = AnnouncePipe()
    store = LocalQueueStore(tmp_path, announced=AnnounceReader(pipe.read_fds[0]))
    store.close()
    with pytest.raises(OSError, match="Bad file descriptor"):
        select.select([pipe.read_fds[0]], [], [], 0)
    pipe.close()


def test_a_message_that_cannot_be_removed_stays_held_for_a_retry(pair: Pair) -> None:
    queue_id = pair.put()
    [claim] = pair.claim()
    queue_dir = pair.root / "queue"
    aside = replace_by_file(queue_dir)
    with pytest.raises(SpoolError, match="cannot remove spool file"):
        pair.runner.complete(claim)
    queue_dir.unlink()
    aside.rename(queue_dir)
    assert pair.claim() == []  # still leased: not forgotten, not handed out twice
    pair.runner.release(claim, pair.clock.now)
    [again] = pair.claim()
    assert again.queue_id == queue_id
    pair.runner.complete(again)
    assert pair.runner.ids() == []


def test_an_announced_envelope_spares_reading_the_queue_file(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue_id = pair.put()

    def unread(_queue_id: str) -> Envelope:
        raise AssertionError("the envelope was read from disk")

    monkeypatch.setattr(pair.runner._spool, "envelope", unread)
    [claim] = pair.claim()
    assert claim.envelope == pair.quiet.envelope(queue_id)


@pytest.mark.parametrize("line", [b"{not json", b"", b"other"])
def test_an_unusable_announced_envelope_is_read_from_the_spool(pair: Pair, line: bytes) -> None:
    stored = pair.put(pair.quiet)  # put without announcing it, then announced with `line`
    AnnounceWriter(pair.pipe.write_fds).announce(stored, line or None)
    [claim] = pair.claim()
    assert claim.envelope == pair.quiet.envelope(stored)


def test_a_small_message_comes_with_its_claim_and_a_big_one_does_not(pair: Pair) -> None:
    small = pair.put()
    big_message = b"x" * (CLAIM_READ_MAX + 1)
    big = pair.acceptor.new_id()
    pair.acceptor.put(
        Envelope(big, "alice@example.com", ("bob@example.org",), "alice", 0.0, len(big_message)),
        big_message,
    )
    claims = {c.queue_id: c for c in pair.claim()}
    assert claims[small].message == MESSAGE
    assert claims[big].message is None
    assert pair.runner.message(big) == big_message


def test_an_announced_message_gone_before_it_was_loaded_is_skipped(pair: Pair) -> None:
    queue_id = pair.put()
    pair.quiet.remove(queue_id)
    assert pair.claim() == []


def test_an_announced_envelope_of_another_id_is_not_used(pair: Pair) -> None:
    stored = pair.put(pair.quiet)
    other = make_announced_other(pair, stored)
    AnnounceWriter(pair.pipe.write_fds).announce(stored, other)
    [claim] = pair.claim()
    assert claim.envelope == pair.quiet.envelope(stored)


def make_announced_other(pair: Pair, stored: str) -> bytes:
    """A well-formed envelope line naming another id than `stored`."""
    envelope = pair.quiet.envelope(stored)
    return dataclasses.replace(envelope, queue_id=pair.quiet.new_id()).to_json()


class Shared:
    """Two runners' handles on one spool, each with its share and its pipe, and an acceptor's."""

    def __init__(self, root: Path) -> None:
        self.clock = FakeClock()
        self.pipe = AnnouncePipe(2)
        self.acceptor = LocalQueueStore(
            root, clock=self.clock, announce_to=AnnounceWriter(self.pipe.write_fds)
        )
        self.runners = [
            LocalQueueStore(
                root,
                clock=self.clock,
                scan_interval=3600.0,
                announced=AnnounceReader(self.pipe.read_fds[k]),
                share=(k, 2),
            )
            for k in range(2)
        ]

    def claimed(self, runner: int) -> set[str]:
        return {c.queue_id for c in self.runners[runner].claim(100, LEASE).claims}


def _put(store: LocalQueueStore, queue_id: str) -> None:
    envelope = Envelope(
        queue_id, "alice@example.com", ("bob@example.org",), "alice", 0.0, len(MESSAGE)
    )
    store.put(envelope, MESSAGE)


@pytest.mark.parametrize("announced", [True, False])
def test_two_runners_split_the_queue_by_id_and_claim_each_message_once(
    tmp_path: Path, announced: bool
) -> None:
    shared = Shared(tmp_path / "spool")
    try:
        for runner in (0, 1):
            assert shared.claimed(runner) == set()  # the first claim scans: nothing yet
        putter = shared.acceptor if announced else LocalQueueStore(tmp_path / "spool")
        ids = [putter.new_id() for _ in range(40)]
        for queue_id in ids:
            _put(putter, queue_id)
        if not announced:
            shared.clock.advance(3600.0)  # found by the next scan instead
        got = [shared.claimed(0), shared.claimed(1)]
        assert got[0] | got[1] == set(ids)
        assert not got[0] & got[1]
        for runner in (0, 1):
            assert all(queue_id_share(q, 2) == runner for q in got[runner])
    finally:
        shared.pipe.close()


def test_a_runner_takes_only_its_own_retry_requests(tmp_path: Path) -> None:
    shared = Shared(tmp_path / "spool")
    admin = LocalQueueStore(tmp_path / "spool", clock=shared.clock)
    try:
        ids = {k: admin.new_id() for k in (0, 1)}
        while queue_id_share(ids[0], 2) != 0:
            ids[0] = admin.new_id()
        while queue_id_share(ids[1], 2) != 1:
            ids[1] = admin.new_id()
        for queue_id in ids.values():
            _put(admin, queue_id)
        shared.clock.advance(1.0)
        assert shared.claimed(0) == {ids[0]}
        assert shared.claimed(1) == {ids[1]}
        # The operator asks for both; each runner's scan takes only its own flag.
        admin.request_retry(ids[0])
        admin.request_retry(ids[1])
        shared.clock.advance(3600.0)
        shared.runners[0].claim(0, LEASE)
        assert sorted(p.name for p in (tmp_path / "spool" / "retry").iterdir()) == [ids[1]]
        shared.runners[1].claim(0, LEASE)
        assert list((tmp_path / "spool" / "retry").iterdir()) == []
    finally:
        shared.pipe.close()


def test_a_runners_own_messages_get_ids_in_its_share(tmp_path: Path) -> None:
    shared = Shared(tmp_path / "spool")
    try:
        for runner in (0, 1):
            made = [shared.runners[runner].new_id() for _ in range(50)]
            assert {queue_id_share(q, 2) for q in made} == {runner}
        assert len({queue_id_share(shared.acceptor.new_id(), 2) for _ in range(50)}) == 2
    finally:
        shared.pipe.close()


def _unlinked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths unlinked from now on (os.unlink calls, made or failed)."""
    paths: list[str] = []
    real = os.unlink

    def unlink(path: str) -> None:
        paths.append(str(path))
        real(path)

    monkeypatch.setattr(os, "unlink", unlink)
    return paths


def test_a_message_delivered_at_its_first_attempt_has_no_state_to_look_for(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue_id = pair.put()
    [claim] = pair.claim()
    unlinked = _unlinked(monkeypatch)
    pair.runner.complete(claim)
    assert [path.rsplit("/", 2)[-2] for path in unlinked] == ["queue", "hold"]
    assert pair.runner.ids() == []
    assert pair.quiet.ids() == []
    monkeypatch.undo()
    # A retry flag an operator set meanwhile is an orphan, cleared at the runner's next scan.
    (pair.root / "retry" / queue_id).write_bytes(b"")
    pair.clock.advance(3600)
    assert pair.claim() == []
    assert list((pair.root / "retry").iterdir()) == []


def test_a_state_written_or_found_is_removed_with_its_message(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = pair.put()
    [claim] = pair.claim()
    pair.runner.update(claim, dataclasses.replace(claim.state, next_attempt=pair.clock.now))
    [claim] = pair.claim()
    assert (pair.root / "state" / written).exists()
    pair.runner.complete(claim)
    assert not (pair.root / "state" / written).exists()
    # A state a runner before this one wrote: found when the message is loaded.
    found = pair.put()
    (pair.root / "state" / found).write_bytes(claim.state.to_json())
    later = LocalQueueStore(pair.root, clock=pair.clock, scan_interval=0.0)
    [claim] = later.claim(10, LEASE).claims
    assert claim.queue_id == found
    unlinked = _unlinked(monkeypatch)
    later.complete(claim)
    assert str(pair.root / "state" / found) in unlinked
    assert not (pair.root / "state" / found).exists()
