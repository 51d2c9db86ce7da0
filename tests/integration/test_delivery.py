"""Delivery end to end inside one process: spool -> scheduler -> real DNS -> real SMTP receivers.

Time is injected (`world.clock`), so retries, delay notices and expiry are reached by moving the
clock, never by waiting.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import threading

import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from tests.integration.conftest import World, message_bytes
from tests.peers.mx import Receiver

ALICE = "alice@sender.test"
BOB = "bob@example.org"
MTA_STS_PATH = "/.well-known/mta-sts.txt"


def _sender_mailbox(world: World, address: str = "127.0.60.5") -> None:
    """The sender's own domain accepts mail on `address` (where bounces go)."""
    world.mx("sender.test", (10, "mx.sender.test", address))


def _assert_deferred_by_policy(
    world: World, receiver: Receiver, queue_id: str, policy: str, reason: str
) -> None:
    """Nothing reached `receiver`; the message waits, and the log names the policy and reason."""
    assert receiver.received == []
    state = world.state(queue_id)
    assert state is not None
    assert state["recipients"][0]["status"] == "pending"
    [event] = world.events("delivery")
    assert event["policy"] == policy
    assert event["result"] == "deferred"
    assert reason in event["reply"].lower()


def _retry_until_done(world: World, queue_id: str, rounds: int = 50) -> int:
    """Deliver, then jump to each next attempt until the message leaves the queue."""
    for attempt in range(1, rounds + 1):
        world.deliver()
        state = world.state(queue_id)
        if queue_id not in world.spool.ids():
            return attempt
        assert state is not None
        world.clock.set(max(world.clock.now, state["next_attempt"]))
    raise AssertionError(f"{queue_id} still queued after {rounds} rounds")


def test_message_reaches_the_mx_byte_for_byte_over_tls(world: World, ca: trustme.CA) -> None:
    world.mx("example.org", (10, "mx1.example.org", "127.0.60.2"))
    receiver = world.receiver("127.0.60.2", leaf=ca.issue_cert("mx1.example.org"))
    message = message_bytes(ALICE, BOB, body="line one\r\n.leading dot\r\nline three")
    queue_id = world.queue(ALICE, (BOB,), message)

    world.deliver()

    [got] = receiver.wait_for(1)
    assert got.content == message
    assert got.recipients == (BOB,)
    assert got.tls
    assert world.spool.ids() == []
    [event] = world.events("delivery")
    assert event["queue_id"] == queue_id
    assert event["result"] == "sent"
    assert event["host"] == "mx1.example.org"
    assert event["tls"].startswith("TLSv1.")
    assert event["reply"].startswith("250")


def test_preferred_mx_refusing_connections_falls_back_to_the_next(world: World) -> None:
    world.mx(
        "example.org",
        (10, "mx1.example.org", "127.0.60.3"),  # nothing listens there
        (20, "mx2.example.org", "127.0.60.4"),
    )
    receiver = world.receiver("127.0.60.4")
    world.queue(ALICE, (BOB,), message_bytes(ALICE, BOB))

    world.deliver()

    assert len(receiver.wait_for(1)) == 1
    attempts = world.events("delivery")
    assert [a["host"] for a in attempts] == ["mx1.example.org", "mx2.example.org"]
    assert [a["result"] for a in attempts] == ["deferred", "sent"]
    assert world.spool.ids() == []


def test_temporary_failure_is_retried_later_and_then_delivered(world: World) -> None:
    world.mx("example.org", (10, "mx1.example.org", "127.0.60.2"))
    receiver = world.receiver("127.0.60.2", data_replies=["451 4.3.0 Try again later"])
    queue_id = world.queue(ALICE, (BOB,), message_bytes(ALICE, BOB))

    world.deliver()

    state = world.state(queue_id)
    assert state is not None
    assert receiver.received == []
    assert state["recipients"][0]["status"] == "pending"
    assert state["recipients"][0]["reply"] == "451 4.3.0 Try again later"
    # The first retry comes within minutes: retry_first (300 s) with +-10 % jitter.
    assert 270 <= state["next_attempt"] - world.clock() <= 330
    world.deliver()  # not due yet: nothing happens
    assert receiver.received == []

    world.clock.set(state["next_attempt"])
    world.deliver()

    assert len(receiver.wait_for(1)) == 1
    assert world.spool.ids() == []
    assert [e["result"] for e in world.events("delivery")] == ["deferred", "sent"]


def test_backoff_grows_towards_retry_max(world: World) -> None:
    world.mx("example.org", (10, "mx1.example.org", "127.0.60.2"))
    world.receiver("127.0.60.2", data_replies=["451 4.3.0 later"] * 20)
    queue_id = world.queue(ALICE, (BOB,), message_bytes(ALICE, BOB))
    waits = []
    for _ in range(8):
        world.deliver()
        state = world.state(queue_id)
        assert state is not None
        waits.append(state["next_attempt"] - world.clock())
        world.clock.set(state["next_attempt"])
    assert waits[1] > waits[0] * 1.5
    assert max(waits) <= 7200 * 1.1
    assert waits[-1] >= 7200 * 0.9


def test_only_deferred_recipients_are_retried(world: World) -> None:
    carol, dave = "carol@example.org", "dave@example.org"
    world.mx("example.org", (10, "mx1.example.org", "127.0.60.2"))
    receiver = world.receiver(
        "127.0.60.2", reject_rcpt={carol: "450 4.2.1 Mailbox busy", dave: "450 4.2.1 Busy"}
    )
    queue_id = world.queue(ALICE, (BOB, carol, dave), message_bytes(ALICE, BOB))

    world.deliver()
    [first] = receiver.wait_for(1)
    assert first.recipients == (BOB,)
    state = world.state(queue_id)
    assert state is not None
    assert [r["status"] for r in state["recipients"]] == ["delivered", "pending", "pending"]

    receiver.script.reject_rcpt.clear()
    world.clock.set(state["next_attempt"])
    world.deliver()

    [_, second] = receiver.wait_for(2)
    assert second.recipients == (carol, dave)
    assert world.spool.ids() == []


def test_permanent_failure_sends_exactly_one_dsn_with_the_remote_reply(world: World) -> None:
    world.mx("example.org", (10, "mx1.example.org", "127.0.60.2"))
    _sender_mailbox(world)
    world.receiver("127.0.60.2", data_replies=["550 5.7.1 Refused by local policy"])
    home = world.receiver("127.0.60.5")
    message = message_bytes(ALICE, BOB, subject="Quarterly report")
    queue_id = world.queue(ALICE, (BOB,), message)

    world.deliver()
    world.deliver()  # nothing left to do: no second DSN

    [dsn] = home.wait_for(1)
    assert dsn.sender == "<>"  # aiosmtpd shows the null reverse-path so
    assert dsn.recipients == (ALICE,)
    parsed = email.message_from_bytes(dsn.content, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    text = dsn.content.decode()
    assert "550 5.7.1 Refused by local policy" in text
    assert "Action: failed" in text
    assert "Status: 5.7.1" in text
    assert "Subject: Quarterly report" in text  # the original is attached
    assert world.spool.ids() == []
    assert len(home.received) == 1
    [bounced] = [e for e in world.events("delivery") if e["queue_id"] == queue_id]
    assert bounced["result"] == "bounced"


def test_null_sender_gets_no_dsn(world: World) -> None:
    world.mx("example.org", (10, "mx1.example.org", "127.0.60.2"))
    _sender_mailbox(world)
    world.receiver("127.0.60.2", data_replies=["550 5.1.1 No such user"])
    home = world.receiver("127.0.60.5")
    world.queue("", (BOB,), message_bytes("mailer-daemon@sender.test", BOB))

    world.deliver()

    assert world.spool.ids() == []
    assert world.events("dsn") == []
    assert home.received == []


def test_expiry_returns_the_message_once(world: World) -> None:
    world.configure(delay_warning=0.0)
    world.mx("example.org", (10, "mx1.example.org", "127.0.60.2"))
    _sender_mailbox(world)
    world.receiver("127.0.60.2", data_replies=["451 4.3.0 Still busy"] * 1000)
    home = world.receiver("127.0.60.5")
    queue_id = world.queue(ALICE, (BOB,), message_bytes(ALICE, BOB))
    queued_at = world.clock()

    rounds = _retry_until_done(world, queue_id, rounds=200)

    assert rounds > 5
    # Expired at the queue lifetime (5 days), not long after.
    assert 432000 <= world.clock() - queued_at <= 432000 + 7200 * 1.1
    [dsn] = home.wait_for(1)
    text = dsn.content.decode()
    assert "Action: failed" in text
    assert "Status: 4.4.7" in text
    assert "451 4.3.0 Still busy" in text
    assert len(world.events("expired")) == 1


def test_delay_notice_goes_out_once(world: World) -> None:
    world.configure(delay_warning=3600.0, queue_lifetime=86400.0)
    world.mx("example.org", (10, "mx1.example.org", "127.0.60.2"))
    _sender_mailbox(world)
    world.receiver("127.0.60.2", data_replies=["451 4.3.0 Busy"] * 1000)
    home = world.receiver("127.0.60.5")
    queue_id = world.queue(ALICE, (BOB,), message_bytes(ALICE, BOB))

    _retry_until_done(world, queue_id, rounds=200)

    actions = [e["action"] for e in world.events("dsn")]
    assert actions == ["delayed", "failed"]
    delayed, failed = home.wait_for(2)
    assert "Action: delayed" in delayed.content.decode()
    assert "Will-Retry-Until:" in delayed.content.decode()
    assert "Action: failed" in failed.content.decode()


def test_unknown_domain_bounces_with_5_1_2(world: World) -> None:
    _sender_mailbox(world)
    home = world.receiver("127.0.60.5")
    world.queue(ALICE, ("x@nowhere.example.org",), message_bytes(ALICE, "x@nowhere.example.org"))

    world.deliver()

    [dsn] = home.wait_for(1)
    assert "Status: 5.1.2" in dsn.content.decode()
    assert world.spool.ids() == []


def test_null_mx_bounces_with_5_1_10(world: World) -> None:
    _sender_mailbox(world)
    home = world.receiver("127.0.60.5")
    world.dns.add("nomail.example.org", "MX", "0 .")
    world.queue(ALICE, ("x@nomail.example.org",), message_bytes(ALICE, "x@nomail.example.org"))

    world.deliver()

    [dsn] = home.wait_for(1)
    assert "Status: 5.1.10" in dsn.content.decode()


def test_dns_failure_defers(world: World) -> None:
    world.dns.fail("example.org")
    queue_id = world.queue(ALICE, (BOB,), message_bytes(ALICE, BOB))

    world.deliver()

    state = world.state(queue_id)
    assert state is not None
    assert state["recipients"][0]["status"] == "pending"
    assert world.events("dsn") == []


# --- MTA-STS --------------------------------------------------------------------------------


def _publish_sts(world: World, ca: trustme.CA, mode: str = "enforce") -> None:
    world.dns.add("_mta-sts.example.org", "TXT", '"v=STSv1; id=20261127"')
    world.dns.add("mta-sts.example.org", "A", "127.0.60.20")
    policy = f"version: STSv1\r\nmode: {mode}\r\nmx: mx1.example.org\r\nmax_age: 86400\r\n"
    world.https(
        "127.0.60.20",
        ca.issue_cert("mta-sts.example.org"),
        {MTA_STS_PATH: (200, "text/plain", policy.encode())},
    )


def test_mta_sts_enforce_with_a_wrong_certificate_defers(world: World, ca: trustme.CA) -> None:
    _publish_sts(world, ca)
    world.mx("example.org", (10, "mx1.example.org", "127.0.60.2"))
    receiver = world.receiver("127.0.60.2", leaf=ca.issue_cert("other.example.net"))
    queue_id = world.queue(ALICE, (BOB,), message_bytes(ALICE, BOB))

    world.deliver()

    _assert_deferred_by_policy(world, receiver, queue_id, "mta-sts", "certificate")


def test_mta_sts_enforce_with_a_valid_certificate_delivers(world: World, ca: trustme.CA) -> None:
    _publish_sts(world, ca)
    world.mx("example.org", (10, "mx1.example.org", "127.0.60.2"))
    receiver = world.receiver("127.0.60.2", leaf=ca.issue_cert("mx1.example.org"))
    world.queue(ALICE, (BOB,), message_bytes(ALICE, BOB))

    world.deliver()

    [got] = receiver.wait_for(1)
    assert got.tls
    [event] = world.events("delivery")
    assert event["policy"] == "mta-sts"


def test_mta_sts_enforce_skips_mx_hosts_outside_the_policy(world: World, ca: trustme.CA) -> None:
    _publish_sts(world, ca)
    world.mx(
        "example.org",
        (5, "rogue.example.net", "127.0.60.6"),
        (10, "mx1.example.org", "127.0.60.2"),
    )
    rogue = world.receiver("127.0.60.6")
    receiver = world.receiver("127.0.60.2", leaf=ca.issue_cert("mx1.example.org"))
    world.queue(ALICE, (BOB,), message_bytes(ALICE, BOB))

    world.deliver()

    assert len(receiver.wait_for(1)) == 1
    assert rogue.received == []
    assert [e["host"] for e in world.events("delivery")] == ["mx1.example.org"]


def test_mta_sts_testing_mode_still_delivers_with_a_bad_certificate(
    world: World, ca: trustme.CA
) -> None:
    _publish_sts(world, ca, mode="testing")
    world.mx("example.org", (10, "mx1.example.org", "127.0.60.2"))
    receiver = world.receiver("127.0.60.2", leaf=ca.issue_cert("other.example.net"))
    world.queue(ALICE, (BOB,), message_bytes(ALICE, BOB))

    world.deliver()

    assert len(receiver.wait_for(1)) == 1
    [event] = world.events("delivery")
    assert event["policy"] == "mta-sts-testing"


# --- DANE -----------------------------------------------------------------------------------


def _spki_sha256(leaf: trustme.LeafCert) -> str:
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def test_dane_match_delivers(world: World, ca: trustme.CA) -> None:
    leaf = ca.issue_cert("mx1.example.org")
    world.dns.set_secure("example.org")
    world.mx("example.org", (10, "mx1.example.org", "127.0.60.2"))
    world.dns.add("_25._tcp.mx1.example.org", "TLSA", f"3 1 1 {_spki_sha256(leaf)}")
    receiver = world.receiver("127.0.60.2", leaf=leaf)
    world.queue(ALICE, (BOB,), message_bytes(ALICE, BOB))

    world.deliver()

    [got] = receiver.wait_for(1)
    assert got.tls
    [event] = world.events("delivery")
    assert event["policy"] == "dane"


def test_dane_mismatch_defers(world: World, ca: trustme.CA) -> None:
    other = ca.issue_cert("mx1.example.org")
    world.dns.set_secure("example.org")
    world.mx("example.org", (10, "mx1.example.org", "127.0.60.2"))
    world.dns.add("_25._tcp.mx1.example.org", "TLSA", f"3 1 1 {_spki_sha256(other)}")
    receiver = world.receiver("127.0.60.2", leaf=ca.issue_cert("mx1.example.org"))
    queue_id = world.queue(ALICE, (BOB,), message_bytes(ALICE, BOB))

    world.deliver()

    _assert_deferred_by_policy(world, receiver, queue_id, "dane", "tlsa")


def test_dane_without_starttls_is_not_sent_in_plaintext(world: World, ca: trustme.CA) -> None:
    leaf = ca.issue_cert("mx1.example.org")
    world.dns.set_secure("example.org")
    world.mx("example.org", (10, "mx1.example.org", "127.0.60.2"))
    world.dns.add("_25._tcp.mx1.example.org", "TLSA", f"3 1 1 {_spki_sha256(leaf)}")
    receiver = world.receiver("127.0.60.2")  # offers no STARTTLS
    world.queue(ALICE, (BOB,), message_bytes(ALICE, BOB))

    world.deliver()

    assert receiver.received == []
    [event] = world.events("delivery")
    assert event["result"] == "deferred"


def test_tlsa_records_without_dnssec_are_ignored(world: World, ca: trustme.CA) -> None:
    other = ca.issue_cert("mx1.example.org")
    world.mx("example.org", (10, "mx1.example.org", "127.0.60.2"))  # zone not secure
    world.dns.add("_25._tcp.mx1.example.org", "TLSA", f"3 1 1 {_spki_sha256(other)}")
    receiver = world.receiver("127.0.60.2", leaf=ca.issue_cert("mx1.example.org"))
    world.queue(ALICE, (BOB,), message_bytes(ALICE, BOB))

    world.deliver()

    assert len(receiver.wait_for(1)) == 1
    assert world.events("delivery")[0]["policy"] == "opportunistic"


def test_a_recipient_named_twice_is_delivered_once(world: World) -> None:
    world.mx("example.org", (10, "mx1.example.org", "127.0.60.2"))
    receiver = world.receiver("127.0.60.2")
    world.queue(ALICE, (BOB, BOB), message_bytes(ALICE, BOB))

    world.deliver()

    [got] = receiver.wait_for(1)
    assert got.recipients == (BOB,)
    assert world.spool.ids() == []
    assert world.events("delivery_bug") == []


def test_an_error_in_one_domain_keeps_the_other_domains_results(world: World) -> None:
    # A recipient the client refuses to put on a command line (only a damaged spool holds one)
    # raises inside its domain's attempt; the other domain's delivery must still count.
    odd = "x y@example.net"
    world.mx("example.org", (10, "mx1.example.org", "127.0.60.2"))
    world.mx("example.net", (10, "mx1.example.net", "127.0.60.3"))
    receiver = world.receiver("127.0.60.2")
    queue_id = world.queue(ALICE, (BOB, odd), message_bytes(ALICE, BOB))

    world.deliver()

    assert len(receiver.wait_for(1)) == 1
    state = world.state(queue_id)
    assert state is not None
    assert [r["status"] for r in state["recipients"]] == ["delivered", "pending"]
    assert state["recipients"][1]["reply"] == "local error; will retry"
    [bug] = world.events("delivery_bug")
    assert bug["queue_id"] == queue_id

    world.clock.set(state["next_attempt"])
    world.deliver()

    assert len(receiver.received) == 1  # bob is not sent the message again


def test_a_backlog_for_one_domain_does_not_starve_another(world: World) -> None:
    # Two task slots per connection slot: without per-domain parking, the 12 messages for the
    # slow domain take every slot (1 sending, the rest waiting for the domain's one slot) and
    # the message for the other domain waits behind all of them.
    world.configure(concurrency=2, domain_concurrency=1)
    world.mx("slow.example", (10, "mx.slow.example", "127.0.60.7"))
    world.mx("example.org", (10, "mx1.example.org", "127.0.60.2"))
    hold = threading.Event()
    slow = world.receiver("127.0.60.7", hold=hold)
    fast = world.receiver("127.0.60.2")
    for n in range(12):
        world.queue(ALICE, (f"user{n}@slow.example",), message_bytes(ALICE, "x@slow.example"))
    world.queue(ALICE, (BOB,), message_bytes(ALICE, BOB, subject="Not stuck"))

    runner = threading.Thread(target=world.deliver)
    runner.start()
    try:
        [got] = fast.wait_for(1)  # while the slow domain's first message is still held
        assert b"Subject: Not stuck" in got.content
        assert slow.received == []
    finally:
        hold.set()
        runner.join()
    assert len(slow.wait_for(12)) == 12
    assert world.spool.ids() == []
