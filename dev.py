#!/usr/bin/env python3
"""Set up a virtual environment on first use, then run the server or the tests.

    python3 dev.py serve [agentsync serve flags]   # the server on SQLite in ./agentsync-data
    python3 dev.py test [pytest args]              # ruff (lint, format), mypy, then the tests

Needs only Python 3.11+. The environment lives in .venv and is reinstalled when
pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".agentsync-installed"


def ensure_venv() -> None:
    if sys.version_info < (3, 11):
        sys.exit("agentsync needs Python 3.11 or newer; run this with python3.11")
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not (BIN / "python").exists():
        print("dev.py: creating .venv", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    print("dev.py: installing agentsync and its test tools into .venv", flush=True)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "-e", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(wanted)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("serve", "test"):
        print(__doc__)
        return 2
    ensure_venv()
    command, rest = argv[0], argv[1:]
    if command == "serve":
        os.execv(str(BIN / "agentsync"), [str(BIN / "agentsync"), "serve", *rest])
    steps = [
        [str(BIN / "ruff"), "check", "src", "tests", "bench"],
        [str(BIN / "ruff"), "format", "--check", "src", "tests", "bench"],
        [str(BIN / "mypy"), "src/agentsync"],
        [str(BIN / "python"), "-m", "pytest", "-q", *rest],
    ]
    for step in steps:
        print("dev.py:", " ".join(Path(step[0]).name if i == 0 else a for i, a in enumerate(step)),
              flush=True)
        code = subprocess.run(step, cwd=ROOT).returncode
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
