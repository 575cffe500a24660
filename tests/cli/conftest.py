"""Fixtures of the CLI tests: a state directory and pseudo-terminal processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ._support import PtyProcess


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """``AGENTSYNC_HOME`` for the CLI under test: its local share list lives here."""
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def pty_cli(home: Path) -> Iterator[Callable[..., PtyProcess]]:
    started: list[PtyProcess] = []

    def start(*args: str) -> PtyProcess:
        proc = PtyProcess(*args, home=home)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()
