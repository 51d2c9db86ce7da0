"""`sendgate user status USER`: what an account is allowed and what the defences know about it.

The text is ``name: value`` lines: the user, one ``address:`` line per address, each setting in
force (marked ``(default)`` when the configuration decides it), the flag, one ``known-network:``
line per network remembered within ``[login_limits].known_network_memory``, the app password
labels and an active account lock. Times are ISO 8601 UTC. `--json` prints the same as one
JSON document.

Security: flag and lock reasons come from the policy and labels from operators; every value
printed for people goes through `text.printable`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sendgate.config.schema import Config
from sendgate.policy.keys import account_key, known_lock_key
from sendgate.store.backends import Stores
from sendgate.store.limits import Ban
from sendgate.store.users import LIMIT_SETTINGS, Flag, KnownNetwork, UserRecord, UserSettings
from sendgate.text import iso_utc, printable


@dataclass(frozen=True, slots=True)
class Status:
    """One account's state as `user status` shows it."""

    record: UserRecord
    settings: dict[str, tuple[bool | int, bool]]
    """Setting name -> (value in force, whether it is the configuration's default)."""
    flag: Flag | None
    known_networks: list[KnownNetwork]
    app_passwords: list[str]
    lock: Ban | None
    known_locks: list[Ban]
    """Locks of the account at one of its known networks (`bans remove USER|NETWORK`)."""


def read_status(cfg: Config, stores: Stores, record: UserRecord, now: float) -> Status:
    """Gather the account's state from the stores at `now`."""
    users = stores.users
    memory = cfg.login_limits.known_network_memory
    return Status(
        record=record,
        settings=settings_in_force(cfg, record.settings),
        flag=users.flag_of(record.username),
        known_networks=users.known_networks(record.username, now, memory=memory),
        app_passwords=[app.label for app in users.app_passwords(record.username)],
        lock=stores.limits.ban_of(account_key(record.username)),
        known_locks=[
            ban
            for ban in stores.limits.bans()
            if ban.key.startswith(known_lock_key(record.username, ""))
        ],
    )


def settings_in_force(cfg: Config, settings: UserSettings) -> dict[str, tuple[bool | int, bool]]:
    """Each setting's value in force and whether the configuration (not the user) decides it."""
    found: dict[str, tuple[bool | int, bool]] = {
        # No configuration setting: off unless set for the user.
        "app_passwords_only": (settings.app_passwords_only, not settings.app_passwords_only),
        # Notices switched off for everyone stay off whatever the user's own setting says.
        "sign_in_notice": (cfg.sign_in_notice.enabled, True)
        if settings.sign_in_notice is None or not cfg.sign_in_notice.enabled
        else (settings.sign_in_notice, False),
    }
    for name in LIMIT_SETTINGS:
        limit: int | None = getattr(settings, name)
        default: int = getattr(cfg.sending_limits, name)
        found[name] = (default, True) if limit is None else (limit, False)
    return found


def shown_setting(value: bool | int, default: bool) -> str:
    """A setting's value for people: yes/no, a number, "0 (unlimited)", then "(default)"."""
    if isinstance(value, bool):
        text = "yes" if value else "no"
    else:
        text = "0 (unlimited)" if value == 0 else str(value)
    return f"{text} (default)" if default else text


def format_status(status: Status) -> str:
    """The `user status` text (see the module docstring)."""
    lines = [f"user: {status.record.username}"]
    lines.extend(f"address: {address}" for address in status.record.addresses)
    lines.extend(
        f"{name}: {shown_setting(value, default)}"
        for name, (value, default) in status.settings.items()
    )
    flag = status.flag
    if flag is None:
        lines.append("flag: not flagged")
    else:
        lines.append(f"flag: {printable(flag.reason)} (since {iso_utc(flag.since)})")
    lines.extend(
        f"known-network: {known.network} first-seen {iso_utc(known.first_seen)}"
        f" last-seen {iso_utc(known.last_seen)}"
        for known in status.known_networks
    )
    if not status.known_networks:
        lines.append("known-network: none")
    labels = ", ".join(printable(label) for label in status.app_passwords)
    lines.append(f"app-passwords: {labels or 'none'}")
    lock = status.lock
    if lock is None:
        lines.append("account-lock: none")
    else:
        lines.append(
            f"account-lock: until {iso_utc(lock.until)} ({printable(lock.reason)},"
            f" since {iso_utc(lock.since)})"
        )
    lines.extend(
        f"known-network-lock: {ban.key.rpartition('|')[2]} until {iso_utc(ban.until)}"
        f" ({printable(ban.reason)}, since {iso_utc(ban.since)})"
        for ban in status.known_locks
    )
    return "\n".join(lines)


def status_json(status: Status) -> dict[str, object]:
    """The `user status --json` document."""
    flag, lock = status.flag, status.lock
    return {
        "username": status.record.username,
        "addresses": list(status.record.addresses),
        "settings": {
            name: {"value": value, "default": default}
            for name, (value, default) in status.settings.items()
        },
        "flag": None if flag is None else {"reason": flag.reason, "since": iso_utc(flag.since)},
        "known_networks": [
            {
                "network": known.network,
                "first_seen": iso_utc(known.first_seen),
                "last_seen": iso_utc(known.last_seen),
            }
            for known in status.known_networks
        ],
        "app_passwords": status.app_passwords,
        "account_lock": None
        if lock is None
        else {
            "since": iso_utc(lock.since),
            "until": iso_utc(lock.until),
            "reason": lock.reason,
            "offences": lock.offences,
        },
        "known_network_locks": [
            {
                "network": ban.key.rpartition("|")[2],
                "since": iso_utc(ban.since),
                "until": iso_utc(ban.until),
                "reason": ban.reason,
            }
            for ban in status.known_locks
        ],
    }
