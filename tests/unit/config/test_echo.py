"""Tests for sendgate.config.echo: error locations, and values shown in errors and as TOML."""

import datetime
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sendgate.config.echo import Where, number, quote, show_path, shown, toml_string, toml_value

# tomllib never returns surrogates, so no config value holds one.
_TEXT = st.text(st.characters(exclude_categories=["Cs"]))
_VALUES = st.recursive(
    st.booleans() | st.integers() | _TEXT,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(text=_TEXT)
def test_toml_string_reads_back_and_is_one_printable_line(text: str) -> None:
    literal = toml_string(text)

    assert tomllib.loads(f"v = {literal}")["v"] == text
    assert literal.isprintable()


@given(value=_VALUES)
def test_toml_value_reads_back(value: object) -> None:
    assert tomllib.loads(f"v = {toml_value(value)}")["v"] == value


def test_toml_value_refuses_what_tomllib_never_returns() -> None:
    with pytest.raises(TypeError, match=r"^no TOML literal for \w*Path$"):
        toml_value(Path("x"))


@given(text=_TEXT)
def test_quote_is_one_line_of_at_most_60_characters_shown(text: str) -> None:
    quoted = quote(text)

    assert quoted.isprintable()
    if len(text) > 60:
        assert quoted == toml_string(text[:60]) + "..."
    else:
        assert quoted == toml_string(text)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (True, "true"),
        (False, "false"),
        (42, "42"),
        (2.5, "2.5"),
        (300.0, "300"),
        (10**30, "10000000000000000000..."),
        ("a\tb", '"a\\tb"'),
        ("\x00\U0001f600\U000e0001", '"\\u0000\U0001f600\\U000E0001"'),
        ([1], "an array"),
        ({"a": 1}, "a table"),
        (datetime.date(2026, 1, 1), "a date/time"),
    ],
)
def test_shown_values(raw: object, expected: str) -> None:
    assert shown(raw) == expected


def test_number_keeps_fractions_and_huge_floats() -> None:
    assert (number(0.05), number(1e15), number(7)) == ("0.05", "1000000000000000.0", "7")


def test_show_path_quotes_only_unprintable_paths() -> None:
    assert show_path(Path("/etc/sendgate.toml")) == "/etc/sendgate.toml"
    assert show_path("bad\nname") == '"bad\\nname"'


def test_where_names_file_and_dotted_key() -> None:
    top = Where("sendgate.toml", "", Path("/etc"))
    spot = top.child("delivery").child("routes").item(2).child("odd key")

    assert spot.key == 'delivery.routes[2]."odd key"'
    assert str(spot.error("bad")) == 'sendgate.toml: delivery.routes[2]."odd key": bad'
    assert str(top.error("bad")) == "sendgate.toml: bad"
    assert top.at("auth.required").key == "auth.required"
