"""Tests for sendgate.server.tls: protocol versions, suites, dual certificates, reload, tickets.

Every check is a real handshake between two `ssl` sockets over a socketpair, the server side
in a thread.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from tests.support.tls import client_context

from sendgate.errors import TlsConfigError
from sendgate.server.tls import TLS12_CIPHERS, TlsContextHolder, build_context, describe

ECDSA_SUITE = "ECDHE-ECDSA-AES128-GCM-SHA256"
RSA_SUITE = "ECDHE-RSA-AES128-GCM-SHA256"


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Issued:
    pair: Pair
    der: bytes  # the leaf certificate the server should present


@dataclass
class Handshake:
    """What each side saw; `error` is the client's failure, `server_error` the server's."""

    version: str | None = None
    cipher: str | None = None
    peer_der: bytes | None = None
    session: ssl.SSLSession | None = None
    reused: bool = False
    described: tuple[str, str, int] | None = None
    error: ssl.SSLError | None = None
    server_error: BaseException | None = None


def write_cert(ca: trustme.CA, directory: Path, name: str, key_type: Any) -> Issued:
    leaf = ca.issue_cert("localhost", key_type=key_type)
    directory.mkdir(parents=True, exist_ok=True)
    pair = Pair(directory / f"{name}.crt", directory / f"{name}.key")
    leaf.private_key_and_cert_chain_pem.write_to_path(str(pair.cert))
    leaf.private_key_pem.write_to_path(str(pair.key))
    der = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
    return Issued(pair, der)


def replace_file(path: Path, data: bytes) -> None:
    """Swap in new content the way deploy tools do: a new file renamed over the old name."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> Handshake:
    server_sock, client_sock = socket.socketpair()
    server_sock.settimeout(10)
    client_sock.settimeout(10)
    result = Handshake()

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(server_sock, server_side=True) as tls:
                result.described = describe(tls)
                # Application data makes a TLS 1.3 client read the session tickets sent with it.
                tls.sendall(b"ok")
        except (OSError, ssl.SSLError) as exc:
            result.server_error = exc
        finally:
            server_sock.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(
            client_sock, server_hostname="localhost", session=session
        ) as tls:
            assert tls.recv(2) == b"ok"
            cipher = tls.cipher()
            result.version = tls.version()
            result.cipher = cipher[0] if cipher else None
            result.peer_der = tls.getpeercert(binary_form=True)
            result.session = tls.session
            result.reused = tls.session_reused is True
    except ssl.SSLError as exc:
        result.error = exc
    finally:
        client_sock.close()
        thread.join(10)
    assert not thread.is_alive()
    return result


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def certs(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Issued]:
    directory = tmp_path_factory.mktemp("certs")
    return {
        "rsa": write_cert(ca, directory, "rsa", trustme.KeyType.RSA),
        "ecdsa": write_cert(ca, directory, "ecdsa", trustme.KeyType.ECDSA),
    }


@pytest.fixture(scope="module")
def server_ctx(certs: dict[str, Issued]) -> ssl.SSLContext:
    return build_context([certs["rsa"].pair, certs["ecdsa"].pair])


def client(
    ca: trustme.CA,
    *,
    minimum: ssl.TLSVersion | None = None,
    maximum: ssl.TLSVersion | None = None,
    ciphers: str | None = None,
) -> ssl.SSLContext:
    ctx = client_context(ca)
    with warnings.catch_warnings():
        # Naming TLS 1.0/1.1 is deprecated, which is the point of the refusal tests.
        warnings.simplefilter("ignore", DeprecationWarning)
        if minimum is not None:
            ctx.minimum_version = minimum
        if maximum is not None:
            ctx.maximum_version = maximum
    if ciphers is not None:
        # SECLEVEL=0 lets the client really offer weak suites; refusing them is the server's job.
        ctx.set_ciphers(ciphers + ":@SECLEVEL=0")
    return ctx


def tls11_client(ca: trustme.CA) -> ssl.SSLContext:
    return client(ca, minimum=ssl.TLSVersion.TLSv1, maximum=ssl.TLSVersion.TLSv1_1, ciphers="ALL")


# --- versions and suites ---------------------------------------------------------------------


def test_tls11_client_is_refused_for_its_version(
    ca: trustme.CA, server_ctx: ssl.SSLContext
) -> None:
    result = handshake(server_ctx, tls11_client(ca))
    assert result.version is None
    assert result.error is not None
    assert result.error.reason == "TLSV1_ALERT_PROTOCOL_VERSION"
    assert isinstance(result.server_error, ssl.SSLError)
    assert result.server_error.reason == "UNSUPPORTED_PROTOCOL"


def test_unsafe_override_lets_a_tls11_client_in(ca: trustme.CA, certs: dict[str, Issued]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = build_context([certs["rsa"].pair], min_version="1.1")
    result = handshake(ctx, tls11_client(ca))
    assert result.version == "TLSv1.1"


@pytest.mark.parametrize(
    ("maximum", "version"),
    [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")],
)
def test_tls12_and_tls13_clients_are_accepted(
    ca: trustme.CA, server_ctx: ssl.SSLContext, maximum: ssl.TLSVersion, version: str
) -> None:
    result = handshake(server_ctx, client(ca, maximum=maximum))
    assert result.error is None
    assert result.server_error is None
    assert result.version == version
    assert result.described is not None
    assert result.described[0] == version
    assert result.described[2] >= 128


@pytest.mark.parametrize(
    "suite",
    [
        "AES128-SHA",  # RSA key exchange, CBC
        "AES128-GCM-SHA256",  # RSA key exchange, AEAD
        "ECDHE-RSA-AES128-SHA",  # ECDHE, CBC
        "ECDHE-ECDSA-AES256-SHA384",  # ECDHE, CBC with SHA-2
        "DHE-RSA-AES128-GCM-SHA256",  # finite-field DHE
    ],
)
def test_tls12_offers_only_ecdhe_aead_suites(
    ca: trustme.CA, server_ctx: ssl.SSLContext, suite: str
) -> None:
    result = handshake(server_ctx, client(ca, maximum=ssl.TLSVersion.TLSv1_2, ciphers=suite))
    assert result.version is None
    assert isinstance(result.server_error, ssl.SSLError)
    assert result.server_error.reason == "NO_SHARED_CIPHER"


def test_tls12_suite_list_is_ecdhe_aead_only(server_ctx: ssl.SSLContext) -> None:
    tls12 = [c for c in server_ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12
    for cipher in tls12:
        assert cipher["kea"] == "kx-ecdhe", cipher["name"]
        assert cipher["aead"], cipher["name"]
    assert TLS12_CIPHERS == "ECDHE+AESGCM:ECDHE+CHACHA20"


@pytest.mark.parametrize("suite", [ECDSA_SUITE, RSA_SUITE, "ECDHE-RSA-CHACHA20-POLY1305"])
def test_tls12_ecdhe_aead_suites_work(
    ca: trustme.CA, server_ctx: ssl.SSLContext, suite: str
) -> None:
    result = handshake(server_ctx, client(ca, maximum=ssl.TLSVersion.TLSv1_2, ciphers=suite))
    assert result.version == "TLSv1.2"
    assert result.cipher == suite


# --- two certificates ------------------------------------------------------------------------


@pytest.mark.parametrize(("suite", "kind"), [(ECDSA_SUITE, "ecdsa"), (RSA_SUITE, "rsa")])
def test_client_gets_the_certificate_its_suite_needs(
    ca: trustme.CA,
    certs: dict[str, Issued],
    server_ctx: ssl.SSLContext,
    suite: str,
    kind: str,
) -> None:
    result = handshake(server_ctx, client(ca, maximum=ssl.TLSVersion.TLSv1_2, ciphers=suite))
    assert result.cipher == suite
    assert result.peer_der == certs[kind].der


def test_missing_file_is_named(tmp_path: Path, certs: dict[str, Issued]) -> None:
    missing = tmp_path / "nope.key"
    with pytest.raises(TlsConfigError, match=f"^{missing}: file not found$"):
        build_context([Pair(certs["rsa"].pair.cert, missing)])


def test_mismatched_key_is_refused(certs: dict[str, Issued]) -> None:
    pair = Pair(certs["rsa"].pair.cert, certs["ecdsa"].pair.key)
    with pytest.raises(TlsConfigError, match="cannot load") as excinfo:
        build_context([pair])
    assert "\n" not in str(excinfo.value)
    assert str(pair.cert) in str(excinfo.value)


# --- reload ----------------------------------------------------------------------------------


def test_reload_without_changes_keeps_the_context(ca: trustme.CA, tmp_path: Path) -> None:
    issued = write_cert(ca, tmp_path, "cert", trustme.KeyType.ECDSA)
    holder = TlsContextHolder([issued.pair])
    before = holder.context
    assert not holder.changed()
    assert holder.reload() is False
    assert holder.context is before


def test_reload_serves_rewritten_files(ca: trustme.CA, tmp_path: Path) -> None:
    old = write_cert(ca, tmp_path / "old", "cert", trustme.KeyType.ECDSA)
    new = write_cert(ca, tmp_path / "new", "cert", trustme.KeyType.ECDSA)
    live = Pair(tmp_path / "cert.pem", tmp_path / "key.pem")
    live.cert.write_bytes(old.pair.cert.read_bytes())
    live.key.write_bytes(old.pair.key.read_bytes())
    holder = TlsContextHolder([live])
    assert handshake(holder.context, client(ca)).peer_der == old.der

    replace_file(live.key, new.pair.key.read_bytes())
    replace_file(live.cert, new.pair.cert.read_bytes())
    assert holder.changed()
    assert holder.reload() is True
    assert not holder.changed()
    assert handshake(holder.context, client(ca)).peer_der == new.der
    assert holder.reload() is False


def test_forced_reload_rebuilds(ca: trustme.CA, tmp_path: Path) -> None:
    issued = write_cert(ca, tmp_path, "cert", trustme.KeyType.ECDSA)
    holder = TlsContextHolder([issued.pair])
    before = holder.context
    assert holder.reload(force=True) is True
    assert holder.context is not before


def test_broken_file_keeps_the_old_context(ca: trustme.CA, tmp_path: Path) -> None:
    issued = write_cert(ca, tmp_path, "cert", trustme.KeyType.ECDSA)
    good_key = issued.pair.key.read_bytes()
    holder = TlsContextHolder([issued.pair])
    before = holder.context

    replace_file(issued.pair.key, b"-----BEGIN PRIVATE KEY-----\nbroken\n")
    with pytest.raises(TlsConfigError, match="cannot load"):
        holder.reload()
    assert holder.context is before
    assert handshake(holder.context, client(ca)).peer_der == issued.der
    assert holder.changed()  # the failed reload is retried on the next check

    replace_file(issued.pair.key, good_key)
    assert holder.reload() is True
    assert handshake(holder.context, client(ca)).peer_der == issued.der


def test_deleted_file_keeps_the_old_context(ca: trustme.CA, tmp_path: Path) -> None:
    issued = write_cert(ca, tmp_path, "cert", trustme.KeyType.RSA)
    holder = TlsContextHolder([issued.pair])
    before = holder.context
    issued.pair.cert.unlink()
    assert holder.changed()
    with pytest.raises(TlsConfigError, match="file not found"):
        holder.reload()
    assert holder.context is before


# --- session resumption ----------------------------------------------------------------------


@pytest.mark.parametrize("maximum", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_second_connection_resumes(
    ca: trustme.CA, server_ctx: ssl.SSLContext, maximum: ssl.TLSVersion
) -> None:
    ctx = client(ca, maximum=maximum)
    first = handshake(server_ctx, ctx)
    assert first.session is not None
    assert not first.reused
    second = handshake(server_ctx, ctx, session=first.session)
    assert second.error is None
    assert second.reused
    assert second.version == first.version


def test_describe_without_tls() -> None:
    assert describe(None) == ("unknown", "unknown", 0)


def test_one_session_ticket_per_tls13_handshake(server_ctx: ssl.SSLContext) -> None:
    # A mail client resumes one connection at a time; OpenSSL's default is two tickets.
    assert server_ctx.num_tickets == 1
    assert not server_ctx.options & ssl.OP_NO_TICKET
