"""Loading a config file: TOML to a checked, frozen `Config`, or one ConfigError line.

`load_config` reads the file, maps tomllib's errors to one line with the line number, parses
every section through the schema's kinds (sections.parse_section), checks the rules that involve
more than one setting, and finally applies the unsafe gate (unsafe.refuse_unsafe).

Security: the file is operator input, but it is still read as untrusted text. Unknown keys,
wrong types and out-of-range values are refused, never guessed at, and every value echoed in an
error is escaped so that a message stays one line. Settings that weaken security are refused
unless named in `unsafe_overrides`. The loader reads the config file and reads and stats the
certificate, key and password files it names; it writes nothing.
"""

import re
import tomllib
from pathlib import Path

from sendgate.config.echo import Where, number, quote, show_path
from sendgate.config.kinds import HostPort, is_ipv4, is_ipv6, require_file
from sendgate.config.schema import Config
from sendgate.config.sections import parse_section
from sendgate.config.unsafe import refuse_unsafe
from sendgate.errors import ConfigError

_TOML_ERROR_AT = re.compile(r"(.*) \(at line (\d+), column (\d+)\)", re.DOTALL)


def load_config(path: Path) -> Config:
    """Read, validate and gate a config file; raise ConfigError with one line naming file and key.

    Relative paths in the file are resolved against the file's own directory.
    """
    label = show_path(path)
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
        raise ConfigError(f"{label}: invalid TOML: {quote(str(error))}") from None
    except RecursionError:
        raise ConfigError(f"{label}: invalid TOML: arrays or tables nested too deeply") from None
    where = Where(label, "", path.absolute().parent)
    config = parse_section(Config, document, where)
    _check_relations(config, where)
    refuse_unsafe(config, where)
    return config


def _check_relations(cfg: Config, where: Where) -> None:
    """Rules that involve more than one setting."""
    listen = where.child("listen")
    if not cfg.listen.submission and not cfg.listen.submissions:
        raise listen.error("no listeners; set listen.submission or listen.submissions")
    seen: dict[HostPort, str] = {}
    for name, addresses in (
        ("submission", cfg.listen.submission),
        ("submissions", cfg.listen.submissions),
    ):
        for index, address in enumerate(addresses):
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
            .error(f"must not be less than delivery.retry_first ({number(delivery.retry_first)})")
        )
    for index, server in enumerate(delivery.resolver):
        if not (is_ipv4(server.host) or is_ipv6(server.host)) or server.port == 0:
            raise (
                where.child("delivery")
                .child("resolver")
                .item(index)
                .error(f"expected an IP address and a port from 1 to 65535, got {server}")
            )
    if delivery.ca_file is not None:
        require_file(delivery.ca_file, where.child("delivery").child("ca_file"))
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
    """tomllib's "... (at line L, column C)" as "FILE: line L: invalid TOML: ... (column C)"."""
    at = _TOML_ERROR_AT.fullmatch(message)
    if at:
        return f"{label}: line {at[2]}: invalid TOML: {at[1]} (column {at[3]})"
    return f"{label}: invalid TOML: {message}"
