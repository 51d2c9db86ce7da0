"""DNS lookups for delivery (MX, A/AAAA, TXT, TLSA) through a configurable resolver (dnspython).

Queries go to the configured nameservers (or those of /etc/resolv.conf) with the AD flag set and
EDNS0 (payload 1232), so that a validating resolver reports in its answer's AD flag whether it
validated the data (RFC 6840 5.7); `Answer.secure` is that flag. Names are always absolute: no
search domains, and nothing is cached beyond one call.

Security: every answer is untrusted input from the network. dnspython parses the wire format
(and follows CNAME chains inside one response); this module keeps at most `MAX_RECORDS` records
of any RRset, hands out host names lower-cased in their escaped text form (one printable line),
and trusts the AD flag only as far as the path to the resolver is trusted (use a local one).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar, cast

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.inet
import dns.name
import dns.nameserver
import dns.rdata
import dns.rdatatype
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.TLSA
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.resolver

from sendgate.errors import SendgateError

_T = TypeVar("_T")

MAX_RECORDS = 100  # records kept of one RRset; real MX/TLSA/TXT sets are far smaller
EDNS_PAYLOAD = 1232  # the DNS flag day 2020 size: avoids IP fragmentation


class DnsError(SendgateError):
    """A lookup failed; `permanent` is True only for NXDOMAIN (the name does not exist)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True, slots=True)
class Answer(Generic[_T]):
    """The records of one RRset (empty for NODATA) and whether the resolver validated it (AD)."""

    records: tuple[_T, ...]
    secure: bool


class MxRecord(NamedTuple):
    preference: int
    host: str  # absolute name without the trailing dot, lower case; "" for a null MX (".")


class TlsaRecord(NamedTuple):
    usage: int
    selector: int
    mtype: int
    data: bytes


class Resolver:
    """Async lookups; `nameservers` are (ip, port) pairs, None means the system's resolv.conf."""

    def __init__(
        self, nameservers: Sequence[tuple[str, int]] | None = None, *, timeout: float = 10.0
    ) -> None:
        if nameservers is None:
            try:
                resolver = dns.asyncresolver.Resolver(configure=True)
            except dns.resolver.NoResolverConfiguration:
                # Lookups then fail temporarily ("no nameservers") rather than at startup.
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = []
        else:
            for ip, port in nameservers:
                if not dns.inet.is_address(ip):
                    raise ValueError(f"nameserver {ip!r} is not an IP address")
                if not 0 < port < 65536:
                    raise ValueError(f"nameserver port {port} is out of range")
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(ip, port) for ip, port in nameservers
            ]
        # Whatever resolv.conf said: no search list, no cache, our EDNS and flags.
        resolver.search = []
        resolver.use_search_by_default = False
        resolver.domain = dns.name.root
        resolver.cache = None
        resolver.lifetime = timeout
        resolver.timeout = min(resolver.timeout, timeout)
        resolver.use_edns(0, 0, EDNS_PAYLOAD)
        resolver.set_flags(dns.flags.RD | dns.flags.AD)
        self._resolver = resolver

    async def mx(self, domain: str) -> Answer[MxRecord]:
        rdatas, secure = await self._query(domain, dns.rdatatype.MX)
        records = []
        for rdata in cast(list[dns.rdtypes.ANY.MX.MX], rdatas):
            exchange = rdata.exchange
            host = "" if exchange == dns.name.root else _host_text(exchange)
            records.append(MxRecord(rdata.preference, host))
        return Answer(tuple(records), secure)

    async def addresses(self, host: str) -> Answer[str]:
        """AAAA then A addresses of `host` (IPv6 first).

        The two lookups run concurrently. If one fails temporarily while the other yields
        addresses, those addresses are returned with `secure` False (the set is incomplete);
        with no addresses at all a temporary failure wins over NXDOMAIN, so a retry follows.
        """
        results = await asyncio.gather(
            self._query(host, dns.rdatatype.AAAA),
            self._query(host, dns.rdatatype.A),
            return_exceptions=True,
        )
        found: list[str] = []
        failures: list[DnsError] = []
        secure = True
        for result in results:
            if isinstance(result, DnsError):
                failures.append(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                rdatas, rrset_secure = result
                addresses = cast(list[dns.rdtypes.IN.A.A | dns.rdtypes.IN.AAAA.AAAA], rdatas)
                found.extend(rdata.address for rdata in addresses)
                secure = secure and rrset_secure
        if failures and not found:
            raise next((f for f in failures if not f.permanent), failures[0])
        return Answer(tuple(found), secure and not failures)

    async def txt(self, name: str) -> Answer[bytes]:
        """Each TXT record with its strings joined."""
        rdatas, secure = await self._query(name, dns.rdatatype.TXT)
        txts = cast(list[dns.rdtypes.ANY.TXT.TXT], rdatas)
        return Answer(tuple(b"".join(r.strings) for r in txts), secure)

    async def tlsa(self, name: str) -> Answer[TlsaRecord]:
        rdatas, secure = await self._query(name, dns.rdatatype.TLSA)
        tlsas = cast(list[dns.rdtypes.ANY.TLSA.TLSA], rdatas)
        records = tuple(TlsaRecord(r.usage, r.selector, r.mtype, r.cert) for r in tlsas)
        return Answer(records, secure)

    async def texts(self, name: str, rdtype: str) -> list[str]:
        """The records of any type as text (TXT: its strings joined), for people and checks."""
        rdatas, _ = await self._query(name, dns.rdatatype.from_text(rdtype))
        if rdtype == "TXT":
            txts = cast(list[dns.rdtypes.ANY.TXT.TXT], rdatas)
            return [b"".join(r.strings).decode("utf-8", "replace") for r in txts]
        return [rdata.to_text() for rdata in rdatas]

    async def _query(
        self, name: str, rdtype: dns.rdatatype.RdataType
    ) -> tuple[list[dns.rdata.Rdata], bool]:
        """The rdatas of the (CNAME-resolved) RRset, at most MAX_RECORDS, and the AD flag."""
        qname = _absolute_name(name)
        what = f"DNS {rdtype.name} lookup for {qname.to_text(omit_final_dot=True)}"
        try:
            answer = await self._resolver.resolve(
                qname, rdtype, search=False, raise_on_no_answer=False
            )
        except dns.resolver.NXDOMAIN as e:
            raise DnsError(f"{what}: domain does not exist", permanent=True) from e
        except dns.exception.Timeout as e:
            raise DnsError(f"{what}: timed out") from e
        except dns.resolver.NoNameservers as e:
            raise DnsError(f"{what}: no nameserver gave a usable answer (e.g. SERVFAIL)") from e
        except dns.exception.DNSException as e:
            raise DnsError(f"{what}: failed ({type(e).__name__})") from e
        secure = bool(answer.response.flags & dns.flags.AD)
        if answer.rrset is None:
            return [], secure
        return list(itertools.islice(answer.rrset, MAX_RECORDS)), secure


def ascii_name(name: str) -> str:
    """`name` in lower-case A-labels without the final dot (IDN U-labels are encoded).

    DnsError (permanent) when `name` is not a DNS name.
    """
    return _host_text(_absolute_name(name))


def _absolute_name(name: str) -> dns.name.Name:
    """`name` as an absolute DNS name; an empty or malformed name is a permanent error."""
    try:
        qname = dns.name.from_text(name, origin=dns.name.root)
    except (dns.exception.DNSException, UnicodeError) as e:
        raise DnsError(f"invalid domain name {name!r}: {e}", permanent=True) from e
    if qname == dns.name.root:
        raise DnsError(f"invalid domain name {name!r}: empty", permanent=True)
    return qname


def _host_text(name: dns.name.Name) -> str:
    """Lower case, no trailing dot; odd bytes stay escaped (\\DDD) so the text is one line."""
    text: str = name.canonicalize().to_text(omit_final_dot=True)
    return text
