"""Every file in tests/configs/bad/ must be refused with the exact one-line error it declares.

Each bad config opens with `# expect: <message>`; `{dir}` in the message stands for the directory
the config is loaded from. An optional `# key-mode: <octal>` line sets the mode of the key file.
Each case runs in its own tmp_path holding the config and a valid ECDSA pair, cert.pem and
key.pem, so that every file fails for its one stated reason only.
"""

import os
from pathlib import Path

import pytest

from sendgate.certs import generate_self_signed
from sendgate.config.load import load_config
from sendgate.errors import ConfigError

BAD_DIR = Path(__file__).parent / "bad"
CASES = sorted(BAD_DIR.glob("*.toml"))


def _directives(text: str) -> dict[str, str]:
    """The `# name: value` lines at the top of a bad config."""
    found = {}
    for line in text.splitlines():
        if not line.startswith("# "):
            break
        name, _, value = line[2:].partition(": ")
        found[name] = value
    return found


def test_every_bad_config_declares_its_error() -> None:
    assert len(CASES) >= 40
    for case in CASES:
        assert case.read_text().startswith("# expect: "), case.name


@pytest.mark.parametrize("case", CASES, ids=[case.stem for case in CASES])
def test_bad_config_is_refused_with_its_message(
    case: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = case.read_text()
    directives = _directives(text)
    generate_self_signed("mail.example.com", tmp_path / "cert.pem", tmp_path / "key.pem")
    if "key-mode" in directives:
        os.chmod(tmp_path / "key.pem", int(directives["key-mode"], 8))
    (tmp_path / case.name).write_text(text)
    monkeypatch.chdir(tmp_path)
    expected = directives["expect"].replace("{dir}", str(Path.cwd()))

    with pytest.raises(ConfigError) as caught:
        load_config(Path(case.name))

    assert str(caught.value) == expected
    assert "\n" not in str(caught.value)
