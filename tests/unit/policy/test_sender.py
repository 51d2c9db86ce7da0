"""Tests for who may send as which address: examples, then properties with hypothesis."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sendgate.policy.sender import may_send_as

# Any characters but "@" for domains; local parts may contain "@" (quoted local parts do).
domains = st.text(st.characters(exclude_characters="@"), min_size=1, max_size=30)
locals_ = st.text(min_size=1, max_size=30)


@st.composite
def ascii_case_variants(draw: st.DrawFn, text: str) -> str:
    """The same text with the case of any of its ASCII letters flipped."""
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(
        char.swapcase() if flip and char.isascii() else char
        for char, flip in zip(text, flips, strict=True)
    )


@pytest.mark.parametrize(
    ("owned", "address"),
    [
        pytest.param(("alice@example.org",), "alice@example.org", id="exact"),
        pytest.param(("alice@example.org",), "Alice@EXAMPLE.org", id="exact-other-case"),
        pytest.param(("bob@example.org", "@example.org"), "anyone@Example.ORG", id="domain"),
        pytest.param(("Anna@BÜCHER.example",), "anna@bücher.example", id="idn"),
        pytest.param(("x@straẞe.de",), "X@STRAßE.de", id="capital-sharp-s"),
        pytest.param(("@[192.0.2.1]",), "root@[192.0.2.1]", id="ipv4-literal"),
        pytest.param(("x@[IPv6:2001:db8::1]",), "X@[ipv6:2001:DB8::1]", id="ipv6-literal"),
        pytest.param(('"a@b"@example.org',), '"A@B"@Example.org', id="quoted-local-part"),
        pytest.param(("@example.org",), '"a@b"@example.org', id="quoted-local-in-domain"),
    ],
)
def test_allowed(owned: tuple[str, ...], address: str) -> None:
    assert may_send_as(owned, address) is True


@pytest.mark.parametrize(
    ("owned", "address"),
    [
        pytest.param((), "alice@example.org", id="nothing-owned"),
        pytest.param(("alice@example.org",), "bob@example.org", id="other-local-part"),
        pytest.param(("alice@example.org",), "alice@example.net", id="other-domain"),
        pytest.param(("@example.org",), "alice@mail.example.org", id="no-subdomains"),
        pytest.param(("@mail.example.org",), "alice@example.org", id="no-parent-domain"),
        pytest.param(("example.org",), "alice@example.org", id="bare-domain-is-no-entry"),
        pytest.param(("@strasse.de",), "x@straße.de", id="sharp-s-is-not-ss"),
        pytest.param(('@b"@example.org',), '"a@b"@example.org', id="split-at-last-at"),
        pytest.param(("alice",), "alice", id="no-at"),
        pytest.param(("@example.org",), "@example.org", id="empty-local-part"),
        pytest.param(("alice@",), "alice@", id="empty-domain"),
        pytest.param(("",), "", id="empty"),
    ],
)
def test_refused(owned: tuple[str, ...], address: str) -> None:
    assert may_send_as(owned, address) is False


@given(local=locals_, domain=domains, data=st.data())
def test_an_address_may_send_as_itself_in_any_ascii_case(
    local: str, domain: str, data: st.DataObject
) -> None:
    address = f"{local}@{domain}"
    owned = data.draw(ascii_case_variants(address))
    sent = data.draw(ascii_case_variants(address))
    assert may_send_as((owned,), sent)


@given(local=locals_, domain=domains)
def test_an_address_may_send_as_its_lower_case_form(local: str, domain: str) -> None:
    address = f"{local}@{domain}"
    assert may_send_as((address,), address.lower())
    assert may_send_as((address.lower(),), address)


@given(local=locals_, domain=domains, data=st.data())
def test_a_domain_entry_grants_every_local_part(
    local: str, domain: str, data: st.DataObject
) -> None:
    entry = data.draw(ascii_case_variants(f"@{domain}"))
    assert may_send_as((entry,), f"{local}@{domain}")


@given(local=locals_, domain=domains, other=domains)
def test_a_domain_entry_grants_nothing_outside_its_domain(
    local: str, domain: str, other: str
) -> None:
    assert not may_send_as((f"@{domain}",), f"{local}@{other}.{domain}")
    if other.lower() != domain.lower():
        assert not may_send_as((f"@{domain}",), f"{local}@{other}")


@given(local=locals_, other=locals_, domain=domains)
def test_an_exact_entry_grants_no_other_local_part(local: str, other: str, domain: str) -> None:
    if other.lower() != local.lower():
        assert not may_send_as((f"{local}@{domain}",), f"{other}@{domain}")
