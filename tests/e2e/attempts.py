"""Login attempts against a live server from chosen loopback source addresses (127.A.B.C).

The defence tests play attackers and real users on different addresses and networks of the
loopback /8: `session` opens a STARTTLS session from one source address, `attempt` makes one
AUTH PLAIN on a connection of its own (421 when the server refused the connection at accept),
and `events` reads log lines back as field mappings, in log order.

Security: log lines are only parsed into strings and compared, never executed.
"""

from __future__ import annotations

import re
import smtplib
from typing import TYPE_CHECKING

from tests.e2e.conftest import CLIENT_NAME, SOCKET_TIMEOUT
from tests.support.session import plain

if TYPE_CHECKING:
    from tests.e2e.conftest import ServerProcess

_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def session(server: ServerProcess, source: str) -> smtplib.SMTP:
    """A client from `source` on the STARTTLS port, after STARTTLS and the second EHLO."""
    client = smtplib.SMTP(
        "127.0.0.1", server.port, CLIENT_NAME, SOCKET_TIMEOUT, source_address=(source, 0)
    )
    client.starttls(context=server.instance.client_context())
    client.ehlo()
    return client


def auth(client: smtplib.SMTP, username: str, password: str) -> tuple[int, str]:
    """One AUTH PLAIN with an initial response: the reply's code and text."""
    code, text = client.docmd("AUTH", "PLAIN " + plain(username, password))
    return code, text.decode()


def attempt(server: ServerProcess, source: str, username: str, password: str) -> int:
    """One AUTH PLAIN from `source` on a new connection; the code (421 if refused at accept)."""
    try:
        client = session(server, source)
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
