"""Fixtures of the CLI tests: an instance made by `sendgate init`, a user, its stores."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from tests.peers.dns_server import ZoneServer
from tests.support.cli import Cli

from sendgate.cli import main
from sendgate.config.load import load_config
from sendgate.store.backends import Stores, open_stores

ALICE = "alice@example.org"
PASSWORD = "violet tractor harbour 1987"


@pytest.fixture
def config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    directory = tmp_path / "instance"
    assert main(["init", str(directory), "--hostname", "mx.example.test"]) == 0
    capsys.readouterr()
    return directory / "sendgate.toml"


@pytest.fixture
def cheap_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's argon2id with tiny parameters: the tests check what is stored, not the cost."""

    def new_hasher() -> PasswordHasher:
        return PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)

    monkeypatch.setattr("sendgate.cli.user.new_hasher", new_hasher)
    monkeypatch.setattr("sendgate.cli.user_account.new_hasher", new_hasher)


@pytest.fixture
def cli(
    config: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    cheap_hashing: None,
) -> Cli:
    """The CLI on `config`, with user alice@example.org added."""
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    run = Cli(config, capsys)
    assert run("user", "add", ALICE) == (0, f"added {ALICE}\n", "")
    return run


@pytest.fixture
def stores(config: Path) -> Iterator[Stores]:
    opened = open_stores(load_config(config))
    yield opened
    opened.close()


@pytest.fixture
def zone() -> Iterator[ZoneServer]:
    """A DNS server on loopback for this test."""
    with ZoneServer("127.0.0.1", 0) as server:
        yield server


@pytest.fixture
def resolving_config(config: Path, zone: ZoneServer) -> Path:
    """`config` with `delivery.resolver` pointing at `zone`: the one DNS the commands ask."""
    host, port = zone.nameserver
    text = config.read_text()
    assert text.count("resolver = []") == 1
    config.write_text(text.replace("resolver = []", f'resolver = ["{host}:{port}"]'))
    return config
