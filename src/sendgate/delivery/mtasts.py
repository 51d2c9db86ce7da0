"""MTA-STS for outbound SMTP (RFC 8461): discover, fetch and cache a domain's TLS policy.

The policy's `mode` tells the caller what to do: "enforce" means deliver only to MX hosts that
`allows` names, over TLS with a certificate valid for that name; "testing" means report but
deliver anyway; "none" means the domain withdrew its policy. Policies live in one JSON file
per domain under the cache directory, written atomically, and are reused until they expire or
the domain publishes a new id. The HTTPS fetch connects to addresses found by sendgate's own
resolver (not the system's), so the transport is a small asyncio TLS connection with h11 doing
the HTTP/1.1 parsing. The TXT record and the policy file are parsed by
`sendgate.delivery.mtasts_policy`.

Security: the HTTP response (status, headers, body) and the cache files are untrusted. Header
size is bounded by h11 (16 KiB), the body by `max_size` (64 KiB by default), every network step
by a timeout; redirects and non-200 answers are refused (RFC 8461 section 3.3); failures raise
only `MtaStsError`, whose one-line messages show remote text escaped and shortened. Only
`<domain>.json` files in the cache directory are read or written, for domains that are valid
host names.
"""

import asyncio
import json
import ssl
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import asdict
from pathlib import Path

import h11

from sendgate.delivery.dns import DnsError, Resolver
from sendgate.delivery.mtasts_policy import (
    MODES,
    MtaStsError,
    StsPolicy,
    parse_policy,
    parse_txt,
    shown,
)
from sendgate.fsutil import atomic_replace
from sendgate.smtp.address import is_domain_name

RECHECK_SECONDS = 300.0  # how long one discovery result serves all messages to a domain
_MAX_HEADER_BYTES = 16384
_READ_SIZE = 16384


async def fetch_policy(
    domain: str,
    addresses: Sequence[str],
    *,
    ssl_context: ssl.SSLContext,
    timeout: float,
    port: int = 443,
    max_size: int = 65536,
) -> bytes:
    """GET https://mta-sts.<domain>/.well-known/mta-sts.txt from `addresses`, tried in order.

    `ssl_context` must verify certificates and host names (SNI and the check use
    mta-sts.<domain>). An address that cannot be reached or fails TLS within `timeout` seconds
    leads to the next; an HTTP answer that is not a 200 text/plain body of at most `max_size`
    bytes is final. Raises MtaStsError.
    """
    if ssl_context.verify_mode != ssl.CERT_REQUIRED or not ssl_context.check_hostname:
        raise ValueError("the MTA-STS fetch needs a context that verifies certificates and names")
    name = _domain(domain)
    host = f"mta-sts.{name}"
    if not addresses:
        raise MtaStsError(f"{host} has no addresses")
    failure = ""
    for address in addresses:
        try:
            async with asyncio.timeout(timeout):
                return await _fetch_from(address, host, ssl_context, port, max_size)
        except TimeoutError:
            failure = f"{host} at {address}: timed out after {timeout:g}s"
        except OSError as exc:
            # ssl.SSLError (certificate or name mismatch) is an OSError too.
            failure = f"{host} at {address}: {shown(str(exc) or type(exc).__name__, 160)}"
    raise MtaStsError(failure)


class MtaSts:
    """Policy lookups with a durable per-domain cache (RFC 8461 section 5)."""

    def __init__(
        self,
        resolver: Resolver,
        cache_dir: Path,
        ssl_context: ssl.SSLContext,
        clock: Callable[[], float],
        *,
        timeout: float = 30.0,
        port: int = 443,
    ) -> None:
        self._resolver = resolver
        self._cache_dir = cache_dir
        self._ssl_context = ssl_context
        self._clock = clock
        self._timeout = timeout
        self._port = port
        # domain -> (when checked, the answer then): spares DNS, disk and fetches per message.
        self._recent: dict[str, tuple[float, StsPolicy | None]] = {}

    async def policy(self, domain: str) -> StsPolicy | None:
        """The policy for `domain` (mode "none" included), or None when it has none.

        Raises MtaStsError only when `domain` is not a valid host name (pass A-labels); DNS and
        fetch failures fall back to the cached policy while it has not expired. An answer is
        remembered in memory for RECHECK_SECONDS, so a busy domain costs one TXT lookup (and at
        most one fetch attempt) per interval, not one per message.
        """
        name = _domain(domain)
        now = self._clock()
        recent = self._recent.get(name)
        if recent is not None and now - recent[0] < RECHECK_SECONDS:
            policy = recent[1]
            return None if policy is None or policy.expired(now) else policy
        result = await self._discover(name, now)
        self._recent[name] = (now, result)
        return result

    async def _discover(self, name: str, now: float) -> StsPolicy | None:
        """RFC 8461 section 5: TXT, then the cache or a fetch."""
        if name in self._recent:
            cached = self._recent[name][1]
        else:
            cached = await asyncio.to_thread(self._load, name)
        if cached is not None and cached.expired(now):
            cached = None
        try:
            answer = await self._resolver.txt(f"_mta-sts.{name}")
        except DnsError:
            return cached
        policy_id = parse_txt(answer.records)
        if policy_id is None:
            return cached
        if (
            cached is not None
            and cached.policy_id == policy_id
            and now - cached.fetched_at < cached.max_age / 2
        ):
            return cached
        # A new id, no policy, or one past half its life: fetch. Refreshing early (RFC 8461
        # section 10.2) keeps an attacker who blocks the fetch from waiting out max_age.
        try:
            found = await self._resolver.addresses(f"mta-sts.{name}")
            body = await fetch_policy(
                name,
                found.records,
                ssl_context=self._ssl_context,
                timeout=self._timeout,
                port=self._port,
            )
            fresh = parse_policy(body, policy_id=policy_id, fetched_at=now)
        except (DnsError, MtaStsError):
            return cached
        with suppress(OSError):
            # The cache only saves refetches; a full or read-only disk must not stop delivery.
            await asyncio.to_thread(self._store, name, fresh)
        return fresh

    def _path(self, name: str) -> Path:
        return self._cache_dir / f"{name}.json"

    def _load(self, name: str) -> StsPolicy | None:
        """The cached policy for `name`; a missing, unreadable or malformed file counts as none."""
        try:
            data = json.loads(self._path(name).read_bytes())
            policy = StsPolicy(
                mode=data["mode"],
                mx=tuple(data["mx"]),
                max_age=data["max_age"],
                policy_id=data["policy_id"],
                fetched_at=data["fetched_at"],
            )
        except (OSError, ValueError, TypeError, KeyError):
            return None
        well_formed = (
            policy.mode in MODES
            and all(isinstance(pattern, str) for pattern in policy.mx)
            and isinstance(policy.max_age, int)
            and isinstance(policy.policy_id, str)
            and isinstance(policy.fetched_at, int | float)
        )
        return policy if well_formed else None

    def _store(self, name: str, policy: StsPolicy) -> None:
        self._cache_dir.mkdir(parents=True, exist_ok=True)
        data = json.dumps(asdict(policy), sort_keys=True).encode()
        atomic_replace(self._path(name), data, self._cache_dir, mode=0o644)


async def _fetch_from(
    address: str, host: str, ssl_context: ssl.SSLContext, port: int, max_size: int
) -> bytes:
    reader, writer = await asyncio.open_connection(
        address, port, ssl=ssl_context, server_hostname=host
    )
    try:
        return await _exchange(reader, writer, host, max_size)
    finally:
        writer.close()
        with suppress(OSError):
            await writer.wait_closed()


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, max_size: int
) -> bytes:
    """Send the GET and read one bounded response; errors name `host`."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEADER_BYTES)
    request = h11.Request(
        method="GET",
        target="/.well-known/mta-sts.txt",
        headers=[
            ("Host", host),
            ("User-Agent", "sendgate"),
            ("Accept", "text/plain"),
            ("Connection", "close"),
        ],
    )
    writer.write((conn.send(request) or b"") + (conn.send(h11.EndOfMessage()) or b""))
    await writer.drain()
    body = bytearray()
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(_READ_SIZE))
            elif isinstance(event, h11.Response):
                _check_response(event, host, max_size)
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > max_size:
                    raise MtaStsError(f"{host}: policy is larger than {max_size} bytes")
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                # h11 reports an early EOF as RemoteProtocolError; this only stops a spin.
                raise MtaStsError(f"{host}: connection closed before the response")
    except h11.RemoteProtocolError as exc:
        raise MtaStsError(f"{host}: bad HTTP response: {shown(str(exc))}") from None


def _check_response(response: h11.Response, host: str, max_size: int) -> None:
    if response.status_code != 200:
        # Redirects are refused too (RFC 8461 section 3.3).
        raise MtaStsError(f"{host}: HTTP status {response.status_code}, expected 200")
    types = [value for key, value in response.headers if key == b"content-type"]
    if len(types) != 1:
        raise MtaStsError(f"{host}: {len(types)} Content-Type headers, expected one")
    media_type = types[0].split(b";", 1)[0].strip().lower()
    if media_type != b"text/plain":
        media = shown(media_type.decode("latin-1"))
        raise MtaStsError(f"{host}: Content-Type {media}, expected text/plain")
    for key, value in response.headers:
        if key == b"content-length" and int(value) > max_size:
            raise MtaStsError(f"{host}: policy is larger than {max_size} bytes")


def _domain(domain: str) -> str:
    name = domain.lower().removesuffix(".")
    if not is_domain_name(name):
        raise MtaStsError(f"not a valid domain for MTA-STS: {shown(domain)}")
    return name
