"""SMTP clients from chosen loopback source addresses, for the login-defence e2e tests.

Linux routes all of 127.0.0.0/8 to the loopback interface, so a client socket bound to
127.A.B.C is, to the server, a client from that address; the login guard's network is its /24.

`attempt` makes one AUTH PLAIN on a connection of its own (421 when the server refused the
connection at accept); `fields` and `events` read log lines back as field mappings.

Security: test code only; connects to loopback only, and log lines are only matched.
"""

from __future__ import annotations

import contextlib
import re
import smtplib
from typing import TYPE_CHECKING

from tests.e2e.conftest import CLIENT_NAME, SOCKET_TIMEOUT
from tests.support.session import plain

if TYPE_CHECKING:
    from tests.e2e.conftest import ServerProcess

_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')

FAILED = (535, "5.7.8 Authentication credentials invalid")
REFUSED = (454, "4.7.0 Too many failed logins, try again later")


def starttls_client(running: ServerProcess, source: str, name: str = CLIENT_NAME) -> smtplib.SMTP:
    """An smtplib client from `source` on the STARTTLS port, after STARTTLS and a second EHLO."""
    client = smtplib.SMTP(
        "127.0.0.1", running.port, name, SOCKET_TIMEOUT, source_address=(source, 0)
    )
    client.starttls(context=running.instance.client_context())
    client.ehlo()
    return client


def auth(client: smtplib.SMTP, username: str, password: str) -> tuple[int, str]:
    """One AUTH PLAIN with an initial response: the reply code and text."""
    code, text = client.docmd("AUTH", "PLAIN " + plain(username, password))
    return code, text.decode()


def login(
    running: ServerProcess, source: str, *, name: str = CLIENT_NAME, password: str = ""
) -> smtplib.SMTP:
    """The instance's user logged in from `source` (EHLO `name`); AssertionError unless 235."""
    made = running.instance
    client = starttls_client(running, source, name)
    try:
        code, text = auth(client, made.user, password or made.password)
        assert code == 235, (code, text)
    except BaseException:
        client.close()
        raise
    return client


def sends(running: ServerProcess, source: str, tag: str) -> str:
    """The instance's user logs in from `source` and submits one message; its queue id."""
    with contextlib.closing(login(running, source)) as client:
        queue_id = running.submit(client, running.instance.message(tag))
        client.quit()
    return queue_id


def field(line: str, name: str) -> str:
    """The value of `name=` in a kv log line."""
    parsed = fields(line)
    assert name in parsed, f"no {name}= in {line!r}"
    return parsed[name]


def attempt(server: ServerProcess, source: str, username: str, password: str) -> int:
    """One AUTH PLAIN from `source` on a new connection; the code (421 if refused at accept)."""
    try:
        client = starttls_client(server, source)
    except smtplib.SMTPConnectError as exc:
        return exc.smtp_code
    try:
        return auth(client, username, password)[0]
    finally:
        client.quit()


def fields(line: str) -> dict[str, str]:
    """The `key=value` fields of a log line, quoted values unquoted."""
    parsed = {}
    for key, value in _FIELD.findall(line):
        parsed[key] = value[1:-1] if value.startswith('"') else value
    return parsed


def events(
    server: ServerProcess, *names: str, since: int = 0, **match: str
) -> list[dict[str, str]]:
    """The log lines of the events `names` whose fields include `match`, as fields, in order."""
    found = []
    for line in server.snapshot()[since:]:
        parsed = fields(line)
        if parsed.get("event") in names and match.items() <= parsed.items():
            found.append(parsed)
    return found
