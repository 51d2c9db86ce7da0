"""The schema of the defences' sections: failed-login limits, sending limits, sign-in notices.

Kept apart from schema.py only for size; features import these classes from
`sendgate.config.schema`, which re-exports them. The defaults and why they were chosen are in
README.md ("Defences").
"""

# No `from __future__ import annotations`: see schema.py.
from dataclasses import dataclass, field

from sendgate.config.kinds import Bool, Choice, Float, Int, Networks, setting


@dataclass(frozen=True, slots=True, kw_only=True)
class LoginLimitsConfig:
    """Failed-login limits: per client network and per account, delays, bans, known networks."""

    allow: tuple[str, ...] = field(
        default=(),
        metadata=setting(
            Networks(),
            "Networks never delayed or banned (monitoring, your office); loopback is not "
            "allowed by default.",
        ),
    )
    window: float = field(
        default=600.0,
        metadata=setting(
            Float(10, 86400), "Seconds over which a network's failed logins are counted."
        ),
    )
    host_failures: int = field(
        default=10,
        metadata=setting(
            Int(1, 100000),
            "Failed logins from one address (IPv6: one /64) within `window` that ban it.",
        ),
    )
    block_failures: int = field(
        default=30,
        metadata=setting(
            Int(1, 1000000),
            "Failed logins from one IPv4 /24 or IPv6 /48 within `window` that ban it.",
        ),
    )
    delay_after: int = field(
        default=3,
        metadata=setting(
            Int(0, 100000),
            "Failures of an address before its further failures are answered slowly.",
        ),
    )
    delay: float = field(
        default=1.0,
        metadata=setting(
            Float(0, 60), "Seconds of the first delay; it doubles with each further failure."
        ),
    )
    delay_max: float = field(
        default=16.0,
        metadata=setting(Float(0, 300), "Longest delay before answering a failed login."),
    )
    ban_time: float = field(
        default=900.0,
        metadata=setting(
            Float(1, 8640000), "Seconds of a first ban; it doubles for each repeat offence."
        ),
    )
    ban_max: float = field(
        default=86400.0,
        metadata=setting(Float(1, 8640000), "Longest ban, in seconds."),
    )
    ban_memory: float = field(
        default=604800.0,
        metadata=setting(
            Float(0, 31536000),
            "Seconds after a ban ends during which a new ban counts as a repeat offence.",
        ),
    )
    ipv6_escalation: int = field(
        default=3,
        metadata=setting(
            Int(2, 256),
            "Banned /64s inside one /56 that ban the /56 (and banned /56s inside a /48 the /48).",
        ),
    )
    account_failures: int = field(
        default=20,
        metadata=setting(
            Int(1, 1000000),
            "Distinct wrong passwords for one account, from all networks, within "
            "`account_window` that lock it for networks it has not logged in from.",
        ),
    )
    account_window: float = field(
        default=3600.0,
        metadata=setting(Float(10, 8640000), "Seconds over which an account's failures count."),
    )
    known_failures: int = field(
        default=30,
        metadata=setting(
            Int(1, 1000000),
            "Failures for one account from one of its known networks within "
            "`account_window` that lock the account there too.",
        ),
    )
    known_network_memory: float = field(
        default=2592000.0,
        metadata=setting(
            Float(0, 31536000),
            "Seconds a network stays known to an account after a successful login (30 days).",
        ),
    )
    networks_per_hour: int = field(
        default=5,
        metadata=setting(
            Int(0, 100000),
            "Distinct /24 (IPv6 /48) networks an account may log in from within an hour "
            "before it is flagged as compromised; 0 never flags.",
        ),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SendingLimitsConfig:
    """What an authenticated account may send; `sendgate user set` overrides per user (0: none)."""

    messages_per_hour: int = field(
        default=200,
        metadata=setting(Int(0, 100000000), "Messages per rolling hour; 0 is unlimited."),
    )
    messages_per_day: int = field(
        default=1000,
        metadata=setting(Int(0, 100000000), "Messages per rolling day; 0 is unlimited."),
    )
    recipients_per_message: int = field(
        default=100,
        metadata=setting(
            Int(0, 100000000),
            "Recipients of one message (at most limits.max_recipients); 0 is unlimited.",
        ),
    )
    recipients_per_day: int = field(
        default=2000,
        metadata=setting(Int(0, 100000000), "Recipients per rolling day; 0 is unlimited."),
    )
    new_recipients_per_day: int = field(
        default=500,
        metadata=setting(
            Int(0, 100000000),
            "Distinct recipient addresses per rolling day; 0 is unlimited.",
        ),
    )
    flagged: str = field(
        default="hold",
        metadata=setting(
            Choice(("hold", "refuse")),
            "What happens to mail from an account flagged as compromised: kept in the queue "
            "until released (hold) or refused with 451 4.7.1.",
        ),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SignInNoticeConfig:
    """The notice an account gets when it logs in from a network it has not used before."""

    enabled: bool = field(
        default=True,
        metadata=setting(Bool(), "Send notices; `sendgate user set` can turn one user's off."),
    )
    per_day: int = field(
        default=5,
        metadata=setting(Int(1, 1000), "Most notices one account gets per rolling day."),
    )
