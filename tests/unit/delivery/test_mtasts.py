"""MTA-STS: TXT and policy parsing, MX patterns, the HTTPS fetch, and the policy cache.

Fetches run against a real HTTPS server (stdlib http.server + trustme certificates) on
127.0.54.x:443, one address per test so parallel workers never clash; policy lookups use the
real Resolver against a loopback ZoneServer.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st
from tests.peers.dns_server import ZoneServer
from tests.peers.https_server import HttpsServer
from tests.support import tls
from tests.support.clock import FakeClock

from sendgate.delivery.dns import Resolver
from sendgate.delivery.mtasts import (
    MAX_AGE_LIMIT,
    RECHECK_SECONDS,
    MtaSts,
    MtaStsError,
    StsPolicy,
    fetch_policy,
    parse_policy,
    parse_txt,
)

DOMAIN = "example.test"
PATH = "/.well-known/mta-sts.txt"
RFC_POLICY = (
    b"version: STSv1\r\n"
    b"mode: enforce\r\n"
    b"mx: mail.example.com\r\n"
    b"mx: *.example.net\r\n"
    b"mx: backupmx.example.com\r\n"
    b"max_age: 604800\r\n"
)


# -- parse_txt ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        ([b"v=STSv1; id=20160831085700Z;"], "20160831085700Z"),  # RFC 8461 section 3.1
        ([b"v=STSv1; id=20160831085700Z"], "20160831085700Z"),
        ([b"v=STSv1;id=abc"], "abc"),
        ([b"v=STSv1 ;\tid=abc ; ext-1=v.a:l/u+e;"], "abc"),
        ([b"v=spf1 -all", b"v=STSv1; id=abc"], "abc"),
        ([b"v=STSv1; id=" + b"a" * 32], "a" * 32),
    ],
)
def test_parse_txt_accepts(records: list[bytes], expected: str) -> None:
    assert parse_txt(records) == expected


@pytest.mark.parametrize(
    "records",
    [
        [],
        [b"v=spf1 -all"],
        [b"v=STSv1; id=one", b"v=STSv1; id=two"],  # more than one: no policy
        [b"v=STSv1"],
        [b"v=STSv1;"],
        [b"v=STSv1; ext=x"],  # no id
        [b"v=STSv1; id=" + b"a" * 33],
        [b"v=STSv1; id=ab-c"],
        [b"v=STSv1; id="],
        [b"v=STSv1; id=a; id=b"],
        [b"v=STSv1 id=abc"],
        [b"v=STSv1;; id=abc"],
        [b"v=STSv1; id=abc;;"],
        [b"v=STSv1; id abc"],
        [b"v=STSv1; ext=a=b; id=abc"],
        [b"v=STSv1; -ext=1; id=abc"],
        [b"v=STSv1; id=\xc3\xa9"],
        [b"v=STSv10; id=abc"],
        [b"v=stsv1; id=abc"],
    ],
)
def test_parse_txt_rejects(records: list[bytes]) -> None:
    assert parse_txt(records) is None


@given(st.lists(st.binary(max_size=80), max_size=4))
def test_parse_txt_never_raises(records: list[bytes]) -> None:
    result = parse_txt(records)
    assert result is None or (result.isalnum() and result.isascii() and len(result) <= 32)


@given(st.text(alphabet="v=STSv1; id=abcXYZ09-_.\t", max_size=40))
def test_parse_txt_near_misses_never_raise(text: str) -> None:
    result = parse_txt([text.encode()])
    assert result is None or text.startswith("v=STSv1")


# -- parse_policy ------------------------------------------------------------------------------


def test_parse_policy_rfc_example() -> None:
    policy = parse_policy(RFC_POLICY, policy_id="abc", fetched_at=100.0)
    assert policy == StsPolicy(
        mode="enforce",
        mx=("mail.example.com", "*.example.net", "backupmx.example.com"),
        max_age=604800,
        policy_id="abc",
        fetched_at=100.0,
    )


def test_parse_policy_lf_lines_case_and_no_final_newline() -> None:
    body = b"version: STSv1\nmode: testing\nmx: MX.Example.COM  \nmax_age:86400"
    policy = parse_policy(body, policy_id="x", fetched_at=0.0)
    assert (policy.mode, policy.mx, policy.max_age) == ("testing", ("mx.example.com",), 86400)


def test_parse_policy_mode_none_needs_no_mx() -> None:
    policy = parse_policy(b"version: STSv1\nmode: none\nmax_age: 0\n", policy_id="x", fetched_at=0)
    assert (policy.mode, policy.mx, policy.max_age) == ("none", (), 0)


def test_parse_policy_caps_max_age() -> None:
    body = b"version: STSv1\nmode: none\nmax_age: 9999999999\n"
    assert parse_policy(body, policy_id="x", fetched_at=0).max_age == MAX_AGE_LIMIT


def test_parse_policy_first_occurrence_wins_and_extensions_are_ignored() -> None:
    body = (
        b"version: STSv1\nmode: testing\nmode: enforce\nmx: a.example\n"
        b"max_age: 10\nmax_age: 20\nfuture_key.v2: some value with spaces\n\n"
    )
    policy = parse_policy(body, policy_id="x", fetched_at=0)
    assert (policy.mode, policy.max_age) == ("testing", 10)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"mode: enforce\nmx: a.example\nmax_age: 1\n", "no version"),
        (b"version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n", "version 'STSv2'"),
        (b"version: STSv1\nmx: a.example\nmax_age: 1\n", "no mode"),
        (b"version: STSv1\nmode: Enforce\nmx: a.example\nmax_age: 1\n", "unknown mode"),
        (b"version: STSv1\nmode: enforce\nmx: a.example\n", "no max_age"),
        (b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n", "max_age '-1'"),
        (b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1e3\n", "max_age"),
        (b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 12345678901\n", "max_age"),
        (b"version: STSv1\nmode: enforce\nmax_age: 1\n", "has no mx"),
        (b"version: STSv1\nmode: testing\nmax_age: 1\n", "has no mx"),
        (b"version: STSv1\nmode: enforce\nmx: a..example\nmax_age: 1\n", "bad mx pattern"),
        (b"version: STSv1\nmode: enforce\nmx: *.*.example\nmax_age: 1\n", "bad mx pattern"),
        (b"version: STSv1\nmode: enforce\nmx: a.example.\nmax_age: 1\n", "bad mx pattern"),
        (b"version: STSv1\nmode: enforce\nmx: -a.example\nmax_age: 1\n", "bad mx pattern"),
        (b"version: STSv1\nmode: enforce\nmx: a_b.example\nmax_age: 1\n", "bad mx pattern"),
        (b"version: STSv1\nmode: enforce\nmx: 10.0.0.1:25\nmax_age: 1\n", "line 3"),
        (b"version: STSv1\nmode enforce\n", "line 2 is malformed"),
        (b" version: STSv1\n", "line 1 is malformed"),
        (b"max age: 1\n", "line 1 is malformed"),
        (b"version:\n", "line 1 is malformed"),
        (b"version: STS\x00v1\n", "line 1 is malformed"),
        (b"version: STSv1\rmode: none\n", "line 1 is malformed"),
        (b"version: STSv1\nnote: caf\xe9\n", "not UTF-8"),
    ],
)
def test_parse_policy_rejects(body: bytes, fragment: str) -> None:
    with pytest.raises(MtaStsError, match="MTA-STS policy") as info:
        parse_policy(body, policy_id="x", fetched_at=0)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message
    assert "\r" not in message
    assert "\x00" not in message


def test_parse_policy_error_shortens_long_values() -> None:
    with pytest.raises(MtaStsError) as info:
        parse_policy(b"version: " + b"x" * 5000 + b"\n", policy_id="x", fetched_at=0)
    assert len(str(info.value)) < 200


@given(st.binary(max_size=300))
def test_parse_policy_raises_only_its_error(body: bytes) -> None:
    try:
        policy = parse_policy(body, policy_id="x", fetched_at=0)
    except MtaStsError as exc:
        message = str(exc)
    else:
        assert policy.mode in ("enforce", "testing", "none")
        assert 0 <= policy.max_age <= MAX_AGE_LIMIT
        return
    assert message.startswith("MTA-STS policy")
    assert "\n" not in message


_LINES = st.sampled_from(
    [
        "version: STSv1",
        "mode: enforce",
        "mode: none",
        "mode: testing",
        "mx: a.example",
        "mx: *.b.example",
        "mx: *.",
        "max_age: 86400",
        "max_age: 0",
        "x: y",
        "",
        ":",
        "version : STSv1",
    ]
)


@given(st.lists(_LINES, max_size=8), st.sampled_from(["\n", "\r\n"]))
def test_parse_policy_line_mixes_raise_only_its_error(lines: list[str], end: str) -> None:
    body = end.join(lines).encode()
    try:
        policy = parse_policy(body, policy_id="x", fetched_at=0)
    except MtaStsError:
        return
    assert "version: STSv1" in lines
    assert policy.mode == "none" or policy.mx


# -- StsPolicy ---------------------------------------------------------------------------------


def _policy(*mx: str, max_age: int = 100, fetched_at: float = 1000.0) -> StsPolicy:
    return StsPolicy("enforce", mx, max_age, "id", fetched_at)


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("mail.example.com", True),
        ("MAIL.Example.COM.", True),
        ("a.example.net", True),  # "*." is exactly one label
        ("example.net", False),
        ("a.b.example.net", False),
        (".example.net", False),
        ("xexample.net", False),
        ("mail.example.com.evil", False),
        ("other.example.com", False),
        ("", False),
        (".", False),
    ],
)
def test_allows(host: str, allowed: bool) -> None:
    assert _policy("mail.example.com", "*.example.net").allows(host) is allowed


def test_expired_at_fetched_at_plus_max_age() -> None:
    policy = _policy("a.example", max_age=100, fetched_at=1000.0)
    assert not policy.expired(1099.9)
    assert policy.expired(1100.0)


# -- fetch_policy ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    return tls.client_context(ca)


def _fetch(
    context: ssl.SSLContext,
    addresses: list[str],
    *,
    domain: str = DOMAIN,
    max_size: int = 65536,
    port: int = 443,
) -> bytes:
    return asyncio.run(
        fetch_policy(
            domain, addresses, ssl_context=context, timeout=10, port=port, max_size=max_size
        )
    )


def _server(
    ca: trustme.CA,
    address: str,
    route: tuple[int, str, bytes] = (200, "text/plain", RFC_POLICY),
    *,
    name: str = f"mta-sts.{DOMAIN}",
    chunked: bool = False,
    port: int = 443,
) -> HttpsServer:
    return HttpsServer(address, port, ca.issue_cert(name), routes={PATH: route}, chunked=chunked)


def test_fetch_returns_the_body_and_sends_host_and_sni(
    ca: trustme.CA, client_context: ssl.SSLContext
) -> None:
    with _server(ca, "127.0.54.10") as server:
        body = _fetch(client_context, ["127.0.54.10"])
    assert body == RFC_POLICY
    assert len(server.requests) == 1
    request = server.requests[0]
    assert (request.method, request.path, request.sni) == ("GET", PATH, "mta-sts.example.test")
    assert ("Host", "mta-sts.example.test") in request.headers


def test_fetch_reads_a_chunked_body(ca: trustme.CA, client_context: ssl.SSLContext) -> None:
    leaf = ca.issue_cert(f"mta-sts.{DOMAIN}")
    with HttpsServer(
        "127.0.54.11",
        443,
        cert_pem=b"".join(blob.bytes() for blob in leaf.cert_chain_pems),
        key_pem=leaf.private_key_pem.bytes(),
        routes={PATH: (200, "text/plain", RFC_POLICY)},
        chunked=True,
    ):
        assert _fetch(client_context, ["127.0.54.11"]) == RFC_POLICY


def test_fetch_accepts_a_charset_parameter(ca: trustme.CA, client_context: ssl.SSLContext) -> None:
    with _server(ca, "127.0.54.12", (200, "Text/Plain; charset=utf-8", b"body")):
        assert _fetch(client_context, ["127.0.54.12"]) == b"body"


def test_fetch_refuses_a_certificate_for_another_name(
    ca: trustme.CA, client_context: ssl.SSLContext
) -> None:
    with (
        _server(ca, "127.0.54.13", name="mta-sts.other.test") as server,
        pytest.raises(MtaStsError, match=r"mta-sts\.example\.test at 127\.0\.54\.13: .*certif"),
    ):
        _fetch(client_context, ["127.0.54.13"])
    assert server.requests == []


def test_fetch_refuses_an_untrusted_certificate(client_context: ssl.SSLContext) -> None:
    stranger = trustme.CA()
    with (
        _server(stranger, "127.0.54.14") as server,
        pytest.raises(MtaStsError, match="certificate verify failed"),
    ):
        _fetch(client_context, ["127.0.54.14"])
    assert server.requests == []


def test_fetch_refuses_404(ca: trustme.CA, client_context: ssl.SSLContext) -> None:
    with (
        _server(ca, "127.0.54.15", (404, "text/plain", b"gone")),
        pytest.raises(MtaStsError, match="HTTP status 404, expected 200"),
    ):
        _fetch(client_context, ["127.0.54.15"])


def test_fetch_does_not_follow_redirects(ca: trustme.CA, client_context: ssl.SSLContext) -> None:
    target = f"https://mta-sts.{DOMAIN}/elsewhere.txt".encode()
    with _server(ca, "127.0.54.16", (301, "text/plain", target)) as server:
        server.routes["/elsewhere.txt"] = (200, "text/plain", RFC_POLICY)
        with pytest.raises(MtaStsError, match="HTTP status 301"):
            _fetch(client_context, ["127.0.54.16", "127.0.54.16"])
    assert [request.path for request in server.requests] == [PATH]


def test_fetch_refuses_another_content_type(ca: trustme.CA, client_context: ssl.SSLContext) -> None:
    with (
        _server(ca, "127.0.54.17", (200, "text/html", RFC_POLICY)),
        pytest.raises(MtaStsError, match="Content-Type 'text/html', expected text/plain"),
    ):
        _fetch(client_context, ["127.0.54.17"])


def test_fetch_refuses_a_missing_content_type(
    ca: trustme.CA, client_context: ssl.SSLContext
) -> None:
    with (
        _server(ca, "127.0.54.18", (200, "", RFC_POLICY)),
        pytest.raises(MtaStsError, match="0 Content-Type headers"),
    ):
        _fetch(client_context, ["127.0.54.18"])


@pytest.mark.parametrize("chunked", [False, True])
def test_fetch_refuses_an_oversize_body(
    ca: trustme.CA, client_context: ssl.SSLContext, chunked: bool
) -> None:
    address = "127.0.54.20" if chunked else "127.0.54.19"
    with (
        _server(ca, address, (200, "text/plain", b"x" * 5000), chunked=chunked),
        pytest.raises(MtaStsError, match="larger than 1000 bytes"),
    ):
        _fetch(client_context, [address], max_size=1000)


def test_fetch_body_of_exactly_max_size_is_accepted(
    ca: trustme.CA, client_context: ssl.SSLContext
) -> None:
    with _server(ca, "127.0.54.21", (200, "text/plain", b"y" * 1000), chunked=True):
        assert _fetch(client_context, ["127.0.54.21"], max_size=1000) == b"y" * 1000


@pytest.mark.parametrize(
    ("address", "raw"),
    [
        (
            "127.0.54.29",
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\nshort",
        ),
        ("127.0.54.30", b"garbage\r\n\r\n"),
        ("127.0.54.31", b""),
    ],
)
def test_fetch_refuses_broken_http(
    ca: trustme.CA, client_context: ssl.SSLContext, address: str, raw: bytes
) -> None:
    with (
        _server(ca, address, (0, "", raw)),
        pytest.raises(MtaStsError, match=r"^mta-sts\.example\.test: bad HTTP response: ") as info,
    ):
        _fetch(client_context, [address])
    assert "\n" not in str(info.value)


def test_fetch_times_out_on_a_silent_server(client_context: ssl.SSLContext) -> None:
    # The kernel completes the TCP handshake from the backlog; nobody ever answers TLS.
    with socket.create_server(("127.0.54.28", 443)) as silent:
        silent.listen(4)
        with pytest.raises(MtaStsError, match=r"127\.0\.54\.28: timed out after 0\.2s"):
            asyncio.run(
                fetch_policy(DOMAIN, ["127.0.54.28"], ssl_context=client_context, timeout=0.2)
            )


def test_fetch_tries_the_next_address(ca: trustme.CA, client_context: ssl.SSLContext) -> None:
    # Nothing listens on 127.0.54.22:443, so the first address is refused.
    with _server(ca, "127.0.54.23") as server:
        assert _fetch(client_context, ["127.0.54.22", "127.0.54.23"]) == RFC_POLICY
    assert len(server.requests) == 1


def test_fetch_names_the_last_failure(client_context: ssl.SSLContext) -> None:
    with pytest.raises(MtaStsError, match=r"mta-sts\.example\.test at 127\.0\.54\.25: "):
        _fetch(client_context, ["127.0.54.24", "127.0.54.25"])


def test_fetch_without_addresses(client_context: ssl.SSLContext) -> None:
    with pytest.raises(MtaStsError, match=r"mta-sts\.example\.test has no addresses"):
        _fetch(client_context, [])


@pytest.mark.parametrize("domain", ["", "exa mple.test", "a/../b", "x\r\nHost: evil", "-a.test"])
def test_fetch_refuses_invalid_domains(client_context: ssl.SSLContext, domain: str) -> None:
    with pytest.raises(MtaStsError, match="not a valid domain") as info:
        _fetch(client_context, ["127.0.54.26"], domain=domain)
    assert "\n" not in str(info.value)


def test_fetch_needs_a_verifying_context() -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with pytest.raises(ValueError, match="verifies certificates"):
        _fetch(context, ["127.0.54.27"])


# -- MtaSts.policy -----------------------------------------------------------------------------


class World:
    """A DNS zone, an HTTPS policy server on a free port, and an MtaSts over them."""

    def __init__(
        self, zone: ZoneServer, https: HttpsServer, cache_dir: Path, context: ssl.SSLContext
    ) -> None:
        self.zone = zone
        self.https = https
        self.cache_dir = cache_dir
        self.clock = FakeClock(1_000_000.0)
        self.context = context
        self.sts = self.new_mtasts()

    def new_mtasts(self) -> MtaSts:
        resolver = Resolver([self.zone.nameserver], timeout=5)
        port = self.https.address[1]
        return MtaSts(resolver, self.cache_dir, self.context, self.clock, timeout=5, port=port)

    def publish(self, policy_id: str, body: bytes = RFC_POLICY, status: int = 200) -> None:
        self.zone.remove(f"_mta-sts.{DOMAIN}", "TXT")
        self.zone.add(f"_mta-sts.{DOMAIN}", "TXT", f'"v=STSv1; id={policy_id};"')
        self.https.routes[PATH] = (status, "text/plain", body)

    def lookup(self) -> StsPolicy | None:
        """A full discovery, as by a new runner (the in-memory recheck memo is tested apart)."""
        self.sts = self.new_mtasts()
        return asyncio.run(self.sts.policy(DOMAIN))

    def lookup_again(self) -> StsPolicy | None:
        """A lookup by the same MtaSts, which remembers answers for RECHECK_SECONDS."""
        return asyncio.run(self.sts.policy(DOMAIN))

    @property
    def fetches(self) -> int:
        return len(self.https.requests)


@pytest.fixture
def world(ca: trustme.CA, client_context: ssl.SSLContext, tmp_path: Path) -> Iterator[World]:
    with (
        ZoneServer("127.0.54.53", 0) as zone,
        HttpsServer("127.0.54.54", 0, ca.issue_cert(f"mta-sts.{DOMAIN}")) as https,
    ):
        zone.add(f"mta-sts.{DOMAIN}", "A", "127.0.54.54")
        yield World(zone, https, tmp_path / "mta-sts", client_context)


def test_policy_is_fetched_and_cached_on_disk(world: World) -> None:
    world.publish("one")
    policy = world.lookup()
    assert policy is not None
    assert (policy.mode, policy.policy_id, policy.fetched_at) == ("enforce", "one", 1_000_000.0)
    stored = json.loads((world.cache_dir / f"{DOMAIN}.json").read_text())
    assert stored["policy_id"] == "one"
    assert stored["mx"] == ["mail.example.com", "*.example.net", "backupmx.example.com"]
    assert [p.name for p in world.cache_dir.iterdir()] == [f"{DOMAIN}.json"]


def test_same_id_reuses_the_cache_without_fetching(world: World) -> None:
    world.publish("one")
    first = world.lookup()
    world.clock.advance(1000)
    world.sts = world.new_mtasts()  # a new process: only the file remembers
    assert world.lookup() == first
    assert world.fetches == 1


def test_new_id_refetches(world: World) -> None:
    world.publish("one")
    world.lookup()
    world.clock.advance(10)
    world.publish("two", RFC_POLICY.replace(b"enforce", b"testing"))
    policy = world.lookup()
    assert policy is not None
    assert (policy.policy_id, policy.mode, policy.fetched_at) == ("two", "testing", 1_000_010.0)
    assert world.fetches == 2
    stored = json.loads((world.cache_dir / f"{DOMAIN}.json").read_text())
    assert stored["policy_id"] == "two"


def test_expired_cache_is_refetched_even_with_the_same_id(world: World) -> None:
    world.publish("one", b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 60\n")
    world.lookup()
    world.clock.advance(60)
    policy = world.lookup()
    assert policy is not None
    assert policy.fetched_at == world.clock.now
    assert world.fetches == 2


def test_fetch_failure_keeps_the_unexpired_cache(world: World) -> None:
    world.publish("one", b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 60\n")
    first = world.lookup()
    world.clock.advance(30)
    world.publish("two", status=500)
    assert world.lookup() == first
    world.publish("three", b"version: STSv2\n")  # parse failure
    assert world.lookup() == first
    world.clock.advance(30)  # now expired, and the fetch still fails
    assert world.lookup() is None
    assert world.fetches == 4


def test_no_txt_record_uses_the_cache_or_nothing(world: World) -> None:
    assert world.lookup() is None
    assert world.fetches == 0
    world.publish("one")
    first = world.lookup()
    world.zone.remove(f"_mta-sts.{DOMAIN}", "TXT")
    assert world.lookup() == first
    assert world.fetches == 1


def test_txt_without_sts_record_means_no_policy(world: World) -> None:
    world.zone.add(f"_mta-sts.{DOMAIN}", "TXT", '"v=spf1 -all"')
    assert world.lookup() is None
    assert world.fetches == 0


def test_dns_failure_uses_the_cache(world: World) -> None:
    world.publish("one")
    first = world.lookup()
    world.zone.fail(f"_mta-sts.{DOMAIN}", "TXT")
    world.clock.advance(5)
    assert world.lookup() == first


def test_missing_policy_host_address_means_no_policy(world: World) -> None:
    world.publish("one")
    world.zone.remove(f"mta-sts.{DOMAIN}", "A")
    assert world.lookup() is None
    assert not (world.cache_dir / f"{DOMAIN}.json").exists()


def test_mode_none_is_cached_and_returned(world: World) -> None:
    world.publish("gone", b"version: STSv1\nmode: none\nmax_age: 86400\n")
    policy = world.lookup()
    assert policy is not None
    assert (policy.mode, policy.mx) == ("none", ())
    world.clock.advance(100)
    assert world.lookup() == policy
    assert world.fetches == 1


def test_corrupt_cache_file_is_ignored_and_replaced(world: World) -> None:
    world.cache_dir.mkdir()
    (world.cache_dir / f"{DOMAIN}.json").write_text('{"mode": "enforce", "mx": 3}')
    world.publish("one")
    policy = world.lookup()
    assert policy is not None
    assert policy.policy_id == "one"
    assert json.loads((world.cache_dir / f"{DOMAIN}.json").read_text())["mx"][0] == (
        "mail.example.com"
    )


def test_unwritable_cache_still_returns_the_policy(world: World) -> None:
    world.cache_dir.write_text("a file where the directory should be")
    world.publish("one")
    policy = world.lookup()
    assert policy is not None
    assert policy.policy_id == "one"


def test_policy_refuses_an_invalid_domain(world: World) -> None:
    with pytest.raises(MtaStsError, match="not a valid domain"):
        asyncio.run(world.sts.policy("../../etc/passwd"))


def test_answers_are_remembered_briefly_so_messages_do_not_each_ask_dns(world: World) -> None:
    world.publish("one")
    first = world.lookup()
    asked = len(world.zone.queries)
    world.clock.advance(RECHECK_SECONDS - 1)
    assert world.lookup_again() == first
    assert len(world.zone.queries) == asked
    world.clock.advance(2)
    assert world.lookup_again() == first
    assert len(world.zone.queries) > asked  # the TXT record is asked again
    assert world.fetches == 1


def test_no_policy_is_remembered_too(world: World) -> None:
    assert world.lookup() is None
    asked = len(world.zone.queries)
    world.publish("one")
    assert world.lookup_again() is None  # within the recheck interval
    assert len(world.zone.queries) == asked


def test_a_policy_past_half_its_max_age_is_refreshed_early(world: World) -> None:
    world.publish("one", b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 86400\n")
    world.lookup()
    world.clock.advance(43201)
    refreshed = world.lookup()
    assert refreshed is not None
    assert refreshed.fetched_at == world.clock.now
    assert world.fetches == 2


def test_a_failed_early_refresh_keeps_the_cached_policy(world: World) -> None:
    world.publish("one", b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 86400\n")
    first = world.lookup()
    world.https.routes[PATH] = (404, "text/plain", b"gone")
    world.clock.advance(43201)
    assert world.lookup() == first
    assert world.fetches == 2
