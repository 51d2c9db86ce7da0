"""The `sendgate` command: parse arguments, call library code, print, exit (0 ok, 1 fail, 2 usage).

These invocations are relied on by scripts and docs and must keep working exactly so:
`sendgate init DIR [--hostname NAME] [--submission HOST:PORT] [--submissions HOST:PORT]`,
`sendgate --config FILE user add ADDRESS` (password from stdin when it is not a terminal),
`sendgate --config FILE serve`, `sendgate --config FILE queue list`,
`sendgate init DIR --smarthost HOST:PORT [--smarthost-tls none|starttls|implicit]`,
`sendgate --config FILE dkim keygen DOMAIN [--selector S]`,
`sendgate --config FILE queue list|show|retry|remove|explain ID`.
Passwords are read from a prompt or stdin, never from argv.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sendgate import __version__
from sendgate.config.load import load_config
from sendgate.config.schema import Config
from sendgate.dkim import default_selector, generate_key
from sendgate.errors import ConfigError, SendgateError, UnknownQueueIdError, UserError
from sendgate.log import EventLog
from sendgate.policy.passwords import hash_password, new_hasher, password_problem
from sendgate.scaffold import CONFIG_NAME, default_hostname, init_instance
from sendgate.smtp.address import AddressError, parse_domain, parse_mailbox
from sendgate.store.backends import open_stores
from sendgate.store.delivery_state import DeliveryState
from sendgate.store.envelope import Envelope
from sendgate.store.queue import QueueStore
from sendgate.text import iso_utc, printable

DEFAULT_DIR = Path("sendgate-data")
# Unprivileged stand-ins for 587/465 when not running as root.
DEFAULT_USER_PORTS = (2587, 2465)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sendgate", description="Secure mail submission agent.")
    parser.add_argument("--version", action="version", version=f"sendgate {__version__}")
    parser.add_argument(
        "--config",
        type=Path,
        help=f"configuration file (default: $SENDGATE_CONFIG or ./{CONFIG_NAME}; "
        f"`serve` without one creates ./{DEFAULT_DIR}/)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = sub.add_parser("init", help="create a configuration, certificate and data directory")
    init.add_argument("directory", type=Path, metavar="DIR")
    init.add_argument("--hostname", help="server name (default: this machine's FQDN)")
    init.add_argument("--submission", metavar="HOST:PORT", help="STARTTLS listener")
    init.add_argument("--submissions", metavar="HOST:PORT", help="implicit-TLS listener")
    init.add_argument("--cert", type=Path, help="use this certificate instead of generating one")
    init.add_argument("--key", type=Path, help="private key for --cert")
    init.add_argument(
        "--smarthost", metavar="HOST:PORT", help="relay all outgoing mail through this server"
    )
    init.add_argument(
        "--smarthost-tls",
        choices=("none", "starttls", "implicit"),
        default="starttls",
        help="TLS to the smarthost (default starttls; none only to a loopback address)",
    )

    sub.add_parser("serve", help="run the submission server")

    user = sub.add_parser("user", help="manage users").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    for name, text in (
        ("add", "add a user (it may send as ADDRESS); password from a prompt or stdin"),
        ("passwd", "change a user's password; password from a prompt or stdin"),
        ("remove", "remove a user"),
    ):
        user.add_parser(name, help=text).add_argument("address", metavar="ADDRESS")
    user.add_parser("list", help="list users and the addresses they may send as")
    for name, text in (
        ("addr-add", "let USER send as ADDRESS (or a whole domain: @example.org)"),
        ("addr-remove", "stop USER sending as ADDRESS"),
    ):
        action = user.add_parser(name, help=text)
        action.add_argument("user", metavar="USER")
        action.add_argument("address", metavar="ADDRESS")

    queue = sub.add_parser("queue", help="inspect and manage the queue").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    queue.add_parser("list", help="one line per queued message")
    for name, text in (
        ("show", "envelope and headers of one message"),
        ("retry", "try delivering a message now"),
        ("remove", "delete a message from the queue (no bounce is sent)"),
        ("explain", "why a message is still queued: last attempt per recipient, next attempt"),
    ):
        queue.add_parser(name, help=text).add_argument("queue_id", metavar="ID")

    dkim = sub.add_parser("dkim", help="DKIM signing keys").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    keygen = dkim.add_parser("keygen", help="make a signing key for DOMAIN; print its DNS record")
    keygen.add_argument("domain", metavar="DOMAIN")
    keygen.add_argument("--selector", help="DNS selector (default: sgYYYYMM)")
    keygen.add_argument(
        "--algorithm", choices=("rsa", "ed25519"), default="rsa", help="default rsa (2048 bits)"
    )
    return parser


def _config_path(args: argparse.Namespace) -> Path:
    if args.config is not None:
        return Path(args.config)
    return Path(os.environ.get("SENDGATE_CONFIG", CONFIG_NAME))


def _load(args: argparse.Namespace) -> Config:
    return load_config(_config_path(args))


def _canonical_user(text: str) -> str:
    try:
        address = parse_mailbox(text, smtputf8=True)
    except AddressError as exc:
        raise UserError(f"{text!r}: not a valid mail address ({exc})") from exc
    return str(address).lower()


def _owned_address(text: str) -> str:
    if text.startswith("@"):
        try:
            return "@" + parse_domain(text[1:], smtputf8=True)
        except AddressError as exc:
            raise UserError(f"{text!r}: not a valid domain ({exc})") from exc
    return _canonical_user(text)


def _read_password(username: str) -> str:
    if sys.stdin.isatty():
        first = getpass.getpass(f"Password for {username}: ")
        if getpass.getpass("Repeat password: ") != first:
            raise UserError("passwords do not match")
        password = first
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    problem = password_problem(password, username)
    if problem is not None:
        raise UserError(f"password refused: {problem}")
    return password


def _cmd_init(args: argparse.Namespace) -> int:
    if (args.cert is None) != (args.key is None):
        raise UserError("--cert and --key go together")
    path = init_instance(
        args.directory,
        hostname=args.hostname or default_hostname(),
        submission=args.submission or "0.0.0.0:587",
        submissions=args.submissions or "0.0.0.0:465",
        cert=args.cert,
        key=args.key,
        smarthost=args.smarthost,
        smarthost_tls=args.smarthost_tls,
    )
    print(f"wrote {path}")
    print(f"next: sendgate --config {path} user add ADDRESS")
    return 0


def _embedded_default() -> Config:
    """`sendgate serve` with no config anywhere: a local instance in ./sendgate-data/."""
    config = DEFAULT_DIR / CONFIG_NAME
    if not config.exists():
        submission, submissions = (587, 465) if os.geteuid() == 0 else DEFAULT_USER_PORTS
        init_instance(
            DEFAULT_DIR,
            hostname=default_hostname(),
            submission=f"0.0.0.0:{submission}",
            submissions=f"0.0.0.0:{submissions}",
        )
        print(
            f"created {config} (self-signed certificate; add users with "
            f"`sendgate --config {config} user add ADDRESS`)",
            file=sys.stderr,
        )
    return load_config(config)


def _cmd_serve(args: argparse.Namespace) -> int:
    from sendgate.service import serve

    explicit = args.config is not None or "SENDGATE_CONFIG" in os.environ
    cfg = _load(args) if explicit or Path(CONFIG_NAME).exists() else _embedded_default()
    log = EventLog(sys.stderr, fmt=cfg.log.format, level=cfg.log.level)
    return serve(cfg, log)


def _cmd_user(args: argparse.Namespace) -> int:
    cfg = _load(args)
    stores = open_stores(cfg)
    store = stores.users
    try:
        action = args.action
        if action == "list":
            for record in store.list_users():
                print(f"{record.username} {','.join(record.addresses)}")
        elif action in ("add", "passwd"):
            username = _canonical_user(args.address)
            if action == "passwd" and store.get_user(username) is None:
                raise UserError(f"{username}: no such user")
            if action == "add" and store.get_user(username) is not None:
                raise UserError(f"{username}: user exists")
            hashed = hash_password(new_hasher(), _read_password(username))
            if action == "add":
                store.add_user(username, hashed)
                print(f"added {username}")
            else:
                store.set_password_hash(username, hashed)
                print(f"password changed for {username}")
        elif action == "remove":
            username = _canonical_user(args.address)
            store.remove_user(username)
            print(f"removed {username}")
        else:
            username = _canonical_user(args.user)
            address = _owned_address(args.address)
            if action == "addr-add":
                store.add_address(username, address)
                print(f"{username} may send as {address}")
            else:
                store.remove_address(username, address)
                print(f"{username} may no longer send as {address}")
    finally:
        stores.close()
    return 0


def _cmd_queue(args: argparse.Namespace) -> int:
    cfg = _load(args)
    stores = open_stores(cfg)
    try:
        return _queue_action(stores.queue, args)
    finally:
        stores.close()


def _queue_action(queue: QueueStore, args: argparse.Namespace) -> int:
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
        print(explain(envelope.queue_id, envelope.sender, envelope.received_at, state))
    return 0


def _cmd_dkim(args: argparse.Namespace) -> int:
    cfg = _load(args)
    selector = args.selector or default_selector(time.time())
    path, record = generate_key(cfg.dkim.key_dir, args.domain, selector, args.algorithm)
    print(f"wrote {path}", file=sys.stderr)
    print("publish this DNS record, then restart sendgate to sign with the key:", file=sys.stderr)
    print(record)
    return 0


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
    header = _header_section(message).decode("utf-8", "backslashreplace")
    if header:
        lines.extend(printable(line) for line in header.split("\r\n"))
    return "\n".join(lines)


def _header_section(message: bytes) -> bytes:
    """Return the header lines of `message` (CRLF-separated, without the blank line)."""
    if message.startswith(b"\r\n"):
        return b""
    end = message.find(b"\r\n\r\n")
    return message.removesuffix(b"\r\n") if end < 0 else message[:end]


def explain(queue_id: str, sender: str, received_at: float, state: DeliveryState | None) -> str:
    """The `sendgate queue explain ID` text: why the message is still queued.

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


_COMMANDS = {
    "init": _cmd_init,
    "serve": _cmd_serve,
    "user": _cmd_user,
    "queue": _cmd_queue,
    "dkim": _cmd_dkim,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"sendgate: {exc}", file=sys.stderr)
        return 2
    except SendgateError as exc:
        print(f"sendgate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `sendgate queue list | head`: the reader left; not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
