"""Tests for `sendgate queue hold|release` and `--json` on every queue action, run in process.

Messages are put straight into the spool of an instance made by `sendgate init`; the commands
run through `sendgate.cli.main` as a user would type them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.support.mail import make_envelope

from sendgate.cli import main
from sendgate.store.delivery_state import DeliveryState
from sendgate.store.local.queue import LocalQueueStore

MESSAGE = b"Subject: hi\r\n\r\nbody\r\n"
LEASE = 600.0


@pytest.fixture
def queue(config: Path) -> LocalQueueStore:
    # scan_interval 0: releases by the command (another handle) are seen at the next claim.
    return LocalQueueStore(config.parent / "data" / "spool", scan_interval=0.0)


def put(queue: LocalQueueStore, user: str = "alice", **changes: object) -> str:
    queue_id = queue.new_id()
    queue.put(make_envelope(queue_id, MESSAGE, user=user, **changes), MESSAGE)
    return queue_id


def run(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--config", str(config), "queue", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_hold_and_release_one_message(
    config: Path, queue: LocalQueueStore, capsys: pytest.CaptureFixture[str]
) -> None:
    queue_id = put(queue)
    assert run(config, capsys, "hold", queue_id) == (0, f"{queue_id}: held (operator)\n", "")
    assert queue.hold_reason(queue_id) == "operator"
    assert queue.claim(10, LEASE).claims == ()
    assert run(config, capsys, "release", queue_id) == (0, f"{queue_id}: released\n", "")
    assert queue.hold_reason(queue_id) is None
    assert [claim.queue_id for claim in queue.claim(10, LEASE).claims] == [queue_id]


def test_hold_with_a_reason_replaces_an_earlier_one(
    config: Path, queue: LocalQueueStore, capsys: pytest.CaptureFixture[str]
) -> None:
    queue_id = put(queue)
    queue.hold(queue_id, "flagged: sending_limit")
    code, out, _ = run(config, capsys, "hold", queue_id, "--reason", "spam \x1b[2J run")
    assert (code, out) == (0, f"{queue_id}: held (operator: spam  [2J run)\n")
    assert queue.hold_reason(queue_id) == "operator: spam  [2J run"


def test_release_of_a_message_not_held_is_a_one_line_error(
    config: Path, queue: LocalQueueStore, capsys: pytest.CaptureFixture[str]
) -> None:
    queue_id = put(queue)
    assert run(config, capsys, "release", queue_id) == (1, "", f"sendgate: {queue_id}: not held\n")


@pytest.mark.parametrize("action", ["hold", "release"])
def test_hold_and_release_of_an_unknown_id_are_one_line_errors(
    config: Path, queue: LocalQueueStore, capsys: pytest.CaptureFixture[str], action: str
) -> None:
    unknown = queue.new_id()
    assert run(config, capsys, action, unknown) == (
        1,
        "",
        f"sendgate: unknown queue id {unknown}\n",
    )


@pytest.mark.parametrize(
    "args", [["hold"], ["release"], ["hold", "X", "--user", "alice"], ["release", "--user"]]
)
def test_hold_and_release_need_exactly_one_of_id_and_user(
    config: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--config", str(config), "queue", *args])
    assert caught.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_hold_and_release_every_message_of_a_user(
    config: Path, queue: LocalQueueStore, capsys: pytest.CaptureFixture[str]
) -> None:
    first, other, second = put(queue), put(queue, user="bob"), put(queue, user="Alice")
    code, out, _ = run(config, capsys, "hold", "--user", "alice", "--reason", "compromised")
    assert (code, out.splitlines()) == (
        0,
        [f"{queue_id}: held (operator: compromised)" for queue_id in sorted([first, second])],
    )
    assert queue.hold_reason(other) is None
    queue.unhold(second)
    assert run(config, capsys, "release", "--user", "ALICE") == (0, f"{first}: released\n", "")
    assert run(config, capsys, "release", "--user", "alice") == (
        0,
        "alice: no held messages\n",
        "",
    )
    assert run(config, capsys, "hold", "--user", "carol") == (0, "carol: no queued messages\n", "")
    assert sorted(claim.queue_id for claim in queue.claim(10, LEASE).claims) == sorted(
        [first, other, second]
    )


def test_held_messages_are_marked_in_list_show_and_explain(
    config: Path, queue: LocalQueueStore, capsys: pytest.CaptureFixture[str]
) -> None:
    free = put(queue, received_at=0.0)
    held = put(queue, received_at=0.0)
    queue.hold(held, "flagged: new networks")
    _, out, _ = run(config, capsys, "list")
    # Listed by id (two puts within a millisecond may have their ids in either order).
    assert out.splitlines() == sorted(
        [
            f"{free} 1970-01-01T00:00:00Z {len(MESSAGE)} alice@example.com"
            " -> bob@example.org,carol@example.net",
            f"{held} 1970-01-01T00:00:00Z {len(MESSAGE)} alice@example.com"
            " -> bob@example.org,carol@example.net (held: flagged: new networks)",
        ]
    )
    _, out, _ = run(config, capsys, "show", held)
    assert "\nbody: 7BIT\nheld: flagged: new networks\n\nSubject: hi\n" in out
    _, out, _ = run(config, capsys, "show", free)
    assert "held" not in out
    _, out, _ = run(config, capsys, "explain", held)
    assert out.splitlines()[-2:] == [
        "held: flagged: new networks",
        "attempts: 0 (not tried yet; held)",
    ]


# --- --json ------------------------------------------------------------------------------------


def test_list_and_show_json(
    config: Path, queue: LocalQueueStore, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config, capsys, "list", "--json") == (0, "[]\n", "")
    queue_id = put(queue, sender="ev\u202eil@example.com", received_at=0.0)
    queue.hold(queue_id, "operator")
    code, out, _ = run(config, capsys, "list", "--json")
    assert code == 0
    assert "\u202e" not in out
    expected = {
        "queue_id": queue_id,
        "received": "1970-01-01T00:00:00Z",
        "size": len(MESSAGE),
        "user": "alice",
        "sender": "ev\u202eil@example.com",
        "recipients": ["bob@example.org", "carol@example.net"],
        "smtputf8": False,
        "body": "7BIT",
        "held": "operator",
    }
    assert json.loads(out) == [expected]
    code, out, _ = run(config, capsys, "show", queue_id, "--json")
    assert json.loads(out) == {**expected, "headers": ["Subject: hi"]}


def test_explain_json_before_and_after_an_attempt(
    config: Path, queue: LocalQueueStore, capsys: pytest.CaptureFixture[str]
) -> None:
    queue_id = put(queue, received_at=0.0)
    _, out, _ = run(config, capsys, "explain", queue_id, "--json")
    assert json.loads(out) == {
        "queue_id": queue_id,
        "sender": "alice@example.com",
        "received": "1970-01-01T00:00:00Z",
        "held": None,
        "attempts": 0,
        "recipients": [],
        "next_attempt": None,
    }
    [claim] = queue.claim(10, LEASE).claims
    queue.update(claim, DeliveryState(claim.state.recipients, 86_400.0, attempts=1))
    report = json.loads(run(config, capsys, "explain", queue_id, "--json")[1])
    assert (report["attempts"], report["next_attempt"]) == (1, "1970-01-02T00:00:00Z")
    assert report["recipients"][0] == {
        "address": "bob@example.org",
        "status": "pending",
        "attempts": 0,
        "last_attempt": None,
        "host": None,
        "reply": None,
    }
    queue.hold(queue_id, "operator")
    report = json.loads(run(config, capsys, "explain", queue_id, "--json")[1])
    assert (report["held"], report["next_attempt"]) == ("operator", None)


def test_retry_remove_hold_and_release_json(
    config: Path, queue: LocalQueueStore, capsys: pytest.CaptureFixture[str]
) -> None:
    queue_id = put(queue)
    outputs = [
        json.loads(run(config, capsys, *args, "--json")[1])
        for args in (
            ["retry", queue_id],
            ["hold", queue_id],
            ["release", "--user", "alice"],
            ["release", "--user", "alice"],
            ["remove", queue_id],
        )
    ]
    assert outputs == [
        {"queue_id": queue_id, "done": "retry requested"},
        [{"queue_id": queue_id, "held": "operator"}],
        [{"queue_id": queue_id, "held": None}],
        [],
        {"queue_id": queue_id, "done": "removed"},
    ]
    assert queue.ids() == []
