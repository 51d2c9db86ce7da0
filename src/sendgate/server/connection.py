"""One client connection: feeds socket bytes to the SMTP Session and its decisions to a handler.

Security: this is where untrusted bytes arrive. The shell holds no SMTP grammar; it enforces
time limits (per command, measured from the client's last complete command or body step, not
its last byte; the whole session; the handshake), pauses reading while a decision is pending
or while the client does not read its replies (so buffered input and output stay bounded),
aborts a connection it closed that does not go away, performs STARTTLS with `loop.start_tls`
only after the Session has discarded everything the client pipelined behind the command, and
turns every failure of one connection (TLS handshake, handler bug, reset) into a log line and
a closed socket, never into an exception that reaches the listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import itertools
import socket
import ssl
import struct
import termios
from collections.abc import Awaitable
from typing import Protocol, cast

from sendgate.log import EventLog, EventSink
from sendgate.server.admission import (
    Admission,
    ConnectionHandler,
    HandlerFactory,
    Local,
    Refusal,
    Spilling,
    ask,
    log_refusal,
)
from sendgate.server.handshake import accept_tls, established, log_failure, start_tls
from sendgate.smtp import replies
from sendgate.smtp.events import NEED_DATA, MailFrom, MessageReceived, StartTls
from sendgate.smtp.replies import Reply
from sendgate.smtp.session import Session, SessionSettings, State
from sendgate.smtp.spill import BLOCK, SPILL_AT, BodySink, SinkFactory

# Octets one connection takes before letting the others have a turn of the loop.
_TURN_MAX = 256 * 1024
_conn_ids = itertools.count(1)
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, drops the queue
_OUTQ = struct.Struct("i")  # TIOCOUTQ (SIOCOUTQ on a socket): the unacknowledged send queue
# Seconds a MAIL FROM SIZE= reservation of memory lasts if no content follows: a client must
# not keep the room others wait for by sending NOOPs in an open transaction.
RESERVATION_HOLD = 30.0


class ServerContext(Protocol):
    """What every connection of one worker shares (implemented by server.worker.Worker)."""

    settings: SessionSettings
    log: EventLog
    session_timeout: float
    handshake_timeout: float
    recheck_interval: float  # how soon a change of `command_timeout` must be noticed
    close_grace: float  # how long a connection we closed may take to go before it is aborted
    draining: bool

    def tls_context(self) -> ssl.SSLContext: ...
    def connection_log(self, client_ip: str, conn_id: str) -> EventSink: ...
    def command_timeout(self, authenticated: bool) -> float: ...
    def acquire(self, conn: SmtpConnection) -> int | str: ...  # a slot, or why not
    def promote(self, conn: SmtpConnection, slot: int | None) -> None: ...
    def take_memory(self, octets: int) -> bool: ...
    async def wait_for_memory(self, octets: int) -> bool: ...
    def give_memory(self, octets: int) -> None: ...
    def release(self, conn: SmtpConnection, slot: int) -> None: ...
    def lingering(self, conn: SmtpConnection, still: bool) -> None: ...  # closed, socket open
    def admit(self, ip: str, conn_id: str) -> Admission | Awaitable[Admission]: ...
    def admit_local(self, uid: int | None, conn_id: str) -> Admission | Awaitable[Admission]: ...


def _admit_local(
    server: ServerContext, uid: int | None, _client_ip: str, conn_id: str
) -> Admission | Awaitable[Admission]:
    return server.admit_local(uid, conn_id)


def _peer_uid(transport: asyncio.BaseTransport) -> int | None:
    """The user id of a Unix-socket peer (SO_PEERCRED), or None if the kernel did not say."""
    sock = transport.get_extra_info("socket")
    try:
        credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except (OSError, AttributeError):
        return None
    _pid, uid, _gid = _UCRED.unpack(credentials)
    return int(uid)


class SmtpConnection(asyncio.Protocol):
    """asyncio Protocol for one SMTP connection (587 STARTTLS or 465 implicit TLS).

    587: the listener makes the plain transport and calls `connection_made`, which checks the
    caps, asks for admission and sends the banner. 465: the worker accepts the socket itself
    and calls `accepted`, which checks the caps and asks for admission before any TLS work;
    only an admitted client gets the handshake (`connect_accepted_socket` with the front
    context), after which `connection_made` receives the TLS transport and sends the banner.
    A plain transport is never made on 465, so no ClientHello byte can reach this protocol
    in plaintext (uvloop starts reading after `connection_made` even when it paused).
    """

    def __init__(
        self,
        server: ServerContext,
        *,
        implicit_tls: bool,
        client: tuple[str, int] | None = None,
        local: bool = False,
    ) -> None:
        """`client`: the address a trusted proxy named (PROXY protocol), else the peer's;
        `local`: a connection to the sendmail socket, whose peer is a local user."""
        self._server = server
        self._implicit_tls = implicit_tls
        self._client = client
        self._local = local
        self._local_uid: int | None = None  # the local peer's user id (SO_PEERCRED)
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._sock: socket.socket | None = None  # 465, until the handshake owns it
        self._early = b""  # 587: sent while admission or the STARTTLS upgrade was pending
        self._upgrading = False
        self._session: Session | None = None
        self._handler: ConnectionHandler | None = None
        self._open_sink: SinkFactory | None = None  # where large bodies go (`smtp.spill`)
        self._slot: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._session_timer: asyncio.TimerHandle | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        self._last_activity = 0.0  # the client's last step (see Session.progress) or our answer
        self._progress = 0
        self._deciding = False  # admission or a handler's answer pending
        self._handshaking = False  # a TLS handshake under way (it has its own deadline)
        self._tls_started = 0.0  # when it began (loop time), for its duration
        self._write_blocked = False  # the transport's buffer is full: the client does not read
        self._turn = 0  # octets taken since this connection last let the others have a turn
        self._yielding = False  # reading paused until the loop's next turn
        self._closing = False
        self.authenticated = False  # counted out of the unauthenticated share
        self._charged = 0  # octets of message content counted in the worker's memory budget
        self._reserved = 0  # octets declared with MAIL FROM SIZE=, for the transaction
        self._reserved_at = 0.0
        self.connected_at = 0.0
        self.conn_id = f"c{next(_conn_ids)}"
        self.client_ip = "?"
        self._log: EventSink  # with conn= and client= (or counted, in a flood) once known

    # --- admission (before any TLS work or banner) ---

    def accepted(self, sock: socket.socket) -> None:
        """465: a socket the worker accepted; the handshake waits for the admission."""
        try:
            peer = self._client or sock.getpeername()
        except OSError:
            sock.close()  # reset by the client already: nobody to serve
            return
        if not self._open(peer):
            sock.close()  # no plaintext reply: the client expects a TLS handshake
            return
        self._sock = sock
        self._ask_admission()

    def _open(self, peer: tuple[str, int] | None) -> bool:
        """Check the caps and start the clocks; False when the connection is refused."""
        self.client_ip = str(peer[0]) if peer else "unknown"
        server = self._server
        self._log = log = server.connection_log(self.client_ip, self.conn_id)
        self.connected_at = self._last_activity = self._loop.time()
        acquired = server.acquire(self)
        if isinstance(acquired, str):
            log.event("refused", "warning", reason=acquired)
            return False
        self._slot = acquired
        kind = "implicit" if self._implicit_tls else "local" if self._local else "starttls"
        log.event("connect", tls=kind)
        first_check = min(server.command_timeout(False), server.recheck_interval)
        self._idle_timer = self._loop.call_later(first_check, self._idle_check)
        self._session_timer = self._loop.call_later(server.session_timeout, self._session_expired)
        return True

    def _ask_admission(self) -> None:
        server = self._server
        factory: HandlerFactory = server.admit
        if self._local:
            factory = functools.partial(_admit_local, server, self._local_uid)
        admission = ask(factory, self.client_ip, self.conn_id, self._log, draining=server.draining)
        if isinstance(admission, Awaitable):
            if self._transport is not None:
                self._transport.pause_reading()  # 587: an early talker waits for the verdict
            self._deciding = True
            self._task = self._loop.create_task(self._await_admission(admission))
        else:
            self._admitted(admission)

    async def _await_admission(self, pending: Awaitable[Admission]) -> None:
        admission = await pending  # never raises: `ask` turned a failure into a 421
        self._deciding = False
        if self._closing:
            return
        if self._transport is not None:
            self._transport.resume_reading()  # before the Session may pause it again
        self._admitted(admission)

    def _admitted(self, admission: Admission) -> None:
        if isinstance(admission, Reply | Refusal):
            reply = log_refusal(self._log, admission)
            if not self._implicit_tls:
                self._write(reply.encode())
            self._close()
            return
        settings = self._server.settings
        if isinstance(admission, Local):
            settings, admission = admission.settings, admission.handler
        self._handler = admission
        self._open_sink = admission.open_body if isinstance(admission, Spilling) else None
        if self._implicit_tls:
            self._task = self._loop.create_task(self._handshake())
            return
        self._session = Session(settings, open_sink=self._open_sink)
        self._resume()

    async def _handshake(self) -> None:
        """465: TLS on the accepted socket; `connection_made` follows once it is done."""
        sock = self._sock
        assert sock is not None
        self._sock = None  # the transport made below owns (and closes) it from now on
        server = self._server
        self._handshaking = True
        self._tls_started = self._loop.time()
        try:
            await accept_tls(self._loop, self, sock, server.tls_context(), server.handshake_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._tls_failed(exc)
            self._close()
        finally:
            self._handshaking = False

    def _tls_failed(self, exc: Exception) -> None:
        if not self._closing:
            log_failure(self._log, exc)

    # --- asyncio callbacks ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        if self._implicit_tls:
            # Admitted, and the handshake is done: the banner goes out over TLS.
            self._handshaking = False
            info = established(transport, self._log, self._loop.time() - self._tls_started)
            self._session = Session(self._server.settings, tls=info, open_sink=self._open_sink)
            self._last_activity = self._loop.time()
            self._flush()
            return
        if self._local:
            self._local_uid = _peer_uid(transport)
        peer = ("local", 0) if self._local else self._client or transport.get_extra_info("peername")
        if not self._open(peer):
            self._closing = True
            transport.write(replies.TOO_MANY_CONNECTIONS.encode())
            transport.close()
            return
        self._ask_admission()

    def data_received(self, data: bytes) -> None:
        if self._upgrading:
            # asyncio's TLS layer hands over what came with the client's Finished before
            # start_tls returns: the first command over TLS, for after tls_established.
            self._early += data
            return
        session = self._session
        if session is None:
            if self._transport is not None and not self._closing:
                # 587, admission pending: uvloop starts reading after connection_made even
                # when it paused, so hold what came for the Session and pause again.
                self._early += data
                self._transport.pause_reading()
            return
        if self._closing:
            return
        session.receive_data(data)
        self._turn += len(data)
        if self._turn >= _TURN_MAX and not self._yielding and self._transport is not None:
            self._give_way(self._transport)
        if self._deciding or self._write_blocked:
            # Read nothing more while a decision or unread replies wait (a transport may still
            # hand over what it had; never let that go on).
            if self._transport is not None:
                self._transport.pause_reading()
            return
        self._pump()

    def _give_way(self, transport: asyncio.Transport) -> None:
        """Read nothing more in this loop turn: uvloop reads a ready socket up to 32 times per
        turn, so a few clients sending large messages made every turn (and every other
        client's reply, banner or accept) wait about a second."""
        self._yielding = True
        transport.pause_reading()
        self._loop.call_soon(self._next_turn)

    def _next_turn(self) -> None:
        self._yielding = False
        self._turn = 0
        paused = self._deciding or self._write_blocked or self._upgrading
        if not (paused or self._closing) and self._transport is not None:
            self._transport.resume_reading()

    def eof_received(self) -> bool | None:
        session = self._session
        if session is None:
            return None
        session.receive_data(b"")
        if not self._deciding and not self._upgrading:
            self._pump()
        # Keep a plaintext transport half-open until pipelined commands are answered (TLS
        # transports close on EOF whatever we return).
        return not session.closed

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._session is not None:
            self._session.close()  # a message being received lets go of its spilled body
        if self._abort_timer is not None:
            self._abort_timer.cancel()
            self._server.lingering(self, False)
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._release()

    def pause_writing(self) -> None:
        # The client is not reading our replies: read nothing more from it until it does.
        self._write_blocked = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_blocked = False
        if self._closing or self._deciding or self._upgrading or self._session is None:
            return
        assert self._transport is not None
        self._transport.resume_reading()
        self._pump()

    # --- the pump: Session events -> handler answers -> bytes out ---

    def _pump(self) -> None:
        session = self._session
        handler = self._handler
        assert session is not None
        assert handler is not None
        while not self._closing and not self._write_blocked:
            event = session.next_event()
            if event is NEED_DATA:
                if session.output_full:
                    # Input waits behind replies: send them; go on unless the client is
                    # not reading (then resume_writing goes on).
                    self._flush()
                    continue
                break
            if isinstance(event, StartTls):
                session.answer(replies.READY_TLS)
                assert self._transport is not None
                # Stop reading before the 220 leaves: the client's ClientHello must reach the
                # TLS layer that start_tls installs, not this plaintext protocol.
                self._transport.pause_reading()
                self._flush()
                if session.discarded_plaintext:
                    self._log.event(
                        "starttls_injection", "warning", discarded=session.discarded_plaintext
                    )
                self._upgrading = True
                self._task = self._loop.create_task(self._start_tls(self._transport))
                return
            if isinstance(event, MessageReceived) and not self._charge(session):
                if event.spilled is not None:
                    event.spilled.discard()
                session.answer(replies.STORAGE_FULL)  # ended within one read, over the budget
                continue
            answer: Reply | Awaitable[Reply]
            try:
                if (
                    isinstance(event, MailFrom)
                    and event.size
                    and not self._reserve(self._reservation(event.size))
                ):
                    answer = self._when_memory_allows(event, session, handler)
                else:
                    answer = handler.handle(event, session)
            except Exception as exc:
                self._server.log.event("handler_error", "error", conn=self.conn_id, error=repr(exc))
                if isinstance(event, MessageReceived) and event.spilled is not None:
                    event.spilled.discard()
                answer = replies.LOCAL_ERROR
            if isinstance(answer, Reply):
                session.answer(answer)
                continue
            # The handler needs I/O (argon2, fsync): stop reading until it answers.
            assert self._transport is not None
            self._transport.pause_reading()
            self._deciding = True
            self._flush()
            self._task = task = self._loop.create_task(self._await_answer(answer))
            if isinstance(event, MessageReceived) and event.spilled is not None:
                # The handler discards a body it does not queue, but a task cancelled before
                # it first ran never ran the handler's clean-up: discard here too (a no-op
                # once the body is queued, or handed to the thread that queues it).
                task.add_done_callback(functools.partial(_discard, event.spilled))
            return
        self._flush()
        if self._server.draining and not session.busy and not session.closed:
            session.close()
            self._write(replies.SHUTTING_DOWN.encode())
            self._close()

    async def _await_answer(self, pending: Awaitable[Reply]) -> None:
        try:
            reply = await pending
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._server.log.event("handler_error", "error", conn=self.conn_id, error=repr(exc))
            reply = replies.LOCAL_ERROR
        self._deciding = False
        if self._closing or self._session is None:
            return
        self._session.answer(reply)
        self._last_activity = self._loop.time()  # the next command's time starts now
        assert self._transport is not None
        if not self._write_blocked:
            self._transport.resume_reading()
        self._pump()

    async def _start_tls(self, transport: asyncio.Transport) -> None:
        """587: STARTTLS on the plain transport (reading is paused since the 220)."""
        server = self._server
        self._handshaking = True
        self._tls_started = self._loop.time()
        try:
            tls_transport = await start_tls(
                self._loop, transport, self, server.tls_context(), server.handshake_timeout
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._upgrading = False
            self._tls_failed(exc)
            transport.abort()
            return
        finally:
            self._handshaking = False
        self._upgrading = False
        session = self._session
        if tls_transport is None or self._closing or session is None:
            return
        self._transport = tls_transport
        # A pause of the plain transport's writing ends with it: the TLS transport is new.
        self._write_blocked = False
        seconds = self._loop.time() - self._tls_started
        session.tls_established(established(tls_transport, self._log, seconds))
        self._last_activity = self._loop.time()
        self._resume()

    def _resume(self) -> None:
        """The Session may read now: give it what was held for it, or just send its output."""
        assert self._session is not None
        held, self._early = self._early, b""
        if held:
            self._session.receive_data(held)
            self._pump()
        else:
            self._flush()

    # --- output, timers, closing ---

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _flush(self) -> None:
        session = self._session
        if session is None:
            return
        # Books first, so that whatever a client does on reading a reply finds them current.
        if session.progress != self._progress:
            self._progress = session.progress
            self._last_activity = self._loop.time()
        if session.content_held != self._charged or self._reserved:
            self._charge(session)
        if session.authenticated is not None and not self.authenticated:
            self.authenticated = True
            self._server.promote(self, self._slot)
        out = session.data_to_send()
        if out:
            self._write(out)
            for refusal in session.refusals():
                self._log.event(
                    "rejected",
                    reason="protocol",
                    code=f"{refusal.code} {refusal.enhanced}",
                    text=refusal.text,
                )
        if session.closed:
            self._close()

    # --- the memory budget ---

    def _reservation(self, size: int) -> int:
        """The memory a message of `size` octets may take here: a spilled one holds only about
        `SPILL_AT` (its header section may take more, charged as it arrives)."""
        return min(size, SPILL_AT + BLOCK) if self._open_sink is not None else size

    def _reserve(self, size: int) -> bool:
        """Count a declared message size (MAIL FROM SIZE=) before any of it is sent."""
        more = size - self._charged
        if more > 0 and not self._server.take_memory(more):
            return False
        self._reserved, self._reserved_at = size, self._loop.time()
        self._charged = max(self._charged, size)
        return True

    async def _when_memory_allows(
        self, event: MailFrom, session: Session, handler: ConnectionHandler
    ) -> Reply:
        """MAIL FROM with a SIZE that does not fit now: wait for room, then ask the handler."""
        assert event.size is not None
        size = self._reservation(event.size)
        more = size - self._charged
        if not await self._server.wait_for_memory(more):
            self._log.event("rejected", "warning", reason="memory", size=size)
            return replies.STORAGE_FULL
        if self._closing:  # gone meanwhile: _release gave back what was charged before
            self._server.give_memory(more)
            return replies.STORAGE_FULL
        self._reserved, self._reserved_at = size, self._loop.time()
        self._charged = max(self._charged, size)
        answer = handler.handle(event, session)
        return answer if isinstance(answer, Reply) else await answer

    def _charge(self, session: Session) -> bool:
        """Bring the budget to what the Session holds; False (its message dropped) if it does
        not fit. A message already handed over in MessageReceived is the caller's to refuse."""
        need = session.content_held
        if self._reserved:
            if not session.busy:
                self._reserved = 0  # the transaction is over
            elif not need and self._loop.time() - self._reserved_at > RESERVATION_HOLD:
                self._reserved = 0  # no content came: the room goes back to the others
            else:
                need = max(need, self._reserved)
        if need > self._charged and not self._server.take_memory(need - self._charged):
            self._log.event("rejected", "warning", reason="memory", held=need)
            session.drop_content()  # its end will be answered 452 4.3.1
            self._reserved = 0
            need = min(session.content_held, self._charged)
            fits = False
        else:
            fits = True
        if need < self._charged:
            self._server.give_memory(self._charged - need)
        self._charged = need
        return fits

    def _close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._transport is not None:
            self._transport.close()
            self._abort_timer = self._loop.call_later(
                self._server.close_grace, _reset, self._transport
            )
            self._server.lingering(self, True)  # its descriptor is in use until it has gone
        elif self._sock is not None:  # 465, refused or stopped before the handshake
            self._sock.close()
            self._sock = None
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()  # a pending admission or 465 handshake: nothing more to do
        self._release()

    def _release(self) -> None:
        """Give the connection slot back as soon as we are done, not when TLS shutdown ends."""
        for timer in (self._idle_timer, self._session_timer):
            if timer is not None:
                timer.cancel()
        if self._charged:
            self._server.give_memory(self._charged)
            self._charged = self._reserved = 0
        if self._slot is not None:
            self._server.release(self, self._slot)
            self._slot = None
            session = self._session
            self._log.event("disconnect", errors=session.errors if session else 0)

    def _idle_check(self) -> None:
        """The command deadline: the client's last step (or our last answer) is too long ago.

        Checked at least every `recheck_interval`, because the timeout of an unauthenticated
        client shrinks while the server is under pressure. A handshake has its own deadline.
        """
        server = self._server
        now = self._loop.time()
        if self._reserved and self._session is not None:
            self._charge(self._session)  # a reservation that outlived RESERVATION_HOLD goes
        if self._deciding or self._handshaking:
            self._last_activity = now
        timeout = server.command_timeout(self.authenticated)
        elapsed = now - self._last_activity
        if elapsed < timeout:
            wait = min(timeout - elapsed, server.recheck_interval)
            self._idle_timer = self._loop.call_later(wait, self._idle_check)
            return
        self._log.event("timeout", "warning", kind="idle")
        # Never a plaintext reply into a TLS handshake.
        self._abort_soon(replies.IDLE_TIMEOUT if self._session is not None else None)

    def _session_expired(self) -> None:
        self._log.event("timeout", "warning", kind="session")
        self._abort_soon(replies.SESSION_TOO_LONG)

    def _abort_soon(self, reply: Reply | None) -> None:
        if self._session is not None:
            self._session.close()
        transport = self._transport
        if transport is not None and _unsent(transport):
            # Replies older than the deadline still wait in the kernel: the client reads
            # nothing, so no reply can reach it, and a plain close would leave them queued.
            _reset(transport)
        elif reply is not None:
            self._write(reply.encode())
        self._close()

    # --- making room under pressure (called by the worker) ---

    @property
    def write_buffered(self) -> int:
        """Octets of replies waiting in the transport (the kernel's buffer is full)."""
        transport = self._transport
        return transport.get_write_buffer_size() if transport is not None else 0

    @property
    def write_blocked(self) -> bool:
        """The client does not read its replies; its input waits until it does."""
        return self._write_blocked

    @property
    def evictable(self) -> bool:
        """Unauthenticated and waiting for the client (or in a handshake): room can be made."""
        if self.authenticated or self._closing or self._deciding:
            return False
        # Not in the middle of a login either (a SASL exchange waits for the client's step).
        return self._session is None or self._session.state is not State.AUTH

    def make_room(self) -> None:
        """Close this connection for a new client: the server is full of unauthenticated ones."""
        self._log.event("evicted", "warning", reason="pressure")
        session = self._session
        if session is not None and not self._upgrading:
            session.close()
            self._write(replies.MAKING_ROOM.encode())
        elif self._transport is not None:
            self._transport.abort()  # mid-handshake: nothing can be said
        self._close()

    def shutdown(self) -> None:
        """Graceful stop: idle sessions get 421 now; busy ones after their transaction."""
        session = self._session
        if session is None:
            # Waiting for admission (587 can still be told in plaintext) or mid-handshake.
            if not self._implicit_tls:
                self._write(replies.SHUTTING_DOWN.encode())
            self._close()
        elif not session.busy:
            session.close()
            self._write(replies.SHUTTING_DOWN.encode())
            self._close()

    def abort(self) -> None:
        if self._transport is not None:
            _reset(self._transport)
        else:
            self._close()


def _unsent(transport: asyncio.BaseTransport) -> int:
    """Octets the kernel still holds for the peer (sent but not acknowledged, or not sent)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(_OUTQ.size))
    except OSError:
        return 0
    return int(_OUTQ.unpack(raw)[0])


def _reset(transport: asyncio.BaseTransport) -> None:
    """Drop the connection now, with a reset: a plain close of a socket whose peer reads
    nothing leaves the unsent replies (up to the send buffer, megabytes) in the kernel for
    minutes behind a FIN that cannot go, and a client blocked in a write never learns of it."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # already gone: abort() is all there is to do
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    cast(asyncio.Transport, transport).abort()


def _discard(body: BodySink, _done: asyncio.Task[None]) -> None:
    body.discard()
