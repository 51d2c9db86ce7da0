"""Tests for the password policy and the argon2id hashing helpers."""

import pytest
from argon2 import PasswordHasher, Type, extract_parameters
from argon2.profiles import RFC_9106_LOW_MEMORY
from zxcvbn.frequency_lists import FREQUENCY_LISTS

from sendgate.policy.passwords import (
    MAX_LENGTH,
    MIN_LENGTH,
    hash_password,
    new_hasher,
    password_problem,
)

USER = "alice@example.org"
GOOD = "violet anchor lantern 93"


def test_a_long_uncommon_password_is_accepted() -> None:
    assert password_problem(GOOD, USER) is None


def test_limits() -> None:
    assert (MIN_LENGTH, MAX_LENGTH) == (12, 1024)


def test_too_short_names_the_minimum() -> None:
    assert password_problem("vi0let-anc!", USER) == "password is too short (minimum 12 characters)"
    assert password_problem("vi0let-anc!r", USER) is None


def test_too_long_names_the_maximum() -> None:
    longest = "".join(chr(0x4E00 + index) for index in range(MAX_LENGTH))
    assert password_problem(longest, USER) is None
    assert password_problem(longest + "x", USER) == "password is too long (maximum 1024 characters)"


@pytest.mark.parametrize("char", ["\x00", "\t", "\n", "\x1b", "\x7f", "\x85"], ids=ascii)
def test_control_characters_are_refused(char: str) -> None:
    assert password_problem(f"violet anchor{char}lantern", USER) == (
        "password contains control characters"
    )


def test_unpaired_surrogates_are_refused() -> None:
    assert password_problem("violet anchor \udc80 lantern", USER) == (
        "password contains invalid characters (unpaired surrogates)"
    )


@pytest.mark.parametrize(
    ("password", "username"),
    [
        pytest.param("xx-ALICE-93-lantern", USER, id="contains-any-case"),
        pytest.param("averyverylonguser", "averyverylonguser@example.org", id="equals"),
        pytest.param("Bobbylantern93", "bob@example.org", id="three-letters"),
        pytest.param("lantern-alice-93", "alice", id="no-domain"),
        pytest.param('lantern-"a@b"-93', '"a@b"@example.org', id="split-at-last-at"),
    ],
)
def test_the_user_name_is_refused(password: str, username: str) -> None:
    assert password_problem(password, username) == "password contains the user name"


def test_very_short_local_parts_are_not_searched() -> None:
    assert password_problem("violet alanchor 93", "al@example.org") is None


@pytest.mark.parametrize(
    "password",
    [
        pytest.param("qwerty123456", id="listed"),
        pytest.param("QwErTy123456", id="mixed-case"),
        pytest.param("l3av3m3al0n3", id="l33t"),
        pytest.param("654321ytrewq", id="reversed"),
    ],
)
def test_common_passwords_are_refused(password: str) -> None:
    assert password_problem(password, USER) == "password is a commonly used password"


def test_every_long_enough_listed_password_is_refused() -> None:
    listed = [word for word in FREQUENCY_LISTS["passwords"] if len(word) >= MIN_LENGTH]
    assert listed  # the list still has entries this test can exercise
    for word in listed:
        assert password_problem(word, USER) == "password is a commonly used password", word


def test_a_listed_password_inside_a_longer_one_is_not_common() -> None:
    assert password_problem("qwerty123456 violet anchor", USER) is None


def test_problems_never_quote_the_password() -> None:
    for password in ("shrt", "qwerty123456", "xx-alice-93-lantern", "bad\x00password!"):
        problem = password_problem(password, USER)
        assert problem is not None
        assert password not in problem
        assert "\n" not in problem


def test_new_hasher_uses_rfc_9106_low_memory() -> None:
    hasher = new_hasher()
    assert hasher.type is Type.ID
    assert (hasher.time_cost, hasher.memory_cost, hasher.parallelism) == (
        RFC_9106_LOW_MEMORY.time_cost,
        RFC_9106_LOW_MEMORY.memory_cost,
        RFC_9106_LOW_MEMORY.parallelism,
    )
    assert (hasher.salt_len, hasher.hash_len) == (16, 32)


def test_hash_password_round_trips_with_a_fresh_salt() -> None:
    hasher = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    first = hash_password(hasher, GOOD)
    second = hash_password(hasher, GOOD)
    assert first.startswith("$argon2id$")
    assert first != second
    assert extract_parameters(first).memory_cost == 8
    assert hasher.verify(first, GOOD)
    assert hasher.verify(second, GOOD)
