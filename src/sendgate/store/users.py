"""The users contract: the record of one login and the Protocol every user backend implements.

Backends (``store.local.users`` on SQLite today, a cluster store later) pass the contract tests
in tests/contracts/. Usernames and addresses reach a store already validated by the caller;
stores still lower-case them so that one mailbox has one key. The methods block (call them from
a thread pool on a serving process) and are safe to use from several threads at once.
"""

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class UserSettings:
    """Per-account switches and limits; None means the configuration's default decides."""

    app_passwords_only: bool = False
    """SMTP AUTH accepts only app passwords."""
    sign_in_notice: bool | None = None
    """None: ``[sign_in_notice].enabled`` decides."""
    messages_per_hour: int | None = None
    """None: the ``[sending_limits]`` default; 0: unlimited (likewise below)."""
    messages_per_day: int | None = None
    recipients_per_message: int | None = None
    recipients_per_day: int | None = None
    new_recipients_per_day: int | None = None


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
    """Per-account switches and limits."""


@dataclass(frozen=True, slots=True)
class Flag:
    """A compromised-account flag, kept until an operator clears it."""

    username: str
    since: float
    reason: str


@dataclass(frozen=True, slots=True)
class LoginNote:
    """What `note_login` learned."""

    new: bool
    """The network was not known to this account (within `memory`)."""
    first: bool
    """The account had no known network at all."""
    recent: int
    """Distinct networks of this account seen within `recent` s, this one included."""


class UserStore(Protocol):
    """Users, their password hashes and owned addresses, shared by every worker process.

    Refused operations raise `sendgate.errors.UserError`, storage failures `StoreError`, each with
    a one-line message.
    """

    def get_user(self, username: str) -> UserRecord | None:
        """Return the user, or None when there is no such user."""
        ...

    def add_user(self, username: str, password_hash: str) -> None:
        """Create a user who owns its own address; refuse an existing user or owned address."""
        ...

    def set_password_hash(self, username: str, password_hash: str) -> None:
        """Replace the user's hash and bump its generation; refuse an unknown user."""
        ...

    def remove_user(self, username: str) -> None:
        """Delete the user and its addresses; refuse an unknown user."""
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

    def set_flag(self, username: str, reason: str, at: float) -> Flag:
        """Flag the account (since `at`, for `reason`); an existing flag is kept as it is."""
        ...

    def flag_of(self, username: str) -> Flag | None:
        """The account's flag, or None."""
        ...

    def close(self) -> None:
        """Release the backend's resources; the store is unusable afterwards."""
        ...
