"""The official Durable Streams conformance suite (npm
``@durable-streams/server-conformance-tests``, see runner.py) against a real agentsync
server on SQLite and on PostgreSQL (a schema of its own, dropped after).

Every test must pass except the expected failures below, each with its reason; a test
that starts passing while still listed fails this test too, so the list stays honest.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from conftest import service_missing

from ._backends import BACKENDS, PG_URL, pg_schema
from .runner import ConformanceError, run_conformance

LONG_POLL_SECONDS = 1  # the suite's offset=now long-poll tests have 5 s in all

# Tests expected to fail: exact name -> one-line reason. A listed test that passes fails
# this test too.
EXPECTED_FAILURES: dict[str, str] = {}


def expected_to_fail(name: str) -> bool:
    return name in EXPECTED_FAILURES


@pytest.fixture(params=BACKENDS)
async def store_flags(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, Any]]:
    """Server flags for each store: nothing for SQLite, a fresh schema for PostgreSQL."""
    if request.param == "sqlite":
        yield {}
        return
    async with pg_schema() as schema:
        yield {"store": f"{PG_URL}?schema={schema}"}


def test_official_conformance_suite(
    server_factory: Any, store_flags: dict[str, Any], tmp_path: Path
) -> None:
    srv = server_factory(
        address_limits=False, stream_long_poll_seconds=LONG_POLL_SECONDS, **store_flags
    )
    try:
        result = run_conformance(
            srv.url,
            tmp_path / "conformance",
            timeout=240,
            long_poll_timeout_ms=LONG_POLL_SECONDS * 1000,
        )
    except ConformanceError as exc:
        if "not on PATH" in str(exc) or "registry" in str(exc).lower():
            service_missing(f"the conformance suite cannot run: {exc}")
        raise
    print(result.summary(max_message=200))
    assert not result.errors, result.errors
    unexpected = {n: m for n, m in result.failed.items() if not expected_to_fail(n)}
    now_passing = sorted(n for n in result.passed if expected_to_fail(n))
    print(f"expected failures: {len(result.failed) - len(unexpected)}")
    for name in now_passing:
        print(f"NOW PASSING (update the expected-failure list): {name}")
    assert not unexpected, "unexpected failures:\n" + "\n".join(
        f"{n}\n    {' '.join(m.split())[:300]}" for n, m in unexpected.items()
    )
    assert not now_passing, "expected failures that pass now:\n" + "\n".join(now_passing)
    assert len(result.passed) >= 250, result.summary()
