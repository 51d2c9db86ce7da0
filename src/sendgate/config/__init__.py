"""The sendgate configuration: one TOML file read into frozen dataclasses and strictly validated.

Import from the submodules; this package re-exports nothing.

- schema: the frozen dataclasses (`Config` and its sections, `CertPair`, `RouteConfig`). The
  rest of sendgate imports its configuration types from here.
- load: `load_config(path)`, the one way to get a `Config`: TOML, every setting checked, the
  rules between settings, then the unsafe gate.
- unsafe: the unsafe-setting gate and its override names, public for `serve` and `audit`.
- render: the example file written by `sendgate init` and docs/config.md
  (`python -m sendgate.config` prints the latter).
- kinds: the rule of each kind of value, and `HostPort`, `parse_hostname` and `is_loopback`,
  the value parsers `sendgate init` shares with the loader.
- sections: reading TOML tables into the dataclasses, and the kinds of arrays of tables.
- echo: where an error is (`Where`) and how values are shown in one-line errors.

Imports go one way: each module imports only those before it in the order echo, kinds,
sections, unsafe, schema, then load and render. Where a lower module needs a class defined
higher up, schema.py passes it in: `Certificates(CertPair)` and `Routes(RouteConfig)` (sections.py
states what it reads of them as protocols), `Overrides(tuple(OVERRIDES))`; unsafe.py, which
reads a `Config`, imports it for type checking only.
"""
