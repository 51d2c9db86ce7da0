"""`policy.dovecot.DovecotAuth` against a real Dovecot (passwd-file), and against a broken one.

The broken one is a Unix-socket peer in this file that answers out of protocol: what a Dovecot
of another version, or something else on that path, might say.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.peers.dovecot import DovecotAuthServer

from sendgate.policy.dovecot import DovecotAuth, DovecotError

USERS = {"carol@example.test": "carol's long password", "dave": "tab\tless? no: fine"}


@pytest.fixture(scope="module")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DovecotAuthServer]:
    with DovecotAuthServer(tmp_path_factory.mktemp("dovecot"), USERS) as server:
        yield server


def test_right_and_wrong_passwords(dovecot: DovecotAuthServer) -> None:
    auth = DovecotAuth(dovecot.socket)
    check = auth.check
    assert check(
        "carol@example.test", USERS["carol@example.test"], client_ip="192.0.2.1", secured=True
    ) == ("carol@example.test")
    assert check("carol@example.test", "wrong", client_ip="192.0.2.1", secured=True) is None
    assert check("nobody@example.test", "x", client_ip="192.0.2.1", secured=True) is None
    # A tab cannot be said in the protocol: never right, never sent.
    assert check("dave", USERS["dave"], client_ip="192.0.2.1", secured=True) is None


def test_no_dovecot_is_a_temporary_failure(tmp_path: Path) -> None:
    with pytest.raises(DovecotError, match=r"dovecot auth socket .*/missing: No such file"):
        DovecotAuth(tmp_path / "missing").check("a@b.example", "pw", client_ip="::1", secured=True)


class BrokenDovecot:
    """Answers the handshake with `handshake`, then every request with `answer`."""

    def __init__(self, path: Path, handshake: bytes, answer: bytes) -> None:
        self.path = path
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen()
        self._thread = threading.Thread(target=self._serve, args=(handshake, answer), daemon=True)
        self._thread.start()

    def _serve(self, handshake: bytes, answer: bytes) -> None:
        conn, _ = self._server.accept()
        # The client may hang up at any point: that is what some cases test.
        with conn, contextlib.suppress(OSError):
            conn.recv(4096)
            conn.sendall(handshake)
            conn.recv(4096)
            conn.sendall(answer)

    def close(self) -> None:
        self._thread.join(10)
        self._server.close()


GOOD_HANDSHAKE = b"VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nSPID\t1\nCUID\t1\nCOOKIE\tab\nDONE\n"


@pytest.mark.parametrize(
    ("handshake", "answer", "message"),
    [
        (b"VERSION\t2\t0\nDONE\n", b"", "version \\['2'\\], not 1"),
        (b"VERSION\t1\t2\nMECH\tLOGIN\nDONE\n", b"", "does not offer PLAIN"),
        (GOOD_HANDSHAKE, b"CONT\t1\t\n", "answered 'CONT' to PLAIN"),
        (GOOD_HANDSHAKE, b"OK\t7\tuser=x\n", "answered another request"),
        (GOOD_HANDSHAKE, b"", "closed the connection"),
        (GOOD_HANDSHAKE, b"x" * 20000, "longer than 16384 octets"),
        (GOOD_HANDSHAKE, b"OK\t1\tuser=\xff\n", "not UTF-8"),
        # Dovecot's own backend down: never a wrong password, never counted against the user.
        (GOOD_HANDSHAKE, b"FAIL\t1\tcode=temp_fail\tuser=a@b.example\n", "temporary failure"),
        (GOOD_HANDSHAKE, b"FAIL\t1\ttemp\n", "temporary failure"),
    ],
)
def test_a_dovecot_out_of_protocol_is_an_error_never_a_success(
    tmp_path: Path, handshake: bytes, answer: bytes, message: str
) -> None:
    peer = BrokenDovecot(tmp_path / "auth", handshake, answer)
    try:
        with pytest.raises(DovecotError, match=message):
            DovecotAuth(tmp_path / "auth", timeout=5).check(
                "a@b.example", "pw", client_ip="192.0.2.1", secured=True
            )
    finally:
        peer.close()


def test_ok_without_a_user_name_is_the_login_name(tmp_path: Path) -> None:
    peer = BrokenDovecot(tmp_path / "auth", GOOD_HANDSHAKE, b"OK\t1\n")
    try:
        assert (
            DovecotAuth(tmp_path / "auth").check(
                "a@b.example", "pw", client_ip="192.0.2.1", secured=False
            )
            == "a@b.example"
        )
    finally:
        peer.close()
