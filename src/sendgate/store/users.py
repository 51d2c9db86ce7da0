"""The users contract: the record of one login and the Protocol every user backend implements.

Backends (``store.local.users`` on SQLite today, a cluster store later) pass the contract tests
in tests/contracts/. Usernames and addresses reach a store already validated by the caller;
stores still lower-case them so that one mailbox has one key. The methods block (call them from
a thread pool on a serving process) and are safe to use from several threads at once.

Beside the login itself a user has settings (per-user overrides of the configuration), app
passwords (extra secrets, each with a label), the networks it logged in from (known networks,
remembered for `memory` seconds after the last login there) and possibly a flag (the account
looks compromised, until an operator clears it). Times are unix seconds passed in by the caller
(`at`); a network is a string such as ``192.0.2.0/24``. A window of `memory` seconds at `at`
holds what was seen after ``at - memory``: a login exactly `memory` seconds ago is forgotten.
"""

from dataclasses import dataclass, field, fields
from typing import Protocol


@dataclass(frozen=True, slots=True)
class UserSettings:
    """Per-user overrides: None leaves the configuration's default in force."""

    app_passwords_only: bool = False
    """SMTP AUTH accepts only app passwords (the main password is refused there)."""
    sign_in_notice: bool | None = None
    """None: ``[sign_in_notice].enabled`` decides."""
    messages_per_hour: int | None = None
    """None: the ``[sending_limits]`` default; 0: unlimited (likewise below)."""
    messages_per_day: int | None = None
    recipients_per_message: int | None = None
    recipients_per_day: int | None = None
    new_recipients_per_day: int | None = None

    def __post_init__(self) -> None:
        # Checked here so that a bad value can neither be stored nor read back from a store.
        if not isinstance(self.app_passwords_only, bool):
            raise ValueError("app_passwords_only must be true or false")
        if self.sign_in_notice is not None and not isinstance(self.sign_in_notice, bool):
            raise ValueError("sign_in_notice must be true, false or unset")
        for name in LIMIT_SETTINGS:
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < 0):
                raise ValueError(f"{name} must be a non-negative integer or unset")


LIMIT_SETTINGS = (
    "messages_per_hour",
    "messages_per_day",
    "recipients_per_message",
    "recipients_per_day",
    "new_recipients_per_day",
)
"""The `UserSettings` fields that override a ``[sending_limits]`` setting of the same name."""

SETTING_NAMES = tuple(setting.name for setting in fields(UserSettings))


@dataclass(frozen=True, slots=True)
class AppPassword:
    """An extra secret of a user, accepted by SMTP AUTH in place of the main password."""

    label: str
    """The name the operator gave it (unique per user), shown in listings and logs."""
    password_hash: str = field(repr=False)
    """An argon2id encoded hash; kept out of repr."""
    lookup: str
    """8 hex digits, the first 4 bytes of the password's SHA-256: picks the one hash to verify."""
    created: float
    last_used: float | None
    """The last successful login with it (recorded at most about once a minute), or None."""


@dataclass(frozen=True, slots=True)
class Flag:
    """A compromised-account flag, kept until an operator clears it."""

    username: str
    since: float
    reason: str


@dataclass(frozen=True, slots=True)
class LoginNote:
    """What `UserStore.note_login` learned about a successful login."""

    new: bool
    """The network was not known to this account (within `memory`)."""
    first: bool
    """The account had no known network at all (its first login, or the first after `memory`)."""
    recent: int
    """Distinct networks of this account seen within `recent` seconds, this one included."""


@dataclass(frozen=True, slots=True)
class KnownNetwork:
    """A network an account logged in from: when first and last (within one memory span)."""

    network: str
    first_seen: float
    last_seen: float


@dataclass(frozen=True, slots=True)
class UserRecord:
    """One login: who it is, its password hash, and the addresses it may send as."""

    username: str
    """The login name: a lower-cased mailbox such as ``alice@example.org``."""
    password_hash: str = field(repr=False)
    """An argon2id encoded hash; kept out of repr so logging a record cannot print it."""
    addresses: tuple[str, ...]
    """Sorted owned addresses: exact ``bob@example.org`` or a whole domain ``@example.org``."""
    generation: int
    """Bumped on every password change so caches keyed on it go stale by construction."""
    settings: UserSettings = UserSettings()
    """The user's overrides of the configuration."""


class UserStore(Protocol):
    """Users, their password hashes and owned addresses, shared by every worker process.

    Refused operations raise `sendgate.errors.UserError`, storage failures `StoreError`, each with
    a one-line message.
    """

    def get_user(self, username: str) -> UserRecord | None:
        """Return the user, or None when there is no such user."""
        ...

    def login_at_once(self, username: str) -> tuple[UserRecord, list[AppPassword]] | None:
        """The user and its app passwords (as `app_passwords`), read without waiting.

        The one method that may be called on an event loop: None when the store cannot answer
        without I/O that may wait (a network store always), and for a user that does not
        exist; the caller then reads the way that may wait, in a thread.
        """
        ...

    def add_user(self, username: str, password_hash: str) -> None:
        """Create a user who owns its own address; refuse an existing user or owned address."""
        ...

    def set_password_hash(self, username: str, password_hash: str) -> None:
        """Replace the user's hash and bump its generation; refuse an unknown user."""
        ...

    def remove_user(self, username: str) -> None:
        """Delete the user with its addresses, app passwords, known networks and flag.

        Refuses an unknown user.
        """
        ...

    def list_users(self) -> list[UserRecord]:
        """Return every user, sorted by username."""
        ...

    def add_address(self, username: str, address: str) -> None:
        """Let the user send as `address`; refuse an unknown user or an address already owned."""
        ...

    def remove_address(self, username: str, address: str) -> None:
        """Take `address` away from the user; refuse one that user does not own."""
        ...

    def set_settings(self, username: str, settings: UserSettings) -> None:
        """Replace the user's settings; refuse an unknown user."""
        ...

    # --- app passwords ------------------------------------------------------------------------

    def add_app_password(
        self, username: str, label: str, password_hash: str, lookup: str, created: float
    ) -> None:
        """Give the user an app password; refuse an unknown user or a label it already uses."""
        ...

    def app_passwords(self, username: str) -> list[AppPassword]:
        """The user's app passwords sorted by label; [] for an unknown user."""
        ...

    def remove_app_password(self, username: str, label: str) -> None:
        """Delete one app password; refuse a label the user does not have."""
        ...

    def touch_app_password(self, username: str, label: str, at: float) -> None:
        """Record a login with it at `at`; nothing happens if it is gone."""
        ...

    # --- known networks -----------------------------------------------------------------------

    def note_login(
        self, username: str, network: str, at: float, *, memory: float, recent: float
    ) -> LoginNote:
        """Record a successful login of the user from `network` at `at`; say what was new.

        Networks last seen `memory` seconds ago or earlier are forgotten (a network seen again
        after that starts afresh). For an unknown user nothing is recorded and the note says
        new and first, with `recent` 1.
        """
        ...

    def is_known(self, username: str, network: str, at: float, *, memory: float) -> bool:
        """Whether the user logged in from `network` within `memory` seconds before `at`."""
        ...

    def network_known(self, network: str, at: float, *, memory: float) -> bool:
        """Whether any user logged in from `network` within `memory` seconds before `at`."""
        ...

    def known_networks(self, username: str, at: float, *, memory: float) -> list[KnownNetwork]:
        """The user's networks known at `at`, most recently seen first (then by network)."""
        ...

    # --- flags --------------------------------------------------------------------------------

    def set_flag(self, username: str, reason: str, at: float) -> Flag:
        """Flag the user and return the flag; an existing flag is kept as it is and returned.

        Refuses an unknown user.
        """
        ...

    def flag_of(self, username: str) -> Flag | None:
        """The user's flag, or None."""
        ...

    def clear_flag(self, username: str) -> bool:
        """Remove the user's flag; False if there was none."""
        ...

    def flags(self) -> list[Flag]:
        """Every flag, sorted by username."""
        ...

    def close(self) -> None:
        """Release the backend's resources; the store is unusable afterwards."""
        ...
