"""Fixtures shared by the outbound client's tests."""

from __future__ import annotations

import pytest
from tests.unit.delivery.client_peers import Pki


@pytest.fixture(scope="session")
def pki() -> Pki:
    """One CA with the peers' certificates (mx.test and relay.test; other.test)."""
    return Pki.make()
