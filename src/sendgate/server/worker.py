"""One acceptor worker: an event loop serving SMTP connections on inherited listening sockets.

Security: a worker runs untrusted connections only through `SmtpConnection`, which contains
every per-connection failure. On SIGTERM it stops accepting, tells idle clients 421, lets
transactions in flight finish within the grace period, then aborts what is left. SIGHUP (and,
every `reload_interval` seconds, a change of the files) reloads the TLS certificates without
touching established connections; SIGHUP also runs the worker's other reloads (the DKIM keys).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import resource
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from sendgate.errors import TlsConfigError
from sendgate.log import EventLog, EventSink
from sendgate.server.admission import Admission, HandlerFactory, Refusal
from sendgate.server.caps import ConnectionCaps, address_key
from sendgate.server.connection import SmtpConnection
from sendgate.server.descriptors import connection_budget
from sendgate.server.floods import INTERVAL, FloodLog
from sendgate.server.memory import MemoryBudget
from sendgate.server.proxy import ProxyError, read_header
from sendgate.server.tls import TlsContextHolder
from sendgate.smtp import replies
from sendgate.smtp.session import SessionSettings

_ACCEPT_RETRY_DELAY = 1.0  # seconds without accepting after EMFILE and the like
_ACCEPT_BATCH = 128  # connections taken in one turn of the loop (the others wait a turn)
# (user id, conn id) -> admission of a sendmail-socket client
LocalFactory = Callable[[int, str], Admission | Awaitable[Admission]]


@dataclass(frozen=True, slots=True)
class Listener:
    sock: socket.socket
    implicit_tls: bool
    local: bool = False  # the sendmail socket (a Unix socket for local users)


@dataclass(frozen=True, slots=True)
class Timeouts:
    command: float = 300.0
    # The command timeout of unauthenticated clients while the server is under pressure.
    pressure_command: float = 10.0
    session: float = 3600.0
    handshake: float = 10.0
    shutdown_grace: float = 30.0
    reload_interval: float = 60.0
    # A connection we closed that has not gone after this long (its last reply unread, no TLS
    # close_notify) is aborted: a client that never reads must not keep its buffers.
    close_grace: float = 5.0
    # A connection younger than this is never closed to make room: a client gets the time to
    # log in, and a flood cannot push out its own connections faster than that.
    room_min_age: float = 1.0
    flood_interval: float = INTERVAL  # how often held-back connection lines are summed up
    # How long MAIL FROM with a SIZE waits for memory before 452 4.3.1 (clients wait 5 minutes
    # for the reply, RFC 5321 4.5.3.2.2).
    memory_wait: float = 60.0


class Worker:
    """Serves connections until stopped; implements connection.ServerContext."""

    def __init__(
        self,
        *,
        listeners: list[Listener],
        settings: SessionSettings,
        tls: TlsContextHolder,
        caps: ConnectionCaps,
        handler_factory: HandlerFactory,
        log: EventLog,
        timeouts: Timeouts,
        max_connections: int | None = None,
        message_memory: int = 1 << 62,
        on_reload: Sequence[Callable[[], object]] = (),
        chores: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
        proxies: Sequence[str] = (),
        local_factory: LocalFactory | None = None,
    ) -> None:
        """`max_connections`: this process's own ceiling (by default, what its descriptor limit
        allows after the reserve, see server.descriptors); `message_memory`: octets of message
        content its connections may hold together (server.memory); `on_reload`: what SIGHUP
        runs besides the TLS reload; `chores`: coroutines run on the loop while serving (a
        heartbeat); `proxies`: the networks whose connections open with a PROXY header (then
        every connection must come from one of them); `local_factory`: admits the sendmail
        socket's clients by their user id."""
        self.settings = settings
        self.log = log
        self.session_timeout = timeouts.session
        self.handshake_timeout = timeouts.handshake
        self.recheck_interval = min(timeouts.pressure_command, timeouts.command)
        self.close_grace = timeouts.close_grace
        self.draining = False
        self._listeners = listeners
        self._tls = tls
        self._caps = caps
        self._handler_factory = handler_factory
        self._timeouts = timeouts
        self._on_reload = tuple(on_reload)
        self._chores = tuple(chores)
        self._local_factory = local_factory
        self._proxies = tuple(ipaddress.ip_network(network) for network in proxies)
        self._pending: set[asyncio.Task[None]] = set()  # connections awaiting their header
        self._floods = FloodLog(log, interval=timeouts.flood_interval)
        self._memory = MemoryBudget(message_memory)
        self._connections: set[SmtpConnection] = set()
        self._lingering: set[SmtpConnection] = set()  # released, but their sockets still open
        self._budget = max_connections or connection_budget(
            resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        )
        # Unauthenticated connections (the ones closed to make room) by address key, each
        # address's oldest first; kept as they come and go, so making room costs no scan.
        self._unauthenticated: dict[str, dict[SmtpConnection, None]] = {}
        self._address_of: dict[SmtpConnection, str] = {}
        self._stop: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- connection.ServerContext ---

    def tls_context(self) -> ssl.SSLContext:
        return self._tls.front

    def connection_log(self, client_ip: str, conn_id: str) -> EventSink:
        return self._floods.connection(client_ip, conn_id)

    @property
    def connections(self) -> frozenset[SmtpConnection]:
        return frozenset(self._connections)

    def command_timeout(self, authenticated: bool) -> float:
        if not authenticated and self._caps.under_pressure():
            return self.recheck_interval
        return self._timeouts.command

    def acquire(self, conn: SmtpConnection) -> int | str:
        """Count `conn` in the caps (closing an idle unauthenticated one if that makes room).

        Returns its slot, or why it is refused: "descriptors" (this worker's own ceiling),
        "connection_rate" (its address ended too many connections without a login) or
        "connection_cap" (global, per address or unauthenticated cap).
        """
        if len(self._connections) + len(self._lingering) >= self._budget:
            return "descriptors"  # one more would eat the reserve: refuse while we still can
        caps, ip = self._caps, conn.client_ip
        if caps.over_rate(ip):
            return "connection_rate"
        slot = caps.acquire(ip)
        if slot is None and not caps.address_full(ip) and self._make_room():
            slot = caps.acquire(ip)
        if slot is None:
            return "connection_cap"
        self._connections.add(conn)
        key = address_key(ip)
        self._address_of[conn] = key
        self._unauthenticated.setdefault(key, {})[conn] = None
        return slot

    def _forget_unauthenticated(self, conn: SmtpConnection) -> None:
        key = self._address_of.pop(conn, None)
        if key is not None:
            held = self._unauthenticated[key]
            del held[conn]
            if not held:
                del self._unauthenticated[key]

    def _make_room(self) -> bool:
        """Close an unauthenticated connection that waits for its client, to let a new one in.

        Called when the global cap or the unauthenticated share is full (not the new client's
        per-address cap). From the address holding the most unauthenticated connections here
        (a flood's, not a client's with one), its oldest; none younger than `room_min_age`,
        none with a decision under way. Among addresses holding as many, the first to come.
        """
        assert self._loop is not None
        by_address = self._unauthenticated
        if not by_address:
            return False
        most = max(by_address, key=lambda key: len(by_address[key]))
        if self._evict_from(by_address[most]):
            return True
        # The busiest address has nothing to spare (all young or deciding): the next ones.
        ranked = sorted(by_address, key=lambda key: len(by_address[key]), reverse=True)
        return any(self._evict_from(by_address[key]) for key in ranked if key != most)

    def _evict_from(self, held: dict[SmtpConnection, None]) -> bool:
        assert self._loop is not None
        oldest = self._loop.time() - self._timeouts.room_min_age
        for conn in held:  # oldest first
            if conn.connected_at > oldest:
                return False
            if conn.evictable:
                conn.make_room()
                return True
        return False

    @property
    def memory_used(self) -> int:
        return self._memory.used

    def take_memory(self, octets: int) -> bool:
        return self._memory.take(octets)

    def give_memory(self, octets: int) -> None:
        self._memory.give(octets)

    async def wait_for_memory(self, octets: int) -> bool:
        return await self._memory.wait_to_take(octets, self._timeouts.memory_wait)

    def promote(self, conn: SmtpConnection, slot: int | None) -> None:
        self._caps.promote(slot)
        self._forget_unauthenticated(conn)

    def lingering(self, conn: SmtpConnection, still: bool) -> None:
        if still:
            self._lingering.add(conn)
        else:
            self._lingering.discard(conn)

    def release(self, conn: SmtpConnection, slot: int) -> None:
        self._caps.release(slot, authenticated=conn.authenticated)
        self._connections.discard(conn)
        self._forget_unauthenticated(conn)
        if not self._connections and self._idle is not None:
            self._idle.set()

    def admit(self, ip: str, conn_id: str) -> Admission | Awaitable[Admission]:
        return self._handler_factory(ip, conn_id)

    def admit_local(self, uid: int | None, conn_id: str) -> Admission | Awaitable[Admission]:
        if self._local_factory is None or uid is None:
            return Refusal(replies.LOCAL_NOT_ALLOWED, "local_user")
        return self._local_factory(uid, conn_id)

    # --- lifecycle ---

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def stop_threadsafe(self) -> None:
        """`stop` from another thread (an embedding program or a test running the loop)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.stop)

    def reload(self) -> None:
        """SIGHUP: the certificates whether changed or not, then the other reloads.

        The others run in a thread: parsing RSA keys takes a tenth of a second per key, too long
        to stop every connection for.
        """
        self.reload_tls(force=True)
        loop = asyncio.get_running_loop()
        for reload in self._on_reload:
            loop.run_in_executor(None, reload)

    def reload_tls(self, *, force: bool) -> None:
        try:
            if self._tls.reload(force=force):
                self.log.event("tls_reloaded")
        except TlsConfigError as exc:
            self.log.event("tls_reload_failed", "error", error=str(exc))

    def _loop_error(self, _loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """One log line instead of asyncio's traceback (e.g. a fatal error in a TLS transport)."""
        exc = context.get("exception")
        message = str(context.get("message", ""))
        self.log.event(
            "tls_failed" if "handshake" in message.lower() else "loop_error",
            "warning",
            message=message[:200],
            error=type(exc).__name__ if exc is not None else None,
            detail=str(exc)[:200] if exc is not None else None,
        )

    async def _sum_up_floods(self) -> None:
        while True:
            await asyncio.sleep(self._floods.interval)
            self._floods.flush()

    async def _watch_certificates(self) -> None:
        interval = self._timeouts.reload_interval
        while True:
            await asyncio.sleep(interval)
            self.reload_tls(force=False)

    async def _accept_tls(self, sock: socket.socket) -> None:
        """Port 465: accept here, so caps and admission come before any TLS work.

        A listener with ssl= would do the handshake before we could refuse, and a plain
        listener cannot hold back the ClientHello (uvloop starts reading after connection_made
        whatever it did), so the accepted socket goes to the handshake only once admitted.
        """
        await self._accept_forever(sock, self._take_tls)

    def _take_tls(self, conn: socket.socket, _peer: str) -> None:
        try:
            SmtpConnection(self, implicit_tls=True).accepted(conn)
        except Exception as exc:  # a bug must cost one connection, never the listener
            self.log.event("accept_failed", "error", error=repr(exc))
            conn.close()

    async def _accept_plain(self, sock: socket.socket) -> None:
        """Port 587: accept here too. uvloop's own listener (libuv) accepts one connection per
        loop turn, so under load a new client waited behind every client queued before it,
        one busy turn each; `_accept_forever` takes all that are waiting at once."""
        await self._accept_forever(
            sock, lambda conn, _peer: self._in_task(self._connect_plain(conn))
        )

    async def _connect_plain(
        self, conn: socket.socket, client: tuple[str, int] | None = None
    ) -> None:
        """587: the plain transport on an accepted socket (`client`: a proxy's word for it)."""
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                functools.partial(SmtpConnection, self, implicit_tls=False, client=client), conn
            )
        except Exception as exc:  # a bug must cost one connection, never the listener
            self.log.event("accept_failed", "error", error=repr(exc))
            conn.close()

    def _in_task(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in a task that shutdown cancels if it is still pending."""
        task = asyncio.get_running_loop().create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _accept_forever(
        self, sock: socket.socket, take: Callable[[socket.socket, str], None]
    ) -> None:
        """Accept on `sock` until cancelled, handing each connection and its peer's address
        to `take`.

        The listening socket keeps one reader for as long as the worker serves: the loop's
        sock_accept registers a reader and a future for every connection and removes them again
        (eight system calls a connection on uvloop). Each turn in which the socket is readable
        takes up to _ACCEPT_BATCH connections: a new client must not wait one busy turn for
        each client queued before it.
        """
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        fd = sock.fileno()
        resume: asyncio.TimerHandle | None = None

        def acceptable() -> None:
            nonlocal resume
            for _ in range(_ACCEPT_BATCH):
                try:
                    conn, peer = sock.accept()
                except BlockingIOError:
                    return  # none waiting
                except (InterruptedError, ConnectionAbortedError):
                    continue  # the client left before we took it: nothing to do
                except OSError as exc:
                    # Out of descriptors or buffers: back off as asyncio's own listeners do.
                    self.log.event(
                        "accept_failed", "error", error=type(exc).__name__, detail=str(exc)
                    )
                    loop.remove_reader(fd)
                    resume = loop.call_later(_ACCEPT_RETRY_DELAY, loop.add_reader, fd, acceptable)
                    return
                conn.setblocking(False)
                take(conn, str(peer[0]))

        loop.add_reader(fd, acceptable)
        try:
            await loop.create_future()  # until cancelled
        finally:
            if resume is not None:
                resume.cancel()
            loop.remove_reader(fd)

    async def _accept_proxied(self, sock: socket.socket, implicit_tls: bool) -> None:
        """Behind a proxy: accept here, and take each connection's PROXY header in a task."""
        await self._accept_forever(
            sock, lambda conn, peer: self._in_task(self._proxied(conn, peer, implicit_tls))
        )

    async def _proxied(self, conn: socket.socket, proxy: str, implicit_tls: bool) -> None:
        """Believe the header only from a trusted proxy; refuse everything else unanswered."""
        log = self._floods.connection(proxy, "proxy")
        if not any(ipaddress.ip_address(proxy) in network for network in self._proxies):
            log.event("refused", "warning", reason="proxy_untrusted")
            conn.close()
            return
        try:
            client = await read_header(conn, self.handshake_timeout)
        except ProxyError as exc:
            log.event("refused", "warning", reason="proxy_header", detail=str(exc))
            conn.close()
            return
        except asyncio.CancelledError:
            conn.close()
            raise
        address = client or (proxy, 0)  # LOCAL (a health check): the proxy itself
        if not implicit_tls:
            await self._connect_plain(conn, address)
            return
        try:
            SmtpConnection(self, implicit_tls=True, client=address).accepted(conn)
        except Exception as exc:  # a bug must cost one connection, never the listener
            self.log.event("accept_failed", "error", error=repr(exc))
            conn.close()

    async def run(self, *, install_signals: bool = True) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self.log.defer_on(loop)  # info lines: written together, a few at a time
        try:
            await self._serve(loop, install_signals)
        finally:
            self.log.defer_on(None)

    async def _serve(self, loop: asyncio.AbstractEventLoop, install_signals: bool) -> None:
        self._stop = asyncio.Event()
        self._idle = asyncio.Event()
        servers: list[asyncio.Server] = []
        acceptors: list[asyncio.Task[None]] = []
        loop.set_exception_handler(self._loop_error)
        for listener in self._listeners:
            if listener.local:
                servers.append(
                    await loop.create_unix_server(
                        functools.partial(SmtpConnection, self, implicit_tls=False, local=True),
                        sock=listener.sock,
                        backlog=128,
                    )
                )
                continue
            if self._proxies:
                acceptor = self._accept_proxied(listener.sock, listener.implicit_tls)
                acceptors.append(loop.create_task(acceptor))
                continue
            if listener.implicit_tls:
                acceptors.append(loop.create_task(self._accept_tls(listener.sock)))
                continue
            acceptors.append(loop.create_task(self._accept_plain(listener.sock)))
        if install_signals:
            loop.add_signal_handler(signal.SIGTERM, self.stop)
            loop.add_signal_handler(signal.SIGINT, self.stop)
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        chores = [loop.create_task(self._sum_up_floods())]
        chores += (loop.create_task(chore()) for chore in self._chores)
        if self._timeouts.reload_interval > 0:
            chores.append(loop.create_task(self._watch_certificates()))
        await self._stop.wait()
        for chore in chores:
            chore.cancel()
        await self._drain(servers, acceptors)
        self._floods.flush()

    async def _drain(
        self, servers: list[asyncio.Server], acceptors: list[asyncio.Task[None]]
    ) -> None:
        for server in servers:
            server.close()
        for acceptor in acceptors:
            acceptor.cancel()
        await asyncio.gather(*acceptors, return_exceptions=True)
        for pending in self._pending:
            pending.cancel()
        for listener in self._listeners:
            if not listener.local:
                listener.sock.close()  # as server.close() does for the 587 listeners
        self.draining = True
        for conn in list(self._connections):
            conn.shutdown()
        assert self._idle is not None
        if self._connections:
            try:
                await asyncio.wait_for(self._idle.wait(), self._timeouts.shutdown_grace)
            except TimeoutError:
                self.log.event("shutdown_abort", "warning", connections=len(self._connections))
                for conn in list(self._connections):
                    conn.abort()
        for server in servers:
            await server.wait_closed()
