"""Decide whether a login may use a given address as its envelope or header sender.

Security: `address` comes from the client (MAIL FROM or the header From), parsed by the address
module beforehand. Only two kinds of owned entry grant it: the exact mailbox, or "@domain" for
every mailbox of exactly that domain; there is no subdomain or pattern matching. Case is folded
with str.lower(), not str.casefold(), which would make the distinct IDNA domains straße.de and
strasse.de equal.
"""


def may_send_as(owned: tuple[str, ...], address: str) -> bool:
    """Return True if an entry of `owned` is `address` itself or "@" plus its domain.

    Local parts and domains compare case-insensitively. The address is split at its last "@",
    since a quoted local part may itself contain "@"; an address without a local part or a
    domain matches nothing.
    """
    local, at, domain = address.rpartition("@")
    if not (at and local and domain):
        return False
    mailbox = address.lower()
    whole_domain = "@" + domain.lower()
    return any(entry.lower() in (mailbox, whole_domain) for entry in owned)
