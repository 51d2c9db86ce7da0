"""MX routing: the ordered list of hosts and addresses to try for one recipient domain.

Follows RFC 5321 5.1 (MX by preference, equal preferences in random order, implicit MX from
the domain's own addresses when it has no MX) and RFC 7505 (a null MX means no mail).

Security: MX and address records are untrusted DNS data. At most `MAX_HOPS` hosts are resolved
(a hostile domain cannot make us query hundreds of names); MX targets that are not host names
(`smtp.address.is_host_name`, with "_" allowed), IP literals among them, are dropped, as are the
unspecified addresses 0.0.0.0 and ::, which would connect to ourselves.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby

from sendgate.delivery.dns import Answer, DnsError, MxRecord, Resolver
from sendgate.errors import SendgateError
from sendgate.smtp.address import is_host_name

MAX_HOPS = 10


@dataclass(frozen=True, slots=True)
class Hop:
    host: str  # MX host name (or, for implicit MX, the domain itself)
    addresses: tuple[str, ...]  # IPv6 first, then IPv4, as resolved
    preference: int


@dataclass(frozen=True, slots=True)
class MxRoute:
    domain: str
    hops: tuple[Hop, ...]  # in the order to try
    mx_secure: bool  # the MX RRset (or, for implicit MX, the address RRset) had AD
    implicit: bool  # no MX records: the domain's own A/AAAA


class RouteError(SendgateError):
    """No route to a domain; `status` is the enhanced status code for the DSN or the retry."""

    def __init__(self, message: str, *, permanent: bool, status: str) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.status = status


async def mx_route(resolver: Resolver, domain: str, *, rng: random.Random) -> MxRoute:
    """The hops to try for `domain`, best first; RouteError when there are none."""
    domain = domain.rstrip(".").lower()
    try:
        mx = await resolver.mx(domain)
    except DnsError as e:
        raise _lookup_error(domain, e) from e

    if not mx.records:
        return await _implicit_route(resolver, domain)
    # RFC 7505: a null MX alongside real ones is a misconfiguration; the real ones count.
    hosts = [record for record in mx.records if record.host]
    if not hosts:
        raise RouteError(f"{domain!r} accepts no mail (null MX)", permanent=True, status="5.1.10")

    candidates = _ordered(hosts, rng)[:MAX_HOPS]
    answers = await asyncio.gather(
        *(resolver.addresses(host) for _, host in candidates), return_exceptions=True
    )
    hops: list[Hop] = []
    temporary_failure = False
    for (preference, host), answer in zip(candidates, answers, strict=True):
        if isinstance(answer, DnsError):
            temporary_failure = temporary_failure or not answer.permanent
        elif isinstance(answer, BaseException):
            raise answer
        elif addresses := _usable(answer):
            hops.append(Hop(host, addresses, preference))
    if hops:
        return MxRoute(domain, tuple(hops), mx_secure=mx.secure, implicit=False)
    if temporary_failure:
        raise RouteError(
            f"{domain!r}: address lookups of its MX hosts failed temporarily",
            permanent=False,
            status="4.4.3",
        )
    raise RouteError(
        f"{domain!r}: none of its MX hosts has a usable address", permanent=True, status="5.1.2"
    )


async def _implicit_route(resolver: Resolver, domain: str) -> MxRoute:
    """RFC 5321 5.1: without MX records the domain itself is the only host, preference 0."""
    try:
        answer = await resolver.addresses(domain)
    except DnsError as e:
        raise _lookup_error(domain, e) from e
    addresses = _usable(answer)
    if not addresses:
        raise RouteError(
            f"{domain!r} has neither MX records nor addresses", permanent=True, status="5.1.2"
        )
    return MxRoute(domain, (Hop(domain, addresses, 0),), mx_secure=answer.secure, implicit=True)


def _ordered(records: Sequence[MxRecord], rng: random.Random) -> list[MxRecord]:
    """Valid hosts by preference, equal preferences shuffled; a repeated host keeps its best."""
    seen: set[str] = set()
    result: list[MxRecord] = []
    valid = sorted(record for record in records if is_host_name(record.host, underscore=True))
    for preference, group in groupby(valid, key=lambda record: record[0]):
        # Sorted first, so the order depends only on the RRset and rng, not on the wire order.
        hosts = [host for _, host in group if host not in seen]
        rng.shuffle(hosts)
        seen.update(hosts)
        result.extend(MxRecord(preference, host) for host in hosts)
    return result


def _usable(answer: Answer[str]) -> tuple[str, ...]:
    """The answer's addresses in order, without duplicates and unspecified addresses."""
    usable: dict[str, None] = {}
    for text in answer.records:
        if not ipaddress.ip_address(text).is_unspecified:
            usable.setdefault(text, None)
    return tuple(usable)


def _lookup_error(domain: str, error: DnsError) -> RouteError:
    if error.permanent:
        return RouteError(f"{domain!r} does not exist", permanent=True, status="5.1.2")
    return RouteError(
        f"{domain!r}: DNS lookup failed temporarily ({error})", permanent=False, status="4.4.3"
    )
