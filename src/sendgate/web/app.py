"""The HTTP listener's routes, and the process of `serve` that answers them.

- GET /metrics: Prometheus text, every process's counts added up, state gauges from the stores;
- GET /healthz: 200 with each check "ok", else 503 naming what failed (JSON);
- GET /mail/config-v1.1.xml and /.well-known/autoconfig/mail/config-v1.1.xml: Thunderbird;
- POST /autodiscover/autodiscover.xml (either capitalisation): Outlook;
- GET /apple/mail.mobileconfig?emailaddress=ADDRESS: an Apple profile (with http.imap only).

Slow work (the metrics files, the stores, the file system checks) runs in a thread, so one
scrape never holds up another request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sendgate.log import EventLog
from sendgate.web.clientconfig import (
    ClientConfigError,
    Offer,
    apple_profile,
    autodiscover_address,
    mailbox,
    outlook,
    thunderbird,
)
from sendgate.web.health import HealthSources, check
from sendgate.web.http import HttpServer, Request, Response
from sendgate.web.metrics import StateCollector, exposition

XML = "application/xml; charset=utf-8"
_Route = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Sources:
    """Everything the routes read."""

    offer: Offer
    metrics_dir: Path
    state: StateCollector | None
    health: HealthSources


class App:
    """Answers one request (an `HttpServer` handler)."""

    def __init__(self, sources: Sources) -> None:
        self._sources = sources
        # One thread for the scrapes: the stores are read by one scrape at a time.
        self._scrapes = ThreadPoolExecutor(1, thread_name_prefix="scrape")
        autoconfig = ("GET", self._autoconfig)
        autodiscover = ("POST", self._autodiscover)
        self._routes: Mapping[str, tuple[str, _Route]] = {
            "/metrics": ("GET", self._metrics),
            "/healthz": ("GET", self._health),
            "/mail/config-v1.1.xml": autoconfig,
            "/.well-known/autoconfig/mail/config-v1.1.xml": autoconfig,
            "/autodiscover/autodiscover.xml": autodiscover,
            "/Autodiscover/Autodiscover.xml": autodiscover,
            "/apple/mail.mobileconfig": ("GET", self._apple),
        }

    async def __call__(self, request: Request) -> Response:
        found = self._routes.get(request.path)
        if found is None:
            return Response(404, b"not found\n")
        method, route = found
        allowed = (method, "HEAD") if method == "GET" else (method,)
        if request.method not in allowed:
            return Response(405, b"method not allowed\n", headers=(("allow", ", ".join(allowed)),))
        try:
            return await route(request)
        except ClientConfigError as exc:
            return Response(400, f"{exc}\n".encode())

    async def _metrics(self, _request: Request) -> Response:
        sources = self._sources
        loop = asyncio.get_running_loop()
        body, content_type = await loop.run_in_executor(
            self._scrapes, exposition, sources.metrics_dir, sources.state
        )
        return Response(200, body, content_type)

    async def _health(self, _request: Request) -> Response:
        verdicts = await asyncio.to_thread(check, self._sources.health)
        healthy = all(verdict == "ok" for verdict in verdicts.values())
        document = {"status": "ok" if healthy else "failing", "checks": verdicts}
        body = (json.dumps(document, indent=2) + "\n").encode()
        return Response(200 if healthy else 503, body, "application/json")

    async def _autoconfig(self, request: Request) -> Response:
        given = request.query.get("emailaddress")
        address = mailbox(given) if given is not None else None
        return Response(200, thunderbird(self._sources.offer, address), XML)

    async def _autodiscover(self, request: Request) -> Response:
        address = autodiscover_address(request.body)
        return Response(200, outlook(self._sources.offer, address), XML)

    async def _apple(self, request: Request) -> Response:
        if self._sources.offer.imap is None:
            return Response(404, b"no incoming server is configured (http.imap)\n")
        address = mailbox(request.query.get("emailaddress"))
        profile = apple_profile(self._sources.offer, address)
        name = address.partition("@")[0] or "mail"
        disposition = f'attachment; filename="{_file_name(name)}.mobileconfig"'
        return Response(
            200,
            profile,
            "application/x-apple-aspen-config",
            headers=(("content-disposition", disposition),),
        )


def _file_name(text: str) -> str:
    """A file name made of the safe characters of `text` (a header value must stay harmless)."""
    kept = "".join(c for c in text if c.isascii() and (c.isalnum() or c in "-_."))
    return kept[:64] or "mail"


def run_http(sock: socket.socket, sources: Sources, log: EventLog) -> int:
    """The HTTP process's main: serve until SIGTERM; the exit status."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = loop.create_task(HttpServer(App(sources), log).serve(sock))
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)  # nothing here to reload
        await stopping.wait()
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server

    asyncio.run(main())
    return 0
