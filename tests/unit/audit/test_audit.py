"""`run_audit` on instances made by `init_instance`, one fixture per finding code.

Certificates come from trustme; the "system" CA store is a file holding the test CA (or not),
so that chain verification is judged the way it is on a real machine.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme
from argon2 import PasswordHasher

from sendgate.audit import Listener, run_audit
from sendgate.config.load import load_config
from sendgate.config.schema import Config
from sendgate.dkim.keys import generate_key
from sendgate.dkim.rotation import stage_key, switch_key
from sendgate.findings import Finding, Severity
from sendgate.policy.passwords import hash_password, new_hasher
from sendgate.scaffold import init_instance
from sendgate.store.backends import open_stores
from sendgate.store.users import UserRecord

HOSTNAME = "mx.example.test"


@contextlib.contextmanager
def unused_port() -> Iterator[int]:
    """A loopback port nothing listens on: bound, never listening, for the block's span."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


NOW = datetime.now(UTC)


class Setup:
    """One instance: its config file, a CA file to trust, its users."""

    def __init__(self, tmp_path: Path, ca: trustme.CA, *names: str, **dates: datetime) -> None:
        self.ca = ca
        self.roots = tmp_path / "roots.pem"
        ca.cert_pem.write_to_path(str(self.roots))
        files = tmp_path / "files"
        files.mkdir()
        self.cert, self.key = files / "cert.pem", files / "key.pem"
        leaf = ca.issue_cert(*(names or (HOSTNAME,)), **dates)  # type: ignore[arg-type]
        leaf.cert_chain_pems[0].write_to_path(str(self.cert))
        leaf.private_key_pem.write_to_path(str(self.key))
        self.key.chmod(0o600)
        self.path = init_instance(
            tmp_path / "sg",
            hostname=HOSTNAME,
            submission="127.0.0.1:0",
            submissions="127.0.0.1:0",
            cert=self.cert,
            key=self.key,
        )
        self.users: list[UserRecord] = []

    @property
    def cfg(self) -> Config:
        return load_config(self.path)

    def edit(self, old: str, new: str) -> None:
        text = self.path.read_text()
        assert text.count(old) == 1, old
        self.path.write_text(text.replace(old, new))

    def add_user(self, name: str, hasher: PasswordHasher, *, address: bool = True) -> None:
        """A user who sends as its own name, or (`address=False`) as nothing."""
        stores = open_stores(self.cfg)
        try:
            stores.users.add_user(name, hash_password(hasher, "a long enough password 1"))
            if not address:
                stores.users.remove_address(name, name)
            self.users = stores.users.list_users()
        finally:
            stores.close()

    def audit(self, listeners: list[Listener] | None = None) -> dict[str, Finding]:
        found = run_audit(self.cfg, self.path, self.users, NOW, listeners or [], roots=self.roots)
        codes = [finding.code for finding in found]
        assert len(codes) == len(set(codes)), codes  # one finding per code in these fixtures
        return {finding.code: finding for finding in found}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def setup(tmp_path: Path, ca: trustme.CA) -> Setup:
    return Setup(tmp_path, ca)


def test_a_good_installation_has_no_finding(setup: Setup) -> None:
    assert setup.audit() == {}


def test_users_need_strong_hashes_addresses_and_dkim_keys(setup: Setup) -> None:
    setup.add_user("alice@example.org", new_hasher())
    assert setup.audit() == {
        "audit.dkim_key_missing": Finding(
            "audit.dkim_key_missing",
            Severity.WARNING,
            "mail from example.org goes out unsigned: no DKIM key for it",
            "users send as example.org; keys exist for: none",
            "sendgate --config FILE dkim keygen example.org, then publish the record it prints",
        )
    }
    generate_key(setup.cfg.dkim.key_dir, "example.org", "s1", "ed25519")
    assert setup.audit() == {}
    weak = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    setup.add_user("bob@example.org", weak, address=False)
    found = setup.audit()
    assert set(found) == {"audit.weak_password_hash", "audit.user_without_address"}
    assert found["audit.weak_password_hash"].evidence == "bob@example.org (id, m=8, t=1)"
    assert found["audit.user_without_address"].evidence == "bob@example.org"


def test_a_broken_dkim_key_is_critical(setup: Setup) -> None:
    domain_dir = setup.cfg.dkim.key_dir / "example.org"
    domain_dir.mkdir(parents=True)
    (domain_dir / "s1.rsa.key").write_text("not a key")
    (domain_dir / "s1.rsa.key").chmod(0o600)
    found = setup.audit()
    assert found["audit.dkim_key_broken"].severity is Severity.CRITICAL


def test_a_rotation_left_half_way_is_named(setup: Setup) -> None:
    key_dir = setup.cfg.dkim.key_dir
    generate_key(key_dir, "example.org", "s1", "ed25519")
    stage_key(key_dir, "example.org", None, "s2", NOW.timestamp())
    assert setup.audit() == {
        "audit.dkim_key_staged": Finding(
            "audit.dkim_key_staged",
            Severity.INFO,
            "a staged ed25519 key for example.org waits for its switch",
            "selector s2: nothing signs with it yet",
            "publish its record, check with `sendgate dns example.org --check`, then "
            "`sendgate dkim switch example.org`",
        )
    }
    switch_key(key_dir, "example.org", None, 3600.0, NOW.timestamp() - 7200)
    assert setup.audit() == {
        "audit.dkim_retired_record_over": Finding(
            "audit.dkim_retired_record_over",
            Severity.INFO,
            "the retired DKIM record s1._domainkey.example.org may go",
            "it was to stay published until "
            + (NOW - timedelta(hours=1)).strftime("%Y-%m-%d %H:%M UTC"),
            "remove it from DNS, then run `sendgate dkim prune`",
        )
    }
    (key_dir / "example.org" / "retired" / "s1.ed25519.record").write_text("{")
    found = setup.audit()
    assert list(found) == ["audit.dkim_rotation_broken"]
    assert found["audit.dkim_rotation_broken"].severity is Severity.WARNING
    assert (
        "s1.ed25519.record: not a readable retired DKIM record"
        in found["audit.dkim_rotation_broken"].message
    )


@pytest.mark.parametrize(
    ("days", "code", "severity"),
    [
        (-2, "audit.cert_expired", Severity.CRITICAL),
        (10, "audit.cert_expires_soon", Severity.WARNING),
    ],
)
def test_certificate_dates(
    tmp_path: Path, ca: trustme.CA, days: int, code: str, severity: Severity
) -> None:
    setup = Setup(
        tmp_path, ca, not_before=NOW - timedelta(days=90), not_after=NOW + timedelta(days=days)
    )
    found = setup.audit()
    assert set(found) == {code}
    assert found[code].severity is severity
    assert found[code].message.startswith(f"{setup.cert}: the certificate ")


def test_a_certificate_for_another_name(tmp_path: Path, ca: trustme.CA) -> None:
    setup = Setup(tmp_path, ca, "other.example.test")
    found = setup.audit()
    assert set(found) == {"audit.cert_name_mismatch"}
    assert (
        found["audit.cert_name_mismatch"].evidence == "names in the certificate: other.example.test"
    )


def test_an_untrusted_or_self_signed_certificate(tmp_path: Path, ca: trustme.CA) -> None:
    setup = Setup(tmp_path, ca)
    trustme.CA().cert_pem.write_to_path(str(setup.roots))  # a store without our CA
    found = setup.audit()
    assert set(found) == {"audit.cert_untrusted"}
    (tmp_path / "self").mkdir()
    own = init_instance(
        tmp_path / "self" / "sg", hostname=HOSTNAME, submission="127.0.0.1:0",
        submissions="127.0.0.1:0",
    )  # fmt: skip
    setup.path = own
    found = setup.audit()
    assert found["audit.cert_untrusted"].message.endswith("it is self-signed")


def test_a_key_that_does_not_match(setup: Setup, ca: trustme.CA) -> None:
    cfg = setup.cfg
    ca.issue_cert(HOSTNAME).private_key_pem.write_to_path(str(setup.key))  # replaced after load
    found = run_audit(cfg, setup.path, [], NOW, [], roots=setup.roots)
    assert [f.code for f in found] == ["audit.cert_key_mismatch"]


def test_an_unreadable_certificate(setup: Setup) -> None:
    cfg = setup.cfg
    setup.cert.unlink()
    found = run_audit(cfg, setup.path, [], NOW, [], roots=setup.roots)
    assert [f.code for f in found] == ["audit.cert_unreadable"]
    assert (
        found[0].message == f"{setup.cert}: cannot read the certificate: No such file or directory"
    )


def test_unsafe_settings_allowed_or_not(setup: Setup) -> None:
    setup.edit("allow_plaintext = false", "allow_plaintext = true")
    setup.edit("unsafe_overrides = []", 'unsafe_overrides = ["plaintext_auth"]')
    found = setup.audit()
    assert set(found) == {"audit.unsafe_override"}
    assert found["audit.unsafe_override"].severity is Severity.WARNING
    cfg = setup.cfg
    setup.key.chmod(0o644)  # not allowed: serve (and loading the file) would refuse it now
    found = {f.code: f for f in run_audit(cfg, setup.path, [], NOW, [], roots=setup.roots)}
    assert found["audit.unsafe_setting"].severity is Severity.CRITICAL
    assert "serve refuses to start" in found["audit.unsafe_setting"].message


def test_file_permissions_and_owners(setup: Setup) -> None:
    setup.add_user("alice@example.org", new_hasher())
    generate_key(setup.cfg.dkim.key_dir, "example.org", "s1", "ed25519")
    setup.path.chmod(0o666)
    (setup.cfg.data_dir / "users.db").chmod(0o644)
    setup.cfg.dkim.key_dir.chmod(0o777)
    found = setup.audit()
    assert {code: f.severity for code, f in found.items()} == {
        "audit.config_writable": Severity.CRITICAL,
        "audit.users_readable": Severity.WARNING,
        "audit.dkim_dir_writable": Severity.CRITICAL,
    }
    assert found["audit.config_writable"].fix == f"chmod 0644 {setup.path}"
    assert found["audit.users_readable"].fix == f"chmod 0640 {setup.cfg.data_dir / 'users.db'}"


def test_a_file_owned_by_another_user(setup: Setup) -> None:
    os.chown(setup.path, 4321, -1)
    found = setup.audit()
    assert found["audit.file_owner"].message.startswith(f"{setup.path} belongs to another user")


def test_secrets_readable_by_everyone(setup: Setup, tmp_path: Path) -> None:
    secret = tmp_path / "relay-password"
    secret.write_text("hunter2hunter2")
    secret.chmod(0o644)
    setup.edit(
        "routes = []\n",
        'routes = [{ domains = ["*"], smarthost = "127.0.0.1:2525", tls = "none", '
        f'username = "u", password_file = "{secret}" }}]\n',
    )
    found = setup.audit()
    assert found["audit.secret_readable"].message == (
        f"{secret} is readable by every user (a smarthost password)"
    )


@pytest.mark.parametrize(
    ("old", "new", "code", "evidence"),
    [
        ("host_failures = 10", "host_failures = 40", "audit.limit_weakened",
         "login_limits.host_failures = 40 (default 10)"),
        ("ban_time = 900\n", "ban_time = 60\n", "audit.limit_weakened",
         "login_limits.ban_time = 60 (default 900)"),
        ("unauthenticated_rate_per_ip = 120", "unauthenticated_rate_per_ip = 0", "audit.limit_off",
         "limits.unauthenticated_rate_per_ip = 0 (default 120)"),
        ("messages_per_day = 1000", "messages_per_day = 0", "audit.limit_off",
         "sending_limits.messages_per_day = 0 (default 1000)"),
        ("allow = []", 'allow = ["10.0.0.0/8"]', "audit.login_exempt_too_wide",
         "login_limits.allow includes 10.0.0.0/8 (16777216 addresses)"),
    ],
)  # fmt: skip
def test_weakened_defences(setup: Setup, old: str, new: str, code: str, evidence: str) -> None:
    setup.edit(old, new)
    found = setup.audit()
    assert set(found) == {code}
    assert found[code].evidence == evidence


def test_limits_just_under_weakened_are_fine(setup: Setup) -> None:
    setup.edit("host_failures = 10", "host_failures = 39")
    setup.edit("allow = []", 'allow = ["192.0.2.0/24", "2001:db8::/48"]')
    assert setup.audit() == {}


def test_a_listener_that_does_not_answer(setup: Setup) -> None:
    with unused_port() as port:
        found = setup.audit([Listener("0.0.0.0", port, False)])  # noqa: S104 (probed on loopback)
    finding = found["audit.listener_down"]
    assert (finding.severity, finding.message) == (
        Severity.INFO,
        f"127.0.0.1:{port} did not answer the live probe",
    )
    assert finding.evidence.startswith(f"cannot connect to 127.0.0.1:{port}: ")
    assert setup.audit([Listener("127.0.0.1", 0, True)]) == {}  # port 0: only serve knows it
