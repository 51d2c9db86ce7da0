"""Tests for sendgate.store.envelope: queue ids and the envelope's strict JSON form."""

import json
import random
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.support.mail import make_envelope

from sendgate.errors import SpoolError
from sendgate.smtp.dsn import RcptParameters
from sendgate.store.envelope import Envelope, new_queue_id, queue_id_time

ID_PATTERN = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{17}")
DELETE = object()  # marks a field to drop in the malformed-envelope cases


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


@given(now=st.floats(0, 2e12 / 1000), rand=st.binary(min_size=5, max_size=5))
def test_queue_id_time_reads_back_the_time(now: float, rand: bytes) -> None:
    # The id keeps whole milliseconds, as new_queue_id truncates them.
    assert queue_id_time(new_queue_id(now, rand)) == int(now * 1000) / 1000


def test_queue_id_time_refuses_what_is_no_queue_id() -> None:
    with pytest.raises(SpoolError, match="invalid queue id"):
        queue_id_time("01M94BG2YGF23TD6DI")  # I is not Crockford base32


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


def test_dsn_and_requiretls_fields_round_trip_and_are_absent_when_unset() -> None:
    plain = make_envelope("01HX0000000000ABCD", recipients=("a@example.org", "b@example.org"))
    assert set(json.loads(plain.to_json())) == {
        "version",
        "queue_id",
        "sender",
        "recipients",
        "user",
        "received_at",
        "size",
        "smtputf8",
        "body",
    }
    envelope = make_envelope(
        "01HX0000000000ABCD",
        recipients=("a@example.org", "b@example.org"),
        ret="HDRS",
        envid="QQ 3.14",
        requiretls=True,
        rcpt_params=(
            RcptParameters(("SUCCESS", "DELAY"), "rfc822;a+2Bx@example.org"),
            RcptParameters(),
        ),
    )
    raw = json.loads(envelope.to_json())
    assert raw["rcpt_params"] == ["NOTIFY=SUCCESS,DELAY ORCPT=rfc822;a+2Bx@example.org", ""]
    assert raw["requiretls"] is True
    back = Envelope.from_json(envelope.to_json())
    assert back == envelope
    assert back.notify(0) == ("SUCCESS", "DELAY")
    assert back.orcpt(0) == "rfc822;a+2Bx@example.org"
    assert back.notify(1) is None
    assert plain.notify(1) is None
    assert plain.orcpt(0) is None


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        (
            {"rcpt_params": (RcptParameters(("NEVER", "DELAY")), RcptParameters())},
            "'rcpt_params': malformed",
        ),
        ({"rcpt_params": (RcptParameters(),)}, "not one per recipient"),
        ({"envid": ""}, "'envid'"),
    ],
)
def test_envelope_refuses_dsn_fields_it_could_not_read_back(
    changes: dict[str, Any], problem: str
) -> None:
    with pytest.raises(SpoolError, match=re.escape(problem)):
        make_envelope("01HX0000000000ABCD", **changes)


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
        pytest.param("ret", "NONE", id="ret-unknown"),
        pytest.param("ret", 1, id="ret-number"),
        pytest.param("envid", "a\nb", id="envid-control"),
        pytest.param("envid", "x" * 101, id="envid-long"),
        pytest.param("envid", ["x"], id="envid-list"),
        pytest.param("requiretls", False, id="requiretls-false"),
        pytest.param("requiretls", 1, id="requiretls-number"),
        pytest.param("rcpt_params", ["NOTIFY=NEVER", "", ""], id="rcpt-params-too-many"),
        pytest.param("rcpt_params", ["NOTIFY=SOMETIMES", ""], id="rcpt-params-malformed"),
        pytest.param("rcpt_params", "NOTIFY=NEVER", id="rcpt-params-string"),
        pytest.param("rcpt_params", [None], id="rcpt-params-null"),
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


def test_deeply_nested_envelope_json_is_a_spool_error() -> None:
    with pytest.raises(SpoolError, match="nested too deeply"):
        Envelope.from_json(b"[" * 100_000 + b"]" * 100_000)
