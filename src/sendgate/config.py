"""The sendgate configuration: one TOML file read into frozen dataclasses and strictly validated.

The dataclasses below are the schema. Each setting's field carries its default, its rule (a
"kind") and a one-line doc; the loader, the example file written by `sendgate init` and
docs/config.md are all derived from them, so a setting is described in exactly one place.
`python -m sendgate.config` prints the Markdown reference.

Security: the file is operator input, but it is still read as untrusted text. Unknown keys, wrong
types and out-of-range values are refused, never guessed at, and every value echoed in an error is
escaped so that a message stays one line. Settings that weaken security are refused unless named
in `unsafe_overrides` (the unsafe gate). The loader reads the config file and reads and stats the
certificate and key files it names; it writes nothing.
"""

import dataclasses
import difflib
import ipaddress
import os
import re
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from sendgate import certs
from sendgate.errors import ConfigError, TlsConfigError
from sendgate.smtp.address import is_host_name

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_SectionT = TypeVar("_SectionT", bound="DataclassInstance")

# Override name -> what it lets through; the gate and docs/config.md both read this.
_OVERRIDES = (
    ("plaintext_auth", "auth.allow_plaintext = true: AUTH is offered before TLS"),
    ("tls_below_1_2", 'tls.min_version = "1.0" or "1.1": deprecated TLS versions (RFC 8996)'),
    ("no_auth", "auth.required = false: mail is accepted without authentication"),
    ("world_readable_key", "a private key file with any group or other permission bits"),
    ("plaintext_relay", 'a delivery route with tls = "none" to a smarthost that is not loopback'),
)
_RELAY_TLS = ("starttls", "implicit", "none")
_TLS_VERSIONS = ("1.0", "1.1", "1.2", "1.3")
_WEAK_TLS_VERSIONS = ("1.0", "1.1")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_TOML_ERROR_AT = re.compile(r"(.*) \(at line (\d+), column (\d+)\)", re.DOTALL)
_ECHO_LIMIT = 60
_SHORT_ESCAPES = MappingProxyType({"\n": "\\n", "\r": "\\r", "\t": "\\t"})


# --- value types -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostPort:
    """A listening address; `host` is an IP literal (IPv6 without brackets) or a host name."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "HostPort":
        """Parse "HOST:PORT" or "[IPV6]:PORT"; raise ValueError with a one-line reason."""
        shown = _quote(text)
        if text.startswith("["):
            host, bracket, port_text = text[1:].partition("]:")
            if not bracket:
                raise ValueError(f"expected HOST:PORT, got {shown}")
            if not _is_ipv6(host):
                raise ValueError(f"expected an IPv6 address inside [...], got {shown}")
        else:
            host, colon, port_text = text.rpartition(":")
            if not colon or not host:
                raise ValueError(f"expected HOST:PORT, got {shown}")
            if ":" in host:
                raise ValueError(f'an IPv6 address needs brackets, as in "[::1]:587", got {shown}')
            if not _is_ipv4(host) and not is_host_name(host):
                raise ValueError(
                    f"expected an IP address or host name before the port, got {shown}"
                )
        if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
            raise ValueError(f"expected a port from 0 to 65535 after the host, got {shown}")
        port = int(port_text)
        if port > 65535:
            raise ValueError(f"expected a port from 0 to 65535 after the host, got {shown}")
        return cls(host, port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_hostname(text: str) -> str:
    """Return `text` if it is a DNS host name (letters, digits, hyphens); else raise ValueError."""
    if not is_host_name(text):
        raise ValueError(f'expected a host name like "mail.example.com", got {_quote(text)}')
    return text


def is_loopback(host: str) -> bool:
    """True for loopback IP literals and "localhost" (which must resolve to loopback)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


# --- where an error is, and how values are shown -----------------------------------------------


@dataclass(frozen=True, slots=True)
class _Where:
    """The config file, the dotted key being read, and the directory relative paths start from."""

    file: str
    key: str
    base_dir: Path

    def child(self, name: str) -> "_Where":
        shown = name if _BARE_KEY.fullmatch(name) else _quote(name)
        return dataclasses.replace(self, key=f"{self.key}.{shown}" if self.key else shown)

    def item(self, index: int) -> "_Where":
        return dataclasses.replace(self, key=f"{self.key}[{index}]")

    def error(self, problem: str) -> ConfigError:
        if self.key:
            return ConfigError(f"{self.file}: {self.key}: {problem}")
        return ConfigError(f"{self.file}: {problem}")


def _toml_string(text: str) -> str:
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


def _quote(text: str) -> str:
    if len(text) > _ECHO_LIMIT:
        return _toml_string(text[:_ECHO_LIMIT]) + "..."
    return _toml_string(text)


def _show_path(path: Path | str) -> str:
    text = str(path)
    return text if text.isprintable() else _quote(text)


def _number(value: float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _describe(raw: object) -> str:
    """How a value read from TOML is echoed after "got"."""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, int | float):
        text = _number(raw)
        return text if len(text) <= 20 else text[:20] + "..."
    if isinstance(raw, str):
        return _quote(raw)
    if isinstance(raw, list):
        return "an array"
    if isinstance(raw, dict):
        return "a table"
    return "a date/time"


def _toml_value(raw: object) -> str:
    """A TOML literal for a value of the kinds tomllib produces (as returned by `to_raw`)."""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, int | float):
        return _number(raw)
    if isinstance(raw, str):
        return _toml_string(raw)
    if isinstance(raw, list):
        return "[" + ", ".join(_toml_value(item) for item in raw) + "]"
    if isinstance(raw, dict):
        pairs = ", ".join(f"{name} = {_toml_value(value)}" for name, value in raw.items())
        return "{ " + pairs + " }"
    raise TypeError(f"no TOML literal for {type(raw).__name__}")


# --- kinds: the rule for each setting ----------------------------------------------------------


class _Kind(Protocol):
    def describe(self) -> str:
        """Type and rule, for docs/config.md and the example file."""
        ...

    def parse(self, raw: object, where: _Where) -> Any:
        """Validate a value as tomllib returned it; raise ConfigError from `where`."""
        ...

    def to_raw(self, value: Any) -> object:
        """The inverse of parse: the TOML-shaped value (defaults go through parse too)."""
        ...


@dataclass(frozen=True, slots=True)
class _Bool:
    def describe(self) -> str:
        return "boolean"

    def parse(self, raw: object, where: _Where) -> bool:
        if not isinstance(raw, bool):
            raise where.error(f"must be true or false, got {_describe(raw)}")
        return raw

    def to_raw(self, value: bool) -> object:
        return value


@dataclass(frozen=True, slots=True)
class _Int:
    low: int
    high: int

    def describe(self) -> str:
        return f"integer, {self.low} to {self.high}"

    def parse(self, raw: object, where: _Where) -> int:
        # bool is a subclass of int, but `true` is not a count.
        if isinstance(raw, bool) or not isinstance(raw, int) or not self.low <= raw <= self.high:
            raise where.error(
                f"must be an integer between {self.low} and {self.high}, got {_describe(raw)}"
            )
        return raw

    def to_raw(self, value: int) -> object:
        return value


@dataclass(frozen=True, slots=True)
class _Float:
    low: float
    high: float

    def describe(self) -> str:
        return f"number, {_number(self.low)} to {_number(self.high)}"

    def parse(self, raw: object, where: _Where) -> float:
        # Compared before float() so a huge integer cannot overflow; nan fails the comparison.
        if (
            isinstance(raw, bool)
            or not isinstance(raw, int | float)
            or not self.low <= raw <= self.high
        ):
            raise where.error(
                f"must be a number between {_number(self.low)} and {_number(self.high)}, "
                f"got {_describe(raw)}"
            )
        return float(raw)

    def to_raw(self, value: float) -> object:
        return value


@dataclass(frozen=True, slots=True)
class _Choice:
    options: tuple[str, ...]

    def describe(self) -> str:
        return "one of " + ", ".join(_toml_string(option) for option in self.options)

    def parse(self, raw: object, where: _Where) -> str:
        if not isinstance(raw, str) or raw not in self.options:
            raise where.error(f"must be {self.describe()}, got {_describe(raw)}")
        return raw

    def to_raw(self, value: str) -> object:
        return value


@dataclass(frozen=True, slots=True)
class _HostName:
    def describe(self) -> str:
        return "host name"

    def parse(self, raw: object, where: _Where) -> str:
        if not isinstance(raw, str):
            raise where.error(f'expected a host name like "mail.example.com", got {_describe(raw)}')
        try:
            return parse_hostname(raw)
        except ValueError as error:
            raise where.error(str(error)) from None

    def to_raw(self, value: str) -> object:
        return value


@dataclass(frozen=True, slots=True)
class _PathKind:
    def describe(self) -> str:
        return "path"

    def parse(self, raw: object, where: _Where) -> Path:
        if not isinstance(raw, str) or not raw or "\0" in raw:
            raise where.error(f"must be a path, got {_describe(raw)}")
        # Joined, not resolved: symlinks such as certbot's live/ links must be kept.
        return where.base_dir / raw

    def to_raw(self, value: Path) -> object:
        return str(value)


@dataclass(frozen=True, slots=True)
class _HostPorts:
    def describe(self) -> str:
        return 'array of "HOST:PORT" strings'

    def parse(self, raw: object, where: _Where) -> tuple[HostPort, ...]:
        if not isinstance(raw, list):
            raise where.error(f'must be an array of "HOST:PORT" strings, got {_describe(raw)}')
        addresses = []
        for index, item in enumerate(raw):
            if not isinstance(item, str):
                raise where.item(index).error(f"expected HOST:PORT, got {_describe(item)}")
            try:
                addresses.append(HostPort.parse(item))
            except ValueError as error:
                raise where.item(index).error(str(error)) from None
        return tuple(addresses)

    def to_raw(self, value: tuple[HostPort, ...]) -> object:
        return [str(address) for address in value]


@dataclass(frozen=True, slots=True)
class _Overrides:
    def describe(self) -> str:
        return "array of names from " + ", ".join(_toml_string(name) for name, _ in _OVERRIDES)

    def parse(self, raw: object, where: _Where) -> tuple[str, ...]:
        names = [name for name, _ in _OVERRIDES]
        if not isinstance(raw, list):
            raise where.error(f"must be an array of override names, got {_describe(raw)}")
        for index, item in enumerate(raw):
            if not isinstance(item, str) or item not in names:
                raise where.item(index).error(
                    f"unknown override {_describe(item)}; known: "
                    + ", ".join(_toml_string(name) for name in names)
                )
        return tuple(raw)

    def to_raw(self, value: tuple[str, ...]) -> object:
        return list(value)


@dataclass(frozen=True, slots=True)
class _Certificates:
    def describe(self) -> str:
        return 'array of { cert = "PATH", key = "PATH" } tables, at least one'

    def parse(self, raw: object, where: _Where) -> "tuple[CertPair, ...]":
        if not isinstance(raw, list) or not raw:
            raise where.error(
                f'must be an array of at least one {{ cert = "PATH", key = "PATH" }} table, '
                f"got {_describe(raw) if raw != [] else 'an empty array'}"
            )
        pairs: list[CertPair] = []
        key_types: dict[str, int] = {}
        for index, item in enumerate(raw):
            spot = where.item(index)
            pair = _parse_section(CertPair, item, spot)
            for name in ("cert", "key"):
                _require_file(getattr(pair, name), spot.child(name))
            try:
                key_type = certs.check_pair(pair.cert, pair.key)
            except TlsConfigError as error:
                raise spot.error(str(error)) from None
            if key_type in key_types:
                raise spot.error(
                    f"a second {key_type} certificate (the first is "
                    f"{where.item(key_types[key_type]).key}); at most one per key type"
                )
            key_types[key_type] = index
            pairs.append(pair)
        return tuple(pairs)

    def to_raw(self, value: "tuple[CertPair, ...]") -> object:
        return [{"cert": str(pair.cert), "key": str(pair.key)} for pair in value]


@dataclass(frozen=True, slots=True)
class _OptionalPath:
    def describe(self) -> str:
        return 'path, or "" for none'

    def parse(self, raw: object, where: _Where) -> Path | None:
        if raw == "":
            return None
        return _PathKind().parse(raw, where)

    def to_raw(self, value: Path | None) -> object:
        return "" if value is None else str(value)


@dataclass(frozen=True, slots=True)
class _Routes:
    def describe(self) -> str:
        return 'array of { domains = [...], smarthost = "HOST:PORT", ... } tables'

    def parse(self, raw: object, where: _Where) -> "tuple[RouteConfig, ...]":
        if not isinstance(raw, list):
            raise where.error(f"must be an array of route tables, got {_describe(raw)}")
        routes: list[RouteConfig] = []
        claimed: dict[str, str] = {}
        for index, item in enumerate(raw):
            spot = where.item(index)
            route = _parse_section(RouteConfig, item, spot)
            if route.username and route.password is None and route.password_file is None:
                raise spot.error("username needs password or password_file")
            if route.password is not None and route.password_file is not None:
                raise spot.error("give password or password_file, not both")
            if (route.password is not None or route.password_file) and not route.username:
                raise spot.error("a password needs a username")
            if route.password_file is not None:
                _require_file(route.password_file, spot.child("password_file"))
            if route.smarthost.port == 0:
                raise spot.child("smarthost").error("port 0 is not a port to connect to")
            if route.tls == "none" and route.username and not is_loopback(route.smarthost.host):
                raise spot.error(
                    'AUTH with tls = "none" is refused to a smarthost that is not loopback '
                    "(the password would cross the network in clear)"
                )
            for pattern in route.domains:
                if pattern in claimed:
                    raise spot.child("domains").error(
                        f"{_quote(pattern)} is already routed by {claimed[pattern]}"
                    )
                claimed[pattern] = spot.key
            routes.append(route)
        return tuple(routes)

    def to_raw(self, value: "tuple[RouteConfig, ...]") -> object:
        tables = []
        for route in value:
            table: dict[str, object] = {
                "domains": list(route.domains),
                "smarthost": str(route.smarthost),
                "tls": route.tls,
            }
            if route.username:
                table["username"] = route.username
            if route.password_file is not None:
                table["password_file"] = str(route.password_file)
            tables.append(table)
        return tables


@dataclass(frozen=True, slots=True)
class _Domains:
    def describe(self) -> str:
        return 'array of domains; "*" is every domain, ".example.org" its subdomains'

    def parse(self, raw: object, where: _Where) -> tuple[str, ...]:
        if not isinstance(raw, list) or not raw:
            raise where.error(f"must be a non-empty array of domains, got {_describe(raw)}")
        domains = []
        for index, item in enumerate(raw):
            spot = where.item(index)
            name = item[1:] if isinstance(item, str) and item.startswith(".") else item
            if not isinstance(item, str) or (item != "*" and not is_host_name(str(name))):
                raise spot.error(f'expected a domain, ".domain" or "*", got {_describe(item)}')
            domains.append(item.lower())
        return tuple(domains)

    def to_raw(self, value: tuple[str, ...]) -> object:
        return list(value)


@dataclass(frozen=True, slots=True)
class _HostPortKind:
    def describe(self) -> str:
        return '"HOST:PORT" string'

    def parse(self, raw: object, where: _Where) -> HostPort:
        if not isinstance(raw, str):
            raise where.error(f"expected HOST:PORT, got {_describe(raw)}")
        try:
            return HostPort.parse(raw)
        except ValueError as error:
            raise where.error(str(error)) from None

    def to_raw(self, value: HostPort) -> object:
        return str(value)


@dataclass(frozen=True, slots=True)
class _Text:
    def describe(self) -> str:
        return "string"

    def parse(self, raw: object, where: _Where) -> str:
        if not isinstance(raw, str) or not raw.isprintable():
            raise where.error(f"must be a string of printable characters, got {_describe(raw)}")
        return raw

    def to_raw(self, value: str) -> object:
        return value


@dataclass(frozen=True, slots=True)
class _Secret:
    def describe(self) -> str:
        return "string (secret)"

    def parse(self, raw: object, where: _Where) -> str | None:
        if raw == "":
            return None
        if not isinstance(raw, str) or not raw.isprintable():
            # The value is a secret: never echo it.
            raise where.error("must be a string of printable characters")
        return raw

    def to_raw(self, value: str | None) -> object:
        return value or ""


def _require_file(path: Path, where: _Where) -> None:
    try:
        is_file, exists = path.is_file(), path.exists()
    except OSError as error:
        raise where.error(f"cannot check {_show_path(path)}: {error.strerror or error}") from None
    if not is_file:
        problem = "not a regular file" if exists else "file not found"
        raise where.error(f"{problem}: {_show_path(path)}")


def _setting(kind: _Kind, doc: str) -> dict[str, object]:
    return {"kind": kind, "doc": doc}


# --- the schema --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CertPair:
    """A certificate (chain) file and its private key file, as absolute paths after loading."""

    cert: Path = field(
        metadata=_setting(_PathKind(), "Certificate chain file (PEM), server certificate first.")
    )
    key: Path = field(
        metadata=_setting(_PathKind(), "Private key file (PEM, unencrypted) for that certificate.")
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenConfig:
    """Where clients connect."""

    submission: tuple[HostPort, ...] = field(
        # Submission is a public service: listening on every interface is the point.
        default=(HostPort("0.0.0.0", 587),),  # noqa: S104
        metadata=_setting(
            _HostPorts(),
            'STARTTLS listeners (port 587); IPv6 as "[::1]:587"; port 0 takes any free port.',
        ),
    )
    submissions: tuple[HostPort, ...] = field(
        default=(HostPort("0.0.0.0", 465),),  # noqa: S104
        metadata=_setting(_HostPorts(), "Implicit-TLS listeners (port 465, RFC 8314)."),
    )
    workers: int = field(
        default=0,
        metadata=_setting(_Int(0, 64), "Acceptor processes; 0 starts one per CPU core."),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    """Certificates and protocol versions, for STARTTLS and implicit TLS alike."""

    certificates: tuple[CertPair, ...] = field(
        metadata=_setting(
            _Certificates(),
            "Certificate and key files, relative to the config file's directory; "
            "one RSA and one ECDSA pair may be given side by side.",
        ),
    )
    min_version: str = field(
        default="1.2",
        metadata=_setting(
            _Choice(_TLS_VERSIONS),
            'Oldest TLS version accepted; "1.0" and "1.1" need the override "tls_below_1_2".',
        ),
    )
    reload_interval: float = field(
        default=60.0,
        metadata=_setting(
            _Float(0, 86400),
            "Seconds between checks of the certificate files for changes; "
            "0 turns polling off (SIGHUP still reloads).",
        ),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthConfig:
    """How clients authenticate (SMTP AUTH)."""

    required: bool = field(
        default=True,
        metadata=_setting(
            _Bool(),
            'Refuse mail from clients that have not authenticated; false needs "no_auth".',
        ),
    )
    allow_plaintext: bool = field(
        default=False,
        metadata=_setting(
            _Bool(), 'Offer AUTH before TLS is up; true needs the override "plaintext_auth".'
        ),
    )
    cache_ttl: float = field(
        default=300.0,
        metadata=_setting(
            _Float(0, 86400),
            "Seconds a verified login is remembered, to skip argon2; 0 turns the cache off.",
        ),
    )
    verify_threads: int = field(
        default=2,
        metadata=_setting(_Int(1, 64), "Threads per worker for password verification (argon2)."),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig:
    """Sizes, counts and timeouts that bound what clients can use."""

    max_message_size: int = field(
        default=26214400,
        metadata=_setting(
            _Int(1024, 1073741824), "Largest message accepted, in bytes (announced in EHLO SIZE)."
        ),
    )
    max_recipients: int = field(
        default=100, metadata=_setting(_Int(1, 10000), "Most RCPT TO accepted per message.")
    )
    max_errors: int = field(
        default=10,
        metadata=_setting(_Int(1, 1000), "Protocol errors tolerated before the connection closes."),
    )
    command_timeout: float = field(
        default=300.0,
        metadata=_setting(
            _Float(1, 3600),
            "Seconds to wait for the next command (RFC 5321 4.5.3.2.7 asks for at least 300).",
        ),
    )
    session_timeout: float = field(
        default=3600.0,
        metadata=_setting(_Float(1, 86400), "Seconds one connection may last in total."),
    )
    max_connections: int = field(
        default=1000,
        metadata=_setting(
            _Int(1, 1000000), "Simultaneous connections, all workers and listeners together."
        ),
    )
    max_connections_per_ip: int = field(
        default=50,
        metadata=_setting(
            _Int(1, 1000000),
            "Simultaneous connections from one client address (IPv6: one /64); at most "
            "max_connections. Offices behind one NAT address need room.",
        ),
    )
    shutdown_grace: float = field(
        default=30.0,
        metadata=_setting(
            _Float(0, 3600), "Seconds open sessions get to finish when the server stops."
        ),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivacyConfig:
    """What the headers sendgate adds reveal about the sender."""

    received_client_ip: bool = field(
        default=False,
        metadata=_setting(_Bool(), "Put the client's IP address in the Received header."),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    """Log output."""

    format: str = field(
        default="kv",
        metadata=_setting(_Choice(("kv", "json")), "Line format: key=value pairs or JSON."),
    )
    level: str = field(
        default="info",
        metadata=_setting(
            _Choice(("debug", "info", "warning", "error")), "Least severe level written."
        ),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteConfig:
    """Mail for some recipient domains goes through a smarthost instead of their MX hosts."""

    domains: tuple[str, ...] = field(
        metadata=_setting(_Domains(), 'Recipient domains this route serves; "*" for all.')
    )
    smarthost: HostPort = field(metadata=_setting(_HostPortKind(), "The relay, HOST:PORT."))
    tls: str = field(
        default="starttls",
        metadata=_setting(
            _Choice(_RELAY_TLS),
            'TLS to the relay, always with certificate checks; "none" needs "plaintext_relay" '
            "unless the relay is on loopback.",
        ),
    )
    username: str = field(default="", metadata=_setting(_Text(), "AUTH user name, if any."))
    password: str | None = field(
        default=None, repr=False, metadata=_setting(_Secret(), "AUTH password (prefer a file).")
    )
    password_file: Path | None = field(
        default=None,
        metadata=_setting(_OptionalPath(), "File whose first line is the AUTH password."),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryConfig:
    """Delivery after the 250: routes, DNS, retries, bounces and outbound TLS policy."""

    hold: bool = field(
        default=False,
        metadata=_setting(
            _Bool(),
            "Keep accepted mail queued without delivering it (maintenance, or while DNS "
            "and routes are being set up); `sendgate queue` still works.",
        ),
    )
    routes: "tuple[RouteConfig, ...]" = field(
        default=(),
        metadata=_setting(
            _Routes(),
            "Smarthost routes by recipient domain; domains no route names go to their MX hosts.",
        ),
    )
    resolver: tuple[HostPort, ...] = field(
        default=(),
        metadata=_setting(
            _HostPorts(),
            "DNS resolvers as HOST:PORT; empty uses /etc/resolv.conf. DANE needs a validating "
            "resolver (one that sets the AD bit), ideally on loopback.",
        ),
    )
    ca_file: Path | None = field(
        default=None,
        metadata=_setting(
            _OptionalPath(),
            "Extra trusted CA certificates (PEM) for smarthosts and MTA-STS, added to the "
            "system's.",
        ),
    )
    mta_sts: bool = field(
        default=True, metadata=_setting(_Bool(), "Honour MTA-STS policies (RFC 8461).")
    )
    dane: bool = field(
        default=True,
        metadata=_setting(_Bool(), "Honour DANE TLSA records (RFC 7672) that DNSSEC validated."),
    )
    concurrency: int = field(
        default=20, metadata=_setting(_Int(1, 1000), "Simultaneous outbound transactions.")
    )
    domain_concurrency: int = field(
        default=5,
        metadata=_setting(_Int(1, 1000), "Simultaneous transactions to one recipient domain."),
    )
    retry_first: float = field(
        default=300.0,
        metadata=_setting(_Float(1, 86400), "Seconds before the first retry; doubles each time."),
    )
    retry_max: float = field(
        default=7200.0,
        metadata=_setting(_Float(1, 86400), "Longest wait between two attempts, in seconds."),
    )
    queue_lifetime: float = field(
        default=432000.0,
        metadata=_setting(
            _Float(60, 8640000),
            "Seconds a message may stay queued before it is returned to the sender (5 days).",
        ),
    )
    delay_warning: float = field(
        default=14400.0,
        metadata=_setting(
            _Float(0, 8640000),
            "Seconds after which the sender is told once that delivery is delayed; 0 never.",
        ),
    )
    scan_interval: float = field(
        default=5.0,
        metadata=_setting(
            _Float(0.05, 3600),
            "Seconds between scans of the queue for messages not announced by a worker.",
        ),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class DkimConfig:
    """DKIM signing of outgoing mail (keys made by `sendgate dkim keygen DOMAIN`)."""

    key_dir: Path = field(
        default=Path("dkim"),
        metadata=_setting(
            _PathKind(),
            "Directory of signing keys, DOMAIN/SELECTOR.rsa.key and DOMAIN/SELECTOR.ed25519.key; "
            "`sendgate dkim keygen DOMAIN` writes them.",
        ),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole configuration, as returned by `load_config`."""

    hostname: str = field(
        metadata=_setting(
            _HostName(),
            "This server's name (FQDN), used in the banner, EHLO reply, Received and Message-ID.",
        ),
    )
    data_dir: Path = field(
        default=Path("data"),
        metadata=_setting(
            _PathKind(), "Directory for the spool and the local store, relative to this file."
        ),
    )
    unsafe_overrides: tuple[str, ...] = field(
        default=(),
        metadata=_setting(_Overrides(), "Unsafe settings allowed on purpose; logged at start."),
    )
    listen: ListenConfig = field(default_factory=ListenConfig)
    tls: TlsConfig
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    dkim: DkimConfig = field(default_factory=DkimConfig)
    log: LogConfig = field(default_factory=LogConfig)


# --- walking the schema ------------------------------------------------------------------------


def _section_class(setting: "dataclasses.Field[Any]") -> "type[DataclassInstance] | None":
    if "kind" in setting.metadata:
        return None  # a setting whose value happens to be a dataclass (HostPort)
    kind = setting.type
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        return kind
    return None


def _is_required(setting: "dataclasses.Field[Any]") -> bool:
    return setting.default is dataclasses.MISSING and setting.default_factory is dataclasses.MISSING


def _sections(
    cls: "type[DataclassInstance]", prefix: str = ""
) -> Iterator[tuple[str, "type[DataclassInstance]"]]:
    """Each section (the top level first, as "") with its dotted prefix, in schema order."""
    yield prefix, cls
    for setting in fields(cls):
        sub = _section_class(setting)
        if sub is not None:
            yield from _sections(sub, f"{prefix}.{setting.name}" if prefix else setting.name)


def _settings(cls: "type[DataclassInstance]") -> list["dataclasses.Field[Any]"]:
    return [setting for setting in fields(cls) if _section_class(setting) is None]


def _parse_section(cls: type[_SectionT], table: object, where: _Where) -> _SectionT:
    if not isinstance(table, dict):
        raise where.error(f"must be a table, got {_describe(table)}")
    known = {setting.name: setting for setting in fields(cls)}
    values: dict[str, Any] = {}
    # File order first, so the first problem reported is the first one in the file.
    for name, raw in table.items():
        spot = where.child(name)
        setting = known.get(name)
        if setting is None:
            hint = difflib.get_close_matches(name, list(known), n=1)
            raise spot.error("unknown key" + (f' (did you mean "{hint[0]}"?)' if hint else ""))
        values[name] = _parse_value(setting, raw, spot)
    for name, setting in known.items():
        if name in values:
            continue
        spot = where.child(name)
        if _section_class(setting) is not None:
            values[name] = _parse_value(setting, {}, spot)
        elif _is_required(setting):
            raise spot.error("required setting is missing")
        else:
            # Defaults pass through the same kind, so relative paths resolve like given ones.
            kind = setting.metadata["kind"]
            values[name] = kind.parse(kind.to_raw(setting.default), spot)
    return cls(**values)


def _parse_value(setting: "dataclasses.Field[Any]", raw: object, where: _Where) -> Any:
    sub = _section_class(setting)
    if sub is not None:
        return _parse_section(sub, raw, where)
    return setting.metadata["kind"].parse(raw, where)


# --- loading and the unsafe gate ---------------------------------------------------------------


def load_config(path: Path) -> Config:
    """Read, validate and gate a config file; raise ConfigError with one line naming file and key.

    Relative paths in the file are resolved against the file's own directory.
    """
    label = _show_path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{label}: cannot read: {error.strerror or error}") from None
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(f"{label}: not valid UTF-8 (byte {error.start})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(_toml_error(label, str(error))) from None
    except ValueError as error:
        # tomllib lets int()'s digit limit through as a bare ValueError.
        raise ConfigError(f"{label}: invalid TOML: {_quote(str(error))}") from None
    except RecursionError:
        raise ConfigError(f"{label}: invalid TOML: arrays or tables nested too deeply") from None
    where = _Where(label, "", path.absolute().parent)
    config = _parse_section(Config, document, where)
    _check_relations(config, where)
    for override, key, _ in _unsafe_in_use(config):
        if override not in config.unsafe_overrides:
            raise dataclasses.replace(where, key=key).error(
                f'unsafe setting refused; add "{override}" to unsafe_overrides to allow it'
            )
    return config


def unsafe_settings(cfg: Config) -> list[tuple[str, str]]:
    """(override name, description) for each unsafe setting in use, whether allowed or not."""
    return [(override, description) for override, _, description in _unsafe_in_use(cfg)]


def _unsafe_in_use(cfg: Config) -> list[tuple[str, str, str]]:
    """(override, dotted key, description) for each unsafe setting in use."""
    found = []
    if cfg.auth.allow_plaintext:
        found.append(
            (
                "plaintext_auth",
                "auth.allow_plaintext",
                "auth.allow_plaintext = true: AUTH is offered before TLS, "
                "so passwords can cross the network in clear",
            )
        )
    if cfg.tls.min_version in _WEAK_TLS_VERSIONS:
        found.append(
            (
                "tls_below_1_2",
                "tls.min_version",
                f'tls.min_version = "{cfg.tls.min_version}": deprecated TLS versions are accepted',
            )
        )
    if not cfg.auth.required:
        found.append(
            (
                "no_auth",
                "auth.required",
                "auth.required = false: mail is accepted without authentication",
            )
        )
    for index, route in enumerate(cfg.delivery.routes):
        if route.tls == "none" and not is_loopback(route.smarthost.host):
            found.append(
                (
                    "plaintext_relay",
                    f"delivery.routes[{index}].tls",
                    f'delivery.routes[{index}]: tls = "none" to {route.smarthost}: mail and '
                    "passwords cross the network in clear",
                )
            )
    for index, pair in enumerate(cfg.tls.certificates):
        key = f"tls.certificates[{index}].key"
        try:
            mode = os.stat(pair.key).st_mode & 0o777
        except OSError as error:
            raise ConfigError(
                f"{key}: cannot check {_show_path(pair.key)}: {error.strerror or error}"
            ) from None
        if mode & 0o077:
            found.append(
                (
                    "world_readable_key",
                    key,
                    f"{key}: {_show_path(pair.key)} is open to group or others (mode {mode:04o})",
                )
            )
    return found


def _check_relations(cfg: Config, where: _Where) -> None:
    """Rules that involve more than one setting."""
    listen = where.child("listen")
    if not cfg.listen.submission and not cfg.listen.submissions:
        raise listen.error("no listeners; set listen.submission or listen.submissions")
    seen: dict[HostPort, str] = {}
    for name in ("submission", "submissions"):
        for index, address in enumerate(getattr(cfg.listen, name)):
            spot = listen.child(name).item(index)
            # Port 0 means "any free port", so repeats of it do not collide.
            if address.port and address in seen:
                raise spot.error(f"{address} is already used by {seen[address]}")
            seen.setdefault(address, spot.key)
    delivery = cfg.delivery
    if delivery.retry_max < delivery.retry_first:
        raise (
            where.child("delivery")
            .child("retry_max")
            .error(f"must not be less than delivery.retry_first ({_number(delivery.retry_first)})")
        )
    for index, server in enumerate(delivery.resolver):
        if not (_is_ipv4(server.host) or _is_ipv6(server.host)) or server.port == 0:
            raise (
                where.child("delivery")
                .child("resolver")
                .item(index)
                .error(f"expected an IP address and a port from 1 to 65535, got {server}")
            )
    if delivery.ca_file is not None:
        _require_file(delivery.ca_file, where.child("delivery").child("ca_file"))
    limits = cfg.limits
    if limits.max_connections_per_ip > limits.max_connections:
        raise (
            where.child("limits")
            .child("max_connections_per_ip")
            .error(
                f"must not exceed limits.max_connections ({limits.max_connections}), "
                f"got {limits.max_connections_per_ip}"
            )
        )


def _toml_error(label: str, message: str) -> str:
    at = _TOML_ERROR_AT.fullmatch(message)
    if at:
        return f"{label}: line {at[2]}: invalid TOML: {at[1]} (column {at[3]})"
    return f"{label}: invalid TOML: {message}"


# --- generated text ----------------------------------------------------------------------------


def render_example(
    hostname: str,
    submission: list[str],
    submissions: list[str],
    cert: str,
    key: str,
    routes: "tuple[RouteConfig, ...]" = (),
) -> str:
    """A complete, commented sendgate.toml with every setting, the given values filled in.

    Raises ValueError for a malformed HOST:PORT; the caller validates the host name and files.
    """
    given: dict[str, object] = {
        "hostname": hostname,
        "listen.submission": tuple(HostPort.parse(text) for text in submission),
        "listen.submissions": tuple(HostPort.parse(text) for text in submissions),
        "tls.certificates": (CertPair(Path(cert), Path(key)),),
        "delivery.routes": routes,
    }
    lines = [
        "# sendgate configuration, written by `sendgate init`.",
        "# Every setting is listed with its default; docs/config.md is the full reference.",
        "# Relative paths are relative to the directory of this file.",
    ]
    for prefix, cls in _sections(Config):
        if prefix:
            lines += ["", f"[{prefix}]", f"# {cls.__doc__}"]
        for setting in _settings(cls):
            dotted = f"{prefix}.{setting.name}" if prefix else setting.name
            meta = setting.metadata
            value = given.get(dotted, setting.default)
            default = "required" if _is_required(setting) else "default " + _default_text(setting)
            # The default goes first so that wrapping never parts it from its value.
            lines.append("")
            for comment in (meta["doc"], f"{default}; {meta['kind'].describe()}"):
                lines += textwrap.wrap(
                    comment, width=99, initial_indent="# ", subsequent_indent="# "
                )
            lines.append(f"{setting.name} = {_toml_value(meta['kind'].to_raw(value))}")
    return "\n".join(lines) + "\n"


def render_docs() -> str:
    """The Markdown reference of every setting, for docs/config.md."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated from the schema in src/sendgate/config.py by",
        "     `python -m sendgate.config > docs/config.md`; do not edit by hand. -->",
        "",
        "sendgate reads one TOML file, `sendgate.toml` (`sendgate init DIR` writes a commented",
        "one with every setting). Unknown keys, wrong types and values out of range are errors",
        "that name the file and the dotted key. Relative paths are relative to the directory of",
        "the configuration file.",
    ]
    for prefix, cls in _sections(Config):
        lines += ["", f"## [{prefix}]" if prefix else "## Top level", ""]
        if prefix:
            lines += [str(cls.__doc__), ""]
        lines += ["| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]
        for setting in _settings(cls):
            dotted = f"{prefix}.{setting.name}" if prefix else setting.name
            meta = setting.metadata
            default = "required" if _is_required(setting) else f"`{_default_text(setting)}`"
            cells = (f"`{dotted}`", meta["kind"].describe(), default, meta["doc"])
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    lines += [
        "",
        "## Unsafe overrides",
        "",
        "sendgate refuses to start with a setting that weakens security unless the setting's",
        "override is listed in `unsafe_overrides`; the overrides in use are logged at every",
        "start and reported by `sendgate audit`.",
        "",
        "| Override | Allows |",
        "| --- | --- |",
    ]
    lines += [f"| `{name}` | {meaning} |" for name, meaning in _OVERRIDES]
    return "\n".join(lines) + "\n"


def _default_text(setting: "dataclasses.Field[Any]") -> str:
    kind = setting.metadata["kind"]
    return _toml_value(kind.to_raw(setting.default))


if __name__ == "__main__":
    sys.stdout.write(render_docs())
