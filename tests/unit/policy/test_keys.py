"""Tests for sendgate.policy.keys: ban targets typed by operators, read back from keys."""

from __future__ import annotations

import pytest

from sendgate.policy.keys import describe_key, known_lock_key, parse_ban_target


@pytest.mark.parametrize(
    ("typed", "key"),
    [
        ("192.0.2.7", "net:192.0.2.7/32"),
        ("192.0.2.0/24", "net:192.0.2.0/24"),
        ("2001:db8::1", "net:2001:db8::/64"),
        ("::ffff:192.0.2.7", "net:192.0.2.7/32"),
        ("Alice@Example.org", "account:alice@example.org"),
        ("alice@example.org|192.0.2.0/24", "known:alice@example.org|192.0.2.0/24"),
    ],
)
def test_targets_become_keys_and_read_back(typed: str, key: str) -> None:
    assert parse_ban_target(typed) == key
    kind, target = describe_key(key)
    assert parse_ban_target(target) == key
    assert kind in {"network", "account", "known"}


@pytest.mark.parametrize(
    "typed", ["192.0.2.7/24", "nonsense", "a@b|192.0.2.7/24", "a b@c", "@example.org", "x|y"]
)
def test_bad_targets_are_refused_in_one_line(typed: str) -> None:
    with pytest.raises(ValueError, match=r"^[^\n]+$"):
        parse_ban_target(typed)


def test_known_locks_have_their_own_prefix() -> None:
    assert known_lock_key("Bob@example.org", "192.0.2.0/24") == "known:bob@example.org|192.0.2.0/24"
    assert describe_key("other:x") == ("other", "other:x")
