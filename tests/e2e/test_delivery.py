"""Delivery end to end: `sendgate serve` as a subprocess delivering to real receivers via real DNS.

Each test makes an instance with the real CLI and points `delivery.resolver` at its own
`ZoneServer` on 127.0.61.5x:53, which publishes the recipient domain's MX (and the sender's DKIM
keys); an aiosmtpd receiver on 127.0.61.x:25 takes the mail. No two tests share an address, so
they may run in parallel (pytest-xdist) without clashing. Covered: signatures that verify
through real DNS (RSA alone; RSA and Ed25519 side by side), the delivery runner SIGKILLed
mid-transaction, 1,000 queued messages delivered exactly once after a restart, and `sendgate
queue explain|retry|remove|hold|release` against a running server. Tests wait on log events,
on the receivers' conditions and on spool files, never on sleeps.

The runner logs an attempt before it records the outcome in the spool, so a test that checks the
spool after a delivery first stops the server: a stopping runner finishes its running attempts.

Security: everything listens on loopback addresses in 127.0.61.0/24; log lines, DNS answers and
delivered messages are only parsed and compared.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import secrets
import signal
import socket
import ssl
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from email.utils import format_datetime, parseaddr
from pathlib import Path
from typing import TYPE_CHECKING

import dkim
import dns.exception
import dns.resolver
import pytest
import trustme
from tests.e2e.settings import UNLIMITED_SENDING
from tests.peers.dns_server import ZoneServer
from tests.peers.mx import Delivered, Receiver
from tests.support.tls import server_context

from sendgate.store.envelope import queue_id_share

if TYPE_CHECKING:
    from tests.e2e.conftest import (
        Instance,
        InstanceFactory,
        ServerFactory,
        ServerProcess,
        TomlScalar,
    )

pytestmark = pytest.mark.e2e

DOMAIN = "example.org"
MX_HOST = "mx1.example.org"
BOB = f"bob@{DOMAIN}"
SENDER_DOMAIN = "example.test"  # the domain of the e2e conftest's USER
DELIVERY_TIMEOUT = 30.0
BULK = 1000
BULK_CLIENTS = 4
_RECORD = re.compile(r"^(\S+)\s+IN\s+TXT\s+\(\s*(.*?)\s*\)$")
_NEXT_ATTEMPT = re.compile(r"^next-attempt: (\S+)$", re.M)
_QUEUE_ID = re.compile(r" queue_id=(\S+)")


# --- DNS -----------------------------------------------------------------------------------------


@pytest.fixture
def zones() -> Iterator[Callable[[str], ZoneServer]]:
    """Call with an address to start a DNS server on address:53 for this test."""
    with contextlib.ExitStack() as stack:
        yield lambda address: stack.enter_context(ZoneServer(address, 53))


def _publish_mx(zone: ZoneServer, address: str) -> None:
    zone.add(DOMAIN, "MX", f"10 {MX_HOST}.")
    zone.add(MX_HOST, "A", address)


def _publish_dkim_record(zone: ZoneServer, printed: str) -> str:
    """Publish the zone-file line `sendgate dkim keygen` printed; return its owner name."""
    match = _RECORD.match(printed.strip())
    assert match is not None, f"not a TXT record line: {printed!r}"
    owner, strings = match.groups()
    zone.add(owner, "TXT", strings)
    return owner.rstrip(".").lower()


def _txt_lookup(zone: ZoneServer) -> Callable[..., bytes | None]:
    """A `dnsfunc` for dkimpy: real TXT queries to `zone`."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [zone.address]
    resolver.port = zone.port
    return functools.partial(_txt, resolver)


def _txt(resolver: dns.resolver.Resolver, name: bytes, timeout: float = 5) -> bytes | None:
    try:
        answer = resolver.resolve(name.decode("ascii"), "TXT", lifetime=timeout)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    except dns.exception.DNSException as exc:
        raise dkim.DnsTimeoutError(str(exc)) from exc
    return b"".join(answer[0].strings)


# --- instances, receivers, messages --------------------------------------------------------------


def _delivering(zone: ZoneServer, **extra: TomlScalar) -> dict[str, TomlScalar]:
    """Settings for an instance that delivers, resolving only through `zone`."""
    settings: dict[str, TomlScalar] = {
        "delivery.hold": False,
        "delivery.resolver": [f"{zone.address}:{zone.port}"],
    }
    settings.update({f"delivery.{key}": value for key, value in extra.items()})
    return settings


def _tls_context(ca: trustme.CA) -> ssl.SSLContext:
    return server_context(ca.issue_cert(MX_HOST))


def _message(tag: str, bulk: int = 0) -> tuple[str, bytes]:
    """A message unique to this run (its Message-ID and bytes), with a line to dot-stuff;
    `bulk` more body lines make it large (streamed to the spool as it arrives)."""
    message_id = f"{tag}-{secrets.token_hex(6)}@{SENDER_DOMAIN}"
    lines = [
        f"From: Alice <alice@{SENDER_DOMAIN}>",
        f"To: <{BOB}>",
        f"Subject: {tag}",
        f"Message-ID: <{message_id}>",
        f"Date: {format_datetime(datetime.now(UTC))}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        f"Hello Bob, this is {tag}.",
        ".a line starting with a dot",
        *(f".{n:06d}  spaced\tout  line of a large body \t" for n in range(bulk)),
        "  trailing spaces and a tab\t ",
        "",
        "",
    ]
    return message_id, "\r\n".join(lines).encode()


def _message_id(content: bytes) -> str:
    value = BytesHeaderParser().parsebytes(content)["Message-ID"]
    assert value is not None, content[:400]
    return str(value).strip().removeprefix("<").removesuffix(">")


def _body(content: bytes) -> bytes:
    head, separator, body = content.partition(b"\r\n\r\n")
    assert separator, head
    return body


def _tags(signature: str) -> dict[str, str]:
    """The tags of a DKIM-Signature field value (folding whitespace removed)."""
    tags = {}
    for part in re.sub(r"\s+", "", signature).split(";"):
        if part:
            name, _, value = part.partition("=")
            tags[name] = value
    return tags


def _verifies(content: bytes, index: int, zone: ZoneServer) -> bool:
    """Whether DKIM signature number `index` (0 = topmost) of `content` verifies via `zone`."""
    try:
        return bool(dkim.DKIM(content).verify(idx=index, dnsfunc=_txt_lookup(zone)))
    except dkim.DKIMException:
        return False  # what dkim.verify() makes of a mismatch, a bad key or a bad field


def _delivery_pattern(queue_id: str, result: str) -> str:
    return rf"event=delivery .*queue_id={queue_id} .*result={result} "


def _queue_is_empty(made: Instance) -> bool:
    return made.cli("queue", "list").ok().stdout == ""


# --- the delivery runner's process ---------------------------------------------------------------


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(child) for child in (task / "children").read_text().split())
    return found


def _sockets_connected_to(address: str, port: int) -> set[str]:
    """Inodes of the established TCP sockets whose peer is address:port."""
    packed = socket.inet_aton(address)
    # /proc/net/tcp prints the address as a host-order 32-bit number.
    host_order = packed[::-1] if sys.byteorder == "little" else packed
    peer = f"{host_order.hex().upper()}:{port:04X}"
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[2] == peer and fields[3] == "01":  # 01: ESTABLISHED
            inodes.add(fields[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _process_talking_to(running: ServerProcess, address: str) -> int:
    """The pid of the serve process's child with a connection open to address:25."""
    assert running.proc is not None
    connections = _sockets_connected_to(address, 25)
    assert connections, f"no connection to {address}:25"
    holders = [pid for pid in _children(running.proc.pid) if _socket_inodes(pid) & connections]
    assert len(holders) == 1, holders
    return holders[0]


# --- the tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("algorithms", "dns_address", "address", "bulk"),
    [
        (("rsa",), "127.0.61.53", "127.0.61.2", 0),
        (("rsa", "ed25519"), "127.0.61.54", "127.0.61.3", 0),
        (("rsa", "ed25519"), "127.0.61.55", "127.0.61.4", 40_000),  # 2 MB, streamed
    ],
    ids=["rsa", "rsa-and-ed25519", "large"],
)
def test_delivered_message_carries_dkim_signatures_that_verify(
    instance: InstanceFactory,
    server: ServerFactory,
    zones: Callable[[str], ZoneServer],
    ca: trustme.CA,
    algorithms: tuple[str, ...],
    dns_address: str,
    address: str,
    bulk: int,
) -> None:
    zone = zones(dns_address)
    made = instance(_delivering(zone))
    owners = []
    for algorithm in algorithms:
        args = ["dkim", "keygen", SENDER_DOMAIN]
        if len(algorithms) > 1:  # one selector (and so one DNS name) per key
            args += ["--selector", f"sel-{algorithm}", "--algorithm", algorithm]
        owners.append(_publish_dkim_record(zone, made.cli(*args).ok().stdout))
    _publish_mx(zone, address)
    message_id, message = _message("dkim", bulk)

    with Receiver(address, 25, tls=_tls_context(ca)) as receiver:
        running = server(made)
        running.wait_for("event=delivery_started")
        with running.smtp() as client:
            queue_id = running.submit(client, message, rcpt=BOB)
        [got] = receiver.wait_for(1, DELIVERY_TIMEOUT)
        [line] = running.wait_for(_delivery_pattern(queue_id, "sent"), timeout=DELIVERY_TIMEOUT)

    assert (got.sender, got.recipients, got.tls) == (made.user, (BOB,), True)
    assert f"host={MX_HOST} address={address} tls=TLSv1." in line
    assert "policy=opportunistic" in line
    # The stored (and delivered) bytes are the client's, with trace and signature fields on top.
    assert got.content.endswith(message)
    assert _body(got.content) == _body(message)
    assert _message_id(got.content) == message_id
    headers = BytesHeaderParser().parsebytes(got.content)
    signatures = [_tags(str(value)) for value in headers.get_all("DKIM-Signature", [])]
    expected = {"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}
    assert [s["a"] for s in signatures] == [expected[a] for a in algorithms]
    from_domain = parseaddr(str(headers["From"]))[1].rpartition("@")[2]
    assert from_domain == SENDER_DOMAIN
    assert [s["d"] for s in signatures] == [from_domain] * len(algorithms)
    assert [f"{s['s']}._domainkey.{s['d']}" for s in signatures] == owners

    for index in range(len(algorithms)):
        assert _verifies(got.content, index, zone), f"signature {index}"
    asked = {(q.name, q.rdtype) for q in zone.queries}
    assert {(owner, "TXT") for owner in owners} <= asked  # the keys came through real DNS
    # The check can fail: one changed body byte breaks every signature.
    tampered = got.content.replace(b"Hello Bob", b"Hello Rob")
    assert not any(_verifies(tampered, index, zone) for index in range(len(algorithms)))


@pytest.mark.slow
def test_runner_killed_mid_transaction_delivers_after_restart(
    instance: InstanceFactory, server: ServerFactory, zones: Callable[[str], ZoneServer]
) -> None:
    zone, address = zones("127.0.61.55"), "127.0.61.4"
    # retry_first 1: the restarted server retries within a second or two.
    made = instance(_delivering(zone, retry_first=1, retry_max=1))
    _publish_mx(zone, address)
    message_id, message = _message("crash")
    hold = threading.Event()
    # Whatever becomes of the killed transaction, it must not count as the delivery: aiosmtpd
    # cancels its handler when the connection drops, and should the handler outlive that, it
    # answers 451 and records nothing.
    with Receiver(address, 25, hold=hold, data_replies=["451 4.3.0 Too late"]) as receiver:
        running = server(made)
        running.wait_for("event=delivery_started")
        with running.smtp() as client:
            queue_id = running.submit(client, message, rcpt=BOB)
        assert receiver.data_started.wait(DELIVERY_TIMEOUT), "the runner never reached DATA"
        # From now on the receiver defers at RCPT, so no later attempt reaches DATA before the
        # restart and the held transaction stays the only one in DATA.
        receiver.script.reject_rcpt[BOB] = "451 4.7.1 Come back later"
        runner = _process_talking_to(running, address)
        mark = running.mark()

        os.kill(runner, signal.SIGKILL)

        running.wait_for(rf"event=worker_died .*pid={runner} code=-9", since=mark)
        # The supervisor starts a new runner; it finds the message in the spool and tries again.
        running.wait_for("event=delivery_started", since=mark)
        running.wait_for(_delivery_pattern(queue_id, "deferred"), since=mark)
        assert running.stop() == 0
        assert receiver.received == []
        hold.set()
        receiver.script.reject_rcpt.clear()

        running.start()
        running.wait_for(_delivery_pattern(queue_id, "sent"), timeout=DELIVERY_TIMEOUT)
        copies = [d for d in receiver.wait_for(1) if _message_id(d.content) == message_id]
        assert running.stop() == 0

    assert len(copies) >= 1  # at least once; never zero
    assert all(copy.content.endswith(message) for copy in copies)
    assert _queue_is_empty(made)


def _submit_many(running: ServerProcess, messages: list[bytes]) -> list[str]:
    """Send `messages` on one connection; return their queue ids."""
    with running.smtp() as client:
        return [running.submit(client, message, rcpt=BOB) for message in messages]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("runners", "dns_address", "address"),
    [(1, "127.0.61.56", "127.0.61.5"), (2, "127.0.61.61", "127.0.61.10")],
    ids=["one-runner", "two-runners"],
)
def test_thousand_queued_messages_are_delivered_once_after_restart(
    instance: InstanceFactory,
    server: ServerFactory,
    zones: Callable[[str], ZoneServer],
    runners: int,
    dns_address: str,
    address: str,
) -> None:
    zone = zones(dns_address)
    settings = _delivering(zone, hold=True, concurrency=40, domain_concurrency=20, runners=runners)
    made = instance({**settings, **UNLIMITED_SENDING})
    _publish_mx(zone, address)
    sent = dict(_message(f"bulk{index}") for index in range(BULK))
    batches = [list(sent.values())[i::BULK_CLIENTS] for i in range(BULK_CLIENTS)]
    queued: list[list[str]] = [[] for _ in batches]
    running = server(made)
    running.wait_for("event=delivery_held")

    def client(index: int) -> None:
        queued[index] = _submit_many(running, batches[index])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(BULK_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DELIVERY_TIMEOUT * 2)
        assert not thread.is_alive()
    ids = {queue_id for batch in queued for queue_id in batch}
    assert len(ids) == BULK
    assert running.stop() == 0
    assert set(made.queue_ids()) == ids

    made.configure({"delivery.hold": False})
    with Receiver(address, 25) as receiver:
        running.start()
        got: list[Delivered] = receiver.wait_for(BULK, timeout=60)
        running.wait_for(_delivery_pattern("[0-9A-Z]+", "sent"), count=BULK, timeout=30)
        assert running.stop() == 0  # lets the last attempts record their outcome

    counts = Counter(_message_id(d.content) for d in got)
    assert set(counts) == set(sent)
    assert max(counts.values()) == 1, counts.most_common(3)
    assert all(d.content.endswith(sent[_message_id(d.content)]) for d in got)
    assert running.matching(r"event=delivery .*result=(?!sent )") == []
    assert _queue_is_empty(made)
    if runners > 1:
        # Each runner delivered its own share of the queue ids, and only that.
        for runner in range(runners):
            share = rf"event=delivery runner=delivery share={runner + 1}/{runners} "
            found = [_QUEUE_ID.search(line) for line in running.matching(share + ".*result=sent ")]
            delivered = {match[1] for match in found if match is not None}
            assert delivered == {q for q in ids if queue_id_share(q, runners) == runner}


def _next_attempt(explained: str) -> datetime:
    match = _NEXT_ATTEMPT.search(explained)
    assert match is not None, explained
    return datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def test_queue_explain_retry_and_remove_on_a_deferred_message(
    instance: InstanceFactory, server: ServerFactory, zones: Callable[[str], ZoneServer]
) -> None:
    zone, address = zones("127.0.61.57"), "127.0.61.6"
    retry_first = 3600  # only `queue retry` can explain a second attempt within the test
    made = instance(_delivering(zone, scan_interval=0.2, retry_first=retry_first))
    _publish_mx(zone, address)
    _, message = _message("deferred")
    replies = ["451 4.3.0 Greylisted, come back later", "451 4.3.0 Still greylisted"]
    with Receiver(address, 25, data_replies=replies) as receiver:
        running = server(made)
        running.wait_for("event=delivery_started")
        before = datetime.now(UTC)
        with running.smtp() as client:
            queue_id = running.submit(client, message, rcpt=BOB)
        [line] = running.wait_for(_delivery_pattern(queue_id, "deferred"))
        after = datetime.now(UTC)
        assert f'reply="{replies[0]}"' in line
        assert running.stop() == 0  # the outcome is recorded before the runner exits

        explained = made.cli("queue", "explain", queue_id).ok().stdout
        assert f"queue-id: {queue_id}" in explained
        assert "  status: pending\n  attempts: 1\n" in explained
        assert f"  host: {MX_HOST}\n  reply: {replies[0]}\n" in explained
        wait = _next_attempt(explained)
        # Backoff jitter is +-10 %; the printed time is cut to whole seconds.
        assert (wait - before).total_seconds() >= retry_first * 0.9 - 1
        assert (wait - after).total_seconds() <= retry_first * 1.1 + 1

        running.start()
        running.wait_for("event=delivery_started")
        mark = running.mark()
        retried = made.cli("queue", "retry", queue_id).ok().stdout
        assert retried == f"{queue_id}: retry requested\n"
        [line] = running.wait_for(_delivery_pattern(queue_id, "deferred"), since=mark)
        assert f'reply="{replies[1]}"' in line
        assert running.stop() == 0

        running.start()
        running.wait_for("event=delivery_started")
        mark = running.mark()
        removed = made.cli("queue", "remove", queue_id).ok().stdout
        assert removed == f"{queue_id}: removed\n"
        assert _queue_is_empty(made)
        gone = made.cli("queue", "explain", queue_id)
        assert gone.code == 1
        assert gone.stderr == f"sendgate: unknown queue id {queue_id}\n"
        assert made.cli("queue", "retry", queue_id).code == 1
        assert running.stop() == 0

    assert receiver.received == []
    assert running.matching(r"event=delivery ", since=mark) == []
    assert not any((made.data_dir / "spool").rglob(f"*{queue_id}*"))


def test_queue_remove_during_an_attempt_leaves_nothing_behind(
    instance: InstanceFactory, server: ServerFactory, zones: Callable[[str], ZoneServer]
) -> None:
    zone, address = zones("127.0.61.58"), "127.0.61.7"
    made = instance(_delivering(zone, retry_first=3600))
    _publish_mx(zone, address)
    _, message = _message("removed")
    hold = threading.Event()
    with Receiver(address, 25, hold=hold, data_replies=["451 4.3.0 Later"]) as receiver:
        running = server(made)
        running.wait_for("event=delivery_started")
        with running.smtp() as client:
            queue_id = running.submit(client, message, rcpt=BOB)
        assert receiver.data_started.wait(DELIVERY_TIMEOUT), "the runner never reached DATA"

        made.cli("queue", "remove", queue_id).ok()
        hold.set()

        running.wait_for(_delivery_pattern(queue_id, "deferred"))
        assert running.stop() == 0  # the attempt is concluded before the runner exits

    assert _queue_is_empty(made)
    assert running.matching("event=queue_error") == []
    assert running.matching(f"event=removed_during_attempt .*queue_id={queue_id}") != []
    leftovers = sorted((made.data_dir / "spool").rglob(f"*{queue_id}*"))
    assert leftovers == [], leftovers


def _until(condition: Callable[[], bool], timeout: float = DELIVERY_TIMEOUT) -> None:
    """Poll `condition` until it holds; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still false after {timeout}s"
        time.sleep(0.02)


def test_a_message_held_by_the_cli_is_delivered_only_after_its_release(
    instance: InstanceFactory, server: ServerFactory, zones: Callable[[str], ZoneServer]
) -> None:
    zone, address = zones("127.0.61.59"), "127.0.61.8"
    made = instance(_delivering(zone, scan_interval=0.2, retry_first=3600))
    _publish_mx(zone, address)
    _, held_message = _message("held")
    _, other_message = _message("other")
    retry_flags = made.data_dir / "spool" / "retry"
    with Receiver(address, 25, data_replies=["451 4.3.0 Greylisted"]) as receiver:
        running = server(made)
        running.wait_for("event=delivery_started")
        with running.smtp() as client:
            queue_id = running.submit(client, held_message, rcpt=BOB)
        running.wait_for(_delivery_pattern(queue_id, "deferred"))

        held = made.cli("queue", "hold", queue_id, "--reason", "e2e").ok().stdout
        assert held == f"{queue_id}: held (operator: e2e)\n"
        # Due now, were it not held: the runner takes the flag in a claim that sees the hold.
        made.cli("queue", "retry", queue_id).ok()
        _until(lambda: not (retry_flags / queue_id).exists())
        with running.smtp() as client:
            other = running.submit(client, other_message, rcpt=BOB)
        running.wait_for(_delivery_pattern(other, "sent"))
        listed = made.cli("queue", "list").ok().stdout.splitlines()
        assert [line.split()[0] for line in listed] == [queue_id]
        assert listed[0].endswith(f" -> {BOB} (held: operator: e2e)")
        assert len(receiver.received) == 1

        mark = running.mark()
        released = made.cli("queue", "release", queue_id, "--json").ok().stdout
        assert json.loads(released) == [{"queue_id": queue_id, "held": None}]
        running.wait_for(_delivery_pattern(queue_id, "sent"), since=mark)
        assert running.stop() == 0

    assert [_message_id(got.content) for got in receiver.received] == [
        _message_id(other_message),
        _message_id(held_message),
    ]
    attempts = running.matching(rf"event=delivery .*queue_id={queue_id} ")
    assert [re.findall(r" result=(\S+)", line) for line in attempts] == [["deferred"], ["sent"]]
    assert _queue_is_empty(made)


# --- DKIM keys on SIGHUP, and their rotation -----------------------------------------------------


def _signatures(content: bytes) -> list[dict[str, str]]:
    headers = BytesHeaderParser().parsebytes(content)
    return [_tags(str(value)) for value in headers.get_all("DKIM-Signature", [])]


def _dkim_lines(check_output: str) -> list[str]:
    """The DKIM lines of `sendgate dns --check`, as "verdict name"."""
    lines = [line.split() for line in check_output.splitlines()]
    return [f"{parts[0]} {parts[2].rstrip(':')}" for parts in lines if parts[1:2] == ["DKIM"]]


@pytest.mark.slow
def test_dkim_keys_arrive_and_rotate_on_sighup_without_a_message_signed_wrong(
    instance: InstanceFactory,
    server: ServerFactory,
    zones: Callable[[str], ZoneServer],
    ca: trustme.CA,
) -> None:
    """No key at the start, the first key by SIGHUP, then a rotation while a client sends without
    pause: every message is signed with a key DNS publishes, and after the reload with the new
    one. A broken key file on a later SIGHUP is refused and signing goes on."""
    zone, address = zones("127.0.61.60"), "127.0.61.9"
    made = instance({**_delivering(zone), **UNLIMITED_SENDING, "listen.workers": 2})
    _publish_mx(zone, address)
    reloaded = 3  # each worker and the delivery runner log their reload
    sent: list[str] = []  # Message-IDs, in the order their 250 came
    before_switch = threading.Event()

    with Receiver(address, 25, tls=_tls_context(ca)) as receiver:
        running = server(made)
        running.wait_for("event=delivery_started")

        def send(tag: str) -> None:
            message_id, message = _message(tag)
            with running.smtp() as client:
                running.submit(client, message, rcpt=BOB)
            sent.append(message_id)

        send("unsigned")  # no key yet

        printed = made.cli("dkim", "keygen", SENDER_DOMAIN, "--selector", "one").ok().stdout
        one = _publish_dkim_record(zone, printed)
        mark = running.mark()
        running.send_signal(signal.SIGHUP)
        running.wait_for(
            rf"event=dkim_reloaded .*keys={SENDER_DOMAIN}:one:rsa before=\"\"", since=mark, count=3
        )
        send("first-key")

        staged = made.cli("dkim", "rotate", SENDER_DOMAIN, "--selector", "two").ok()
        assert f"dkim switch {SENDER_DOMAIN}" in staged.stderr
        waiting = made.cli("dns", SENDER_DOMAIN, "--check")
        assert waiting.code == 1
        assert _dkim_lines(waiting.stdout) == [
            f"ok {one}",
            f"missing two._domainkey.{SENDER_DOMAIN}",
        ]
        refused = made.cli("dkim", "switch", SENDER_DOMAIN)
        assert refused.code == 1
        assert "does not publish the staged key's record" in refused.stderr
        two = _publish_dkim_record(zone, staged.stdout)
        visible = made.cli("dns", SENDER_DOMAIN, "--check")
        assert _dkim_lines(visible.stdout) == [f"ok {one}", f"ok {two}"]

        stop = threading.Event()
        flood_error: list[BaseException] = []

        def flood() -> None:
            try:
                with running.smtp() as client:
                    while not stop.is_set():
                        message_id, message = _message("during")
                        running.submit(client, message, rcpt=BOB)
                        sent.append(message_id)
                        if len(sent) >= 5:
                            before_switch.set()
            except BaseException as exc:  # reported by the test thread
                flood_error.append(exc)
                before_switch.set()

        sender = threading.Thread(target=flood)
        sender.start()
        try:
            assert before_switch.wait(DELIVERY_TIMEOUT)
            switched = made.cli("dkim", "switch", SENDER_DOMAIN).ok()
            assert f"keep the record {one} published until" in switched.stdout
            mark = running.mark()
            running.send_signal(signal.SIGHUP)
            running.wait_for(
                rf"event=dkim_reloaded .*keys={SENDER_DOMAIN}:two:rsa "
                rf"before={SENDER_DOMAIN}:one:rsa",
                since=mark,
                count=reloaded,
            )
            after_reload = len(sent)
            try:
                receiver.wait_for(after_reload + 5, DELIVERY_TIMEOUT)  # the flood went on
            except AssertionError:
                raise AssertionError(f"the flood stopped: {flood_error}") from None
        finally:
            stop.set()
            sender.join(DELIVERY_TIMEOUT)
        assert not flood_error, flood_error
        # The old record is still listed (retired), beside the new one.
        assert _dkim_lines(made.cli("dns", SENDER_DOMAIN, "--check").stdout) == [
            f"ok {two}",
            f"ok {one}",
        ]

        broken = made.directory / "dkim" / SENDER_DOMAIN / "three.ed25519.key"
        broken.write_bytes(b"not a key\n")
        broken.chmod(0o600)
        mark = running.mark()
        running.send_signal(signal.SIGHUP)
        running.wait_for(
            rf"event=dkim_reload_failed .*three\.ed25519\.key.* keeping={SENDER_DOMAIN}:two:rsa",
            since=mark,
            count=reloaded,
        )
        send("broken-key-file")
        received = receiver.wait_for(len(sent), DELIVERY_TIMEOUT)

    by_id = {_message_id(got.content): got.content for got in received}
    assert sorted(by_id) == sorted(sent)  # each message once
    assert _signatures(by_id[sent[0]]) == []
    selectors = []
    for index, message_id in enumerate(sent[1:], start=1):
        content = by_id[message_id]
        [signature] = _signatures(content)
        assert signature["d"] == SENDER_DOMAIN
        assert _verifies(content, 0, zone), message_id
        selectors.append(signature["s"])
        # sent[after_reload] may have been signed before the reload, its 250 read after it.
        if index > after_reload:
            assert signature["s"] == "two", (index, after_reload)
    assert selectors[0] == "one"
    assert "one" in selectors[1:after_reload]
    assert selectors[-1] == "two"
