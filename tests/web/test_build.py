"""The viewer's script is built from viewer/ with npm, and the built file is committed so
that installing or running agentsync needs no Node. This checks that the committed file is
exactly what the lock file and sources build, so nobody edits the bundle by hand."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from conftest import service_missing

ROOT = Path(__file__).resolve().parents[2]
STATIC = Path("src/agentsync/server/web/static")
BUILT = ("viewer.js", "viewer.js.LEGAL.txt")


def test_committed_bundle_is_what_the_lock_file_builds(tmp_path: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        service_missing("npm, to check the viewer build")
    work = tmp_path / "viewer"
    work.mkdir()
    for name in ("package.json", "package-lock.json"):
        shutil.copy(ROOT / "viewer" / name, work / name)
    shutil.copytree(ROOT / "viewer" / "src", work / "src")
    (tmp_path / STATIC).mkdir(parents=True)
    env = {**os.environ, "npm_config_update_notifier": "false"}
    for command in (["ci", "--no-audit", "--no-fund"], ["run", "build"]):
        done = subprocess.run(
            [npm, *command], cwd=work, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout + done.stderr
    for name in BUILT:
        assert (tmp_path / STATIC / name).read_bytes() == (ROOT / STATIC / name).read_bytes(), (
            f"{STATIC / name} differs from a clean build: run `npm ci && npm run build` in viewer/"
        )
