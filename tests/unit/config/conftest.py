"""Shared by the config tests: a directory with a valid key pair, and small config-file helpers.

The bad configs, one file per rule, live in tests/configs/bad/ with their expected messages.
"""

import dataclasses
from pathlib import Path

import pytest

from sendgate.certs import generate_self_signed

# The schema's default listening address (all IPv4 interfaces).
ANY_V4 = "0.0.0.0"  # noqa: S104
CERTIFICATES = '\n[tls]\ncertificates = [{ cert = "cert.pem", key = "key.pem" }]\n'
MINIMAL = 'hostname = "mail.example.com"\n' + CERTIFICATES


@pytest.fixture
def pair_dir(tmp_path: Path) -> Path:
    """A directory holding a valid ECDSA pair as cert.pem and key.pem (key mode 0600)."""
    generate_self_signed("mail.example.com", tmp_path / "cert.pem", tmp_path / "key.pem")
    return tmp_path


def write_config(directory: Path, text: str, name: str = "sendgate.toml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def leaf_keys(cls: type, prefix: str = "") -> set[str]:
    """Every dotted setting key of a schema dataclass, found through the public dataclasses."""
    keys = set()
    for entry in dataclasses.fields(cls):
        dotted = f"{prefix}.{entry.name}" if prefix else entry.name
        if isinstance(entry.type, type) and dataclasses.is_dataclass(entry.type):
            keys |= leaf_keys(entry.type, dotted)
        else:
            keys.add(dotted)
    return keys
