"""`sendgate queue ...`: list, show, explain, retry and remove queued messages.

Security: envelopes, header bytes and remote replies shown here come from clients and remote
servers; every such field goes through `text.printable`, so nothing reaches the operator's
terminal that it would act on (escape sequences, bidi overrides, line breaks inside a field).
The message body is never shown.
"""

from __future__ import annotations

import argparse

from sendgate.cli.command import Group, load
from sendgate.errors import UnknownQueueIdError
from sendgate.headers import header_section
from sendgate.store.backends import open_stores
from sendgate.store.delivery_state import DeliveryState
from sendgate.store.envelope import Envelope
from sendgate.store.queue import QueueStore
from sendgate.text import iso_utc, printable


def _arguments(parser: argparse.ArgumentParser) -> None:
    queue = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    queue.add_parser("list", help="one line per queued message")
    for name, text in (
        ("show", "envelope and headers of one message"),
        ("retry", "try delivering a message now"),
        ("remove", "delete a message from the queue (no bounce is sent)"),
        ("explain", "why a message is still queued: last attempt per recipient, next attempt"),
    ):
        queue.add_parser(name, help=text).add_argument("queue_id", metavar="ID")


def run(args: argparse.Namespace) -> int:
    stores = open_stores(load(args))
    try:
        return _act(stores.queue, args)
    finally:
        stores.close()


def _act(queue: QueueStore, args: argparse.Namespace) -> int:
    action = args.action
    if action == "list":
        for queue_id in queue.ids():
            try:
                print(format_queue_line(queue.envelope(queue_id)))
            except UnknownQueueIdError:
                continue  # delivered since the listing
        return 0
    envelope = queue.envelope(args.queue_id)
    if action == "show":
        print(format_queue_show(envelope, queue.message(args.queue_id)))
    elif action == "retry":
        queue.request_retry(envelope.queue_id)
        print(f"{envelope.queue_id}: retry requested")
    elif action == "remove":
        queue.remove(envelope.queue_id)
        print(f"{envelope.queue_id}: removed")
    else:
        state = queue.delivery_state(envelope.queue_id)
        print(format_queue_explain(envelope.queue_id, envelope.sender, envelope.received_at, state))
    return 0


GROUP = Group("queue", "inspect and manage the queue", _arguments, run)


def format_queue_line(env: Envelope) -> str:
    """Return the `sendgate queue list` line for one message.

    Format, fields separated by single spaces::

        <id> <received, ISO 8601 UTC to the second, e.g. 2024-05-01T12:00:00Z> <size in bytes>
        <sender, or "<>" for the null sender> -> <recipients separated by ",">

    The first four fields never contain spaces except a quoted local part of the sender;
    scripts should split off three fields, then split the rest at the first " -> ". Anything
    unprintable in an address is shown as a Python-style escape, so a line is always one line.
    """
    recipients = ",".join(printable(rcpt) for rcpt in env.recipients)
    return (
        f"{env.queue_id} {iso_utc(env.received_at)} {env.size} "
        f"{printable(env.sender) or '<>'} -> {recipients}"
    )


def format_queue_show(env: Envelope, message: bytes) -> str:
    """Return the `sendgate queue show ID` text: envelope fields, a blank line, the headers.

    The message body is left out; header bytes that are not UTF-8 and unprintable characters
    are shown as escapes, so untrusted headers cannot drive the operator's terminal.
    """
    lines = [
        f"queue-id: {env.queue_id}",
        f"received: {iso_utc(env.received_at)}",
        f"size: {env.size}",
        f"user: {printable(env.user)}",
        f"sender: {printable(env.sender) or '<>'}",
        *(f"recipient: {printable(rcpt)}" for rcpt in env.recipients),
        f"smtputf8: {'yes' if env.smtputf8 else 'no'}",
        f"body: {env.body}",
        "",
    ]
    header = header_section(message).removesuffix(b"\r\n").decode("utf-8", "backslashreplace")
    if header:
        lines.extend(printable(line) for line in header.split("\r\n"))
    return "\n".join(lines)


def format_queue_explain(
    queue_id: str, sender: str, received_at: float, state: DeliveryState | None
) -> str:
    """Return the `sendgate queue explain ID` text: why the message is still queued.

    One ``recipient:`` block per recipient with its status, attempts, last attempt, the host and
    the reply it gave; then the next attempt time. Times are ISO 8601 UTC.
    """
    lines = [f"queue-id: {queue_id}", f"sender: {printable(sender) or '<>'}"]
    lines.append(f"received: {iso_utc(received_at)}")
    if state is None:
        lines.append("attempts: 0 (not tried yet; due now)")
        return "\n".join(lines)
    lines.append(f"attempts: {state.attempts}")
    for row in state.recipients:
        lines.append(f"recipient: {printable(row.address)}")
        lines.append(f"  status: {row.status}")
        lines.append(f"  attempts: {row.attempts}")
        if row.last_attempt is not None:
            lines.append(f"  last-attempt: {iso_utc(row.last_attempt)}")
        if row.host is not None:
            lines.append(f"  host: {printable(row.host)}")
        if row.reply is not None:
            lines.append(f"  reply: {printable(row.reply)}")
    if state.pending():
        lines.append(f"next-attempt: {iso_utc(state.next_attempt)}")
    return "\n".join(lines)
