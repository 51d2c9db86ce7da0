"""The unsafe-setting gate: settings that weaken security, and the overrides that allow them.

Public interface (used by the loader, `sendgate serve` and the `sendgate audit` to come):

- `OVERRIDES`: every override name with what it allows, in a fixed order. These are the only
  names `unsafe_overrides` accepts; docs/config.md lists them from here.
- `UnsafeSetting`: one finding, a frozen dataclass of `override` (the name that allows it),
  `key` (the dotted config key, e.g. "tls.certificates[0].key") and `description` (one line
  for logs and reports, naming the key and the value).
- `unsafe_settings(cfg)`: the unsafe settings in use, allowed or not, in a fixed order (the
  gate reports the first). It reads the private key files' modes now, so a later chmod shows;
  ConfigError if one cannot be stat'ed.
- `refuse_unsafe(cfg, where)`: the gate. ConfigError naming the file, the dotted key and the
  override to add for the first unsafe setting that `cfg.unsafe_overrides` does not allow.

schema.py reads `OVERRIDES` for the `unsafe_overrides` setting, so this module imports the
schema's `Config` for type checking only.

Security: what counts as unsafe is decided here only. The check does not trust the files it
reads: a key file that cannot be stat'ed is an error, never assumed safe.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from sendgate.config.echo import Where, show_path
from sendgate.config.kinds import is_loopback
from sendgate.errors import ConfigError

if TYPE_CHECKING:
    from sendgate.config.schema import Config

OVERRIDES: Mapping[str, str] = MappingProxyType(
    {
        "plaintext_auth": "auth.allow_plaintext = true: AUTH is offered before TLS",
        "tls_below_1_2": ('tls.min_version = "1.0" or "1.1": deprecated TLS versions (RFC 8996)'),
        "no_auth": "auth.required = false: mail is accepted without authentication",
        "world_readable_key": "a private key file with any group or other permission bits",
        "plaintext_relay": (
            'a delivery route with tls = "none" to a smarthost that is not loopback'
        ),
        "public_http": "http.listen on an address that is not loopback: plain HTTP",
        "proxy_from_anywhere": "listen.proxy_from with a network of every address (/0)",
        "plaintext_store": "store.limits or store.users without TLS to a host that is not loopback",
    }
)
WEAK_TLS_VERSIONS = ("1.0", "1.1")


@dataclass(frozen=True, slots=True)
class UnsafeSetting:
    """One unsafe setting in use: the override that allows it, its dotted key, a description."""

    override: str
    key: str
    description: str


def unsafe_settings(cfg: Config) -> list[UnsafeSetting]:
    """Each unsafe setting in use, whether allowed or not; the key files' modes are read now."""
    found = []
    if cfg.auth.allow_plaintext:
        found.append(
            UnsafeSetting(
                "plaintext_auth",
                "auth.allow_plaintext",
                "auth.allow_plaintext = true: AUTH is offered before TLS, "
                "so passwords can cross the network in clear",
            )
        )
    if cfg.tls.min_version in WEAK_TLS_VERSIONS:
        found.append(
            UnsafeSetting(
                "tls_below_1_2",
                "tls.min_version",
                f'tls.min_version = "{cfg.tls.min_version}": deprecated TLS versions are accepted',
            )
        )
    if not cfg.auth.required:
        found.append(
            UnsafeSetting(
                "no_auth",
                "auth.required",
                "auth.required = false: mail is accepted without authentication",
            )
        )
    for index, route in enumerate(cfg.delivery.routes):
        if route.tls == "none" and not is_loopback(route.smarthost.host):
            found.append(
                UnsafeSetting(
                    "plaintext_relay",
                    f"delivery.routes[{index}].tls",
                    f'delivery.routes[{index}]: tls = "none" to {route.smarthost}: mail and '
                    "passwords cross the network in clear",
                )
            )
    if cfg.http.listen is not None and not is_loopback(cfg.http.listen.host):
        found.append(
            UnsafeSetting(
                "public_http",
                "http.listen",
                f"http.listen = {cfg.http.listen}: plain HTTP (metrics, health, who the users "
                "are by their addresses) is reachable from the network",
            )
        )
    for index, network in enumerate(cfg.listen.proxy_from):
        if network.endswith("/0"):
            found.append(
                UnsafeSetting(
                    "proxy_from_anywhere",
                    f"listen.proxy_from[{index}]",
                    f"listen.proxy_from[{index}] = {network}: anyone may claim any client "
                    "address, past every limit and ban",
                )
            )
    store_host = urlsplit(cfg.store.limits).hostname
    if cfg.store.limits.startswith("redis://") and not is_loopback(store_host or ""):
        found.append(
            UnsafeSetting(
                "plaintext_store",
                "store.limits",
                f"store.limits: redis:// to {store_host}: the store's password, the bans and the "
                "counts cross the network in clear (rediss:// uses TLS)",
            )
        )
    for key, url, what in (
        ("store.users", cfg.store.users, "password hashes"),
        ("store.queue", cfg.store.queue, "the mail itself"),
    ):
        host = _postgres_plaintext_host(url)
        if host is not None:
            found.append(
                UnsafeSetting(
                    "plaintext_store",
                    key,
                    f"{key}: PostgreSQL at {host} without sslmode=verify-full (or require, "
                    f"verify-ca): {what} may cross the network in clear",
                )
            )
    for index, pair in enumerate(cfg.tls.certificates):
        key = f"tls.certificates[{index}].key"
        try:
            mode = os.stat(pair.key).st_mode & 0o777
        except OSError as error:
            raise ConfigError(
                f"{key}: cannot check {show_path(pair.key)}: {error.strerror or error}"
            ) from None
        if mode & 0o077:
            found.append(
                UnsafeSetting(
                    "world_readable_key",
                    key,
                    f"{key}: {show_path(pair.key)} is open to group or others (mode {mode:04o})",
                )
            )
    return found


def refuse_unsafe(cfg: Config, where: Where) -> None:
    """Raise ConfigError at the first unsafe setting in use that no override allows.

    `where` names the config file; the error names the setting's dotted key within it.
    """
    for unsafe in unsafe_settings(cfg):
        if unsafe.override not in cfg.unsafe_overrides:
            raise where.at(unsafe.key).error(
                f'unsafe setting refused; add "{unsafe.override}" to unsafe_overrides to allow it'
            )


_POSTGRES_TLS = frozenset({"require", "verify-ca", "verify-full"})


def _postgres_plaintext_host(url: str) -> str | None:
    """The host a PostgreSQL URL reaches without enforced TLS, or None (local, or TLS required).

    libpq's default sslmode is "prefer": TLS if the server offers it, silently plain if not.
    """
    if url == "local":
        return None
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    hosts = query.get("host", []) or [parts.hostname or ""]
    if set(query.get("sslmode", [])) & _POSTGRES_TLS:
        return None
    for host in hosts:
        if host and not host.startswith("/") and not is_loopback(host):
            return host
    return None
