"""Tests for the host-name grammar in sendgate.smtp.address, against a reference definition.

The reference below is written from RFC 1123 2.1 and RFC 3696 2 without regular expressions, so
that the two definitions can disagree; hypothesis looks for a name on which they do.
"""

import string

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sendgate.smtp.address import MAX_HOST_NAME, is_domain_name, is_host_name, is_ldh_label

_LDH = frozenset(string.ascii_letters + string.digits + "-")


def reference_label(label: str, *, underscore: bool) -> bool:
    allowed = _LDH | {"_"} if underscore else _LDH
    return (
        1 <= len(label) <= 63
        and all(char in allowed for char in label)
        and not label.startswith("-")
        and not label.endswith("-")
    )


def reference_domain(name: str, *, underscore: bool) -> bool:
    labels = name.split(".")
    return len(name) <= 253 and all(reference_label(x, underscore=underscore) for x in labels)


def reference_host(name: str, *, underscore: bool) -> bool:
    last = name.split(".")[-1]
    numeric = last != "" and all(char in string.digits for char in last)
    return reference_domain(name, underscore=underscore) and not numeric


# Characters near the grammar's edges: its alphabet, the dot, and look-alikes outside it.
_CHARS = st.sampled_from([*"aZ09-._", "\u00e9", "\u0661", "\u212a", "\n", " ", "*", ":"])
_LABELS = st.text(_CHARS.filter(lambda char: char != "."), max_size=70)
_NAMES = st.one_of(
    st.text(_CHARS, max_size=80),
    st.lists(_LABELS, min_size=1, max_size=6).map(".".join),
    # Long names of short valid labels, to reach the total length limit.
    st.lists(st.sampled_from(["a", "b9", "x-y", "7"]), min_size=60, max_size=130).map(".".join),
)


@given(label=_LABELS, underscore=st.booleans())
@example(label="a" * 63, underscore=False)
@example(label="a" * 64, underscore=False)
@example(label="_dmarc", underscore=True)
def test_label_agrees_with_the_reference(label: str, underscore: bool) -> None:
    assert is_ldh_label(label, underscore=underscore) == reference_label(
        label, underscore=underscore
    )


@given(name=_NAMES, underscore=st.booleans())
def test_domain_and_host_name_agree_with_the_reference(name: str, underscore: bool) -> None:
    assert is_domain_name(name, underscore=underscore) == reference_domain(
        name, underscore=underscore
    )
    assert is_host_name(name, underscore=underscore) == reference_host(name, underscore=underscore)


@given(length=st.integers(min_value=1, max_value=80))
def test_a_label_is_at_most_63_characters(length: int) -> None:
    assert is_ldh_label("x" * length) == (length <= 63)


@given(length=st.integers(min_value=1, max_value=300))
def test_a_name_is_at_most_253_characters(length: int) -> None:
    labels, left = [], length
    while left > 10:
        labels.append("abcdefghi")
        left -= 10
    name = ".".join([*labels, "x" * left])

    assert len(name) == length
    assert is_domain_name(name) == is_host_name(name) == (length <= MAX_HOST_NAME)


@given(name=_NAMES)
def test_a_host_name_is_a_domain_name(name: str) -> None:
    if is_host_name(name):
        assert is_domain_name(name)
    if is_domain_name(name):
        assert is_domain_name(name, underscore=True)


def test_limits() -> None:
    assert MAX_HOST_NAME == 253


@pytest.mark.parametrize(
    ("name", "domain", "host"),
    [
        ("mail.example.com", True, True),
        ("Mail.Example.COM", True, True),
        ("localhost", True, True),
        ("192.0.2.1", True, False),
        ("mx.123", True, False),
        ("123.example", True, True),
        ("", False, False),
        ("mail.example.com.", False, False),
        ("mail..example.com", False, False),
        ("-mail.example.com", False, False),
        ("mail-.example.com", False, False),
        ("mail_1.example.com", False, False),
        ("b\u00fccher.example", False, False),
        ("\u212a.example", False, False),
    ],
)
def test_names(name: str, domain: bool, host: bool) -> None:
    assert is_domain_name(name) is domain
    assert is_host_name(name) is host


@pytest.mark.parametrize(
    ("name", "expected"),
    [("mail_1.example.com", True), ("_mta-sts.example.com", True), ("-mx_.example", False)],
)
def test_underscore_is_allowed_only_when_asked_for(name: str, expected: bool) -> None:
    assert is_host_name(name, underscore=True) is expected
    assert is_host_name(name) is False
