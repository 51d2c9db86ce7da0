"""Texts generated from the schema: the example sendgate.toml and docs/config.md.

`render_example` writes the commented config file of `sendgate init`, every setting at its
default but the values given; `render_docs` writes the Markdown reference (run
`python -m sendgate.config > docs/config.md`; a test keeps the file current). Both walk the
schema in order and take each setting's text from its kind and doc, so they cannot drift from
what the loader accepts.
"""

import textwrap
from collections.abc import Mapping
from dataclasses import Field
from pathlib import Path
from typing import Any

from sendgate.config.echo import toml_value
from sendgate.config.kinds import HostPort
from sendgate.config.schema import CertPair, Config, RouteConfig
from sendgate.config.sections import is_required, sections, settings
from sendgate.config.unsafe import OVERRIDES


def render_example(
    hostname: str,
    submission: list[str],
    submissions: list[str],
    cert: str,
    key: str,
    routes: tuple[RouteConfig, ...] = (),
    http: HostPort | None = None,
    stores: Mapping[str, str] | None = None,
) -> str:
    """A complete, commented sendgate.toml with every setting, the given values filled in.

    `stores`: dotted store settings ("store.users" and the like) and their URLs.

    Raises ValueError for a malformed HOST:PORT; the caller validates the host name and files.
    """
    given: dict[str, object] = {
        "hostname": hostname,
        "listen.submission": tuple(HostPort.parse(text) for text in submission),
        "listen.submissions": tuple(HostPort.parse(text) for text in submissions),
        "tls.certificates": (CertPair(Path(cert), Path(key)),),
        "delivery.routes": routes,
        "http.listen": http,
        **(stores or {}),
    }
    lines = [
        "# sendgate configuration, written by `sendgate init`.",
        "# Every setting is listed with its default; docs/config.md is the full reference.",
        "# Relative paths are relative to the directory of this file.",
    ]
    for prefix, cls in sections(Config):
        if prefix:
            lines += ["", f"[{prefix}]", f"# {cls.__doc__}"]
        for entry in settings(cls):
            dotted = f"{prefix}.{entry.name}" if prefix else entry.name
            meta = entry.metadata
            value = given.get(dotted, entry.default)
            default = "required" if is_required(entry) else "default " + _default_text(entry)
            # The default goes first so that wrapping never parts it from its value.
            lines.append("")
            for comment in (meta["doc"], f"{default}; {meta['kind'].describe()}"):
                lines += textwrap.wrap(
                    comment, width=99, initial_indent="# ", subsequent_indent="# "
                )
            lines.append(f"{entry.name} = {toml_value(meta['kind'].to_raw(value))}")
    return "\n".join(lines) + "\n"


def render_docs() -> str:
    """The Markdown reference of every setting, for docs/config.md."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated from the schema in src/sendgate/config/schema.py by",
        "     `python -m sendgate.config > docs/config.md`; do not edit by hand. -->",
        "",
        "sendgate reads one TOML file, `sendgate.toml` (`sendgate init DIR` writes a commented",
        "one with every setting). Unknown keys, wrong types and values out of range are errors",
        "that name the file and the dotted key. Relative paths are relative to the directory of",
        "the configuration file.",
    ]
    for prefix, cls in sections(Config):
        lines += ["", f"## [{prefix}]" if prefix else "## Top level", ""]
        if prefix:
            lines += [str(cls.__doc__), ""]
        lines += ["| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]
        for entry in settings(cls):
            dotted = f"{prefix}.{entry.name}" if prefix else entry.name
            meta = entry.metadata
            default = "required" if is_required(entry) else f"`{_default_text(entry)}`"
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
    lines += [f"| `{name}` | {allows} |" for name, allows in OVERRIDES.items()]
    return "\n".join(lines) + "\n"


def _default_text(entry: "Field[Any]") -> str:
    kind = entry.metadata["kind"]
    return toml_value(kind.to_raw(entry.default))
