"""The HTTP listener's routes (`sendgate.web.app.App`), called as the server calls them."""

from __future__ import annotations

import asyncio
import json
import plistlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from sendgate.web.app import App, Sources
from sendgate.web.clientconfig import Offer
from sendgate.web.health import HealthSources, Heartbeat
from sendgate.web.http import Request, Response
from sendgate.web.metrics import Metrics

OFFER = Offer("mail.example.org", 465, 587)


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock


def app(tmp_path: Path, metrics_dir: Path, listening: socket.socket, offer: Offer = OFFER) -> App:
    (tmp_path / "spool").mkdir(exist_ok=True)
    health = HealthSources([listening], tmp_path / "spool", tmp_path, ["acceptor-0"], ["delivery"])
    return App(Sources(offer, metrics_dir, None, health))


def call(handler: App, method: str, target: str, body: bytes = b"") -> Response:
    path, _, query = target.partition("?")
    fields = dict(part.split("=", 1) for part in query.split("&") if part)
    return asyncio.run(handler(Request(method, path, fields, {}, body)))


def test_metrics_are_scraped(tmp_path: Path, multiprocess: Path, listening: socket.socket) -> None:
    Metrics().observe("accepted", {"size": 10})
    response = call(app(tmp_path, multiprocess, listening), "GET", "/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert b"\nsendgate_messages_accepted_total 1.0\n" in response.body


def test_health_is_200_or_503_with_what_failed(
    tmp_path: Path, multiprocess: Path, listening: socket.socket
) -> None:
    handler = app(tmp_path, multiprocess, listening)
    failing = call(handler, "GET", "/healthz")
    assert failing.status == 503
    assert json.loads(failing.body) == {
        "status": "failing",
        "checks": {
            "listeners": "acceptor-0: no heartbeat yet",
            "spool": "ok",
            "delivery": "delivery: no heartbeat yet",
        },
    }
    Heartbeat(tmp_path, "acceptor-0").beat()
    Heartbeat(tmp_path, "delivery").beat()
    healthy = call(handler, "GET", "/healthz")
    assert (healthy.status, healthy.content_type) == (200, "application/json")
    assert json.loads(healthy.body)["status"] == "ok"


@pytest.mark.parametrize(
    "path", ["/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml"]
)
def test_autoconfig_at_both_places(
    tmp_path: Path, multiprocess: Path, listening: socket.socket, path: str
) -> None:
    response = call(
        app(tmp_path, multiprocess, listening), "GET", f"{path}?emailaddress=a@b.example"
    )
    assert (response.status, response.content_type) == (200, "application/xml; charset=utf-8")
    assert b'<emailProvider id="b.example">' in response.body
    bad = call(app(tmp_path, multiprocess, listening), "GET", f"{path}?emailaddress=nonsense")
    assert bad.status == 400
    assert bad.body.startswith(b"emailaddress: ")


def test_autodiscover_is_a_post(
    tmp_path: Path, multiprocess: Path, listening: socket.socket
) -> None:
    handler = app(tmp_path, multiprocess, listening)
    body = (
        b"<Autodiscover><Request><EMailAddress>a@b.example</EMailAddress></Request></Autodiscover>"
    )
    for path in ("/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml"):
        response = call(handler, "POST", path, body)
        assert response.status == 200
        assert b"<LoginName>a@b.example</LoginName>" in response.body
    wrong = call(handler, "GET", "/autodiscover/autodiscover.xml")
    assert (wrong.status, wrong.headers) == (405, (("allow", "POST"),))


def test_apple_profiles_need_an_imap_server(
    tmp_path: Path, multiprocess: Path, listening: socket.socket
) -> None:
    target = "/apple/mail.mobileconfig?emailaddress=al.ice@b.example"
    without = call(app(tmp_path, multiprocess, listening), "GET", target)
    assert (without.status, without.body) == (
        404,
        b"no incoming server is configured (http.imap)\n",
    )
    offer = Offer("mail.example.org", 465, 587, imap=("imap.b.example", 993))
    response = call(app(tmp_path, multiprocess, listening, offer), "GET", target)
    assert (response.status, response.content_type) == (200, "application/x-apple-aspen-config")
    assert response.headers == (
        ("content-disposition", 'attachment; filename="al.ice.mobileconfig"'),
    )
    assert plistlib.loads(response.body)["PayloadContent"][0]["EmailAddress"] == "al.ice@b.example"


def test_unknown_paths_and_methods(
    tmp_path: Path, multiprocess: Path, listening: socket.socket
) -> None:
    handler = app(tmp_path, multiprocess, listening)
    assert call(handler, "GET", "/").status == 404
    assert call(handler, "GET", "/metrics/").status == 404
    refused = call(handler, "POST", "/metrics")
    assert (refused.status, refused.headers) == (405, (("allow", "GET, HEAD"),))
    assert call(handler, "HEAD", "/metrics").status == 200
