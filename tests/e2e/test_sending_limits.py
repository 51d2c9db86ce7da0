"""Sending limits and containment on a live `sendgate serve` with two workers.

A burst over messages_per_hour from one logged-in account, spread over connections that either
worker may take, is cut at exactly the limit with 451 4.7.1; the account is flagged in the user
store, and its next message is accepted but held in the queue.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from sendgate.store.local.queue import LocalQueueStore
from sendgate.store.local.users import LocalUserStore

if TYPE_CHECKING:
    from tests.e2e.conftest import InstanceFactory, ServerFactory

pytestmark = pytest.mark.e2e

PER_HOUR = 5


def test_a_burst_is_cut_at_the_limit_then_the_account_is_flagged_and_held(
    instance: InstanceFactory, server: ServerFactory
) -> None:
    made = instance(
        {
            "listen.workers": 2,
            "sending_limits.messages_per_hour": PER_HOUR,
            "sending_limits.flagged": "hold",
        }
    )
    running = server(made)
    accepted = []
    for number in range(PER_HOUR):
        client = running.smtp()  # a connection of its own: either worker may take it
        accepted.append(running.submit(client, made.message(f"burst-{number}")))
        client.quit()
    client = running.smtp()
    assert client.mail(made.user)[0] == 250
    assert client.rcpt("bob@example.org")[0] == 250
    code, text = client.data(made.message("one-too-many"))
    assert (code, text.decode()) == (
        451,
        "4.7.1 Sending limit reached (messages_per_hour); try again later",
    )
    running.wait_for(rf"event=sending_limit .*user={made.user} limit=messages_per_hour")
    running.wait_for(rf'event=flagged .*user={made.user} reason="messages_per_hour exceeded"')
    users = LocalUserStore(made.data_dir / "users.db")
    try:
        flag = users.flag_of(made.user)
    finally:
        users.close()
    assert flag is not None
    assert flag.reason == "messages_per_hour exceeded"

    held = running.submit(client, made.message("after-the-flag"))
    client.quit()
    queue = LocalQueueStore(made.data_dir / "spool")
    try:
        assert sorted(queue.ids()) == sorted([*accepted, held])
        assert [queue.hold_reason(queue_id) for queue_id in accepted] == [None] * PER_HOUR
        assert queue.hold_reason(held) == "flagged: messages_per_hour exceeded"
    finally:
        queue.close()
    listed = made.cli("queue", "list").ok().stdout
    assert held in listed
    running.wait_for(rf'event=accepted .*queue_id={held} .*held="flagged: ')
