"""Every contract test runs once per backend named in backends.BACKENDS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.contracts.backends import BACKENDS, StoreBackend


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreBackend]:
    made: StoreBackend = BACKENDS[request.param](tmp_path)
    try:
        yield made
    finally:
        made.close()
