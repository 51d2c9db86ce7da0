"""aiosmtpd that also offers DSN (RFC 3461) and REQUIRETLS (RFC 8689) and records their values.

aiosmtpd refuses MAIL and RCPT parameters it does not know with 555, so `ExtendedSMTP` takes
RET, ENVID and REQUIRETLS off MAIL FROM and NOTIFY and ORCPT off RCPT TO (each only when it
offers the extension, so an unoffered one is still refused), records them, and lets aiosmtpd
handle the rest. It adds "DSN" and, over TLS only, "REQUIRETLS" to its EHLO reply.

Security: test code only.
"""

from __future__ import annotations

from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP


class ExtendedSMTP(SMTP):
    """aiosmtpd offering DSN and/or REQUIRETLS; `mail_params` and `rcpt_params` hold what the
    current transaction's MAIL and RCPT commands carried ("KEY" or "KEY=value", as sent)."""

    def __init__(self, handler: Any, *, dsn: bool = False, requiretls: bool = False, **kw: Any):
        super().__init__(handler, **kw)
        self.offer_dsn = dsn
        self.offer_requiretls = requiretls
        self.mail_params: tuple[str, ...] = ()
        self.rcpt_params: dict[str, tuple[str, ...]] = {}
        self._in_ehlo = False

    def _tls(self) -> bool:
        return self.session is not None and self.session.ssl is not None

    async def smtp_EHLO(self, hostname: str) -> None:  # noqa: N802 - aiosmtpd's method name
        self._in_ehlo = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._in_ehlo = False

    async def push(self, status: AnyStr) -> None:
        if self._in_ehlo and status == "250 HELP":
            if self.offer_dsn:
                await super().push("250-DSN")
            if self.offer_requiretls and self._tls():
                await super().push("250-REQUIRETLS")
        await super().push(status)

    async def smtp_MAIL(self, arg: str | None) -> None:  # noqa: N802
        keys = {"RET", "ENVID"} if self.offer_dsn else set()
        if self.offer_requiretls and self._tls():
            keys.add("REQUIRETLS")
        rest, taken = _take(arg, keys)
        self.mail_params, self.rcpt_params = taken, {}
        await super().smtp_MAIL(rest)

    async def smtp_RCPT(self, arg: str | None) -> None:  # noqa: N802
        rest, taken = _take(arg, {"NOTIFY", "ORCPT"} if self.offer_dsn else set())
        if rest is not None and taken:
            address = rest.split(":", 1)[-1].strip().strip("<>")
            self.rcpt_params[address] = taken
        await super().smtp_RCPT(rest)


def _take(arg: str | None, keys: set[str]) -> tuple[str | None, tuple[str, ...]]:
    """`arg` without the parameters named in `keys`, and those parameters."""
    if arg is None or not keys:
        return arg, ()
    path, *params = arg.split(" ")
    taken = tuple(p for p in params if p.partition("=")[0].upper() in keys)
    kept = [p for p in params if p.partition("=")[0].upper() not in keys]
    return " ".join([path, *kept]), taken
