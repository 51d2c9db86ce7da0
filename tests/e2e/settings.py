"""Config settings several end-to-end test files share."""

from __future__ import annotations

# One user sends a whole load in the bulk tests: the default sending limits would stop it.
UNLIMITED_SENDING: dict[str, int] = {
    "sending_limits.messages_per_hour": 0,
    "sending_limits.messages_per_day": 0,
    "sending_limits.recipients_per_day": 0,
    "sending_limits.new_recipients_per_day": 0,
}
