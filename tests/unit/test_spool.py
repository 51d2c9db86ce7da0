"""Tests for sendgate.spool: durable put, readback, sweep, queue ids and queue listings."""

import dataclasses
import json
import os
import random
import re
import shutil
import stat
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import sendgate
from sendgate.errors import SpoolError, SpoolFullError
from sendgate.spool import (
    Envelope,
    Spool,
    SweepResult,
    format_queue_line,
    format_queue_show,
    new_queue_id,
)

MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"Subject: caf\xc3\xa9\r\n"
    b"\r\n"
    b"8-bit body \xff\xfe\x00 bytes\r\n"
    b"..leading dot kept as stored\r\n"
    b"bare \n and \r inside stay as they are\r\n"
)
ID_PATTERN = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{17}")
DELETE = object()  # marks a field to drop in the malformed-envelope cases

# Runs one put that cannot fit (RLIMIT_FSIZE or a tiny file system), then one small put.
_CONSTRAINED_PUT = textwrap.dedent(
    """
    import json, resource, signal, sys
    from pathlib import Path
    from sendgate.errors import SpoolError
    from sendgate.spool import Envelope, Spool

    root, size, fsize_limit = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    spool = Spool(root)
    if fsize_limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, resource.RLIM_INFINITY))

    def put(size):
        env = Envelope(spool.new_id(), "a@example.com", ("b@example.com",), "alice", 0.0, size)
        try:
            spool.put(env, b"x" * size)
        except SpoolError as exc:
            return [type(exc).__name__, str(exc)]
        return None

    failed = put(size)
    leftovers = sorted(p.name for d in ("tmp", "queue") for p in (root / d).iterdir())
    retried = put(1000)
    print(json.dumps({"failed": failed, "leftovers": leftovers, "retried": retried}))
    """
)


def make_envelope(queue_id: str, message: bytes = MESSAGE, **changes: Any) -> Envelope:
    envelope = Envelope(
        queue_id=queue_id,
        sender="alice@example.com",
        recipients=("bob@example.org", "carol@example.net"),
        user="alice",
        received_at=1_714_564_800.25,
        size=len(message),
    )
    return dataclasses.replace(envelope, **changes)


def file_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def run_constrained_put(argv: list[str]) -> dict[str, Any]:
    src = str(Path(sendgate.__file__).parents[1])
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": src},
    )
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


# --- queue ids -------------------------------------------------------------------------------


def test_new_queue_id_known_values() -> None:
    assert new_queue_id(0.0, bytes(5)) == "000000000000000000"
    assert new_queue_id(0.0, b"\xff" * 5) == "0000000000ZZZZZZZZ"
    assert new_queue_id(0.001, bytes(5)) == "000000000100000000"
    assert ID_PATTERN.fullmatch(new_queue_id(1_714_564_800.0, b"\x12\x34\x56\x78\x9a"))


@pytest.mark.parametrize(
    ("now", "rand"),
    [(-1.0, bytes(5)), (1e12, bytes(5)), (0.0, bytes(4)), (0.0, bytes(6))],
)
def test_new_queue_id_rejects_out_of_range_input(now: float, rand: bytes) -> None:
    with pytest.raises(ValueError, match="queue id"):
        new_queue_id(now, rand)


def test_queue_ids_sort_by_time_then_randomness() -> None:
    rng = random.Random(1)
    # A narrow window gives many ties and neighbours; extremes check that time outranks chance.
    base = 1_714_564_800_000
    keys = [(base + rng.randrange(40), rng.randbytes(5)) for _ in range(3000)]
    keys += [(base + 50, b"\xff" * 5), (base + 51, bytes(5))]
    ids = [new_queue_id(millis / 1000, rand) for millis, rand in keys]
    by_id = sorted(range(len(keys)), key=lambda i: ids[i])
    by_key = sorted(range(len(keys)), key=lambda i: keys[i])
    assert by_id == by_key


def test_spool_ids_are_unique_within_one_millisecond(tmp_path: Path) -> None:
    spool = Spool(tmp_path, clock=lambda: 1_714_564_800.0)
    ids = [spool.new_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert all(ID_PATTERN.fullmatch(queue_id) for queue_id in ids)


def test_spool_ids_follow_the_clock(tmp_path: Path) -> None:
    times = iter(1_714_564_800 + n / 1000 for n in range(500))
    spool = Spool(tmp_path, clock=lambda: next(times))
    ids = [spool.new_id() for _ in range(500)]
    assert ids == sorted(ids)


# --- envelopes -------------------------------------------------------------------------------


def test_envelope_json_round_trip_keeps_non_ascii_addresses() -> None:
    envelope = make_envelope(
        "01HX0000000000ABCD",
        sender="用户@例子.广告",
        recipients=("josé@exämple.de", "Ωmega@example.com"),
        user="josé",
        smtputf8=True,
        body="8BITMIME",
    )
    data = envelope.to_json()
    assert "用户@例子.广告".encode() in data  # stored as UTF-8, not \\u escapes
    assert Envelope.from_json(data) == envelope


def test_envelope_with_null_sender_round_trips() -> None:
    envelope = make_envelope("01HX0000000000ABCD", sender="")
    assert Envelope.from_json(envelope.to_json()).sender == ""


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("sender", DELETE, id="missing-field"),
        pytest.param("priority", 1, id="unknown-field"),
        pytest.param("version", 2, id="future-version"),
        pytest.param("version", True, id="bool-version"),
        pytest.param("queue_id", "../x", id="traversal-id"),
        pytest.param("queue_id", 7, id="numeric-id"),
        pytest.param("sender", None, id="null-sender"),
        pytest.param("sender", "a\r\nRCPT TO:<x@y>", id="control-in-sender"),
        pytest.param("recipients", [], id="no-recipients"),
        pytest.param("recipients", "bob@example.org", id="recipients-string"),
        pytest.param("recipients", ["bob@example.org", 3], id="recipient-number"),
        pytest.param("recipients", [""], id="empty-recipient"),
        pytest.param("user", "", id="empty-user"),
        pytest.param("received_at", "yesterday", id="time-string"),
        pytest.param("received_at", float("nan"), id="time-nan"),
        pytest.param("received_at", -5, id="time-negative"),
        pytest.param("received_at", 10**400, id="time-huge"),
        pytest.param("size", "12", id="size-string"),
        pytest.param("size", True, id="size-bool"),
        pytest.param("size", 1.5, id="size-float"),
        pytest.param("size", -1, id="size-negative"),
        pytest.param("smtputf8", 1, id="smtputf8-number"),
        pytest.param("body", "BINARYMIME", id="body-unknown"),
    ],
)
def test_malformed_envelope_names_the_field(field: str, value: object) -> None:
    raw = json.loads(make_envelope("01HX0000000000ABCD").to_json())
    if value is DELETE:
        del raw[field]
    else:
        raw[field] = value
    with pytest.raises(SpoolError, match=f"envelope field '{field}'"):
        Envelope.from_json(json.dumps(raw).encode())


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\xff{}", "not valid UTF-8"),
        (b'{"size": ', "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"size": 1, "size": 2}', "'size': given twice"),
    ],
)
def test_unparsable_envelope_says_why(data: bytes, problem: str) -> None:
    with pytest.raises(SpoolError, match=re.escape(problem)):
        Envelope.from_json(data)


def test_envelope_cannot_be_built_with_a_bad_value() -> None:
    expected = "envelope field 'queue_id': invalid queue id '../x'"
    with pytest.raises(SpoolError, match=re.escape(expected)):
        make_envelope("../x")


# --- put and readback ------------------------------------------------------------------------


def test_spool_root_and_subdirectories_are_private(tmp_path: Path) -> None:
    root = tmp_path / "a" / "spool"
    Spool(root)
    assert names(root) == ["corrupt", "queue", "tmp"]
    for directory in (root, root / "corrupt", root / "queue", root / "tmp"):
        assert file_mode(directory) == 0o700


def test_spool_on_a_regular_file_is_a_one_line_error(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    root.write_bytes(b"")
    with pytest.raises(SpoolError, match=f"^cannot create spool directory {root}: File exists$"):
        Spool(root)


def test_put_then_read_back_byte_identical(spool: Spool, tmp_path: Path) -> None:
    envelope = make_envelope(spool.new_id())
    spool.put(envelope, MESSAGE)
    assert spool.ids() == [envelope.queue_id]
    assert spool.envelope(envelope.queue_id) == envelope
    assert spool.message(envelope.queue_id) == MESSAGE
    queue = tmp_path / "spool" / "queue"
    assert names(queue) == [f"{envelope.queue_id}.env", f"{envelope.queue_id}.msg"]
    assert names(tmp_path / "spool" / "tmp") == []


def test_spool_files_are_mode_600(spool: Spool, tmp_path: Path) -> None:
    queue_id = spool.new_id()
    spool.put(make_envelope(queue_id), MESSAGE)
    for suffix in (".env", ".msg"):
        assert file_mode(tmp_path / "spool" / "queue" / f"{queue_id}{suffix}") == 0o600


def test_empty_message_round_trips(spool: Spool) -> None:
    envelope = make_envelope(spool.new_id(), b"")
    spool.put(envelope, b"")
    assert spool.message(envelope.queue_id) == b""


def test_put_with_wrong_size_is_a_bug(spool: Spool) -> None:
    with pytest.raises(ValueError, match="envelope size"):
        spool.put(make_envelope(spool.new_id(), b"short"), MESSAGE)
    assert spool.ids() == []


def test_ids_are_oldest_first(tmp_path: Path) -> None:
    times = iter([1_714_564_800.0, 1_714_564_900.0, 1_714_565_000.0])
    spool = Spool(tmp_path, clock=lambda: next(times))
    ids = [spool.new_id() for _ in range(3)]
    for queue_id in reversed(ids):
        spool.put(make_envelope(queue_id), MESSAGE)
    assert spool.ids() == ids


def test_remove_uncommits_and_deletes(spool: Spool, tmp_path: Path) -> None:
    kept, removed = spool.new_id(), spool.new_id()
    spool.put(make_envelope(kept), MESSAGE)
    spool.put(make_envelope(removed), MESSAGE)
    spool.remove(removed)
    assert spool.ids() == [kept]
    assert names(tmp_path / "spool" / "queue") == [f"{kept}.env", f"{kept}.msg"]
    with pytest.raises(SpoolError, match=f"^unknown queue id {removed}$"):
        spool.remove(removed)


def test_unknown_id_is_a_spool_error(spool: Spool) -> None:
    queue_id = spool.new_id()
    with pytest.raises(SpoolError, match=f"^unknown queue id {queue_id}$"):
        spool.envelope(queue_id)
    with pytest.raises(SpoolError, match=f"^unknown queue id {queue_id}$"):
        spool.message(queue_id)


@pytest.mark.parametrize(
    "bad_id",
    [
        "../x",
        "..",
        "",
        "/etc/passwd",
        "01HX0000000000ABC/",
        "01HX0000000000ABCD\n",
        "01hx0000000000abcd",
        "01HX0000000000ABCI",
        "81HX0000000000ABCD",
        "01HX0000000000ABC",
    ],
)
def test_malformed_ids_are_rejected(spool: Spool, bad_id: str) -> None:
    expected = f"^invalid queue id {re.escape(repr(bad_id))}$"
    with pytest.raises(SpoolError, match=expected):
        spool.envelope(bad_id)
    with pytest.raises(SpoolError, match=expected):
        spool.message(bad_id)
    with pytest.raises(SpoolError, match=expected):
        spool.remove(bad_id)


def test_corrupt_envelope_on_disk_names_file_and_field(spool: Spool, tmp_path: Path) -> None:
    queue_id = spool.new_id()
    spool.put(make_envelope(queue_id), MESSAGE)
    env_path = tmp_path / "spool" / "queue" / f"{queue_id}.env"
    raw = json.loads(env_path.read_bytes())
    raw["size"] = "big"
    env_path.write_text(json.dumps(raw))
    with pytest.raises(SpoolError, match=f"^corrupt envelope {env_path}: .*'size'"):
        spool.envelope(queue_id)


def test_envelope_filed_under_another_id_is_corrupt(spool: Spool, tmp_path: Path) -> None:
    queue_id, other = spool.new_id(), spool.new_id()
    spool.put(make_envelope(queue_id), MESSAGE)
    queue = tmp_path / "spool" / "queue"
    (queue / f"{queue_id}.env").rename(queue / f"{other}.env")
    with pytest.raises(SpoolError, match=f"names queue id {queue_id}$"):
        spool.envelope(other)


# --- failed puts -----------------------------------------------------------------------------


def test_put_onto_an_existing_message_fails_and_touches_nothing(
    spool: Spool, tmp_path: Path
) -> None:
    queue = tmp_path / "spool" / "queue"
    queue_id = spool.new_id()
    (queue / f"{queue_id}.msg").write_bytes(b"someone else's")
    expected = f"cannot write spool file {queue / queue_id}.msg: File exists"
    with pytest.raises(SpoolError, match=f"^{re.escape(expected)}$"):
        spool.put(make_envelope(queue_id), MESSAGE)
    assert (queue / f"{queue_id}.msg").read_bytes() == b"someone else's"
    assert names(queue) == [f"{queue_id}.msg"]
    assert names(tmp_path / "spool" / "tmp") == []


def test_put_failing_at_the_envelope_removes_the_message(spool: Spool, tmp_path: Path) -> None:
    tmp = tmp_path / "spool" / "tmp"
    tmp.rmdir()
    tmp.write_bytes(b"")  # now tmp/<id>.env cannot be created
    queue_id = spool.new_id()
    with pytest.raises(SpoolError) as excinfo:
        spool.put(make_envelope(queue_id), MESSAGE)
    assert str(excinfo.value) == f"cannot write spool file {tmp}/{queue_id}.env: Not a directory"
    assert not isinstance(excinfo.value, SpoolFullError)
    assert names(tmp_path / "spool" / "queue") == []


def test_put_failing_mid_write_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    report = run_constrained_put(
        [sys.executable, "-c", _CONSTRAINED_PUT, str(root), "200000", "65536"]
    )
    kind, message = report["failed"]
    assert kind == "SpoolError"
    assert re.fullmatch(rf"cannot write spool file {root}/queue/\w+\.msg: File too large", message)
    assert report["leftovers"] == []
    assert report["retried"] is None


def test_put_on_a_full_disk_raises_spool_full_and_frees_the_space(tmp_path: Path) -> None:
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    mount = 'mount -t tmpfs -o size=64k tmpfs "$1"'
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) for a private tiny file system")
    probe = subprocess.run(
        ["unshare", "--mount", "sh", "-c", mount, "sh", str(mount_point)],
        capture_output=True,
        check=False,
        timeout=60,
    )
    if probe.returncode != 0:
        pytest.skip("needs permission to mount a tmpfs in a private mount namespace")
    root = mount_point / "spool"
    script = f'{mount} && exec "$2" -c "$3" "$1/spool" 200000 0'
    shell = ["sh", "-c", script, "sh", str(mount_point), sys.executable, _CONSTRAINED_PUT]
    report = run_constrained_put(["unshare", "--mount", *shell])
    kind, message = report["failed"]
    assert kind == "SpoolFullError"
    assert re.fullmatch(
        rf"cannot write spool file {root}/queue/\w+\.msg: No space left on device", message
    )
    assert report["leftovers"] == []
    assert report["retried"] is None  # the clean-up gave the space back


def test_concurrent_puts_are_all_readable(spool: Spool) -> None:
    messages = {spool.new_id(): MESSAGE + b"message %d\r\n" % n for n in range(50)}

    def put(queue_id: str) -> None:
        spool.put(make_envelope(queue_id, messages[queue_id]), messages[queue_id])

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(put, messages))
    assert spool.ids() == sorted(messages)
    for queue_id, message in messages.items():
        assert spool.message(queue_id) == message
        assert spool.envelope(queue_id).size == len(message)


# --- sweep -----------------------------------------------------------------------------------


def test_sweep_cleans_tmp_and_orphans(spool: Spool, tmp_path: Path) -> None:
    root = tmp_path / "spool"
    whole, half_written, lost_message = spool.new_id(), spool.new_id(), spool.new_id()
    spool.put(make_envelope(whole), MESSAGE)
    spool.put(make_envelope(lost_message), MESSAGE)
    (root / "queue" / f"{lost_message}.msg").unlink()
    (root / "queue" / f"{half_written}.msg").write_bytes(b"From: partial")
    (root / "queue" / "README").write_bytes(b"not ours")
    (root / "tmp" / f"{half_written}.env").write_bytes(b"{")
    (root / "tmp" / "junk").mkdir()
    (root / "tmp" / "junk" / "deeper").write_bytes(b"")

    result = spool.sweep()

    assert result == SweepResult(
        tmp_removed=2,
        orphan_messages_removed=1,
        orphan_envelopes=(lost_message,),
        unknown_entries=1,
    )
    assert names(root / "tmp") == []
    assert names(root / "queue") == [f"{whole}.env", f"{whole}.msg", "README"]
    assert names(root / "corrupt") == [f"{lost_message}.env"]
    assert spool.ids() == [whole]
    assert spool.message(whole) == MESSAGE


def test_sweep_keeps_an_earlier_corrupt_envelope(spool: Spool, tmp_path: Path) -> None:
    root = tmp_path / "spool"
    queue_id = spool.new_id()
    (root / "corrupt" / f"{queue_id}.env").write_bytes(b"first")
    (root / "queue" / f"{queue_id}.env").write_bytes(b"second")
    assert spool.sweep().orphan_envelopes == (queue_id,)
    kept = sorted((root / "corrupt").iterdir())
    assert len(kept) == 2
    assert sorted(path.read_bytes() for path in kept) == [b"first", b"second"]


def test_sweep_of_a_clean_spool_changes_nothing(spool: Spool) -> None:
    queue_id = spool.new_id()
    spool.put(make_envelope(queue_id), MESSAGE)
    assert spool.sweep() == SweepResult(0, 0, (), 0)
    assert spool.ids() == [queue_id]


# --- queue listings --------------------------------------------------------------------------


def test_format_queue_line() -> None:
    envelope = make_envelope("01HX0000000000ABCD", received_at=0.0, size=1234)
    assert format_queue_line(envelope) == (
        "01HX0000000000ABCD 1970-01-01T00:00:00Z 1234 alice@example.com"
        " -> bob@example.org,carol@example.net"
    )


def test_format_queue_line_shows_null_sender() -> None:
    envelope = make_envelope("01HX0000000000ABCD", sender="", recipients=("x@y.example",))
    assert format_queue_line(envelope).endswith(" <> -> x@y.example")


def test_format_queue_show_prints_envelope_and_headers_only() -> None:
    message = (
        b"Subject: hello \x1b[31mred\r\n"
        b"X-Folded: one\r\n\ttwo\r\n"
        b"X-Bad-Utf8: \xff\r\n"
        b"\r\n"
        b"SECRET BODY\r\n"
    )
    envelope = make_envelope("01HX0000000000ABCD", message, received_at=0.0, smtputf8=True)
    assert format_queue_show(envelope, message) == "\n".join(
        [
            "queue-id: 01HX0000000000ABCD",
            "received: 1970-01-01T00:00:00Z",
            f"size: {len(message)}",
            "user: alice",
            "sender: alice@example.com",
            "recipient: bob@example.org",
            "recipient: carol@example.net",
            "smtputf8: yes",
            "body: 7BIT",
            "",
            "Subject: hello \\x1b[31mred",
            "X-Folded: one",
            "\ttwo",
            "X-Bad-Utf8: \\xff",
        ]
    )


def test_format_queue_show_of_a_message_without_body() -> None:
    message = b"Subject: only headers\r\n"
    text = format_queue_show(make_envelope("01HX0000000000ABCD", message), message)
    assert text.endswith("body: 7BIT\n\nSubject: only headers")
