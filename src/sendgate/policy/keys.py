"""The names the defences give their entries in the `LimitStore`, and the operator's ban targets.

Every key the policy writes is made here, so the CLI (`sendgate bans`), the log and the
defences agree on them: ``net:192.0.2.0/24`` bans a network, ``account:alice@example.org``
locks an account (for networks it has not logged in from). Counters have their own prefixes.
"""

from __future__ import annotations

import ipaddress

from sendgate.policy.networks import (
    HOST_PREFIX,
    IPNetwork,
    client_address,
    network_text,
    supernet,
)

NET = "net:"
ACCOUNT = "account:"
KNOWN = "known:"


def net_key(network: IPNetwork) -> str:
    """The ban key of a network."""
    return NET + network_text(network)


def account_key(username: str) -> str:
    """The ban (lock) key of an account."""
    return ACCOUNT + username.lower()


def known_lock_key(username: str, network: IPNetwork | str) -> str:
    """The lock of an account at one of its known networks (too many failures from there).

    Its own prefix: no name a client can type makes an account key equal to it.
    """
    where = network if isinstance(network, str) else network_text(network)
    return f"{KNOWN}{username.lower()}|{where}"


def failures_key(network: IPNetwork) -> str:
    """Failed logins counted for a network (members: fingerprints of user and password)."""
    return "fail:" + str(network)


def account_failures_key(username: str) -> str:
    """Wrong passwords counted for an account from every network (members: fingerprints)."""
    return "fail-account:" + username.lower()


def known_failures_key(username: str, network: IPNetwork) -> str:
    """Wrong passwords for an account from one of its known networks."""
    return f"fail-known:{username.lower()}|{network}"


def notice_key(username: str) -> str:
    """The rate budget of an account's sign-in notices."""
    return "notice:" + username.lower()


def escalation_key(network: IPNetwork) -> str:
    """Banned narrower networks counted inside `network` (IPv6 escalation)."""
    return "banned-in:" + str(network)


def parse_ban_target(text: str) -> str:
    """The ban key for what an operator typed: a network, an address or an account.

    A bare IPv4 address means itself; a bare IPv6 address means its /64 (the defences ban IPv6
    clients per /64). An account is anything with an "@"; ACCOUNT|NETWORK is the account's
    lock at one of its known networks. ValueError with a one-line reason.
    """
    text = text.strip()
    if "|" in text:  # ACCOUNT|NETWORK: an account's lock at one of its known networks
        account, _, network = text.partition("|")
        try:
            return known_lock_key(_account(account), ipaddress.ip_network(network, strict=True))
        except ValueError as exc:
            raise ValueError(f"{text!r} is not ACCOUNT|NETWORK ({exc})") from None
    if "@" in text and "/" not in text:
        return account_key(_account(text))
    try:
        if "/" in text:
            return net_key(ipaddress.ip_network(text, strict=True))
        address = client_address(text)
    except ValueError as exc:
        raise ValueError(
            f"{text!r} is not an address, a network (host bits zero) or an account"
        ) from exc
    return net_key(supernet(address, HOST_PREFIX[address.version]))


def describe_key(key: str) -> tuple[str, str]:
    """("network", "192.0.2.0/24"), ("account", "alice@example.org") or ("known",
    "alice@example.org|192.0.2.0/24") for a ban key; `parse_ban_target` reads the target back."""
    for prefix, kind in ((NET, "network"), (ACCOUNT, "account"), (KNOWN, "known")):
        if key.startswith(prefix):
            return kind, key[len(prefix) :]
    return "other", key


def _account(text: str) -> str:
    local, _, domain = text.rpartition("@")
    if not local or not domain or any(char.isspace() or char == "|" for char in text):
        raise ValueError(f"{text!r} is not an account name")
    return text


def sending_key(limit: str, username: str) -> str:
    """One sending-limit budget of an account (`limit` is its name, e.g. messages_per_hour)."""
    return f"send:{limit}:{username.lower()}"
