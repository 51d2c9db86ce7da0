"""Property: the shortcut for plain From:/Sender: values agrees with the full RFC 5322 parse."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sendgate.smtp.address import (
    Address,
    AddressError,
    parse_header_mailboxes,
    parse_header_mailboxes_fully,
)

# Near the edge of the plain grammar: atext, dots, quotes, spaces, brackets, encoded-word marks.
_ATOM = st.text("aZ09.-_+=?'\"\\ ()<>@,;:[]é", min_size=0, max_size=8)
_NAME = st.one_of(
    st.just(""),
    st.lists(_ATOM, min_size=1, max_size=3).map(" ".join),
    _ATOM.map(lambda t: f'"{t}"'),
    st.just("=?utf-8?q?J=C3=B6rg?="),
    st.just("=?bad?="),
)
_LOCAL = st.one_of(_ATOM, st.sampled_from(["alice", "a.b", ".a", "a..b", "a+tag", '"q s"']))
_DOMAIN = st.one_of(
    st.sampled_from(["example.org", "EXAMPLE.org", "a-.b", "-a.b", "a..b", "x", "[127.0.0.1]"]),
    st.text("ab-.1", min_size=1, max_size=12),
)


@st.composite
def values(draw: st.DrawFn) -> str:
    addr = f"{draw(_LOCAL)}@{draw(_DOMAIN)}"
    form = draw(st.sampled_from(["bare", "angle", "named", "named-nospace"]))
    name = draw(_NAME)
    return {
        "bare": addr,
        "angle": f"<{addr}>",
        "named": f"{name} <{addr}>",
        "named-nospace": f"{name}<{addr}>",
    }[form]


def _outcome(parse: object, value: str, smtputf8: bool) -> list[Address] | str:
    try:
        return parse("From", value, smtputf8=smtputf8)  # type: ignore[operator, no-any-return]
    except AddressError:
        return "refused"


@settings(max_examples=3000, deadline=None)
@given(values(), st.booleans())
def test_the_shortcut_and_the_full_parse_agree(value: str, smtputf8: bool) -> None:
    fast = _outcome(parse_header_mailboxes, value.strip(), smtputf8)
    full = _outcome(parse_header_mailboxes_fully, value.strip(), smtputf8)
    assert fast == full, value
