"""The audit of the defences: brute-force and flood limits switched off or far weaker than the
defaults, and networks exempt from the login limits that are too large to be an office.
"""

from __future__ import annotations

import ipaddress
from dataclasses import MISSING, fields

from sendgate.config.schema import Config
from sendgate.findings import Finding, Severity

WEAKENED = 4  # a limit four times looser than its default is called weakened

# (section, key, which way is looser, whether 0 turns the limit off)
_LIMITS: tuple[tuple[str, str, str, bool], ...] = (
    ("login_limits", "host_failures", "higher", False),
    ("login_limits", "block_failures", "higher", False),
    ("login_limits", "account_failures", "higher", False),
    ("login_limits", "known_failures", "higher", False),
    ("login_limits", "networks_per_hour", "higher", False),
    ("login_limits", "window", "lower", False),
    ("login_limits", "delay", "lower", True),
    ("login_limits", "ban_time", "lower", False),
    ("login_limits", "ban_max", "lower", False),
    ("limits", "unauthenticated_rate_per_ip", "higher", True),
    ("limits", "max_connections_per_ip", "higher", False),
    ("sending_limits", "messages_per_hour", "higher", True),
    ("sending_limits", "messages_per_day", "higher", True),
    ("sending_limits", "recipients_per_day", "higher", True),
    ("sending_limits", "new_recipients_per_day", "higher", True),
)
_BIGGEST_EXEMPT = {4: 16, 6: 48}  # prefix lengths: an organisation's block, not a carrier's


def defence_findings(cfg: Config) -> list[Finding]:
    findings = []
    for section, key, looser, zero_is_off in _LIMITS:
        part = getattr(cfg, section)
        value = getattr(part, key)
        default = _default(type(part), key)
        dotted = f"{section}.{key}"
        if zero_is_off and value == 0:
            findings.append(
                Finding(
                    "audit.limit_off",
                    Severity.WARNING,
                    f"{dotted} = 0 switches this defence off",
                    f"{dotted} = 0 (default {default:g})",
                    f"set {dotted} back to its default ({default:g}) or another value",
                )
            )
        elif (looser == "higher" and value >= default * WEAKENED) or (
            looser == "lower" and value * WEAKENED <= default
        ):
            findings.append(
                Finding(
                    "audit.limit_weakened",
                    Severity.WARNING,
                    f"{dotted} is {WEAKENED} or more times looser than its default",
                    f"{dotted} = {value:g} (default {default:g})",
                    f"bring {dotted} closer to {default:g}",
                )
            )
    for text in cfg.login_limits.allow:
        network = ipaddress.ip_network(text, strict=False)
        if network.prefixlen < _BIGGEST_EXEMPT[network.version]:
            findings.append(
                Finding(
                    "audit.login_exempt_too_wide",
                    Severity.WARNING,
                    f"{network} is exempt from the login limits: attackers there guess freely",
                    f"login_limits.allow includes {network} ({network.num_addresses} addresses)",
                    "exempt only your own networks (monitoring hosts, the office)",
                )
            )
    return findings


def _default(section: type, key: str) -> float:
    for field in fields(section):
        if field.name == key and field.default is not MISSING:
            return float(field.default)
    raise KeyError(key)  # a name in _LIMITS that the schema lost: a test catches it
