"""The exceptions sendgate raises across module boundaries, documented in one place.

Every error a user can cause (bad config, bad CLI argument, unknown user) is a subclass of
`SendgateError` whose message is one line fit to print as is; anything else is a bug.
"""


class SendgateError(Exception):
    """Base for errors with a one-line, user-presentable message."""


class ConfigError(SendgateError):
    """The configuration file is missing, malformed or unsafe; the message names the dotted key."""


class UserError(SendgateError):
    """A user-store operation was refused (unknown user, duplicate, weak password, bad address)."""


class StoreError(SendgateError):
    """A store (users, limits) could not be opened, read or written; the message names it."""


class SpoolError(SendgateError):
    """The spool could not store or read a message (I/O error); the message was not accepted."""


class UnknownQueueIdError(SpoolError):
    """No message with that queue id is queued (never was, delivered, or removed)."""


class LeaseLostError(SpoolError):
    """A delivery claim's lease ran out and the message was claimed again: the result is dropped."""


class SpoolFullError(SpoolError):
    """The spool's file system is full (ENOSPC/EDQUOT); callers answer 452, never 250."""


class TlsConfigError(SendgateError):
    """A certificate or key could not be loaded; the message names the file."""
