"""Fixtures of the end-to-end tests (the server processes are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest


@pytest.fixture
async def http(server: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client bound to the ``server`` fixture's URL."""
    async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as client:
        yield client
