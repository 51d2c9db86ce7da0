"""The audit of file ownership and permissions: config, keys, secrets and the data directory.

What is checked, and why:
- the config file and the key directories must not be writable by group or other (whoever
  can write them can make the server relay or sign for them);
- secrets (route password files, the user database with its password hashes, DKIM keys) must
  not be readable by other users;
- every file should belong to root or to the user sendgate runs as.
TLS key permissions are the unsafe gate's (`world_readable_key`), reported with the settings.

Security: files are only stat'ed, never opened; symlinks are followed, as the server does.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sendgate.config.schema import Config
from sendgate.findings import Finding, Severity
from sendgate.store.backends import users_path


def file_findings(cfg: Config, config_path: Path) -> list[Finding]:
    findings: list[Finding] = []
    checks: list[tuple[Path, int, str, Severity, str]] = [
        (config_path, 0o022, "audit.config_writable", Severity.CRITICAL, "writable by others"),
        (cfg.data_dir, 0o002, "audit.data_dir_writable", Severity.CRITICAL, "writable by others"),
        (users_path(cfg), 0o004, "audit.users_readable", Severity.WARNING,
         "readable by every user (it holds the password hashes)"),
        (cfg.dkim.key_dir, 0o022, "audit.dkim_dir_writable", Severity.CRITICAL,
         "writable by others (a key put there signs mail)"),
    ]  # fmt: skip
    for route in cfg.delivery.routes:
        if route.password_file is not None:
            checks.append(
                (route.password_file, 0o004, "audit.secret_readable", Severity.WARNING,
                 "readable by every user (a smarthost password)")
            )  # fmt: skip
    if any(route.password for route in cfg.delivery.routes):
        checks.append(
            (config_path, 0o004, "audit.secret_readable", Severity.WARNING,
             "readable by every user, and it holds a smarthost password")
        )  # fmt: skip
    owners = {0, os.geteuid()}
    seen_owner: set[Path] = set()
    for path, bits, code, severity, what in checks:
        try:
            info = path.stat()
        except FileNotFoundError:
            continue  # not made yet (no users, no keys): nothing to protect
        except OSError as exc:
            findings.append(
                Finding(
                    "audit.file_unreadable",
                    Severity.WARNING,
                    f"{path}: cannot stat: {exc.strerror}",
                    fix="check the path and the permissions of its directories",
                )
            )
            continue
        mode = stat.S_IMODE(info.st_mode)
        if mode & bits:
            findings.append(
                Finding(
                    code,
                    severity,
                    f"{path} is {what}",
                    f"mode {mode:04o}",
                    f"chmod {mode & ~bits & ~0o002:04o} {path}",
                )
            )
        if info.st_uid not in owners and path not in seen_owner:
            seen_owner.add(path)
            findings.append(
                Finding(
                    "audit.file_owner",
                    Severity.WARNING,
                    f"{path} belongs to another user (uid {info.st_uid}), who can change it",
                    f"owner uid {info.st_uid}; sendgate runs as uid {os.geteuid()}",
                    f"chown {os.geteuid()} {path}",
                )
            )
    return findings
