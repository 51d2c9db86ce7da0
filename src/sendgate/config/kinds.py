"""The kinds of config values: the rule, the docs text and the TOML form of each setting's value.

A kind is a small frozen object with three methods (the `Kind` protocol): `describe` for
docs/config.md and the example file, `parse` to check a value as tomllib returned it, and
`to_raw` to turn a parsed value back into TOML-shaped data. schema.py attaches one to every
setting with `setting(kind, doc)`. The kinds of arrays of tables (certificates, routes) are in
sections.py, next to the section parser they need. `HostPort`, the value of listening and relay
addresses, lives here with its parser because its kinds need it.

Security: `parse` sees operator input as tomllib returned it and trusts nothing: each kind checks
the Python type first (a TOML `true` is not a count), then the range or grammar, and raises a
one-line ConfigError from `Where`. Host names follow `smtp.address.is_host_name`. The only file
access is `require_file`, which stats a path.
"""

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from sendgate.config.echo import Where, number, quote, show_path, shown, toml_string
from sendgate.smtp.address import is_host_name


@dataclass(frozen=True, slots=True)
class HostPort:
    """A listening address; `host` is an IP literal (IPv6 without brackets) or a host name."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "HostPort":
        """Parse "HOST:PORT" or "[IPV6]:PORT"; raise ValueError with a one-line reason."""
        display = quote(text)
        if text.startswith("["):
            host, bracket, port_text = text[1:].partition("]:")
            if not bracket:
                raise ValueError(f"expected HOST:PORT, got {display}")
            if not is_ipv6(host):
                raise ValueError(f"expected an IPv6 address inside [...], got {display}")
        else:
            host, colon, port_text = text.rpartition(":")
            if not colon or not host:
                raise ValueError(f"expected HOST:PORT, got {display}")
            if ":" in host:
                raise ValueError(
                    f'an IPv6 address needs brackets, as in "[::1]:587", got {display}'
                )
            if not is_ipv4(host) and not is_host_name(host):
                raise ValueError(
                    f"expected an IP address or host name before the port, got {display}"
                )
        if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
            raise ValueError(f"expected a port from 0 to 65535 after the host, got {display}")
        port = int(port_text)
        if port > 65535:
            raise ValueError(f"expected a port from 0 to 65535 after the host, got {display}")
        return cls(host, port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_hostname(text: str) -> str:
    """Return `text` if it is a DNS host name (letters, digits, hyphens); else raise ValueError."""
    if not is_host_name(text):
        raise ValueError(f'expected a host name like "mail.example.com", got {quote(text)}')
    return text


def is_loopback(host: str) -> bool:
    """True for loopback IP literals and "localhost" (which must resolve to loopback)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_ipv4(text: str) -> bool:
    """True for an IPv4 address in dotted-quad form."""
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def is_ipv6(text: str) -> bool:
    """True for an IPv6 address (without brackets or zone)."""
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def require_file(path: Path, where: Where) -> None:
    """Raise ConfigError from `where` unless `path` is a regular file (symlinks followed)."""
    try:
        is_file, exists = path.is_file(), path.exists()
    except OSError as error:
        raise where.error(f"cannot check {show_path(path)}: {error.strerror or error}") from None
    if not is_file:
        problem = "not a regular file" if exists else "file not found"
        raise where.error(f"{problem}: {show_path(path)}")


class Kind(Protocol):
    """The rule of one setting; the loader, the example file and the docs all go through it."""

    def describe(self) -> str:
        """Type and rule, for docs/config.md and the example file."""
        ...

    def parse(self, raw: object, where: Where) -> Any:
        """Validate a value as tomllib returned it; raise ConfigError from `where`."""
        ...

    def to_raw(self, value: Any) -> object:
        """The inverse of parse: the TOML-shaped value (defaults go through parse too)."""
        ...


def setting(kind: Kind, doc: str) -> dict[str, object]:
    """The field metadata of a setting: its kind and its one-line doc."""
    return {"kind": kind, "doc": doc}


@dataclass(frozen=True, slots=True)
class Bool:
    def describe(self) -> str:
        return "boolean"

    def parse(self, raw: object, where: Where) -> bool:
        if not isinstance(raw, bool):
            raise where.error(f"must be true or false, got {shown(raw)}")
        return raw

    def to_raw(self, value: bool) -> object:
        return value


@dataclass(frozen=True, slots=True)
class Int:
    low: int
    high: int

    def describe(self) -> str:
        return f"integer, {self.low} to {self.high}"

    def parse(self, raw: object, where: Where) -> int:
        # bool is a subclass of int, but `true` is not a count.
        if isinstance(raw, bool) or not isinstance(raw, int) or not self.low <= raw <= self.high:
            raise where.error(
                f"must be an integer between {self.low} and {self.high}, got {shown(raw)}"
            )
        return raw

    def to_raw(self, value: int) -> object:
        return value


@dataclass(frozen=True, slots=True)
class Float:
    low: float
    high: float

    def describe(self) -> str:
        return f"number, {number(self.low)} to {number(self.high)}"

    def parse(self, raw: object, where: Where) -> float:
        # Compared before float() so a huge integer cannot overflow; nan fails the comparison.
        if (
            isinstance(raw, bool)
            or not isinstance(raw, int | float)
            or not self.low <= raw <= self.high
        ):
            raise where.error(
                f"must be a number between {number(self.low)} and {number(self.high)}, "
                f"got {shown(raw)}"
            )
        return float(raw)

    def to_raw(self, value: float) -> object:
        return value


@dataclass(frozen=True, slots=True)
class Choice:
    options: tuple[str, ...]

    def describe(self) -> str:
        return "one of " + ", ".join(toml_string(option) for option in self.options)

    def parse(self, raw: object, where: Where) -> str:
        if not isinstance(raw, str) or raw not in self.options:
            raise where.error(f"must be {self.describe()}, got {shown(raw)}")
        return raw

    def to_raw(self, value: str) -> object:
        return value


@dataclass(frozen=True, slots=True)
class Text:
    def describe(self) -> str:
        return "string"

    def parse(self, raw: object, where: Where) -> str:
        if not isinstance(raw, str) or not raw.isprintable():
            raise where.error(f"must be a string of printable characters, got {shown(raw)}")
        return raw

    def to_raw(self, value: str) -> object:
        return value


def _readable_url(url: str) -> bool:
    """Whether urllib reads `url` (a bracket left open, a port that is not a number: no)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsed on access, where a bad port raises
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class StoreUrl:
    """Where a store lives: "local" (this host's files) or the URL of a shared service."""

    schemes: tuple[str, ...]

    def describe(self) -> str:
        return '"local", or a URL (' + ", ".join(f"{scheme}://" for scheme in self.schemes) + ")"

    def parse(self, raw: object, where: Where) -> str:
        if raw == "local":
            return raw
        if not isinstance(raw, str) or not raw.isprintable() or " " in raw:
            # The URL may hold a password: never echo it.
            raise where.error(f"must be {self.describe()}")
        scheme, sep, rest = raw.partition("://")
        if not sep or scheme not in self.schemes or not rest or not _readable_url(raw):
            raise where.error(f"must be {self.describe()}, got a URL of another form")
        return raw

    def to_raw(self, value: str) -> object:
        return value


@dataclass(frozen=True, slots=True)
class Secret:
    def describe(self) -> str:
        return "string (secret)"

    def parse(self, raw: object, where: Where) -> str | None:
        if raw == "":
            return None
        if not isinstance(raw, str) or not raw.isprintable():
            # The value is a secret: never echo it.
            raise where.error("must be a string of printable characters")
        return raw

    def to_raw(self, value: str | None) -> object:
        return value or ""


@dataclass(frozen=True, slots=True)
class HostName:
    def describe(self) -> str:
        return "host name"

    def parse(self, raw: object, where: Where) -> str:
        if not isinstance(raw, str):
            raise where.error(f'expected a host name like "mail.example.com", got {shown(raw)}')
        try:
            return parse_hostname(raw)
        except ValueError as error:
            raise where.error(str(error)) from None

    def to_raw(self, value: str) -> object:
        return value


@dataclass(frozen=True, slots=True)
class PathKind:
    def describe(self) -> str:
        return "path"

    def parse(self, raw: object, where: Where) -> Path:
        if not isinstance(raw, str) or not raw or "\0" in raw:
            raise where.error(f"must be a path, got {shown(raw)}")
        # Joined, not resolved: symlinks such as certbot's live/ links must be kept.
        return where.base_dir / raw

    def to_raw(self, value: Path) -> object:
        return str(value)


@dataclass(frozen=True, slots=True)
class OptionalPath:
    def describe(self) -> str:
        return 'path, or "" for none'

    def parse(self, raw: object, where: Where) -> Path | None:
        if raw == "":
            return None
        return PathKind().parse(raw, where)

    def to_raw(self, value: Path | None) -> object:
        return "" if value is None else str(value)


@dataclass(frozen=True, slots=True)
class HostPortKind:
    def describe(self) -> str:
        return '"HOST:PORT" string'

    def parse(self, raw: object, where: Where) -> HostPort:
        if not isinstance(raw, str):
            raise where.error(f"expected HOST:PORT, got {shown(raw)}")
        try:
            return HostPort.parse(raw)
        except ValueError as error:
            raise where.error(str(error)) from None

    def to_raw(self, value: HostPort) -> object:
        return str(value)


@dataclass(frozen=True, slots=True)
class OptionalHostPort:
    def describe(self) -> str:
        return '"HOST:PORT" string, or "" for none'

    def parse(self, raw: object, where: Where) -> HostPort | None:
        if raw == "":
            return None
        return HostPortKind().parse(raw, where)

    def to_raw(self, value: HostPort | None) -> object:
        return "" if value is None else str(value)


@dataclass(frozen=True, slots=True)
class HostPorts:
    def describe(self) -> str:
        return 'array of "HOST:PORT" strings'

    def parse(self, raw: object, where: Where) -> tuple[HostPort, ...]:
        if not isinstance(raw, list):
            raise where.error(f'must be an array of "HOST:PORT" strings, got {shown(raw)}')
        return tuple(HostPortKind().parse(item, where.item(i)) for i, item in enumerate(raw))

    def to_raw(self, value: tuple[HostPort, ...]) -> object:
        return [str(address) for address in value]


@dataclass(frozen=True, slots=True)
class Domains:
    def describe(self) -> str:
        return 'array of domains; "*" is every domain, ".example.org" its subdomains'

    def parse(self, raw: object, where: Where) -> tuple[str, ...]:
        if not isinstance(raw, list) or not raw:
            raise where.error(f"must be a non-empty array of domains, got {shown(raw)}")
        domains = []
        for index, item in enumerate(raw):
            name = item[1:] if isinstance(item, str) and item.startswith(".") else item
            if not isinstance(item, str) or (item != "*" and not is_host_name(str(name))):
                raise where.item(index).error(
                    f'expected a domain, ".domain" or "*", got {shown(item)}'
                )
            domains.append(item.lower())
        return tuple(domains)

    def to_raw(self, value: tuple[str, ...]) -> object:
        return list(value)


@dataclass(frozen=True, slots=True)
class Overrides:
    """An array of override names, each one of `names` (unsafe.OVERRIDES, passed in by schema)."""

    names: tuple[str, ...]

    def describe(self) -> str:
        return "array of names from " + ", ".join(toml_string(name) for name in self.names)

    def parse(self, raw: object, where: Where) -> tuple[str, ...]:
        if not isinstance(raw, list):
            raise where.error(f"must be an array of override names, got {shown(raw)}")
        for index, item in enumerate(raw):
            if not isinstance(item, str) or item not in self.names:
                raise where.item(index).error(
                    f"unknown override {shown(item)}; known: "
                    + ", ".join(toml_string(name) for name in self.names)
                )
        return tuple(raw)

    def to_raw(self, value: tuple[str, ...]) -> object:
        return list(value)


@dataclass(frozen=True, slots=True)
class Networks:
    """An array of IP networks in CIDR notation ("192.0.2.0/24", "2001:db8::/48"), or addresses."""

    def describe(self) -> str:
        return 'array of networks, "ADDRESS/PREFIX" or a single address'

    def parse(self, raw: object, where: Where) -> tuple[str, ...]:
        if not isinstance(raw, list):
            raise where.error(f"must be an array of networks, got {shown(raw)}")
        networks = []
        for index, item in enumerate(raw):
            try:
                # strict: "192.0.2.7/24" is almost always a typo for a host or the /24.
                network = ipaddress.ip_network(item, strict=True) if isinstance(item, str) else None
            except ValueError:
                network = None
            if network is None:
                raise where.item(index).error(
                    f'expected a network such as "192.0.2.0/24" (host bits zero), got {shown(item)}'
                )
            networks.append(str(network))
        return tuple(networks)

    def to_raw(self, value: tuple[str, ...]) -> object:
        return list(value)


_UNIX_NAME = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")


@dataclass(frozen=True, slots=True)
class LocalAccounts:
    """Local (Unix) users and the account each sends as: "www-data=web@example.org"."""

    def describe(self) -> str:
        return 'array of "UNIXUSER=ACCOUNT" strings'

    def parse(self, raw: object, where: Where) -> tuple[tuple[str, str], ...]:
        if not isinstance(raw, list):
            raise where.error(f'must be an array of "UNIXUSER=ACCOUNT" strings, got {shown(raw)}')
        pairs: dict[str, str] = {}
        for index, item in enumerate(raw):
            user, sep, account = item.partition("=") if isinstance(item, str) else ("", "", "")
            local, at, domain = account.rpartition("@")
            if not (sep and _UNIX_NAME.fullmatch(user) and at and local and is_host_name(domain)):
                raise where.item(index).error(
                    f'expected "UNIXUSER=ACCOUNT" such as "www-data=web@example.org", got '
                    f"{shown(item)}"
                )
            if user in pairs:
                raise where.item(index).error(f"{user} is given twice")
            pairs[user] = account.lower()
        return tuple(pairs.items())

    def to_raw(self, value: tuple[tuple[str, str], ...]) -> object:
        return [f"{user}={account}" for user, account in value]
