"""How the config loader names the spot of a problem and shows the values it read, in one line.

`Where` is the file, the dotted key and the directory relative paths start from; its `error`
makes the one-line ConfigError that names them. The other functions write values back as text:
quoted and shortened after "got" in errors, and as TOML literals in the generated example file.

Security: values echoed here come from the config file. Anything unprintable is escaped and
long values are cut, so that an error message is always one short line.
"""

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from sendgate.errors import ConfigError

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ECHO_LIMIT = 60
_SHORT_ESCAPES = MappingProxyType({"\n": "\\n", "\r": "\\r", "\t": "\\t"})


@dataclass(frozen=True, slots=True)
class Where:
    """The config file, the dotted key being read, and the directory relative paths start from."""

    file: str
    key: str
    base_dir: Path

    def child(self, name: str) -> "Where":
        shown = name if _BARE_KEY.fullmatch(name) else quote(name)
        return dataclasses.replace(self, key=f"{self.key}.{shown}" if self.key else shown)

    def item(self, index: int) -> "Where":
        return dataclasses.replace(self, key=f"{self.key}[{index}]")

    def at(self, key: str) -> "Where":
        """The same file, at another dotted key (given as shown, already quoted)."""
        return dataclasses.replace(self, key=key)

    def error(self, problem: str) -> ConfigError:
        if self.key:
            return ConfigError(f"{self.file}: {self.key}: {problem}")
        return ConfigError(f"{self.file}: {problem}")


def toml_string(text: str) -> str:
    """A TOML basic string; anything unprintable is escaped, so the result is also one line."""
    escaped = []
    for char in text:
        if char in '"\\':
            escaped.append("\\" + char)
        elif char in _SHORT_ESCAPES:
            escaped.append(_SHORT_ESCAPES[char])
        elif char.isprintable():
            escaped.append(char)
        elif ord(char) <= 0xFFFF:
            escaped.append(f"\\u{ord(char):04X}")
        else:
            escaped.append(f"\\U{ord(char):08X}")
    return '"' + "".join(escaped) + '"'


def quote(text: str) -> str:
    """`text` as a TOML string for an error message, cut after 60 characters."""
    if len(text) > _ECHO_LIMIT:
        return toml_string(text[:_ECHO_LIMIT]) + "..."
    return toml_string(text)


def show_path(path: Path | str) -> str:
    """A path as written in errors: as is when printable, else quoted."""
    text = str(path)
    return text if text.isprintable() else quote(text)


def number(value: float) -> str:
    """A number as TOML writes it; whole floats without ".0"."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def shown(raw: object) -> str:
    """How a value read from TOML is echoed after "got"."""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, int | float):
        text = number(raw)
        return text if len(text) <= 20 else text[:20] + "..."
    if isinstance(raw, str):
        return quote(raw)
    if isinstance(raw, list):
        return "an array"
    if isinstance(raw, dict):
        return "a table"
    return "a date/time"


def toml_value(raw: object) -> str:
    """A TOML literal for a value of the kinds tomllib produces (as a kind's `to_raw` returns)."""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, int | float):
        return number(raw)
    if isinstance(raw, str):
        return toml_string(raw)
    if isinstance(raw, list):
        return "[" + ", ".join(toml_value(item) for item in raw) + "]"
    if isinstance(raw, dict):
        pairs = ", ".join(f"{name} = {toml_value(value)}" for name, value in raw.items())
        return "{ " + pairs + " }"
    raise TypeError(f"no TOML literal for {type(raw).__name__}")
