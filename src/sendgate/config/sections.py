"""Reading TOML tables into the schema's dataclasses, and walking the schema for generated texts.

A section is a dataclass whose fields are settings (a field with a `kind` in its metadata) or
sub-sections (a field whose type is another section dataclass). `parse_section` reads one TOML
table into one section; `sections` and `settings` walk the schema for render.py.

The arrays of tables, `Certificates` and `Routes`, are kinds that parse each item as a section,
so they live here rather than in kinds.py. schema.py passes them the section class to build
(`Certificates(CertPair)`, `Routes(RouteConfig)`); the protocols below state what they read of
it, so this module never imports schema.py, which imports it.

Security: tables come from the config file. Unknown keys are errors (with a "did you mean"
hint), never ignored; keys are checked in file order so the first problem reported is the first
in the file. Certificate and key files are opened and checked as a pair (certs.check_pair); a
route's password file is only stat'ed here.
"""

import dataclasses
import difflib
from collections.abc import Iterator
from dataclasses import Field, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from sendgate import certs
from sendgate.config.echo import Where, quote, shown
from sendgate.config.kinds import HostPort, is_loopback, require_file
from sendgate.errors import TlsConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_SectionT = TypeVar("_SectionT", bound="DataclassInstance")


class KeyPairTable(Protocol):
    """What `Certificates` reads of the section it builds for each item (schema.CertPair)."""

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    @property
    def cert(self) -> Path: ...

    @property
    def key(self) -> Path: ...


class RouteTable(Protocol):
    """What `Routes` reads of the section it builds for each item (schema.RouteConfig)."""

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    @property
    def domains(self) -> tuple[str, ...]: ...

    @property
    def smarthost(self) -> HostPort: ...

    @property
    def tls(self) -> str: ...

    @property
    def username(self) -> str: ...

    @property
    def password(self) -> str | None: ...

    @property
    def password_file(self) -> Path | None: ...


def section_class(entry: "Field[Any]") -> "type[DataclassInstance] | None":
    """The section dataclass a field holds, or None when the field is a setting."""
    if "kind" in entry.metadata:
        return None  # a setting whose value happens to be a dataclass (HostPort)
    kind = entry.type
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        return kind
    return None


def is_required(entry: "Field[Any]") -> bool:
    """True for a field without a default: the file must set it."""
    return entry.default is dataclasses.MISSING and entry.default_factory is dataclasses.MISSING


def sections(
    cls: "type[DataclassInstance]", prefix: str = ""
) -> Iterator[tuple[str, "type[DataclassInstance]"]]:
    """Each section (the top level first, as "") with its dotted prefix, in schema order."""
    yield prefix, cls
    for entry in fields(cls):
        sub = section_class(entry)
        if sub is not None:
            yield from sections(sub, f"{prefix}.{entry.name}" if prefix else entry.name)


def settings(cls: "type[DataclassInstance]") -> list["Field[Any]"]:
    """The fields of a section that are settings, in schema order."""
    return [entry for entry in fields(cls) if section_class(entry) is None]


def parse_section(cls: type[_SectionT], table: object, where: Where) -> _SectionT:
    """Read one TOML table into section `cls`; raise ConfigError from `where`."""
    if not isinstance(table, dict):
        raise where.error(f"must be a table, got {shown(table)}")
    known = {entry.name: entry for entry in fields(cls)}
    values: dict[str, Any] = {}
    # File order first, so the first problem reported is the first one in the file.
    for name, raw in table.items():
        spot = where.child(name)
        entry = known.get(name)
        if entry is None:
            hint = difflib.get_close_matches(name, list(known), n=1)
            raise spot.error("unknown key" + (f' (did you mean "{hint[0]}"?)' if hint else ""))
        values[name] = _parse_value(entry, raw, spot)
    for name, entry in known.items():
        if name in values:
            continue
        spot = where.child(name)
        if section_class(entry) is not None:
            values[name] = _parse_value(entry, {}, spot)
        elif is_required(entry):
            raise spot.error("required setting is missing")
        else:
            # Defaults pass through the same kind, so relative paths resolve like given ones.
            kind = entry.metadata["kind"]
            values[name] = kind.parse(kind.to_raw(entry.default), spot)
    return cls(**values)


def _parse_value(entry: "Field[Any]", raw: object, where: Where) -> Any:
    sub = section_class(entry)
    if sub is not None:
        return parse_section(sub, raw, where)
    return entry.metadata["kind"].parse(raw, where)


@dataclass(frozen=True, slots=True)
class Certificates:
    """Array of certificate and key tables, at least one, at most one per key type."""

    pair: type[KeyPairTable]

    def describe(self) -> str:
        return 'array of { cert = "PATH", key = "PATH" } tables, at least one'

    def parse(self, raw: object, where: Where) -> tuple[KeyPairTable, ...]:
        if not isinstance(raw, list) or not raw:
            raise where.error(
                f'must be an array of at least one {{ cert = "PATH", key = "PATH" }} table, '
                f"got {shown(raw) if raw != [] else 'an empty array'}"
            )
        pairs: list[KeyPairTable] = []
        key_types: dict[str, int] = {}
        for index, item in enumerate(raw):
            spot = where.item(index)
            pair = parse_section(self.pair, item, spot)
            require_file(pair.cert, spot.child("cert"))
            require_file(pair.key, spot.child("key"))
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

    def to_raw(self, value: tuple[KeyPairTable, ...]) -> object:
        return [{"cert": str(pair.cert), "key": str(pair.key)} for pair in value]


@dataclass(frozen=True, slots=True)
class Routes:
    """Array of smarthost route tables; each domain pattern in at most one route."""

    route: type[RouteTable]

    def describe(self) -> str:
        return 'array of { domains = [...], smarthost = "HOST:PORT", ... } tables'

    def parse(self, raw: object, where: Where) -> tuple[RouteTable, ...]:
        if not isinstance(raw, list):
            raise where.error(f"must be an array of route tables, got {shown(raw)}")
        routes: list[RouteTable] = []
        claimed: dict[str, str] = {}
        for index, item in enumerate(raw):
            spot = where.item(index)
            route = parse_section(self.route, item, spot)
            _check_route(route, spot)
            for pattern in route.domains:
                if pattern in claimed:
                    raise spot.child("domains").error(
                        f"{quote(pattern)} is already routed by {claimed[pattern]}"
                    )
                claimed[pattern] = spot.key
            routes.append(route)
        return tuple(routes)

    def to_raw(self, value: tuple[RouteTable, ...]) -> object:
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


def _check_route(route: RouteTable, spot: Where) -> None:
    """The rules between one route's own settings."""
    if route.username and route.password is None and route.password_file is None:
        raise spot.error("username needs password or password_file")
    if route.password is not None and route.password_file is not None:
        raise spot.error("give password or password_file, not both")
    if (route.password is not None or route.password_file) and not route.username:
        raise spot.error("a password needs a username")
    if route.password_file is not None:
        require_file(route.password_file, spot.child("password_file"))
    if route.smarthost.port == 0:
        raise spot.child("smarthost").error("port 0 is not a port to connect to")
    if route.tls == "none" and route.username and not is_loopback(route.smarthost.host):
        raise spot.error(
            'AUTH with tls = "none" is refused to a smarthost that is not loopback '
            "(the password would cross the network in clear)"
        )
