"""Tests for sendgate.config.render: the example file, docs/config.md and `-m sendgate.config`."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.unit.config.conftest import MINIMAL, leaf_keys, write_config

import sendgate
from sendgate.config.kinds import HostPort
from sendgate.config.load import load_config
from sendgate.config.render import render_docs, render_example
from sendgate.config.schema import Config
from sendgate.config.unsafe import unsafe_settings

DOCS = Path(__file__).parents[3] / "docs" / "config.md"


def _toml_keys(table: dict[str, object], prefix: str = "") -> set[str]:
    keys = set()
    for name, value in table.items():
        dotted = f"{prefix}.{name}" if prefix else name
        keys |= _toml_keys(value, dotted) if isinstance(value, dict) else {dotted}
    return keys


def test_render_example_loads_back_with_the_given_values(pair_dir: Path) -> None:
    text = render_example(
        "mail.example.com", ["127.0.0.1:0", "[::1]:0"], ["127.0.0.1:0"], "cert.pem", "key.pem"
    )

    config = load_config(write_config(pair_dir, text))

    assert config.hostname == "mail.example.com"
    assert config.listen.submission == (HostPort("127.0.0.1", 0), HostPort("::1", 0))
    assert config.listen.submissions == (HostPort("127.0.0.1", 0),)
    assert config.tls.certificates[0].cert == pair_dir / "cert.pem"
    assert unsafe_settings(config) == []


def test_render_example_holds_every_setting_at_its_default(pair_dir: Path) -> None:
    text = render_example(
        "mail.example.com", ["0.0.0.0:587"], ["0.0.0.0:465"], "cert.pem", "key.pem"
    )
    example = load_config(write_config(pair_dir, text, name="example.toml"))
    minimal = load_config(write_config(pair_dir, MINIMAL))

    assert _toml_keys(tomllib.loads(text)) == leaf_keys(Config)
    assert example == minimal


def test_render_example_escapes_strings(pair_dir: Path) -> None:
    text = render_example("mail.example.com", ["0.0.0.0:587"], [], 'c"\\\n.pem', "k.pem")

    assert tomllib.loads(text)["tls"]["certificates"][0]["cert"] == 'c"\\\n.pem'


def test_render_example_comments_every_setting_with_its_doc() -> None:
    text = render_example("mail.example.com", ["0.0.0.0:587"], ["0.0.0.0:465"], "c", "k")
    lines = text.splitlines()
    assert all(len(line) <= 100 for line in lines)

    settings = [index for index, line in enumerate(lines) if line and line[0] not in "#["]
    assert len(settings) == len(leaf_keys(Config))
    for index in settings:
        start = index
        while lines[start - 1].startswith("# "):
            start -= 1
        comment = " ".join(line[2:] for line in lines[start:index])
        assert index - start >= 2, lines[index]
        assert "default " in comment or "required" in comment, lines[index]


def test_docs_config_md_is_current() -> None:
    assert DOCS.is_file(), "docs/config.md is missing: python -m sendgate.config > docs/config.md"
    assert DOCS.read_text() == render_docs(), (
        "docs/config.md is stale; regenerate it: python -m sendgate.config > docs/config.md"
    )


def test_docs_list_every_setting_and_override() -> None:
    docs = render_docs()

    for key in leaf_keys(Config):
        assert f"| `{key}` |" in docs, key
    for override in ("plaintext_auth", "tls_below_1_2", "no_auth", "world_readable_key"):
        assert f"| `{override}` |" in docs, override


def test_running_the_module_prints_the_docs() -> None:
    src = Path(sendgate.__file__).parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "sendgate.config"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(src)},
    )

    assert result.stdout == render_docs()
