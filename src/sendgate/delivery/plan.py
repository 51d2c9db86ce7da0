"""Where and how to deliver for one recipient domain: the hosts to try and the TLS each requires.

A configured route sends the domain to its smarthost, whose certificate is always verified.
Otherwise the MX hosts come from DNS, and the TLS requirement per host follows RFC 8461 and
RFC 7672: DANE when DNSSEC-validated TLSA records exist for the host (and the MX answer was
validated too), else MTA-STS when the domain publishes an enforced policy (hosts outside the
policy are skipped, TLS and a valid certificate for the host name are required), else
opportunistic STARTTLS. DANE wins over MTA-STS (RFC 8461 section 2).

A message sent with REQUIRETLS (RFC 8689 4.2.1) goes only to hosts whose name is authenticated
(the MX answer DNSSEC-validated, or the host named by the domain's MTA-STS policy) over TLS
with a verified certificate (DANE, or PKIX for the host name); a smarthost route must use TLS.
When no host qualifies the message cannot be sent as asked: a permanent 5.7.30 failure.

Security: DNS answers and MTA-STS policies are untrusted; they only narrow the hosts tried and
raise the TLS requirement, never lower the requirement a domain published.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sendgate.config.schema import RouteConfig
from sendgate.delivery import dane
from sendgate.delivery.dns import DnsError, Resolver, ascii_name
from sendgate.delivery.mtasts import MtaSts
from sendgate.delivery.mtasts_policy import MtaStsError
from sendgate.delivery.route import RouteError, mx_route
from sendgate.delivery.target import Target, TlsRequirement
from sendgate.errors import ConfigError

MX_PORT = 25
REQUIRETLS_STATUS = "5.7.30"  # RFC 8689 section 6: REQUIRETLS support required
# Like Postfix's smtp_mx_address_limit: enough for fallback, bounded per attempt.
MAX_TARGETS = 5


class PlanError(RouteError):
    """No host may be tried now (e.g. no MX host allowed by an enforced MTA-STS policy)."""

    def __init__(self, message: str, *, permanent: bool = False, status: str = "4.7.5") -> None:
        super().__init__(message, permanent=permanent, status=status)


@dataclass(frozen=True, slots=True)
class Relay:
    """A smarthost route with its password read from the config or its file."""

    domains: tuple[str, ...]
    host: str
    port: int
    tls: str
    auth: tuple[str, str] | None = field(repr=False)


def load_relays(routes: Sequence[RouteConfig]) -> tuple[Relay, ...]:
    """Resolve each route's password (file read once, at start); ConfigError if unreadable."""
    relays = []
    for index, route in enumerate(routes):
        password = route.password
        if route.password_file is not None:
            problem = None
            try:
                password = Path(route.password_file).read_text("utf-8").splitlines()[0]
            except OSError as exc:
                problem = exc.strerror or str(exc)
            except UnicodeDecodeError:
                problem = "not UTF-8 text"
            except IndexError:
                problem = "empty file"
            if problem is not None:
                raise ConfigError(
                    f"delivery.routes[{index}].password_file: cannot read a password from "
                    f"{route.password_file}: {problem}"
                )
        auth = (route.username, password) if route.username and password is not None else None
        relays.append(
            Relay(route.domains, route.smarthost.host, route.smarthost.port, route.tls, auth)
        )
    return tuple(relays)


def relay_for(relays: Sequence[Relay], domain: str) -> Relay | None:
    """The route for `domain`: an exact name, else the longest ".suffix", else "*"."""
    domain = domain.lower()
    best: tuple[int, Relay] | None = None
    for relay in relays:
        for pattern in relay.domains:
            if pattern == domain:
                rank = 1_000
            elif pattern.startswith(".") and domain.endswith(pattern):
                rank = len(pattern)
            elif pattern == "*":
                rank = 0
            else:
                continue
            if best is None or rank > best[0]:
                best = (rank, relay)
    return None if best is None else best[1]


class Planner:
    """Turns a recipient domain into the ordered delivery targets for one attempt."""

    def __init__(
        self,
        *,
        relays: Sequence[Relay],
        resolver: Resolver,
        mta_sts: MtaSts | None,
        dane_enabled: bool,
        rng: random.Random,
        mx_port: int = MX_PORT,
    ) -> None:
        self._relays = tuple(relays)
        self._resolver = resolver
        self._mta_sts = mta_sts
        self._dane = dane_enabled
        self._rng = rng
        self._mx_port = mx_port
        # A smarthost named by address (or localhost) has the same targets for every message.
        self._fixed: dict[Relay, list[Target]] = {}

    async def targets(self, domain: str, *, requiretls: bool = False) -> list[Target]:
        """The hosts to try, in order; RouteError (with .permanent, .status) when there are none.

        With `requiretls` only hosts that may carry a REQUIRETLS message, each with a
        requirement that verifies its certificate.
        """
        relay = relay_for(self._relays, domain)
        if relay is not None:
            if requiretls and relay.tls == "none":
                raise PlanError(
                    f"REQUIRETLS: the route for {domain} to {relay.host} does not use TLS",
                    permanent=True,
                    status=REQUIRETLS_STATUS,
                )
            return await self._relay_targets(relay)
        return await self._mx_targets(domain, requiretls=requiretls)

    async def _relay_targets(self, relay: Relay) -> list[Target]:
        fixed = self._fixed.get(relay)
        if fixed is not None:
            return list(fixed)
        if relay.tls == "none":
            tls = TlsRequirement(mode="none", verify="none", reason="smarthost")
        else:
            tls = TlsRequirement(
                mode="required",
                verify="pkix",
                names=(relay.host,),
                implicit=relay.tls == "implicit",
                reason="smarthost",
            )
        addresses = _fixed_addresses(relay.host)
        by_address = addresses is not None
        if addresses is None:
            addresses = await self._addresses_of(relay.host)
        targets = [
            Target(host=relay.host, address=address, port=relay.port, tls=tls, auth=relay.auth)
            for address in addresses[:MAX_TARGETS]
        ]
        if by_address:
            self._fixed[relay] = targets  # no DNS answer to follow: build them once
        return list(targets)

    async def _addresses_of(self, host: str) -> tuple[str, ...]:
        """The addresses DNS gives a smarthost's name; PlanError when none."""
        try:
            answer = await self._resolver.addresses(host)
        except DnsError as exc:
            raise PlanError(f"smarthost {host}: {exc}", status="4.4.3") from None
        if not answer.records:
            raise PlanError(f"smarthost {host}: no address", status="4.4.3")
        return answer.records

    async def _mx_targets(self, domain: str, *, requiretls: bool) -> list[Target]:
        route = await mx_route(self._resolver, domain, rng=self._rng)
        policy = None
        if self._mta_sts is not None:
            try:
                policy = await self._mta_sts.policy(ascii_name(route.domain))
            except (MtaStsError, DnsError):
                policy = None  # a name MTA-STS cannot apply to (see MtaSts.policy)
        targets: list[Target] = []
        refused: list[str] = []
        unauthenticated: list[str] = []
        for hop in route.hops:
            tls = await self._dane_requirement(hop.host) if self._dane and route.mx_secure else None
            if tls is None and policy is not None and policy.mode == "enforce":
                if not policy.allows(hop.host):
                    refused.append(hop.host)
                    continue
                tls = TlsRequirement(
                    mode="required", verify="pkix", names=(hop.host,), reason="mta-sts"
                )
            if requiretls:
                named = policy is not None and policy.mode != "none" and policy.allows(hop.host)
                tls = _for_requiretls(tls, hop.host, authenticated=route.mx_secure or named)
                if tls is None:
                    unauthenticated.append(hop.host)
                    continue
            if tls is None:
                testing = policy is not None and policy.mode == "testing"
                tls = TlsRequirement(
                    mode="opportunistic",
                    verify="none",
                    reason="mta-sts-testing" if testing else "opportunistic",
                )
            targets.extend(
                Target(host=hop.host, address=address, port=self._mx_port, tls=tls)
                for address in hop.addresses
            )
        if not targets and unauthenticated:
            raise PlanError(
                f"REQUIRETLS: no MX host of {domain} is authenticated (the MX records are not "
                f"DNSSEC-signed and no MTA-STS policy names {', '.join(unauthenticated)})",
                permanent=True,
                status=REQUIRETLS_STATUS,
            )
        if not targets:
            # mx_route returns only hosts with addresses: only the policy can leave none.
            raise PlanError(
                f"no MX host of {domain} is allowed by its MTA-STS policy ({', '.join(refused)})"
            )
        return targets[:MAX_TARGETS]

    async def _dane_requirement(self, host: str) -> TlsRequirement | None:
        """DANE's requirement for `host`, or None when the host publishes no usable TLSA."""
        try:
            answer = await self._resolver.tlsa(f"_{self._mx_port}._tcp.{host}")
        except DnsError as exc:
            if exc.permanent:
                return None  # NXDOMAIN: no TLSA records, a secure denial
            # RFC 7672 2.2: a failed TLSA lookup must not fall back to unauthenticated delivery.
            return TlsRequirement(
                mode="required",
                verify="dane",
                leaf_check=_never,
                reason="dane (TLSA lookup failed)",
            )
        if not answer.secure or not answer.records:
            return None
        records = answer.records
        need = dane.requirement(records)
        if need == "encrypt":
            # RFC 7672 2.2: TLSA records exist but none is usable: TLS without authentication.
            return TlsRequirement(mode="required", verify="none", reason="dane (unusable TLSA)")
        if need == "defer":
            # Only DANE-TA records, which this client cannot match yet: never send unverified.
            return TlsRequirement(
                mode="required", verify="dane", leaf_check=_never, reason="dane (DANE-TA only)"
            )
        return TlsRequirement(
            mode="required",
            verify="dane",
            leaf_check=lambda leaf: dane.leaf_matches(records, leaf),
            reason="dane",
        )


def _for_requiretls(
    tls: TlsRequirement | None, host: str, *, authenticated: bool
) -> TlsRequirement | None:
    """The requirement for a REQUIRETLS message to `host`, or None when the host's name is not
    authenticated. DANE and MTA-STS requirements already verify; anything else becomes PKIX."""
    if tls is not None and tls.verify != "none":
        return tls
    if not authenticated:
        return None
    return TlsRequirement(mode="required", verify="pkix", names=(host,), reason="requiretls")


def _never(_leaf: bytes) -> bool:
    return False


def _fixed_addresses(host: str) -> tuple[str, ...] | None:
    """A smarthost's addresses when no DNS is asked: an IP literal in its usual form, or
    loopback for "localhost" (config lets plaintext go there as loopback); None for a name."""
    if host.lower() == "localhost":
        return ("::1", "127.0.0.1")
    try:
        return (str(ipaddress.ip_address(host)),)
    except ValueError:
        return None
