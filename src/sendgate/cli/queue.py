"""`sendgate queue ...`: list, show, explain, retry, remove, hold and release queued messages.

Every action takes `--json` for scripts: one JSON document on standard output (times as ISO 8601
UTC, the null sender as ""), with all non-ASCII escaped. Without it the text output is the one
scripts already rely on; a held message's list line ends with " (held: REASON)".

Security: envelopes, header bytes, hold reasons and remote replies shown here come from clients
and remote servers; every such field goes through `text.printable` (or JSON's ASCII escapes), so
nothing reaches the operator's terminal that it would act on (escape sequences, bidi overrides,
line breaks inside a field). The message body is never shown.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from sendgate.cli.command import Group, add_json_flag, load, print_json
from sendgate.errors import UnknownQueueIdError, UserError
from sendgate.headers import header_section
from sendgate.store.backends import open_stores
from sendgate.store.delivery_state import DeliveryState
from sendgate.store.envelope import Envelope
from sendgate.store.queue import QueueStore
from sendgate.text import iso_utc, printable

JsonValue = None | bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"]


def _arguments(parser: argparse.ArgumentParser) -> None:
    queue = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add_json_flag(queue.add_parser("list", help="one line per queued message"))
    for name, text in (
        ("show", "envelope and headers of one message"),
        ("retry", "try delivering a message now"),
        ("remove", "delete a message from the queue (no bounce is sent)"),
        ("explain", "why a message is still queued: last attempt per recipient, next attempt"),
    ):
        action = queue.add_parser(name, help=text)
        action.add_argument("queue_id", metavar="ID")
        add_json_flag(action)
    for name, text in (
        ("hold", "keep a message (or every message of --user) from being delivered"),
        ("release", "let held messages be delivered again, at once"),
    ):
        action = queue.add_parser(name, help=text)
        which = action.add_mutually_exclusive_group(required=True)
        which.add_argument("queue_id", metavar="ID", nargs="?")
        which.add_argument("--user", metavar="USER", help="every queued message of USER")
        if name == "hold":
            action.add_argument("--reason", metavar="TEXT", help="why, shown with the message")
        add_json_flag(action)


def run(args: argparse.Namespace) -> int:
    stores = open_stores(load(args))
    try:
        return _act(stores.queue, args)
    finally:
        stores.close()


def _act(queue: QueueStore, args: argparse.Namespace) -> int:
    action = args.action
    if action == "list":
        listed = list(_queued(queue))
        if args.json:
            print_json([queue_json(envelope, held) for envelope, held in listed])
        for envelope, held in [] if args.json else listed:
            print(format_queue_line(envelope, held))
        return 0
    if action in ("hold", "release"):
        return _hold_or_release(queue, args)
    envelope = queue.envelope(args.queue_id)
    queue_id = envelope.queue_id
    if action == "show":
        message, held = queue.message(queue_id), queue.hold_reason(queue_id)
        if args.json:
            print_json({**queue_json(envelope, held), "headers": [*_header_lines(message)]})
        else:
            print(format_queue_show(envelope, message, held))
    elif action in ("retry", "remove"):
        if action == "retry":
            queue.request_retry(queue_id)
        else:
            queue.remove(queue_id)
        done = "retry requested" if action == "retry" else "removed"
        if args.json:
            print_json({"queue_id": queue_id, "done": done})
        else:
            print(f"{queue_id}: {done}")
    else:
        state, held = queue.delivery_state(queue_id), queue.hold_reason(queue_id)
        if args.json:
            print_json(explain_json(envelope, state, held))
        else:
            received = envelope.received_at
            print(format_queue_explain(queue_id, envelope.sender, received, state, held))
    return 0


def _hold_or_release(queue: QueueStore, args: argparse.Namespace) -> int:
    """`queue hold` and `queue release`, of one id or of every message of --user."""
    hold = args.action == "hold"
    single = args.queue_id is not None
    if single:
        targets = [queue.envelope(args.queue_id).queue_id]
    else:
        user = args.user.lower()
        targets = [env.queue_id for env, _ in _queued(queue) if env.user.lower() == user]
    reason = f"operator: {args.reason}" if hold and args.reason else "operator"
    done: list[tuple[str, str | None]] = []  # (id, its reason now; None: released)
    for queue_id in targets:
        try:
            if hold:
                queue.hold(queue_id, reason)
                done.append((queue_id, queue.hold_reason(queue_id)))
            elif queue.unhold(queue_id):
                done.append((queue_id, None))
        except UnknownQueueIdError:
            if single:
                raise
            # Delivered or removed since the listing: nothing left to hold or release.
    if single and not done:
        raise UserError(f"{targets[0]}: not held")
    if args.json:
        print_json([{"queue_id": queue_id, "held": held} for queue_id, held in done])
    elif not done:
        print(f"{printable(args.user)}: no {'queued' if hold else 'held'} messages")
    for queue_id, held in [] if args.json else done:
        print(f"{queue_id}: released" if held is None else f"{queue_id}: held ({printable(held)})")
    return 0


def _queued(queue: QueueStore) -> Iterator[tuple[Envelope, str | None]]:
    """Every queued message's envelope and hold reason, oldest first."""
    for queue_id in queue.ids():
        try:
            yield queue.envelope(queue_id), queue.hold_reason(queue_id)
        except UnknownQueueIdError:
            continue  # delivered since the listing


def _header_lines(message: bytes) -> list[str]:
    header = header_section(message).removesuffix(b"\r\n").decode("utf-8", "backslashreplace")
    return header.split("\r\n") if header else []


def queue_json(env: Envelope, held: str | None) -> dict[str, JsonValue]:
    """The `--json` object of one message in `queue list` (and the start of `queue show`)."""
    return {
        "queue_id": env.queue_id,
        "received": iso_utc(env.received_at),
        "size": env.size,
        "user": env.user,
        "sender": env.sender,
        "recipients": list(env.recipients),
        "smtputf8": env.smtputf8,
        "body": env.body,
        "held": held,
    }


def explain_json(
    env: Envelope, state: DeliveryState | None, held: str | None
) -> dict[str, JsonValue]:
    """The `queue explain --json` object: state per recipient, next attempt (null: none)."""
    recipients: list[JsonValue] = []
    for row in () if state is None else state.recipients:
        last = None if row.last_attempt is None else iso_utc(row.last_attempt)
        recipients.append(
            {
                "address": row.address,
                "status": row.status,
                "attempts": row.attempts,
                "last_attempt": last,
                "host": row.host,
                "reply": row.reply,
            }
        )
    next_attempt = None
    if state is not None and state.pending() and held is None:
        next_attempt = iso_utc(state.next_attempt)
    return {
        "queue_id": env.queue_id,
        "sender": env.sender,
        "received": iso_utc(env.received_at),
        "held": held,
        "attempts": 0 if state is None else state.attempts,
        "recipients": recipients,
        "next_attempt": next_attempt,
    }


GROUP = Group("queue", "inspect and manage the queue", _arguments, run)


def format_queue_line(env: Envelope, held: str | None = None) -> str:
    """Return the `sendgate queue list` line for one message.

    Format, fields separated by single spaces::

        <id> <received, ISO 8601 UTC to the second, e.g. 2024-05-01T12:00:00Z> <size in bytes>
        <sender, or "<>" for the null sender> -> <recipients separated by ",">

    The first four fields never contain spaces except a quoted local part of the sender;
    scripts should split off three fields, then split the rest at the first " -> ". Anything
    unprintable in an address is shown as a Python-style escape, so a line is always one line.
    A held message's line ends with `` (held: REASON)``.
    """
    recipients = ",".join(printable(rcpt) for rcpt in env.recipients)
    line = (
        f"{env.queue_id} {iso_utc(env.received_at)} {env.size} "
        f"{printable(env.sender) or '<>'} -> {recipients}"
    )
    return line if held is None else f"{line} (held: {printable(held)})"


def format_queue_show(env: Envelope, message: bytes, held: str | None = None) -> str:
    """Return the `sendgate queue show ID` text: envelope fields, a blank line, the headers.

    A held message has a ``held: REASON`` line after the envelope fields.

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
        *([] if held is None else [f"held: {printable(held)}"]),
        "",
    ]
    lines.extend(printable(line) for line in _header_lines(message))
    return "\n".join(lines)


def format_queue_explain(
    queue_id: str,
    sender: str,
    received_at: float,
    state: DeliveryState | None,
    held: str | None = None,
) -> str:
    """Return the `sendgate queue explain ID` text: why the message is still queued.

    A ``held:`` line when it is held; one ``recipient:`` block per recipient with its status,
    attempts, last attempt, the host and the reply it gave; then the next attempt time (none
    while held: it is due when released). Times are ISO 8601 UTC.
    """
    lines = [f"queue-id: {queue_id}", f"sender: {printable(sender) or '<>'}"]
    lines.append(f"received: {iso_utc(received_at)}")
    if held is not None:
        lines.append(f"held: {printable(held)}")
    if state is None:
        lines.append(f"attempts: 0 (not tried yet; {'held' if held else 'due now'})")
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
    if state.pending() and held is None:
        lines.append(f"next-attempt: {iso_utc(state.next_attempt)}")
    return "\n".join(lines)
