"""Account defences end to end: containment, sign-in notices and app passwords on a live server.

Mail leaves through a loopback smarthost route (plaintext, allowed on loopback) to an aiosmtpd
`Receiver` on 127.0.68.x, so "delivered" means received there. Covered: a burst over
messages_per_hour flags the account (`user status`, text and JSON); with flagged = "hold" its
next message is accepted but kept until `queue release --user` (a marker from another account
is delivered meanwhile), and `user unflag` clears the flag; with flagged = "refuse" it gets
451 4.7.1 and nothing is queued; a login from a new /24 sends exactly one notice to the
account's own address, never for the first login ever nor for a second login from the same
network (before and after a restart); app passwords log in, survive app_passwords_only, and
stop working once removed. Tests wait on log lines and on the receiver, never on sleeps.

Security: everything runs on loopback; replies, log lines and received mail are only parsed
and compared.
"""

from __future__ import annotations

import contextlib
import json
import re
import smtplib
import time
from collections.abc import Iterator
from datetime import datetime
from email import message_from_bytes
from email.message import Message
from typing import TYPE_CHECKING

import pytest
from tests.e2e.sources import FAILED, auth, field, login, sends, starttls_client
from tests.peers.mx import Delivered, Receiver

if TYPE_CHECKING:
    from tests.e2e.conftest import Instance, InstanceFactory, ServerFactory, ServerProcess

pytestmark = pytest.mark.e2e

RECEIVER = "127.0.68.1"
OTHER_USER = "carol@example.test"
LIMIT_REPLY = (451, "4.7.1 Sending limit reached (messages_per_hour); try again later")
SUSPENDED_REPLY = (451, "4.7.1 Account suspended for review; contact your administrator")
FLAG_REASON = "messages_per_hour exceeded"
NOTICE_SUBJECT = "New sign-in to your mail account"
_NO_ROUTES = "routes = []\n"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(RECEIVER, 0) as started:
        yield started


def deliver_to(made: Instance, receiver: Receiver) -> None:
    """Route all of `made`'s mail to `receiver` and stop holding delivery."""
    text = made.config.read_text()
    assert text.count(_NO_ROUTES) == 1, "sendgate init no longer writes an empty route list"
    route = (
        f'routes = [{{ domains = ["*"], smarthost = "{receiver.address}:{receiver.port}", '
        'tls = "none" }]\n'
    )
    made.config.write_text(text.replace(_NO_ROUTES, route))
    made.configure({"delivery.hold": False})


def parsed(delivered: Delivered) -> Message:
    return message_from_bytes(delivered.content)


def subjects(delivered: list[Delivered]) -> list[str]:
    return [str(parsed(item)["Subject"]) for item in delivered]


def submit_reply(client: smtplib.SMTP, made: Instance, tag: str) -> tuple[int, str]:
    """MAIL, RCPT (both must pass) and DATA of one message; the reply to DATA."""
    assert client.mail(made.user)[0] == 250
    assert client.rcpt("bob@example.org")[0] == 250
    code, text = client.data(made.message(tag))
    return code, text.decode()


# --- 4. a compromised account: flagged, then held or refused ---------------------------------


PER_HOUR = 3


def burst_until_flagged(running: ServerProcess, tags: list[str]) -> list[str]:
    """Send `tags` (one per connection), then one more that must hit the limit; the ids."""
    made = running.instance
    accepted = [sends(running, "127.4.0.1", tag) for tag in tags]
    mark = running.mark()
    with contextlib.closing(login(running, "127.4.0.1")) as client:
        assert submit_reply(client, made, "one-too-many") == LIMIT_REPLY
        client.quit()
    running.wait_for(
        rf"event=sending_limit .*user={made.user} limit=messages_per_hour ", since=mark
    )
    running.wait_for(rf'event=flagged .*user={made.user} reason="{FLAG_REASON}"', since=mark)
    return accepted


def assert_flagged(made: Instance) -> None:
    status = made.cli("user", "status", made.user).ok().stdout
    assert re.search(rf"^flag: {FLAG_REASON} \(since \S+Z\)$", status, re.M), status
    document = json.loads(made.cli("user", "status", made.user, "--json").ok().stdout)
    assert document["flag"]["reason"] == FLAG_REASON
    assert document["username"] == made.user


def test_a_flagged_account_is_held_until_released_then_delivered(
    instance: InstanceFactory, server: ServerFactory, receiver: Receiver
) -> None:
    made = instance(
        {
            "sending_limits.messages_per_hour": PER_HOUR,
            "sending_limits.flagged": "hold",
            # The CLI's release reaches the runner at its next scan of the spool (5 s by default).
            "delivery.scan_interval": 0.5,
        }
    )
    deliver_to(made, receiver)
    made.cli("user", "add", OTHER_USER, stdin="another long secret 7\n").ok()
    running = server(made)
    tags = [f"burst-{number}" for number in range(PER_HOUR)]
    burst_until_flagged(running, tags)
    assert sorted(subjects(receiver.wait_for(PER_HOUR))) == tags
    assert_flagged(made)

    mark = running.mark()
    with contextlib.closing(login(running, "127.4.0.1")) as client:
        held = running.submit(client, made.message("held-one"))
        client.quit()
    running.wait_for(rf'event=accepted .*queue_id={held} .*held="flagged: {FLAG_REASON}"')
    # Another account's message, sent after it, is delivered; the held one is not.
    with contextlib.closing(starttls_client(running, "127.4.0.2")) as client:
        assert auth(client, OTHER_USER, "another long secret 7")[0] == 235
        running.submit(client, made.message("marker", sender=OTHER_USER), sender=OTHER_USER)
        client.quit()
    assert subjects(receiver.wait_for(PER_HOUR + 1))[PER_HOUR:] == ["marker"]
    assert running.matching(rf"event=delivery .*queue_id={held} ", since=mark) == []
    listed = made.cli("queue", "list").ok().stdout
    assert [line for line in listed.splitlines() if held in line], listed

    released = made.cli("queue", "release", "--user", made.user).ok().stdout
    assert released.splitlines() == [f"{held}: released"]
    assert subjects(receiver.wait_for(PER_HOUR + 2))[PER_HOUR + 1 :] == ["held-one"]
    running.wait_for(rf"event=delivery .*queue_id={held} ", since=mark)

    cleared = made.cli("user", "unflag", made.user).ok().stdout
    assert cleared.startswith(f"{made.user}: flag cleared ({FLAG_REASON} since ")
    status = made.cli("user", "status", made.user).ok().stdout
    assert "\nflag: not flagged\n" in status


def test_a_flagged_account_is_refused_and_nothing_is_queued(
    instance: InstanceFactory, server: ServerFactory
) -> None:
    made = instance(
        {"sending_limits.messages_per_hour": PER_HOUR, "sending_limits.flagged": "refuse"}
    )
    running = server(made)  # delivery held: whatever was accepted stays in the queue
    accepted = burst_until_flagged(running, [f"burst-{n}" for n in range(PER_HOUR)])
    assert_flagged(made)
    mark = running.mark()
    with contextlib.closing(login(running, "127.4.0.1")) as client:
        assert submit_reply(client, made, "refused-one") == SUSPENDED_REPLY
        client.quit()
    [line] = running.wait_for(r"event=rejected ", since=mark)
    assert "reason=flagged" in line
    assert 'code="451 4.7.1"' in line
    assert sorted(made.queue_ids()) == sorted(accepted)


# --- 5. sign-in notices --------------------------------------------------------------------


FIRST = "127.5.0.1"
SECOND = "127.6.0.1"
LAPTOP = "laptop-b.example"


def logs_in(running: ServerProcess, source: str, name: str) -> list[str]:
    """Log in from `source` as `name`; the log lines of that login, up to its auth_ok."""
    mark = running.mark()
    with contextlib.closing(login(running, source, name=name)) as client:
        client.quit()
    running.wait_for(rf"event=auth_ok .*client={source} ", since=mark)
    return running.snapshot()[mark:]


def notices(lines: list[str]) -> list[str]:
    return [line for line in lines if " event=sign_in_notice " in line]


def test_a_login_from_a_new_network_sends_exactly_one_notice(
    instance: InstanceFactory, server: ServerFactory, receiver: Receiver
) -> None:
    made = instance()
    deliver_to(made, receiver)
    running = server(made)

    # The first login ever: the network is new, but there is nobody to warn yet.
    first = logs_in(running, FIRST, "desktop-a.example")
    assert "new_network=true" in "\n".join(first)
    assert notices(first) == []

    second = logs_in(running, SECOND, LAPTOP)
    [notice] = notices(second)
    assert field(notice, "user") == made.user
    assert field(notice, "network") == "127.6.0.0/24"
    notice_id = field(notice, "queue_id")
    [delivered] = receiver.wait_for(1)
    assert delivered.recipients == (made.user,)
    assert delivered.sender == "<>"  # a null sender, like a bounce: nothing answers it
    message = parsed(delivered)
    assert message["Subject"] == NOTICE_SUBJECT
    assert message["To"] == f"<{made.user}>"
    body = message.get_payload(decode=True)
    assert isinstance(body, bytes)
    assert b"127.6.0.0/24" in body
    assert LAPTOP.encode() in body
    running.wait_for(rf"event=delivery .*queue_id={notice_id} ")

    # Again from the same network: no notice, neither now nor after a restart (when the
    # store, not a worker's memory, says the network is known).
    assert notices(logs_in(running, SECOND, LAPTOP)) == []
    assert running.stop() == 0
    running.start()
    again = logs_in(running, SECOND, LAPTOP)
    assert "new_network=false" in "\n".join(again)
    assert notices(again) == []
    # A marker sent after them is delivered; still one notice in all.
    sends(running, SECOND, "marker")
    delivered_all = receiver.wait_for(2)
    assert subjects(delivered_all) == [NOTICE_SUBJECT, "marker"]


# --- 6. app passwords ------------------------------------------------------------------------


def attempt(running: ServerProcess, password: str) -> tuple[int, str]:
    made = running.instance
    with contextlib.closing(starttls_client(running, "127.7.0.1")) as client:
        reply = auth(client, made.user, password)
        client.quit()
    return reply


def test_app_passwords_log_in_until_removed_and_alone_when_required(
    instance: InstanceFactory, server: ServerFactory
) -> None:
    made = instance()
    added = made.cli("user", "app-password", "add", made.user, "phone").ok().stdout
    app_password = added.splitlines()[-1]
    assert app_password
    assert app_password != made.password
    running = server(made)

    mark = running.mark()
    assert attempt(running, app_password)[0] == 235
    [line] = running.wait_for(r"event=auth_ok ", since=mark)
    assert f"user={made.user} " in line
    assert " app_password=phone " in line
    listed = json.loads(made.cli("user", "app-password", "list", made.user, "--json").ok().stdout)
    [phone] = listed["app_passwords"]
    used = datetime.fromisoformat(phone["last_used"].replace("Z", "+00:00"))
    assert abs(time.time() - used.timestamp()) < 600  # a wall-clock time, not the uptime
    assert attempt(running, made.password)[0] == 235  # the main password still works

    made.cli("user", "set", made.user, "app_passwords_only", "yes").ok()
    mark = running.mark()
    assert attempt(running, made.password) == FAILED  # even though it was just cached
    running.wait_for(rf"event=auth_fail .*user={made.user} ", since=mark)
    assert attempt(running, app_password)[0] == 235
    running.wait_for(r"event=auth_ok .* app_password=phone ", since=mark)

    made.cli("user", "app-password", "remove", made.user, "phone").ok()
    mark = running.mark()
    assert attempt(running, app_password) == FAILED
    running.wait_for(rf"event=auth_fail .*user={made.user} ", since=mark)
    assert "app-passwords: none" in made.cli("user", "status", made.user).ok().stdout
