"""The mail client set-up documents: parsed back as the clients parse them."""

from __future__ import annotations

import plistlib
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sendgate.web.clientconfig import (
    ClientConfigError,
    Offer,
    apple_profile,
    autodiscover_address,
    mailbox,
    outlook,
    thunderbird,
)

BOTH = Offer("mail.example.org", submissions_port=465, submission_port=587)
WITH_IMAP = Offer("mail.example.org", 465, 587, imap=("imap.example.org", 993))
ONLY_587 = Offer("mail.example.org", None, 587)
NS = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"
REQUEST = (
    b'<?xml version="1.0" encoding="utf-8"?>'
    b'<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/'
    b'requestschema/2006"><Request><EMailAddress>%s</EMailAddress>'
    b"<AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/"
    b"responseschema/2006a</AcceptableResponseSchema></Request></Autodiscover>"
)


def parse(document: bytes) -> ET.Element:
    return ET.fromstring(document)  # noqa: S314 - the documents sendgate made


def servers(document: bytes, kind: str) -> list[dict[str, str]]:
    root = parse(document)
    return [{child.tag: child.text or "" for child in s} for s in root.iter(kind)]


def test_thunderbird_gets_465_first_then_587_and_no_invented_imap() -> None:
    document = thunderbird(BOTH, "alice@example.net")
    root = parse(document)
    assert root.tag == "clientConfig"
    assert root.attrib == {"version": "1.1"}
    provider = root.find("emailProvider")
    assert provider is not None
    assert provider.attrib == {"id": "example.net"}
    assert provider.findtext("domain") == "example.net"
    assert servers(document, "incomingServer") == []
    common = {
        "hostname": "mail.example.org",
        "authentication": "password-cleartext",
        "username": "%EMAILADDRESS%",
    }
    assert servers(document, "outgoingServer") == [
        {**common, "port": "465", "socketType": "SSL"},
        {**common, "port": "587", "socketType": "STARTTLS"},
    ]


def test_thunderbird_offers_the_configured_imap_server() -> None:
    [incoming] = servers(thunderbird(WITH_IMAP, None), "incomingServer")
    assert (incoming["hostname"], incoming["port"], incoming["socketType"]) == (
        "imap.example.org",
        "993",
        "SSL",
    )
    root = parse(thunderbird(WITH_IMAP, None))
    assert root.findtext("emailProvider/domain") == "mail.example.org"  # no address given


def test_outlook_gets_one_smtp_protocol_and_the_address_as_login() -> None:
    root = parse(outlook(WITH_IMAP, "alice@example.net"))
    protocols = [
        {child.tag.removeprefix(NS): child.text for child in protocol}
        for protocol in root.iter(f"{NS}Protocol")
    ]
    assert [p["Type"] for p in protocols] == ["IMAP", "SMTP"]
    smtp = protocols[1]
    assert (smtp["Server"], smtp["Port"], smtp["SSL"]) == ("mail.example.org", "465", "on")
    assert (smtp["AuthRequired"], smtp["LoginName"]) == ("on", "alice@example.net")
    root = parse(outlook(ONLY_587, "alice@example.net"))
    [smtp_only] = [
        {child.tag.removeprefix(NS): child.text for child in p} for p in root.iter(f"{NS}Protocol")
    ]
    assert (smtp_only["Port"], smtp_only["Encryption"]) == ("587", "TLS")
    assert "SSL" not in smtp_only


def test_the_autodiscover_request_gives_its_address() -> None:
    # The domain is lower-cased (its case means nothing); the local part is kept.
    assert autodiscover_address(REQUEST % b"Alice@Example.NET") == "Alice@example.net"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not xml", "not XML"),
        (b"<Autodiscover/>", "no EMailAddress"),
        (REQUEST % b"no address", "emailaddress: "),
        (
            b'<!DOCTYPE x [<!ENTITY a "aaaa">]><Autodiscover><EMailAddress>&a;</EMailAddress>'
            b"</Autodiscover>",
            "a DTD or comment in the request: refused",
        ),
        (
            # The same DTD in UTF-16: the check must not be blind to it.
            '<?xml version="1.0" encoding="utf-16"?><!DOCTYPE x [<!ENTITY a "a@b.example">]>'
            "<Autodiscover><EMailAddress>&a;</EMailAddress></Autodiscover>".encode("utf-16"),
            "not UTF-8",
        ),
        (
            # Read as the UTF-8 it is: an unknown declared encoding is no 500.
            b'<?xml version="1.0" encoding="bogus"?><Autodiscover/>',
            "no EMailAddress",
        ),
    ],
)
def test_a_bad_autodiscover_request_is_refused(body: bytes, message: str) -> None:
    with pytest.raises(ClientConfigError, match=message):
        autodiscover_address(body)


@given(st.binary(max_size=300))
def test_any_autodiscover_body_gives_an_address_or_a_refusal(body: bytes) -> None:
    try:
        address = autodiscover_address(body)
    except ClientConfigError as exc:
        refusal = str(exc)
        assert "\n" not in refusal
    else:
        assert "@" in address


def test_the_apple_profile_describes_one_account() -> None:
    profile = plistlib.loads(apple_profile(WITH_IMAP, "alice@example.net"))
    assert profile["PayloadType"] == "Configuration"
    [account] = profile["PayloadContent"]
    assert account["PayloadType"] == "com.apple.mail.managed"
    assert account["EmailAddress"] == "alice@example.net"
    assert account["IncomingMailServerHostName"] == "imap.example.org"
    assert account["IncomingMailServerPortNumber"] == 993
    assert account["OutgoingMailServerHostName"] == "mail.example.org"
    assert account["OutgoingMailServerPortNumber"] == 465
    assert account["OutgoingMailServerUseSSL"] is True
    assert account["OutgoingMailServerUsername"] == "alice@example.net"
    # The same profile again replaces the first: the same identifiers.
    again = plistlib.loads(apple_profile(WITH_IMAP, "alice@example.net"))
    assert again["PayloadUUID"] == profile["PayloadUUID"]
    other = plistlib.loads(apple_profile(WITH_IMAP, "bob@example.net"))
    assert other["PayloadUUID"] != profile["PayloadUUID"]


def test_no_apple_profile_without_an_incoming_server() -> None:
    with pytest.raises(ClientConfigError, match=r"no incoming server is configured \(http.imap\)"):
        apple_profile(BOTH, "alice@example.net")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "emailaddress: missing"),
        ("", "emailaddress: missing"),
        ("a" * 250 + "@b.example", "longer than 254"),
        ("no-at-sign", "emailaddress: "),
        ("a@b@c", "emailaddress: "),
    ],
)
def test_mailbox_refuses_what_is_no_address(text: str | None, message: str) -> None:
    with pytest.raises(ClientConfigError, match=message):
        mailbox(text)


@given(st.text(max_size=80))
def test_an_accepted_address_is_written_escaped(text: str) -> None:
    try:
        address = mailbox(text)
    except ClientConfigError:
        return
    root = parse(outlook(BOTH, address))
    assert [e.text for e in root.iter(f"{NS}LoginName")] == [address]
