"""`auth.backend = "dovecot"`: logins checked by a real Dovecot (Debian's dovecot-core, started by
the test with a passwd-file), and sendgate's sender rules still applied to who logged in.

carol exists only in Dovecot: she may send as her login name and nothing else. alice exists in
both: Dovecot's password counts (her sendgate one no longer does) and sendgate's address table
says what she may send as. With Dovecot gone, AUTH answers 454: try again later.
"""

from __future__ import annotations

import smtplib
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from tests.peers.dovecot import DovecotAuthServer

if TYPE_CHECKING:
    from tests.e2e.conftest import InstanceFactory, ServerFactory, ServerProcess

pytestmark = pytest.mark.e2e

CAROL = "carol@example.test"
PASSWORDS = {CAROL: "carol's dovecot password", "alice@example.test": "alice's dovecot password"}


def message(sender: str) -> bytes:
    return f"From: <{sender}>\r\nTo: <bob@example.org>\r\nSubject: hi\r\n\r\nhello\r\n".encode()


def logged_in(running: ServerProcess, user: str, password: str) -> smtplib.SMTP:
    client = running.smtp(login=False)
    try:
        client.login(user, password)
    except smtplib.SMTPException:
        client.close()
        raise
    return client


def test_dovecot_checks_passwords_and_sendgate_owns_the_addresses(
    instance: InstanceFactory, server: ServerFactory, tmp_path: Path
) -> None:
    with DovecotAuthServer(tmp_path / "dovecot", PASSWORDS) as dovecot:
        made = instance({"auth.backend": "dovecot", "auth.dovecot_socket": str(dovecot.socket)})
        made.cli("user", "addr-add", made.user, "@example.org").ok()
        running = server(made)

        with logged_in(running, CAROL, PASSWORDS[CAROL]) as carol:
            assert carol.mail(CAROL)[0] == 250
            assert carol.rcpt("bob@example.org")[0] == 250
            assert carol.data(message(CAROL))[0] == 250
            assert carol.mail("someone-else@example.test")[0] == 553
        running.wait_for(rf"event=auth_ok .*user={CAROL} ")
        running.wait_for(r"event=accepted .*user=carol@example\.test ")

        with logged_in(running, made.user, PASSWORDS[made.user]) as alice:
            assert alice.mail("anyone@example.org")[0] == 250  # sendgate's table: @example.org
            assert alice.rcpt("bob@example.org")[0] == 250
            assert alice.data(message("anyone@example.org"))[0] == 250
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            logged_in(running, made.user, made.password).close()  # her sendgate password
        assert refused.value.smtp_code == 535

        dovecot.stop()
        with (
            running.smtp(login=False) as client,
            pytest.raises(smtplib.SMTPAuthenticationError) as unavailable,
        ):
            client.login(CAROL, PASSWORDS[CAROL])
        assert unavailable.value.smtp_code == 454
        running.wait_for(r"event=auth_error .*user=carol@example\.test error=DovecotError")
