"""Tests for sendgate.delivery.target: the values check themselves and keep secrets out of repr."""

from __future__ import annotations

import re
from typing import Any

import pytest
from tests.unit.delivery.client_peers import OPPORTUNISTIC, PLAINTEXT

from sendgate.delivery.target import RemoteReply, Target, TlsRequirement

# --- values ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"mode": "sometimes", "verify": "none"}, "TLS mode must be one of"),
        ({"mode": "required", "verify": "maybe"}, "TLS verify must be one of"),
        ({"mode": "opportunistic", "verify": "pkix", "names": ("a",)}, "needs mode 'required'"),
        ({"mode": "opportunistic", "verify": "none", "implicit": True}, "implicit TLS needs"),
        ({"mode": "required", "verify": "pkix"}, "at least one acceptable name"),
        ({"mode": "required", "verify": "dane"}, "needs a leaf_check"),
    ],
)
def test_tls_requirement_refuses_nonsense(kwargs: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        TlsRequirement(**kwargs)


@pytest.mark.parametrize(
    ("host", "address", "port", "error"),
    [
        ("", "127.0.55.1", 25, "is not a host name"),
        ("mx.test", "mx.test", 25, "is not an IP address"),
        ("mx.test", "127.0.55.1", 0, "out of range"),
    ],
)
def test_target_refuses_nonsense(host: str, address: str, port: int, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        Target(host, address, port, OPPORTUNISTIC)


def test_target_repr_hides_the_password() -> None:
    assert "s3cret" not in repr(
        Target("mx.test", "127.0.55.1", 25, PLAINTEXT, auth=("a", "s3cret"))
    )


def test_remote_reply_str_is_one_line() -> None:
    assert str(RemoteReply(550, "5.1.1 no\nsuch user")) == "550 5.1.1 no such user"
    assert str(RemoteReply(250, "")) == "250"
