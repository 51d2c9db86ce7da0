"""The networks a client address belongs to, as the defences count and ban them.

An IPv4 client is one address (/32) inside an office or provider block (/24). An IPv6 client is
one subscriber /64 (a host can pick any of its 2^64 addresses, so counting addresses would
count nothing), inside a /56 (a typical home allocation) and a /48 (a site). IPv4-mapped IPv6
addresses (::ffff:192.0.2.7, from dual-stack sockets) are treated as the IPv4 address.

Security: the address comes from the kernel (the peer of an accepted socket), never from the
client's words; a value that does not parse is refused by the caller before any counting.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

HOST_PREFIX = {4: 32, 6: 64}
BLOCK_PREFIX = {4: 24, 6: 48}
IPV6_MIDDLE_PREFIX = 56


def client_address(text: str) -> IPAddress:
    """Parse a peer address; ValueError if it is not an IP address."""
    address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def supernet(address: IPAddress, prefix: int) -> IPNetwork:
    """The network of `prefix` bits that holds `address`."""
    return ipaddress.ip_network(f"{address}/{prefix}", strict=False)


@dataclass(frozen=True, slots=True)
class ClientNetworks:
    """The networks one client address is counted and banned in, narrowest first."""

    address: IPAddress
    host: IPNetwork
    """The address itself (IPv4) or its /64 (IPv6): what a per-client limit counts."""
    block: IPNetwork
    """The /24 (IPv4) or /48 (IPv6): a known network of an account, and a wider limit."""
    middle: IPNetwork | None
    """The /56 of an IPv6 client (escalation step between /64 and /48); None for IPv4."""

    @classmethod
    def of(cls, text: str) -> ClientNetworks:
        """The networks of peer address `text`; ValueError if it is not an IP address."""
        return _networks_of(text)

    def bannable(self) -> tuple[IPNetwork, ...]:
        """Every network whose ban refuses this client, narrowest first."""
        if self.middle is None:
            return (self.host, self.block)
        return (self.host, self.middle, self.block)


def parse_allow_list(networks: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """The configured allow-list as network objects (the config loader already validated it)."""
    return tuple(ipaddress.ip_network(text) for text in networks)


def is_allowed(address: IPAddress, allow: tuple[IPNetwork, ...]) -> bool:
    """Whether `address` is inside one of the allow-listed networks."""
    return any(address.version == net.version and address in net for net in allow)


@functools.lru_cache(maxsize=8192)
def network_text(network: IPNetwork) -> str:
    """`str(network)`, remembered: a login names its client's networks several times."""
    return str(network)


# Clients come back: parsing an address and making its networks took 12 us a connection.
@functools.lru_cache(maxsize=4096)
def _networks_of(text: str) -> ClientNetworks:
    address = client_address(text)
    version = address.version
    return ClientNetworks(
        address=address,
        host=supernet(address, HOST_PREFIX[version]),
        block=supernet(address, BLOCK_PREFIX[version]),
        middle=supernet(address, IPV6_MIDDLE_PREFIX) if version == 6 else None,
    )
