"""Run the conformance suite against the Node reference server, to prove the runner works.

    python tests/durable_streams/run_reference.py                 # in-memory store
    python tests/durable_streams/run_reference.py --store file    # file-backed (LMDB + logs)
    python tests/durable_streams/run_reference.py --store both --json out.json

Installs npm ``@durable-streams/server@0.3.7`` (the reference server; a library with no
``bin``) into ``~/.cache/agentsync-tests/durable-streams-server-0.3.7``, writes a
10-line ``serve.mjs`` there that starts ``DurableStreamTestServer`` on 127.0.0.1 with port 0
and prints its URL, starts it in its own session, runs
:func:`tests.durable_streams.runner.run_conformance` against it and stops it by its PID's
process group. ``--long-poll-timeout-ms N`` sets the server's long-poll timeout and tells
the suite (default: neither; the server waits 30 s, the suite assumes 20 s; upstream's own
CI runs the server with 500 ms).

Result against 0.3.7 on this project's CI machine: see docs/durable-streams.md.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``tests.durable_streams`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.durable_streams.runner import (
    ConformanceError,
    ConformanceResult,
    cache_root,
    run_conformance,
)

SERVER_VERSION = "0.3.7"
_LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")

SERVE_MJS = """\
// Written by tests/durable_streams/run_reference.py: start the reference server.
import { DurableStreamTestServer } from "@durable-streams/server"
const opts = { host: "127.0.0.1", port: Number(process.env.DS_PORT || 0) }
if (process.env.DS_DATA_DIR) opts.dataDir = process.env.DS_DATA_DIR
const lp = process.env.DS_LONG_POLL_TIMEOUT_MS
if (lp) opts.longPollTimeout = Number(lp)
const server = new DurableStreamTestServer(opts)
const url = await server.start()
console.log(`listening on ${url}`)
const stop = async () => { await server.stop(); process.exit(0) }
process.on("SIGTERM", stop)
process.on("SIGINT", stop)
"""


def server_dir(version: str = SERVER_VERSION) -> Path:
    return cache_root() / f"durable-streams-server-{version}"


def install_server(version: str = SERVER_VERSION, timeout: float = 600.0) -> Path:
    """``npm install @durable-streams/server@VERSION`` into the cache (once); the dir."""
    prefix = server_dir(version)
    pkg = prefix / "node_modules" / "@durable-streams" / "server" / "package.json"

    def installed() -> bool:
        return pkg.exists() and json.loads(pkg.read_text()).get("version") == version

    if not installed():
        npm = shutil.which("npm")
        if npm is None:
            raise ConformanceError("npm is not on PATH")
        prefix.mkdir(parents=True, exist_ok=True)
        with open(prefix.parent / f"durable-streams-server-{version}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not installed():
                cmd = [
                    npm,
                    "install",
                    "--prefix",
                    str(prefix),
                    "--no-save",
                    "--no-audit",
                    "--no-fund",
                    "--loglevel=error",
                    f"@durable-streams/server@{version}",
                ]
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
                if out.returncode != 0 or not installed():
                    raise ConformanceError(
                        f"{' '.join(cmd)} exited {out.returncode}\n{out.stderr[-4000:]}"
                    )
    (prefix / "serve.mjs").write_text(SERVE_MJS)
    return prefix


class ReferenceServer:
    """The reference server as a subprocess in its own session, logs in ``log_dir``."""

    def __init__(self, prefix: Path, log_dir: Path, env: dict[str, str]) -> None:
        self.prefix = prefix
        self.log_dir = log_dir
        self.env = env
        self.popen: subprocess.Popen[bytes] | None = None
        self.url: str | None = None

    @property
    def stdout_path(self) -> Path:
        return self.log_dir / "server.stdout"

    def start(self, timeout: float = 30.0) -> str:
        node = shutil.which("node") or "node"
        keep = ("PATH", "HOME", "LANG", "TZ", "TMPDIR")
        env = {k: v for k, v in os.environ.items() if k in keep}
        env.update(self.env)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.stdout_path, "wb") as out, open(self.log_dir / "server.stderr", "wb") as err:
            self.popen = subprocess.Popen(
                [node, str(self.prefix / "serve.mjs")],
                cwd=self.prefix,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise ConformanceError(f"reference server exited early\n{self.logs()}")
            m = _LISTENING.search(self.stdout_path.read_text(errors="replace"))
            if m:
                self.url = m.group(1)
                return self.url
            time.sleep(0.05)
        raise ConformanceError(f"reference server not listening after {timeout}s\n{self.logs()}")

    def logs(self, chars: int = 3000) -> str:
        parts = []
        for name in ("server.stdout", "server.stderr"):
            p = self.log_dir / name
            if p.exists():
                parts.append(f"--- {name}\n{p.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM then SIGKILL the server's own process group, while its leader is unreaped."""
        popen = self.popen
        if popen is None:
            return None
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGTERM)
            try:
                popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(popen.pid, signal.SIGKILL)
                popen.wait(grace)
        return popen.returncode

    def __enter__(self) -> ReferenceServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_reference(
    store: str, workdir: Path, long_poll_timeout_ms: int | None, timeout: float
) -> ConformanceResult:
    prefix = install_server()
    env: dict[str, str] = {}
    if long_poll_timeout_ms is not None:
        env["DS_LONG_POLL_TIMEOUT_MS"] = str(long_poll_timeout_ms)
    if store == "file":
        data = workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        env["DS_DATA_DIR"] = str(data)
    with ReferenceServer(prefix, workdir / "logs", env) as server:
        url = server.start()
        # With a timeout given, the suite is told it too (its long-poll tests wait it + 1 s);
        # without, both keep their defaults (server 30 s, suite 20 s), as a plain
        # ``runConformanceTests({ baseUrl })`` against a default server would.
        return run_conformance(
            url, workdir / "vitest", timeout, long_poll_timeout_ms=long_poll_timeout_ms
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=("memory", "file", "both"), default="memory")
    parser.add_argument("--long-poll-timeout-ms", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=900.0, help="per vitest run")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp dir")
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    args = parser.parse_args(argv)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="ds-reference-"))
    stores = ("memory", "file") if args.store == "both" else (args.store,)
    results: dict[str, Any] = {"server": f"@durable-streams/server@{SERVER_VERSION}"}
    code = 0
    for store in stores:
        result = run_reference(store, root / store, args.long_poll_timeout_ms, args.timeout)
        print(f"[{store}] {result.summary()}\n", flush=True)
        results[store] = result.to_json()
        code = code or (0 if result.ok else 1)
    print(f"logs and reports under {root}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
