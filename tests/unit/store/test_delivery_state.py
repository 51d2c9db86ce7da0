"""Tests for sendgate.store.delivery_state: round trips and strict parsing."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sendgate.errors import SpoolError
from sendgate.store.delivery_state import (
    DELIVERED,
    FAILED,
    PENDING,
    DeliveryState,
    RecipientState,
)
from sendgate.text import one_line

BOB = "bob@example.org"
CAROL = "carol@example.org"
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def _valid_record() -> dict[str, Any]:
    return {
        "version": 1,
        "next_attempt": T0 + 300,
        "attempts": 1,
        "delay_notified": False,
        "recipients": [
            {
                "address": BOB,
                "status": "delivered",
                "attempts": 1,
                "last_attempt": T0,
                "host": "mx1.example.org",
                "reply": "250 2.0.0 OK",
                "enhanced": "2.0.0",
            },
            {
                "address": CAROL,
                "status": "pending",
                "attempts": 1,
                "last_attempt": T0,
                "host": "mx1.example.org",
                "reply": "451 4.3.0 later",
                "enhanced": "4.3.0",
            },
        ],
    }


def _parse(record: Any, recipients: tuple[str, ...] = (BOB, CAROL)) -> DeliveryState:
    return DeliveryState.from_json(json.dumps(record).encode(), recipients)


def _refused(data: bytes, recipients: tuple[str, ...] = (BOB, CAROL)) -> str:
    with pytest.raises(SpoolError) as caught:
        DeliveryState.from_json(data, recipients)
    message = str(caught.value)
    assert message.startswith("state: ")
    assert "\n" not in message
    return message


def _problem(data: bytes) -> str | None:
    """The SpoolError message for `data`, None if it parses (any other exception propagates)."""
    try:
        state = DeliveryState.from_json(data, (BOB, CAROL))
    except SpoolError as exc:
        return str(exc)
    assert [row.address for row in state.recipients] == [BOB, CAROL]
    return None


# --- the happy path -----------------------------------------------------------------------------


def test_fresh_state_has_every_recipient_pending_in_order() -> None:
    state = DeliveryState.fresh((BOB, CAROL, BOB), due=T0)
    assert [row.address for row in state.recipients] == [BOB, CAROL, BOB]
    assert state.pending() == [0, 1, 2]
    assert state.next_attempt == T0
    assert state.attempts == 0
    assert not state.finished()


def test_with_results_replaces_only_the_rows_given() -> None:
    state = DeliveryState.fresh((BOB, CAROL))
    done = RecipientState(BOB, DELIVERED, attempts=1, last_attempt=T0)
    updated = state.with_results({0: done})
    assert updated.recipients == (done, RecipientState(CAROL))
    assert updated.pending() == [1]
    assert state.pending() == [0, 1]  # frozen: the original is unchanged
    finished = updated.with_results({1: RecipientState(CAROL, FAILED, attempts=1)})
    assert finished.finished()


def test_a_valid_record_parses_to_the_expected_state() -> None:
    state = _parse(_valid_record())
    assert state == DeliveryState(
        recipients=(
            RecipientState(BOB, DELIVERED, 1, T0, "mx1.example.org", "250 2.0.0 OK", "2.0.0"),
            RecipientState(CAROL, PENDING, 1, T0, "mx1.example.org", "451 4.3.0 later", "4.3.0"),
        ),
        next_attempt=T0 + 300,
        attempts=1,
        delay_notified=False,
    )


def test_integers_are_accepted_where_times_are_expected() -> None:
    record = _valid_record()
    record["next_attempt"] = 1_800_000_300
    record["recipients"][0]["last_attempt"] = 1_800_000_000
    state = _parse(record)
    assert state.next_attempt == 1_800_000_300.0
    assert isinstance(state.next_attempt, float)
    assert state.recipients[0].last_attempt == T0


def test_to_json_makes_replies_one_line() -> None:
    state = DeliveryState(
        (RecipientState(BOB, reply="451-first line\n451 second\x1b[31m line"),), next_attempt=T0
    )
    again = DeliveryState.from_json(state.to_json(), (BOB,))
    assert again.recipients[0].reply == "451-first line / 451 second [31m line"


def test_to_json_keeps_non_ascii_addresses_readable() -> None:
    address = "jörg@bücher.example"
    data = DeliveryState.fresh((address,)).to_json()
    assert address.encode("utf-8") in data
    assert DeliveryState.from_json(data, (address,)).recipients[0].address == address


_TEXT = st.text(st.characters(codec="utf-8"), max_size=40)
_TIME = st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False)
_ROW = st.builds(
    RecipientState,
    address=_TEXT,
    status=st.sampled_from([PENDING, DELIVERED, FAILED]),
    attempts=st.integers(0, 10_000),
    last_attempt=st.none() | _TIME,
    host=st.none() | _TEXT,
    reply=st.none() | st.text(st.characters(codec="utf-8"), max_size=1200),
    enhanced=st.none() | st.from_regex(r"[245]\.\d{1,3}\.\d{1,3}", fullmatch=True),
)


@given(
    rows=st.lists(_ROW, min_size=1, max_size=5),
    due=_TIME,
    attempts=st.integers(0, 10_000),
    notified=st.booleans(),
)
def test_round_trip_keeps_everything_but_unsafe_reply_text(
    rows: list[RecipientState], due: float, attempts: int, notified: bool
) -> None:
    state = DeliveryState(tuple(rows), next_attempt=due, attempts=attempts, delay_notified=notified)
    addresses = tuple(row.address for row in rows)
    again = DeliveryState.from_json(state.to_json(), addresses)
    expected = tuple(
        RecipientState(
            r.address,
            r.status,
            r.attempts,
            r.last_attempt,
            r.host,
            None if r.reply is None else one_line(r.reply),
            r.enhanced,
        )
        for r in rows
    )
    assert again == DeliveryState(expected, due, attempts, notified)
    # What was parsed serialises to the same bytes: the format is stable.
    assert again.to_json() == state.to_json()


# --- strict parsing -----------------------------------------------------------------------------

_WRONG_TOP = [
    ("version", 2),
    ("version", "1"),
    ("next_attempt", "0"),
    ("next_attempt", None),
    ("next_attempt", True),
    ("next_attempt", [1]),
    ("attempts", "1"),
    ("attempts", False),
    ("attempts", None),
    ("delay_notified", 0),
    ("delay_notified", "false"),
    ("delay_notified", None),
    ("recipients", 5),
    ("recipients", None),
    ("recipients", ["bob@example.org", "carol@example.org"]),
    ("recipients", [None, None]),
]


@pytest.mark.parametrize(("key", "value"), _WRONG_TOP)
def test_a_wrong_top_level_value_is_a_spool_error(key: str, value: object) -> None:
    record = _valid_record()
    record[key] = value
    _refused(json.dumps(record).encode())


@pytest.mark.parametrize(
    "key", ["version", "next_attempt", "attempts", "delay_notified", "recipients"]
)
def test_a_missing_top_level_key_is_a_spool_error(key: str) -> None:
    record = _valid_record()
    del record[key]
    assert key in _refused(json.dumps(record).encode())


_WRONG_ROW = [
    ("address", None),
    ("address", 5),
    ("status", "done"),
    ("status", None),
    ("status", ["pending"]),
    ("status", "PENDING"),
    ("attempts", "1"),
    ("attempts", True),
    ("attempts", None),
    ("last_attempt", "2027-01-15T08:00:00Z"),
    ("last_attempt", False),
    ("host", 25),
    ("host", ["mx1.example.org"]),
    ("reply", 451),
    ("reply", {"code": 451}),
    ("enhanced", 4.3),
]


@pytest.mark.parametrize(("key", "value"), _WRONG_ROW)
def test_a_wrong_recipient_value_is_a_spool_error(key: str, value: object) -> None:
    record = _valid_record()
    record["recipients"][1][key] = value
    _refused(json.dumps(record).encode())


@pytest.mark.parametrize(
    "key", ["address", "status", "attempts", "last_attempt", "host", "reply", "enhanced"]
)
def test_a_missing_recipient_key_is_a_spool_error(key: str) -> None:
    record = _valid_record()
    del record["recipients"][0][key]
    assert key in _refused(json.dumps(record).encode())


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{",
        b"not json",
        b"\xff\xfe{}",
        b"null",
        b"[]",
        b'"text"',
        b"42",
        b"{}",
    ],
)
def test_data_that_is_not_a_state_object_is_a_spool_error(data: bytes) -> None:
    _refused(data)


def test_an_unsupported_version_is_named() -> None:
    record = _valid_record()
    record["version"] = 7
    assert _refused(json.dumps(record).encode()) == "state: unsupported version 7"


@pytest.mark.parametrize(
    "recipients",
    [
        (BOB,),  # fewer than stored
        (BOB, CAROL, "dave@example.org"),  # more than stored
        (CAROL, BOB),  # another order
        (BOB, "Carol@example.org"),  # another spelling
    ],
)
def test_state_for_other_recipients_is_refused(recipients: tuple[str, ...]) -> None:
    data = json.dumps(_valid_record()).encode()
    message = _refused(data, recipients)
    assert message == "state: recipients do not match the envelope"


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_times_are_refused(text: str) -> None:
    data = json.dumps(_valid_record()).replace(str(T0 + 300), text).encode()
    assert text.encode() in data
    _refused(data)


@pytest.mark.parametrize("value", [1.5, -1])
def test_attempt_counts_must_be_non_negative_integers(value: float) -> None:
    record = _valid_record()
    record["attempts"] = value
    _refused(json.dumps(record).encode())


@pytest.mark.parametrize("where", ["top", "recipient"])
def test_unknown_keys_are_refused(where: str) -> None:
    record = _valid_record()
    target = record if where == "top" else record["recipients"][0]
    target["next_attempts"] = 0
    _refused(json.dumps(record).encode())


def test_deeply_nested_json_is_a_spool_error() -> None:
    _refused(b"[" * 100_000 + b"]" * 100_000)


@given(st.binary(max_size=300))
def test_any_bytes_give_a_state_or_a_spool_error(data: bytes) -> None:
    problem = _problem(data)
    assert problem is None or (problem.startswith("state: ") and "\n" not in problem)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


@given(
    st.sampled_from(
        [
            "version",
            "next_attempt",
            "attempts",
            "delay_notified",
            "recipients",
            "0.address",
            "0.status",
            "0.attempts",
            "0.last_attempt",
            "1.host",
            "1.reply",
            "1.enhanced",
        ]
    ),
    _JSON,
)
def test_any_value_in_any_field_gives_a_state_or_a_spool_error(field: str, value: object) -> None:
    record = copy.deepcopy(_valid_record())
    index, _, key = field.rpartition(".")
    target = record["recipients"][int(index)] if index else record
    target[key] = value
    problem = _problem(json.dumps(record).encode())
    assert problem is None or (problem.startswith("state: ") and "\n" not in problem)
