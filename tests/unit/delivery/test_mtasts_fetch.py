"""MTA-STS policy fetch: HTTPS to the policy host, certificate and name checks, bounded answers.

Fetches run against a real HTTPS server (stdlib http.server + trustme certificates) on
127.0.54.10-31:443, one address per test so parallel workers never clash.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest
import trustme
from tests.peers.https_server import HttpsServer
from tests.support import tls
from tests.unit.delivery.mtasts_samples import DOMAIN, PATH, RFC_POLICY

from sendgate.delivery.mtasts import fetch_policy
from sendgate.delivery.mtasts_policy import MtaStsError


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
