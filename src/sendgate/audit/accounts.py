"""The audit of accounts: password hashes weaker than today's policy, users with no address.

Security: hashes are parsed for their parameters only (`argon2.extract_parameters`); they are
never shown, and user names appear only in the admin's own report.
"""

from __future__ import annotations

from argon2 import Type, extract_parameters
from argon2.exceptions import InvalidHashError

from sendgate.findings import Finding, Severity
from sendgate.policy.passwords import new_hasher
from sendgate.store.users import UserRecord

_SHOWN = 5  # names listed in a finding; the rest are counted


def account_findings(users: list[UserRecord]) -> list[Finding]:
    policy = new_hasher()
    weak: list[str] = []
    for user in users:
        try:
            params = extract_parameters(user.password_hash)
        except InvalidHashError:
            weak.append(f"{user.username} (not an argon2 hash)")
            continue
        if (
            params.type is not Type.ID
            or params.memory_cost < policy.memory_cost
            or params.time_cost < policy.time_cost
        ):
            weak.append(
                f"{user.username} ({params.type.name.lower()}, m={params.memory_cost}, "
                f"t={params.time_cost})"
            )
    findings = []
    if weak:
        findings.append(
            Finding(
                "audit.weak_password_hash",
                Severity.WARNING,
                f"{len(weak)} password hash{'es' if len(weak) > 1 else ''} weaker than the "
                f"policy (argon2id, m={policy.memory_cost}, t={policy.time_cost})",
                _names(weak),
                "set a new password for each: sendgate --config FILE user passwd USER",
            )
        )
    lost = [user.username for user in users if not user.addresses]
    if lost:
        findings.append(
            Finding(
                "audit.user_without_address",
                Severity.WARNING,
                f"{len(lost)} user{'s' if len(lost) > 1 else ''} may log in but send as no "
                "address: a password that works for nothing",
                _names(lost),
                "give an address (sendgate user addr-add USER ADDRESS) or remove the user",
            )
        )
    return findings


def _names(names: list[str]) -> str:
    more = len(names) - _SHOWN
    return ", ".join(names[:_SHOWN]) + (f" and {more} more" if more > 0 else "")
