"""The sender's DSN requests (RFC 3461) and REQUIRETLS (RFC 8689), delivered for real.

Spool -> scheduler -> real DNS (127.0.60.53) -> aiosmtpd receivers on 127.0.60.x that offer
DSN and REQUIRETLS or not; bounces and reports go to the sender's own MX (127.0.60.5).
"""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from typing import cast

import trustme
from tests.integration.conftest import World, message_bytes
from tests.peers.mx import Delivered

from sendgate.smtp.dsn import RcptParameters

ALICE = "alice@sender.test"
BOB = "bob@example.org"
CAROL = "carol@example.org"


def _sender_mailbox(world: World) -> None:
    world.mx("sender.test", (10, "mx.sender.test", "127.0.60.5"))


def _report(delivered: Delivered) -> tuple[EmailMessage, list[dict[str, str]], bytes]:
    """The report's message, its delivery-status blocks, and the returned part's bytes."""
    parsed = email.message_from_bytes(delivered.content, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/report"
    parts = [cast(EmailMessage, part) for part in parsed.iter_parts()]
    status = parts[1].get_payload()
    assert isinstance(status, list)
    blocks = [
        {key: str(value) for key, value in cast(EmailMessage, block).items()} for block in status
    ]
    returned = parts[2].as_bytes() if len(parts) > 2 else b""
    return parsed, blocks, returned


def test_notify_success_to_a_host_without_dsn_sends_a_relayed_report(world: World) -> None:
    world.mx("example.org", (10, "mx1.example.org", "127.0.60.2"))
    _sender_mailbox(world)
    receiver = world.receiver("127.0.60.2")  # offers no DSN
    home = world.receiver("127.0.60.5")
    params = (
        RcptParameters(("SUCCESS",), "rfc822;Bob+2BNews@example.org"),
        RcptParameters(),  # carol: the default (failures and delays only)
    )
    queue_id = world.queue(
        ALICE, (BOB, CAROL), message_bytes(ALICE, BOB), envid="QQ-1", rcpt_params=params
    )

    world.deliver()

    [sent] = receiver.wait_for(1)
    assert sent.mail_params == ()
    [report] = home.wait_for(1)
    assert report.sender == "<>"
    message, blocks, returned = _report(report)
    assert message["Subject"] == "Successful Mail Delivery Report"
    assert blocks[0]["Original-Envelope-Id"] == "QQ-1"
    [bob] = blocks[1:]  # carol asked for nothing on success
    assert bob["Original-Recipient"] == "rfc822; Bob+News@example.org"
    assert bob["Final-Recipient"] == f"rfc822; {BOB}"
    assert (bob["Action"], bob["Status"]) == ("relayed", "2.0.0")
    assert b"Hi." not in returned  # headers only
    [dsn] = world.events("dsn")
    assert (dsn["queue_id"], dsn["action"], dsn["recipients"]) == (queue_id, "relayed", 1)
    assert world.spool.ids() == []


def test_a_host_offering_dsn_gets_the_requests_and_no_report_is_sent(world: World) -> None:
    world.mx("example.org", (10, "mx1.example.org", "127.0.60.2"))
    _sender_mailbox(world)
    receiver = world.receiver("127.0.60.2", dsn=True)
    home = world.receiver("127.0.60.5")
    params = (RcptParameters(("SUCCESS", "FAILURE"), "rfc822;bob@example.org"),)
    world.queue(
        ALICE, (BOB,), message_bytes(ALICE, BOB), ret="HDRS", envid="id 7", rcpt_params=params
    )

    world.deliver()

    [sent] = receiver.wait_for(1)
    assert sent.mail_params == ("RET=HDRS", "ENVID=id+207")
    assert sent.rcpt_params == {BOB: ("NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;bob@example.org")}
    assert world.events("dsn") == []
    assert home.received == []


def test_notify_never_silences_a_bounce_and_ret_hdrs_returns_headers_only(world: World) -> None:
    world.mx("example.org", (10, "mx1.example.org", "127.0.60.2"))
    _sender_mailbox(world)
    world.receiver("127.0.60.2", reject_rcpt={BOB: "550 5.1.1 No such user"})
    home = world.receiver("127.0.60.5")
    world.queue(
        ALICE,
        (BOB, CAROL),
        message_bytes(ALICE, BOB, body="Body text."),
        ret="HDRS",
        rcpt_params=(RcptParameters(("NEVER",)), RcptParameters()),
    )
    world.queue(
        ALICE,
        (BOB,),
        message_bytes(ALICE, BOB, subject="Second", body="Second body."),
        ret="HDRS",
        rcpt_params=(RcptParameters(("FAILURE",)),),
    )

    world.deliver()

    # The first message's only failure asked for no report; the second one's did.
    [bounce] = home.wait_for(1)
    message, blocks, returned = _report(bounce)
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    assert [b["Action"] for b in blocks[1:]] == ["failed"]
    assert b"Subject: Second" in returned
    assert b"Second body." not in bounce.content
    assert [e["recipients"] for e in world.events("dsn")] == [1]


def test_requiretls_reaches_a_dnssec_mx_over_verified_tls(world: World, ca: trustme.CA) -> None:
    world.dns.set_secure("example.org")
    world.mx("example.org", (10, "mx1.example.org", "127.0.60.2"))
    receiver = world.receiver("127.0.60.2", leaf=ca.issue_cert("mx1.example.org"), requiretls=True)
    world.queue(ALICE, (BOB,), message_bytes(ALICE, BOB), requiretls=True)

    world.deliver()

    [sent] = receiver.wait_for(1)
    assert sent.tls
    assert sent.mail_params == ("REQUIRETLS",)
    [event] = world.events("delivery")
    assert (event["policy"], event["result"]) == ("requiretls", "sent")


def test_requiretls_bounces_redacted_when_the_mx_does_not_offer_it(
    world: World, ca: trustme.CA
) -> None:
    world.dns.set_secure("example.org")
    world.mx("example.org", (10, "mx1.example.org", "127.0.60.2"))
    _sender_mailbox(world)
    receiver = world.receiver("127.0.60.2", leaf=ca.issue_cert("mx1.example.org"))
    home = world.receiver("127.0.60.5")
    message = message_bytes(ALICE, BOB, subject="the merger", body="Numbers inside.")
    world.queue(ALICE, (BOB,), message, requiretls=True, ret="FULL")

    world.deliver()

    assert receiver.received == []
    [bounce] = home.wait_for(1)
    _, blocks, returned = _report(bounce)
    assert blocks[1]["Status"] == "5.7.30"
    assert "does not offer REQUIRETLS" in blocks[1]["Diagnostic-Code"]
    assert b"From: <alice@sender.test>" in returned
    assert b"Subject:" not in returned
    assert b"Subject: the merger" not in bounce.content
    assert b"Numbers inside." not in bounce.content
    assert world.spool.ids() == []


def test_requiretls_bounces_when_no_mx_name_is_authenticated(world: World, ca: trustme.CA) -> None:
    world.mx("example.org", (10, "mx1.example.org", "127.0.60.2"))  # not DNSSEC-signed
    _sender_mailbox(world)
    receiver = world.receiver("127.0.60.2", leaf=ca.issue_cert("mx1.example.org"), requiretls=True)
    home = world.receiver("127.0.60.5")
    world.queue(ALICE, (BOB,), message_bytes(ALICE, BOB), requiretls=True)

    world.deliver()

    assert receiver.received == []
    [bounce] = home.wait_for(1)
    _, blocks, _ = _report(bounce)
    assert blocks[1]["Status"] == "5.7.30"
    assert "no MX host of example.org is authenticated" in bounce.content.decode()
    [event] = [e for e in world.events("delivery") if e["domain"] == "example.org"]
    assert (event["result"], event["host"]) == ("bounced", None)


def test_requiretls_with_a_bad_certificate_waits_and_never_sends_in_plaintext(
    world: World, ca: trustme.CA
) -> None:
    world.dns.set_secure("example.org")
    world.mx("example.org", (10, "mx1.example.org", "127.0.60.2"))
    receiver = world.receiver(
        "127.0.60.2", leaf=ca.issue_cert("other.example.net"), requiretls=True
    )
    queue_id = world.queue(ALICE, (BOB,), message_bytes(ALICE, BOB), requiretls=True)

    world.deliver()

    assert receiver.received == []
    state = world.state(queue_id)
    assert state is not None
    assert state["recipients"][0]["status"] == "pending"
    [event] = world.events("delivery")
    assert (event["policy"], event["result"]) == ("requiretls", "deferred")
    assert "certificate" in event["reply"].lower()


def test_requiretls_trusts_an_mx_named_by_an_mta_sts_policy_in_testing_mode(
    world: World, ca: trustme.CA
) -> None:
    # Not DNSSEC-signed, but the policy (fetched over verified HTTPS) names the MX host.
    world.dns.add("_mta-sts.example.org", "TXT", '"v=STSv1; id=20261206"')
    world.dns.add("mta-sts.example.org", "A", "127.0.60.20")
    policy = b"version: STSv1\r\nmode: testing\r\nmx: mx1.example.org\r\nmax_age: 86400\r\n"
    world.https(
        "127.0.60.20",
        ca.issue_cert("mta-sts.example.org"),
        {"/.well-known/mta-sts.txt": (200, "text/plain", policy)},
    )
    world.mx("example.org", (10, "mx1.example.org", "127.0.60.2"))
    receiver = world.receiver("127.0.60.2", leaf=ca.issue_cert("mx1.example.org"), requiretls=True)
    world.queue(ALICE, (BOB,), message_bytes(ALICE, BOB), requiretls=True)

    world.deliver()

    [sent] = receiver.wait_for(1)
    assert (sent.tls, sent.mail_params) == (True, ("REQUIRETLS",))
    [event] = world.events("delivery")
    assert event["policy"] == "requiretls"  # testing mode alone would not verify
