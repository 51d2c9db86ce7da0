"""Tests for what bounds one connection and the whole worker under hostile clients.

Command deadlines measured from the client's last complete command (not its last byte);
replies a client does not read stop the reading of its input, and a connection dropped
while its replies are unread is aborted; the unauthenticated share with room made by
closing the oldest idle unauthenticated connection; the shorter command timeout under
pressure; the worker's own ceiling from its descriptor limit. Each test drives a live Worker
(see conftest.py) with real sockets, once on asyncio's loop and once on uvloop.
"""

from __future__ import annotations

import base64
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from tests.support.tls import client_hello
from tests.support.waiting import wait_until
from tests.unit.server.conftest import (
    WAIT,
    Client,
    LiveWorker,
    ServeFactory,
    read_to_close,
)
from tests.unit.server.test_connection import CONN, greeted, no_bytes_yet

from sendgate.server import connection as connection_module
from sendgate.server.caps import ConnectionCaps
from sendgate.server.floods import BURST
from sendgate.server.worker import Timeouts
from sendgate.smtp import replies
from sendgate.smtp.events import MailFrom, MessageReceived
from sendgate.smtp.session import SessionSettings

FAST = Timeouts(command=0.4, session=60, handshake=10, reload_interval=0, close_grace=0.2)


def idle_cut(client: Client) -> None:
    reply = client.reply()
    assert (reply.code, reply.enhanced, reply.text) == (
        421,
        "4.4.2",
        "Idle timeout, closing connection",
    )
    assert client.closed() == b""


def login(client: Client) -> None:
    """AUTH PLAIN without TLS (the test settings allow it; the handler accepts anyone)."""
    assert client.command("EHLO client.example").code == 250
    token = base64.b64encode(b"\0alice\0secret").decode()
    assert client.command(f"AUTH PLAIN {token}").code == 235


LOGIN_SETTINGS = SessionSettings(hostname="mx.example.test", auth_without_tls=True)


OK = replies.OK.encode()


def read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = sock.recv(min(size, 1 << 20))
        assert chunk, "closed by the server"
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


# --- the command deadline ----------------------------------------------------------------------


@contextmanager
def trickle(sock: socket.socket, data: bytes, every: float) -> Iterator[threading.Event]:
    """Send `data` one byte every `every` seconds from a thread; the event says it got through."""
    done, stop = threading.Event(), threading.Event()

    def run() -> None:
        try:
            for byte in data:
                if stop.wait(every):
                    return
                sock.send(bytes([byte]))
        except OSError:
            return
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield done
    finally:
        stop.set()
        thread.join(WAIT)


def test_a_command_trickled_a_byte_at_a_time_is_cut_at_the_command_timeout(
    serve: ServeFactory,
) -> None:
    live = serve(timeouts=FAST)
    # Each byte comes well within the timeout; the command never ends within it.
    line = b"NOOP " + b"x" * 200 + b"\r\n"
    with greeted(live.client()) as client, trickle(client.sock, line, every=0.05) as done:
        idle_cut(client)
        assert not done.is_set()
    live.log.wait_for(rf"event=timeout {CONN} kind=idle$")


def test_a_body_trickled_in_is_cut_at_the_command_timeout(serve: ServeFactory) -> None:
    live = serve(timeouts=FAST)
    with greeted(live.client()) as client:
        assert client.command("EHLO client.example").code == 250
        assert client.command("MAIL FROM:<a@example.test>").code == 250
        assert client.command("RCPT TO:<b@example.org>").code == 250
        assert client.command("DATA").code == 354
        # Whole lines, each in time, but far below one content step per timeout.
        with trickle(client.sock, b"line\r\n" * 100, every=0.01) as done:
            idle_cut(client)
            assert not done.is_set()


def test_steady_commands_are_never_cut(serve: ServeFactory) -> None:
    live = serve(timeouts=FAST)
    with greeted(live.client()) as client:
        # Three command timeouts in all, each command well within one.
        for _ in range(12):
            threading.Event().wait(0.1)
            assert client.command("NOOP").code == 250
    assert not live.log.matching("event=timeout")


def test_a_decision_longer_than_the_command_timeout_does_not_cut_the_client(
    serve: ServeFactory,
) -> None:
    live = serve(timeouts=FAST)
    handler = live.admissions.handler
    handler.gated.add(MailFrom)
    with greeted(live.client()) as client:
        assert client.command("EHLO client.example").code == 250
        client.send(b"MAIL FROM:<a@example.test>\r\n")
        assert handler.waiting.wait(WAIT)
        threading.Event().wait(1.0)  # the server decides for 2.5 command timeouts
        handler.gate.open()
        assert client.reply().code == 250
        assert client.command("RCPT TO:<b@example.org>").code == 250
    assert not live.log.matching("event=timeout")


# --- replies the client does not read ----------------------------------------------------------


def test_every_pipelined_command_is_answered_to_a_client_that_reads(serve: ServeFactory) -> None:
    live = serve()
    count = 30000  # 420 kB of replies: several times what the Session holds back
    with greeted(live.client()) as client:
        sender = threading.Thread(target=client.send, args=(b"NOOP\r\n" * count,), daemon=True)
        sender.start()
        assert read_exactly(client.sock, len(OK) * count) == OK * count
        sender.join(WAIT)
        assert client.command("QUIT").code == 221


def _flood_unread(sock: socket.socket, stopped: threading.Event) -> None:
    """Pipeline EHLOs without ever reading, until the server drops the connection.

    EHLO, whose reply is many times its size, fills the buffers between the two ends with the
    fewest commands: a loaded machine still gets there well within the test's wait."""
    burst = b"EHLO client.example.test\r\n" * 2000
    try:
        while True:
            sock.sendall(burst)
    except OSError:
        stopped.set()


def _server_sockets_towards(client: tuple[str, int], server: tuple[str, int]) -> list[str]:
    """The TCP states (hex, as /proc/net/tcp gives them) of the server's end of the connection
    between these two ends, while the kernel keeps it. Both ports are compared: a socket of an
    earlier connection from the same client port to another server (in TIME_WAIT there) is not
    this one."""
    states = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rpartition(":")[2], 16)
        remote_port = int(fields[2].rpartition(":")[2], 16)
        if (local_port, remote_port) == (server[1], client[1]):
            states.append(fields[3])
    return states


@pytest.mark.parametrize("port", ["587", "465"])
def test_a_client_that_never_reads_its_replies_is_dropped(serve: ServeFactory, port: str) -> None:
    live = serve(timeouts=FAST)
    client = greeted(live.client() if port == "587" else live.tls_client())
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client_end, server_end = client.sock.getsockname(), client.sock.getpeername()
    stopped = threading.Event()
    flood = threading.Thread(target=_flood_unread, args=(client.sock, stopped), daemon=True)
    flood.start()
    # Reading stops once its replies back up; the command deadline then passes, and the
    # connection is reset: the 421 can never be delivered, and a plain close would leave the
    # unread replies queued in the kernel behind a FIN (and the client blocked in its write).
    assert stopped.wait(WAIT), "the server never dropped a client that does not read"
    assert _server_sockets_towards(client_end, server_end) == []
    flood.join(WAIT)
    client.sock.close()
    live.log.wait_for(rf"event=timeout {CONN} kind=idle$")
    live.log.wait_for(rf"event=disconnect {CONN} errors=0$")
    assert live.caps.active() == 0


# --- the unauthenticated share and making room -------------------------------------------------


def test_a_full_unauthenticated_share_closes_the_oldest_idle_connection(
    serve: ServeFactory,
) -> None:
    caps = ConnectionCaps(1, max_total=10, max_per_ip=10, max_unauthenticated=2)
    live = serve(caps=caps, timeouts=Timeouts(reload_interval=0, room_min_age=0))
    with (
        greeted(live.client()) as oldest,
        greeted(live.client()) as second,
        greeted(live.client()) as newest,
    ):
        reply = oldest.reply()
        assert (reply.code, reply.enhanced) == (421, "4.7.0")
        assert reply.text == replies.MAKING_ROOM.text
        assert oldest.closed() == b""
        assert second.command("NOOP").code == 250
        assert newest.command("NOOP").code == 250
    live.log.wait_for(rf"event=evicted {CONN} reason=pressure$")
    assert not live.log.matching("event=refused")


def test_room_is_made_from_the_address_holding_the_most_connections(
    serve: ServeFactory,
) -> None:
    caps = ConnectionCaps(1, max_total=10, max_per_ip=10, max_unauthenticated=4)
    live = serve(caps=caps, timeouts=Timeouts(reload_interval=0, room_min_age=0))
    with (
        greeted(live.client("127.0.31.1")) as lone,  # the oldest, but its address's only one
        greeted(live.client("127.0.31.2")) as flood_1,
        greeted(live.client("127.0.31.2")) as flood_2,
        greeted(live.client("127.0.31.2")) as flood_3,
        greeted(live.client("127.0.31.3")) as newcomer,
    ):
        reply = flood_1.reply()
        assert (reply.code, reply.text) == (421, replies.MAKING_ROOM.text)
        assert flood_1.closed() == b""
        for kept in (lone, flood_2, flood_3, newcomer):
            assert kept.command("NOOP").code == 250
    [evicted] = live.log.matching("event=evicted")
    assert "client=127.0.31.2" in evicted


def test_room_is_not_made_from_connections_younger_than_the_minimum_age(
    serve: ServeFactory,
) -> None:
    caps = ConnectionCaps(1, max_total=10, max_per_ip=10, max_unauthenticated=1)
    live = serve(caps=caps, timeouts=Timeouts(reload_interval=0, room_min_age=60))
    with greeted(live.client()) as first, live.client() as second:
        reply = second.reply()
        assert (reply.code, reply.text) == (421, replies.TOO_MANY_CONNECTIONS.text)
        assert first.command("NOOP").code == 250
    assert not live.log.matching("event=evicted")


def test_room_is_not_made_for_a_client_over_its_own_address_cap(serve: ServeFactory) -> None:
    caps = ConnectionCaps(1, max_total=10, max_per_ip=1, max_unauthenticated=1)
    live = serve(caps=caps, timeouts=Timeouts(reload_interval=0, room_min_age=0))
    with greeted(live.client()) as first, live.client() as second:
        assert second.reply().code == 421
        assert first.command("NOOP").code == 250
    assert not live.log.matching("event=evicted")


def test_logged_in_and_deciding_connections_are_never_closed_to_make_room(
    serve: ServeFactory,
) -> None:
    caps = ConnectionCaps(1, max_total=2, max_per_ip=10, max_unauthenticated=2)
    live = serve(
        caps=caps, settings=LOGIN_SETTINGS, timeouts=Timeouts(reload_interval=0, room_min_age=0)
    )
    handler = live.admissions.handler
    handler.gated.add(MailFrom)
    with greeted(live.client()) as logged_in, greeted(live.client()) as deciding:
        login(logged_in)
        login(deciding)
        deciding.send(b"MAIL FROM:<a@example.test>\r\n")
        assert handler.waiting.wait(WAIT)
        with live.client() as newcomer:
            reply = newcomer.reply()
            assert (reply.code, reply.text) == (421, replies.TOO_MANY_CONNECTIONS.text)
        handler.gate.open()
        assert deciding.reply().code == 250
        assert logged_in.command("NOOP").code == 250
    assert not live.log.matching("event=evicted")


def test_a_stalled_465_handshake_is_closed_to_make_room(serve: ServeFactory) -> None:
    caps = ConnectionCaps(1, max_total=10, max_per_ip=10, max_unauthenticated=1)
    live = serve(caps=caps, timeouts=Timeouts(reload_interval=0, room_min_age=0))
    with live.raw_tls_client() as stalled:
        stalled.sendall(client_hello()[:20])  # a handshake that never completes
        live.log.wait_for(rf"event=connect {CONN} tls=implicit$")
        with greeted(live.client()) as newcomer:
            assert read_to_close(stalled) == b""
            assert newcomer.command("NOOP").code == 250
    live.log.wait_for(rf"event=evicted {CONN} reason=pressure$")


# --- pressure: a shorter command timeout for clients not logged in -----------------------------


def test_under_pressure_idle_clients_not_logged_in_are_cut_first(serve: ServeFactory) -> None:
    caps = ConnectionCaps(1, max_total=100, max_per_ip=100, max_unauthenticated=2)
    timeouts = Timeouts(command=60, pressure_command=0.3, reload_interval=0)
    live = serve(caps=caps, timeouts=timeouts, settings=LOGIN_SETTINGS)
    with greeted(live.client()) as logged_in:
        login(logged_in)
        with greeted(live.client()) as idle1, greeted(live.client()) as idle2:
            # Two of a share of two (and one alone still half of it): under pressure.
            idle_cut(idle1)
            idle_cut(idle2)
        assert logged_in.command("NOOP").code == 250
    assert len(live.log.matching("event=timeout")) == 2


def test_without_pressure_the_normal_command_timeout_applies(serve: ServeFactory) -> None:
    caps = ConnectionCaps(1, max_total=100, max_per_ip=100, max_unauthenticated=4)
    timeouts = Timeouts(command=60, pressure_command=0.2, reload_interval=0)
    live = serve(caps=caps, timeouts=timeouts)
    with greeted(live.client()) as alone:
        threading.Event().wait(1.0)  # five pressure timeouts
        assert alone.command("NOOP").code == 250
    assert not live.log.matching("event=timeout")


# --- the worker's own ceiling (its descriptor limit) -------------------------------------------


def test_the_worker_refuses_past_its_own_ceiling(serve: ServeFactory) -> None:
    live: LiveWorker = serve(budget=2)
    with greeted(live.client()) as first, greeted(live.tls_client()) as second:
        with live.client() as third:
            reply = third.reply()
            assert (reply.code, reply.text) == (421, replies.TOO_MANY_CONNECTIONS.text)
        assert first.command("NOOP").code == 250
        assert second.command("NOOP").code == 250
    live.log.wait_for(rf"event=refused {CONN} reason=descriptors$")


def test_a_client_that_reads_late_gets_every_reply(serve: ServeFactory) -> None:
    live = serve()
    count = 500_000  # 7 MB of replies: more than the socket buffers hold
    with greeted(live.client()) as client:
        # (No small receive buffer: on loopback its window never reopens by a whole segment.)
        sender = threading.Thread(target=client.send, args=(b"NOOP\r\n" * count,), daemon=True)
        sender.start()
        assert wait_until(lambda: any(conn.write_blocked for conn in live.worker.connections))
        # Reading now resumes the server's reading: every NOOP gets its reply, in order.
        assert read_exactly(client.sock, len(OK) * count) == OK * count
        sender.join(WAIT)
        assert not any(conn.write_blocked for conn in live.worker.connections)
        assert client.command("QUIT").code == 221


# --- the log of a flood ------------------------------------------------------------------------


def test_a_flood_from_one_address_is_logged_in_full_only_for_its_first_connections(
    serve: ServeFactory,
) -> None:
    live = serve(caps=ConnectionCaps(1, max_total=100, max_per_ip=5))
    for _ in range(BURST + 10):
        with live.client() as client:
            assert client.reply().code in (220, 421)
            client.send(b"QUIT\r\n")
            client.closed()
    live.stop()  # a stopping worker sums up what it held back
    assert len(live.log.matching(r"event=connect ")) == BURST
    flood = live.log.wait_for(r"event=flood ")
    assert f"client=127.0.0.1 interval=10s connections={BURST + 10} logged={BURST} " in flood
    assert "connect=10 disconnect=10" in flood


# --- the rate of connections that end without a login ------------------------------------------


def _quit_without_login(live: LiveWorker) -> None:
    with greeted(live.client()) as client:
        assert client.command("QUIT").code == 221
        assert client.closed() == b""


def test_an_address_that_keeps_leaving_without_a_login_is_refused_before_tls(
    serve: ServeFactory,
) -> None:
    # A fixed clock: a test that straddled the edge of a rate window would start counting anew.
    caps = ConnectionCaps(1, 100, 100, max_anonymous_per_window=3, clock=lambda: 1_000_005.0)
    live = serve(caps=caps)
    for number in range(1, 4):
        _quit_without_login(live)
        live.log.wait_for(r"event=disconnect ", count=number)  # counted once it has ended
    with live.client() as refused:
        reply = refused.reply()
        assert (reply.code, reply.text) == (421, replies.TOO_MANY_CONNECTIONS.text)
    with live.raw_tls_client() as no_handshake:
        no_handshake.sendall(client_hello())
        assert read_to_close(no_handshake) == b""  # closed before any TLS work
    live.log.wait_for(rf"event=refused {CONN} reason=connection_rate$", count=2)
    assert len(live.admissions.asked) == 3


def test_connections_that_log_in_never_count_against_the_rate(serve: ServeFactory) -> None:
    caps = ConnectionCaps(1, 100, 100, max_anonymous_per_window=2, clock=lambda: 1_000_005.0)
    live = serve(caps=caps, settings=LOGIN_SETTINGS)
    for number in range(1, 6):
        with greeted(live.client()) as client:
            login(client)
            assert client.command("QUIT").code == 221
        live.log.wait_for(r"event=disconnect ", count=number)
    with greeted(live.client()) as still_welcome:
        assert still_welcome.command("NOOP").code == 250
    assert not live.log.matching("event=refused")


# --- the memory budget for message content -----------------------------------------------------


def _transaction(client: Client, size: int | None = None) -> None:
    assert client.command("EHLO client.example").code == 250
    declared = f" SIZE={size}" if size is not None else ""
    assert client.command(f"MAIL FROM:<a@example.test>{declared}").code == 250
    assert client.command("RCPT TO:<b@example.org>").code == 250


def _body(size: int) -> bytes:
    line = b"x" * 98 + b"\r\n"
    return line * (size // len(line)) + b".\r\n"


def test_a_declared_size_waits_at_mail_for_memory_another_message_holds(
    serve: ServeFactory,
) -> None:
    live = serve(memory=300_000)
    with greeted(live.client()) as first, greeted(live.client()) as second:
        _transaction(first, 200_000)
        assert live.worker.memory_used == 200_000  # reserved before any content
        assert second.command("EHLO client.example").code == 250
        second.send(b"MAIL FROM:<a@example.test> SIZE=200000\r\n")
        # The second waits for room (a decision under way), with no answer yet.
        assert wait_until(lambda: sum(not c.evictable for c in live.worker.connections) == 1)
        assert no_bytes_yet(second.sock)
        assert first.command("DATA").code == 354
        first.send(_body(150_000))
        assert first.reply().code == 250
        assert second.reply().code == 250  # the first message was answered: room again
        assert live.worker.memory_used == 200_000
        assert second.command("RSET").code == 250
    assert wait_until(lambda: live.worker.memory_used == 0)
    kinds = [type(event).__name__ for event in live.admissions.handler.events]
    assert kinds == ["MailFrom", "RcptTo", "MessageReceived", "MailFrom"]


def test_a_declared_size_that_never_fits_in_time_gets_452(serve: ServeFactory) -> None:
    timeouts = Timeouts(reload_interval=0, memory_wait=0.2)
    live = serve(memory=300_000, timeouts=timeouts)
    with greeted(live.client()) as first, greeted(live.client()) as second:
        _transaction(first, 200_000)
        assert second.command("EHLO client.example").code == 250
        reply = second.command("MAIL FROM:<a@example.test> SIZE=200000")
        assert (reply.code, reply.enhanced) == (452, "4.3.1")
        assert second.command("MAIL FROM:<a@example.test> SIZE=50000").code == 250
    live.log.wait_for(rf"event=rejected {CONN} reason=memory size=200000$")
    assert wait_until(lambda: live.worker.memory_used == 0)


@pytest.mark.parametrize("command", ["DATA", "BDAT"])
def test_an_undeclared_message_over_the_budget_is_dropped_and_answered_452(
    serve: ServeFactory, command: str
) -> None:
    live = serve(memory=300_000)
    with greeted(live.client()) as client:
        _transaction(client)
        content = _body(400_000)
        if command == "DATA":
            assert client.command("DATA").code == 354
            client.send(content)
        else:
            body = content[:-3]
            client.send(f"BDAT {len(body)} LAST\r\n".encode() + body)
        reply = client.reply()
        assert (reply.code, reply.enhanced) == (452, "4.3.1")
        assert live.worker.memory_used == 0  # let go of at once, not at the end
        _transaction(client)  # the connection goes on: a message that fits is taken
        assert client.command("DATA").code == 354
        client.send(_body(100_000))
        assert client.reply().code == 250
    live.log.wait_for(rf"event=rejected {CONN} reason=memory held=\d+$")
    assert wait_until(lambda: live.worker.memory_used == 0)
    received = [e for e in live.admissions.handler.events if isinstance(e, MessageReceived)]
    assert [len(e.content) for e in received] == [len(_body(100_000)) - 3]


def test_no_timer_fires_after_a_connection_is_closed(serve: ServeFactory) -> None:
    timeouts = Timeouts(command=0.2, session=0.6, reload_interval=0, close_grace=0.3)
    live = serve(timeouts=timeouts)
    with greeted(live.client()) as client:
        idle_cut(client)  # the command timeout ends it...
    live.log.wait_for(rf"event=disconnect {CONN} errors=0$")
    threading.Event().wait(1.0)  # ...and the session timer (0.6 s) and abort (0.3 s) stay quiet
    assert [line.split()[2] for line in live.log.matching(CONN)] == [
        "event=connect",
        "event=timeout",
        "event=disconnect",
    ]


def test_starttls_whose_220_fills_the_buffer_still_serves_over_tls(serve: ServeFactory) -> None:
    """The 220 to STARTTLS can be what makes the plain transport pause writing; the TLS
    transport that replaces it starts afresh, and the session goes on over it."""
    live = serve()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", live.port))
    client = greeted(Client(sock))
    ehlo = client.command("EHLO a")
    reply_size = sum(len(text) + 6 for text in ehlo.texts)
    [conn] = live.worker.connections
    pace = threading.Event()
    # Fill the kernel's buffers until the transport itself holds a little (but below its mark).
    while conn.write_buffered == 0:
        sock.sendall(b"EHLO a\r\n" * 200)
        pace.wait(0.01)
    assert not conn.write_blocked
    # Just under 64 KiB of replies, then STARTTLS: its 220 crosses the high-water mark.
    sock.sendall(b"EHLO a\r\n" * ((63 * 1024) // reply_size) + b"STARTTLS\r\n")
    received = b""
    # The whole 220 line: a TLS handshake started after part of it would read the rest as TLS.
    while not re.search(rb"220 2\.0\.0[^\n]*\n", received):
        chunk = sock.recv(65536)
        assert chunk, "closed by the server"
        received += chunk
    assert received.endswith(b"\r\n")
    with live.client_ctx.wrap_socket(sock, server_hostname="localhost") as tls:
        tls.settimeout(WAIT)
        tls.sendall(b"EHLO b\r\n")
        assert tls.recv(65536).startswith(b"250-")
    assert not conn.write_blocked


def test_a_client_leaving_while_it_waits_for_memory_gives_nothing_away(
    serve: ServeFactory,
) -> None:
    live = serve(memory=300_000)
    with greeted(live.client()) as holder:
        _transaction(holder, 250_000)
        with greeted(live.client()) as waiter:
            assert waiter.command("EHLO client.example").code == 250
            waiter.send(b"MAIL FROM:<a@example.test> SIZE=200000\r\n")
            assert wait_until(lambda: sum(not c.evictable for c in live.worker.connections) == 1)
        assert holder.command("RSET").code == 250  # room again, for a client that has gone
    assert wait_until(lambda: not live.worker.connections)
    assert wait_until(lambda: live.worker.memory_used == 0)


def test_a_reservation_without_content_is_given_back_after_a_while(
    serve: ServeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connection_module, "RESERVATION_HOLD", 0.2)
    live = serve(memory=300_000)
    with greeted(live.client()) as holder, greeted(live.client()) as other:
        _transaction(holder, 250_000)
        threading.Event().wait(0.3)  # past the hold, with no content sent
        assert holder.command("NOOP").code == 250
        assert live.worker.memory_used == 0  # the reservation went back
        _transaction(other, 250_000)  # so another client gets the room at once
        assert holder.command("DATA").code == 354  # the first one's message is charged as it comes
        holder.send(_body(1000))
        assert holder.reply().code == 250


def test_a_client_in_the_middle_of_a_login_is_not_closed_to_make_room(
    serve: ServeFactory,
) -> None:
    caps = ConnectionCaps(1, max_total=10, max_per_ip=10, max_unauthenticated=2)
    live = serve(
        caps=caps, settings=LOGIN_SETTINGS, timeouts=Timeouts(reload_interval=0, room_min_age=0)
    )
    with greeted(live.client()) as logging_in, greeted(live.client()) as idle:
        assert logging_in.command("EHLO client.example").code == 250
        assert logging_in.command("AUTH LOGIN").code == 334  # the server waits for a step
        with greeted(live.client()) as newcomer:
            reply = idle.reply()  # the younger, idle one goes; not the one logging in
            assert (reply.code, reply.text) == (421, replies.MAKING_ROOM.text)
            assert newcomer.command("NOOP").code == 250
            assert logging_in.command(base64.b64encode(b"alice").decode()).code == 334
