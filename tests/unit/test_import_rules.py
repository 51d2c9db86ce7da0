"""The architecture's import rules (docs/ARCHITECTURE.md), enforced on the source with ast.

- smtp/ imports only the standard library and sendgate.smtp.*;
- policy/ imports neither sendgate.server, sendgate.smtp.session nor a storage backend;
- server/ imports neither policy/, store/, delivery/, submission nor service;
- delivery/ shares only the grammar modules sendgate.smtp.replies, .address, .dsn and .xtext
  with the inbound side,
  and reaches storage only through the queue contract (store.queue and its records);
- only store.backends imports a backend (store.local.*, later store.cluster.*);
- outside config/, features import config.schema only; the loader, kinds and renderer are for
  cli/ and scaffold, config.unsafe also for service (which logs the overrides in force) and
  audit (which reports them);
- only cli/ imports audit and probe (and they, their own modules and each other); service
  imports audit for the scheduled audit;
- the neutral helpers both sides use (sendgate.text, sendgate.headers) import only the stdlib,
  so that using them never brings the inbound side into delivery/;
- no module is called utils.py, and smtp/ and policy/ keep no module-level mutable globals.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "sendgate"
ALLOWED_FROM_INBOUND = frozenset(
    {"sendgate.smtp.replies", "sendgate.smtp.address", "sendgate.smtp.dsn", "sendgate.smtp.xtext"}
)
INBOUND = (
    "sendgate.server",
    "sendgate.smtp",
    "sendgate.submission",
    "sendgate.service",
    "sendgate.policy",
    "sendgate.message",
)
NEUTRAL = ("sendgate.text", "sendgate.headers")
BACKENDS = ("sendgate.store.local", "sendgate.store.cluster")
QUEUE_CONTRACT = frozenset(
    {"sendgate.store.queue", "sendgate.store.envelope", "sendgate.store.delivery_state"}
)
CONFIG_FOR_FEATURES = "sendgate.config.schema"
CONFIG_USERS = {
    "sendgate.config.unsafe": (
        "sendgate.cli",
        "sendgate.scaffold",
        "sendgate.service",
        "sendgate.audit",
    ),
}
CONFIG_TOOLS = ("sendgate.cli", "sendgate.scaffold")
CLI_ONLY = ("sendgate.audit", "sendgate.probe")
_MUTABLE_FACTORIES = frozenset(
    {"list", "dict", "set", "bytearray", "defaultdict", "OrderedDict", "deque", "Counter"}
)


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    tree: ast.Module

    @property
    def package(self) -> str:
        return self.name if self.path.name == "__init__.py" else self.name.rpartition(".")[0]


def module_name(path: Path, root: Path = SRC) -> str:
    parts = ["sendgate", *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def load_modules(root: Path = SRC) -> dict[str, Module]:
    modules = {}
    for path in sorted(root.rglob("*.py")):
        name = module_name(path, root)
        modules[name] = Module(name, path, ast.parse(path.read_bytes(), filename=str(path)))
    return modules


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def imports_of(module: Module, known: frozenset[str]) -> Iterator[str]:
    """Every module `module` imports, anywhere in its body; `from p import m` names p.m."""
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.package.split(".")
                base = base[: len(base) - (node.level - 1)]
                base_name = ".".join([*base, node.module] if node.module else base)
            else:
                base_name = node.module or ""
            for alias in node.names:
                candidate = f"{base_name}.{alias.name}"
                yield candidate if candidate in known else base_name


def rule_violation(importer: str, imported: str) -> str | None:
    """Why `importer` may not import `imported`, or None when the rules allow it."""
    if within(importer, "sendgate.smtp"):
        top = imported.partition(".")[0]
        if top == "sendgate":
            return None if within(imported, "sendgate.smtp") else "smtp/ imports only smtp/"
        return None if top in sys.stdlib_module_names else "smtp/ imports only the stdlib"
    if any(within(importer, neutral) for neutral in NEUTRAL):
        top = imported.partition(".")[0]
        if top not in sys.stdlib_module_names:
            return f"{importer} imports only the stdlib"
    if within(importer, "sendgate.policy"):
        for banned in ("sendgate.server", "sendgate.smtp.session", "sendgate.store.backends"):
            if within(imported, banned):
                return f"policy/ must not import {banned}"
    if within(importer, "sendgate.server"):
        for banned in (
            "sendgate.policy",
            "sendgate.store",
            "sendgate.delivery",
            "sendgate.submission",
            "sendgate.service",
        ):
            if within(imported, banned):
                return f"server/ must not import {banned}"
    if within(importer, "sendgate.delivery"):
        if imported not in ALLOWED_FROM_INBOUND:
            for inbound in INBOUND:
                if within(imported, inbound):
                    return f"delivery/ must not share {imported} with the inbound side"
        if within(imported, "sendgate.store") and imported not in QUEUE_CONTRACT:
            return "delivery/ reaches storage only through the queue contract"
    if any(within(imported, backend) for backend in BACKENDS) and not (
        importer == "sendgate.store.backends"
        or any(within(importer, backend) for backend in BACKENDS)
    ):
        return "only store.backends chooses a storage backend"
    if within(imported, "sendgate.config") and not within(importer, "sendgate.config"):
        if imported == "sendgate.config" or imported == CONFIG_FOR_FEATURES:
            return None
        allowed = CONFIG_USERS.get(imported, CONFIG_TOOLS)
        if not any(within(importer, user) for user in allowed):
            return f"outside config/, {importer} may import only {CONFIG_FOR_FEATURES}"
    tools = ("sendgate.cli", *CLI_ONLY)  # audit runs probe's checks on its own listeners
    scheduled = importer == "sendgate.service" and within(imported, "sendgate.audit")
    if (
        any(within(imported, tool) for tool in CLI_ONLY)
        and not any(within(importer, tool) for tool in tools)
        and not scheduled
    ):
        return f"only cli/ imports {imported}"
    return None


def violations(modules: dict[str, Module], known: frozenset[str]) -> list[str]:
    found = []
    for module in modules.values():
        for imported in imports_of(module, known):
            reason = rule_violation(module.name, imported)
            if reason is not None:
                found.append(f"{module.name} imports {imported}: {reason}")
    return found


def mutable_globals(module: Module) -> Iterator[str]:
    """Lower-case module-level names bound to a list, dict or set (literal, comprehension, call)."""
    statements = list(module.tree.body)
    while statements:
        node = statements.pop()
        if isinstance(node, (ast.If, ast.Try)):
            statements.extend([*node.body, *node.orelse])
            if isinstance(node, ast.Try):
                statements.extend(node.finalbody)
                for handler in node.handlers:
                    statements.extend(handler.body)
            continue
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if not _is_mutable(value):
            continue
        for target in targets:
            for name in ast.walk(target):
                if isinstance(name, ast.Name) and _is_variable_name(name.id):
                    yield f"{module.name}:{node.lineno} {name.id}"


def _is_mutable(value: ast.expr) -> bool:
    if isinstance(value, (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp)):
        return True
    if isinstance(value, ast.Call):
        func = value.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
        return name in _MUTABLE_FACTORIES
    return False


def _is_variable_name(name: str) -> bool:
    dunder = name.startswith("__") and name.endswith("__")  # __all__ and friends
    return not dunder and not name.isupper()


def synthetic(name: str, source: str, *, package: bool = False) -> dict[str, Module]:
    path = Path("/synthetic") / (name.replace(".", "/") + ("/__init__.py" if package else ".py"))
    return {name: Module(name, path, ast.parse(source))}


@pytest.fixture(scope="module")
def modules() -> dict[str, Module]:
    return load_modules()


# --- the checker itself ----------------------------------------------------------------------


def test_the_whole_source_tree_is_read(modules: dict[str, Module]) -> None:
    assert SRC.is_dir()
    for expected in (
        "sendgate",
        "sendgate.smtp.session",
        "sendgate.policy.auth",
        "sendgate.server.tls",
    ):
        assert expected in modules
    assert len(modules) == len(list(SRC.rglob("*.py")))


def test_imports_are_resolved_to_modules(modules: dict[str, Module]) -> None:
    known = frozenset(modules)
    submission = set(imports_of(modules["sendgate.submission"], known))
    assert {
        "sendgate.store.queue",
        "sendgate.smtp.replies",
        "sendgate.policy.auth",
        "asyncio",
    } <= submission
    assert "sendgate.smtp" not in submission  # `from sendgate.smtp import replies` is the module


def test_checker_flags_each_kind_of_violation(modules: dict[str, Module]) -> None:
    cases = {
        "sendgate.smtp.x": "import argon2\nfrom sendgate import log\nimport os\n",
        "sendgate.policy.x": "from sendgate.smtp.session import Session\n",
        "sendgate.server.x": (
            "from ..store.local import spool\nfrom sendgate.policy import auth\n"
        ),
        "sendgate.delivery.x": (
            "from sendgate.smtp import address, replies\nimport sendgate.smtp.data\n"
            "from sendgate import headers, text\n"
        ),
        "sendgate.text": "import re\nfrom sendgate.smtp import address\n",
        "sendgate.delivery.y": (
            "from sendgate.store.queue import QueueStore\nfrom sendgate.store import users\n"
        ),
        "sendgate.policy.y": "from sendgate.store.local.users import LocalUserStore\n",
        "sendgate.submission2": "from sendgate.config.load import load_config\n",
        "sendgate.service2": "from sendgate.config.unsafe import unsafe_settings\n",
        "sendgate.delivery.z": "import sendgate.audit\n",
        "sendgate.probe.z": "from sendgate.probe import wire\nimport sendgate.audit\n",
    }
    found: list[str] = []
    for name, source in cases.items():
        found += violations(synthetic(name, source), frozenset(modules))
    assert found == [
        "sendgate.smtp.x imports argon2: smtp/ imports only the stdlib",
        "sendgate.smtp.x imports sendgate.log: smtp/ imports only smtp/",
        "sendgate.policy.x imports sendgate.smtp.session: policy/ must not import"
        " sendgate.smtp.session",
        "sendgate.server.x imports sendgate.store.local.spool: server/ must not import"
        " sendgate.store",
        "sendgate.server.x imports sendgate.policy.auth: server/ must not import sendgate.policy",
        "sendgate.delivery.x imports sendgate.smtp.data: delivery/ must not share"
        " sendgate.smtp.data with the inbound side",
        "sendgate.text imports sendgate.smtp.address: sendgate.text imports only the stdlib",
        "sendgate.delivery.y imports sendgate.store.users: delivery/ reaches storage only"
        " through the queue contract",
        "sendgate.policy.y imports sendgate.store.local.users: only store.backends chooses a"
        " storage backend",
        "sendgate.submission2 imports sendgate.config.load: outside config/,"
        " sendgate.submission2 may import only sendgate.config.schema",
        "sendgate.service2 imports sendgate.config.unsafe: outside config/, sendgate.service2"
        " may import only sendgate.config.schema",
        "sendgate.delivery.z imports sendgate.audit: only cli/ imports sendgate.audit",
    ]


def test_relative_imports_resolve_from_the_package(modules: dict[str, Module]) -> None:
    fake = synthetic("sendgate.server", "from ..submission import Submission\n", package=True)
    assert violations(fake, frozenset(modules)) == [
        "sendgate.server imports sendgate.submission: server/ must not import sendgate.submission"
    ]


def test_checker_flags_mutable_globals() -> None:
    source = (
        "seen = []\n"
        "cache: dict[str, int] = {}\n"
        "if True:\n    pending = set()\n"
        "CONSTANT = {'a': 1}\n"
        "__all__ = ['x']\n"
        "frozen = frozenset()\n"
    )
    module = next(iter(synthetic("sendgate.smtp.x", source).values()))
    assert sorted(mutable_globals(module)) == [
        "sendgate.smtp.x:1 seen",
        "sendgate.smtp.x:2 cache",
        "sendgate.smtp.x:4 pending",
    ]


# --- the rules -------------------------------------------------------------------------------


def test_import_rules_hold(modules: dict[str, Module]) -> None:
    assert violations(modules, frozenset(modules)) == []


def test_inbound_packages_exist(modules: dict[str, Module]) -> None:
    # A rule about a package that was renamed away would pass vacuously.
    for package in (
        "sendgate.smtp",
        "sendgate.policy",
        "sendgate.server",
        "sendgate.delivery",
        "sendgate.store.local",
        "sendgate.config",
        "sendgate.cli",
    ):
        assert any(within(name, package) for name in modules if name != package)
    assert set(NEUTRAL) <= set(modules)
    assert set(modules) >= QUEUE_CONTRACT
    assert {CONFIG_FOR_FEATURES, *CONFIG_USERS, "sendgate.store.backends"} <= set(modules)


def test_no_utils_module() -> None:
    assert [p for p in SRC.rglob("*") if p.stem in ("utils", "util") and p.suffix == ".py"] == []
    assert [p for p in SRC.rglob("utils") if p.is_dir()] == []


def test_no_module_level_mutable_globals_in_smtp_and_policy(modules: dict[str, Module]) -> None:
    found = [
        finding
        for module in modules.values()
        if within(module.name, "sendgate.smtp") or within(module.name, "sendgate.policy")
        for finding in mutable_globals(module)
    ]
    assert found == []
