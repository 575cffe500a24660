"""Fixtures of the SDK tests: a real server, and outbox files in the test's directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def srv(server_factory: Any) -> Any:
    """A server without the write rate limit."""
    return server_factory(rate_limit=0)


@pytest.fixture
def outbox_path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.db"
