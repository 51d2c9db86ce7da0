"""The documents mail clients set themselves up from: Thunderbird's autoconfig, Outlook's
autodiscover (the POX form) and an Apple configuration profile.

Each describes what this server offers for sending (465 with TLS from the first byte first,
RFC 8314, then 587 with STARTTLS; password authentication, the address as login) and, only when
one is configured, an IMAP server for incoming mail: nothing is invented. Apple profiles need an
incoming server, so without one there is none.

Security: the address in a request is untrusted; it must parse as a mailbox and is written into
the documents by ElementTree and plistlib, which escape it. Autodiscover requests are parsed
only after their size is bounded (by the HTTP server) and with any DTD refused, so no entity
can be declared, let alone expanded.
"""

from __future__ import annotations

import plistlib
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from sendgate.smtp.address import AddressError, parse_mailbox

MAX_ADDRESS = 254
_AUTODISCOVER = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
_OUTLOOK = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"


class ClientConfigError(ValueError):
    """A request the documents cannot be made for; the message says why, in one line."""


@dataclass(frozen=True, slots=True)
class Offer:
    """What the documents describe: this host's listeners and the optional IMAP server."""

    hostname: str
    submissions_port: int | None  # implicit TLS (465)
    submission_port: int | None  # STARTTLS (587)
    imap: tuple[str, int] | None = None  # host and port, implicit TLS

    def sending(self) -> list[tuple[int, bool]]:
        """(port, implicit TLS) of each way to send, the preferred first."""
        ways = [(self.submissions_port, True), (self.submission_port, False)]
        return [(port, implicit) for port, implicit in ways if port is not None]


def mailbox(text: str | None) -> str:
    """The request's address, checked; ClientConfigError names what is wrong."""
    if not text:
        raise ClientConfigError("emailaddress: missing")
    if len(text) > MAX_ADDRESS:
        raise ClientConfigError(f"emailaddress: longer than {MAX_ADDRESS} characters")
    try:
        return str(parse_mailbox(text, smtputf8=True))
    except AddressError as exc:
        raise ClientConfigError(f"emailaddress: {exc}") from None


def thunderbird(offer: Offer, address: str | None) -> bytes:
    """The autoconfig document (clientConfig 1.1); the domain is the address's, else the host's."""
    domain = address.rpartition("@")[2] if address else offer.hostname
    root = ET.Element("clientConfig", version="1.1")
    provider = ET.SubElement(root, "emailProvider", id=domain)
    _text(provider, "domain", domain)
    _text(provider, "displayName", f"{domain} mail")
    _text(provider, "displayShortName", domain)
    if offer.imap is not None:
        incoming = ET.SubElement(provider, "incomingServer", type="imap")
        _server(incoming, *offer.imap, "SSL")
    for port, implicit in offer.sending():
        outgoing = ET.SubElement(provider, "outgoingServer", type="smtp")
        _server(outgoing, offer.hostname, port, "SSL" if implicit else "STARTTLS")
    return _xml(root)


def _server(parent: ET.Element, host: str, port: int, socket_type: str) -> None:
    _text(parent, "hostname", host)
    _text(parent, "port", str(port))
    _text(parent, "socketType", socket_type)
    _text(parent, "authentication", "password-cleartext")  # inside TLS, which is required
    _text(parent, "username", "%EMAILADDRESS%")


def autodiscover_address(body: bytes) -> str:
    """The EMailAddress of an Outlook autodiscover request; ClientConfigError if it has none."""
    try:
        # Decoded here, so that no other encoding (UTF-16) can hide a DTD from the check.
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ClientConfigError("not UTF-8") from None
    if "<!" in text:
        raise ClientConfigError("a DTD or comment in the request: refused")
    try:
        # Safe without defusedxml: with no DTD no entity can be declared, and ElementTree
        # fetches nothing external.
        root = ET.fromstring(text)  # noqa: S314
    except (ET.ParseError, ValueError, LookupError) as exc:  # LookupError: an unknown encoding
        raise ClientConfigError(f"not XML: {' '.join(str(exc).split())[:100]}") from None
    for element in root.iter():
        if element.tag.rpartition("}")[2] == "EMailAddress":
            return mailbox((element.text or "").strip())
    raise ClientConfigError("no EMailAddress in the request")


def outlook(offer: Offer, address: str) -> bytes:
    """The autodiscover response: IMAP (when configured) and one way to send."""
    root = ET.Element("Autodiscover", xmlns=_AUTODISCOVER)
    response = ET.SubElement(root, "Response", xmlns=_OUTLOOK)
    account = ET.SubElement(response, "Account")
    _text(account, "AccountType", "email")
    _text(account, "Action", "settings")
    if offer.imap is not None:
        _protocol(account, "IMAP", *offer.imap, True, address)
    ways = offer.sending()
    if ways:
        port, implicit = ways[0]  # Outlook takes one SMTP protocol
        _protocol(account, "SMTP", offer.hostname, port, implicit, address)
    return _xml(root)


def _protocol(
    parent: ET.Element, kind: str, host: str, port: int, implicit: bool, login: str
) -> None:
    protocol = ET.SubElement(parent, "Protocol")
    _text(protocol, "Type", kind)
    _text(protocol, "Server", host)
    _text(protocol, "Port", str(port))
    if implicit:
        _text(protocol, "SSL", "on")
    else:
        _text(protocol, "Encryption", "TLS")
    _text(protocol, "SPA", "off")
    _text(protocol, "AuthRequired", "on")
    _text(protocol, "LoginName", login)


def apple_profile(offer: Offer, address: str) -> bytes:
    """An (unsigned) configuration profile with one mail account for `address`."""
    if offer.imap is None:
        raise ClientConfigError("no incoming server is configured (http.imap): Apple needs one")
    ways = offer.sending()
    if not ways:
        raise ClientConfigError("no submission listener")
    port, _ = ways[0]
    domain = address.rpartition("@")[2]
    # Stable identifiers: installing the profile again replaces it rather than adding another.
    identifier = ".".join(reversed(offer.hostname.split("."))) + ".sendgate.mail"
    account = {
        "EmailAccountDescription": f"{domain} mail",
        "EmailAccountType": "EmailTypeIMAP",
        "EmailAddress": address,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerHostName": offer.imap[0],
        "IncomingMailServerPortNumber": offer.imap[1],
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerUsername": address,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": offer.hostname,
        "OutgoingMailServerPortNumber": port,
        "OutgoingMailServerUseSSL": True,  # on 587 that means STARTTLS
        "OutgoingMailServerUsername": address,
        "OutgoingPasswordSameAsIncomingPassword": True,
        "PayloadDisplayName": f"{domain} mail",
        "PayloadIdentifier": f"{identifier}.account.{address}",
        "PayloadType": "com.apple.mail.managed",
        "PayloadUUID": _uuid(offer, "account", address),
        "PayloadVersion": 1,
    }
    profile = {
        "PayloadContent": [account],
        "PayloadDescription": f"Mail settings for {address}",
        "PayloadDisplayName": f"{domain} mail",
        "PayloadIdentifier": f"{identifier}.{address}",
        "PayloadRemovalDisallowed": False,
        "PayloadType": "Configuration",
        "PayloadUUID": _uuid(offer, "profile", address),
        "PayloadVersion": 1,
    }
    document: bytes = plistlib.dumps(profile)
    return document


def _uuid(offer: Offer, kind: str, address: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{kind}.{address}.{offer.hostname}")).upper()


def _text(parent: ET.Element, tag: str, text: str) -> None:
    ET.SubElement(parent, tag).text = text


def _xml(root: ET.Element) -> bytes:
    document: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return document + b"\n"
