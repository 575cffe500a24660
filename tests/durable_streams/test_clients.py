"""The official Durable Streams clients against a real agentsync server.

Each client runs in its own process, as a user's program would, driven one step at a time
by a small script, so that the server can be SIGKILLed and restarted between two steps:

* PyPI ``durable-streams`` (0.1.0, a dev dependency), ``client_py/interop.py``: create,
  append with ``Stream-Seq``, catch-up, resume from a saved offset across a SIGKILL and
  restart (re-sending the last acknowledged append is refused, not doubled), and a live
  tail of an agentsync session at ``/v1/stream/sessions/{id}`` by long-poll and by SSE.
  (Not imported here: in pytest's process ``durable_streams`` is this test package.)
* npm ``@durable-streams/client`` (0.2.7, pinned in ``client_js/package-lock.json``),
  ``client_js/interop.mjs``: an ``IdempotentProducer`` writes, the server is SIGKILLed and
  restarted, the next run (a restarted producer: next epoch) resumes from the offset the
  first one saved, and the old epoch is fenced; and a live tail of a session.

The npm project is installed once with ``npm ci`` into
``~/.cache/agentsync-tests/durable-streams-client-<version>`` (``AGENTSYNC_DS_CACHE``
moves it), re-installed when ``package.json`` or the lock change; without ``node``/``npm``
(or the registry, for the first install) the JS tests are skipped (failed in CI).
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import service_missing
from e2e._support import append, create_share, message, read_log, uid

from .runner import cache_root

JS_CLIENT_VERSION = "0.2.7"
CLIENT_JS = Path(__file__).resolve().parent / "client_js"
CLIENT_PY = Path(__file__).resolve().parent / "client_py" / "interop.py"
LONG_POLL_SECONDS = 1
STEP_TIMEOUT = 25.0


def offset(seq: int) -> str:
    return f"{0:016d}_{seq:016d}"


def run_step(cmd: list[str], cwd: Path) -> dict[str, Any]:
    """One step of a driver script; its last JSON line."""
    out = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=STEP_TIMEOUT, stdin=subprocess.DEVNULL
    )
    assert out.returncode == 0, f"{cmd[1:3]} exited {out.returncode}:\n{out.stderr}"
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


async def tail_session(
    srv: Any, tail: list[str], mode: str, cwd: Path, *, later: int = 4, offsets: bool = True
) -> None:
    """Run ``tail URL TOKEN MODE N``, a client's live tail of a token share from the start
    until it has N items: once it has read the event already there, append ``later`` more
    through the agentsync API, one batch at a time; it must read the log exactly.
    ``offsets``: the client reports each batch's offset as it hands the batch over."""
    async with httpx.AsyncClient(base_url=srv.url, timeout=10.0) as http:
        share = await create_share(http, read="token")
        await append(http, share, [message("m1", "hi", role="user", id=uid())])
        url = f"{srv.url}/v1/stream/sessions/{share['session_id']}"
        proc = await asyncio.create_subprocess_exec(
            *tail,
            url,
            share["read_token"],
            mode,
            str(1 + later),
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        try:
            async with asyncio.timeout(STEP_TIMEOUT):
                while True:  # the catch-up batch (a client may report empty ones first)
                    line = await proc.stdout.readline()
                    assert line, (await proc.stderr.read()).decode()
                    batch = json.loads(line)
                    if batch["batch"]:
                        break
                assert batch["batch"] == 1, batch
                assert not offsets or batch["offset"] == offset(1), batch
                for i in range(later):
                    await append(http, share, [message("m2", f"token {i}", id=uid())])
                    await asyncio.sleep(0.05)
                stdout, stderr = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, stderr.decode()
        result = json.loads(stdout.decode().strip().splitlines()[-1])
        log = await read_log(http, share["session_id"], token=share["secret"])
        assert result["items"] == log  # every event once, in seq order
        assert [e["seq"] for e in log] == list(range(1, 2 + later))
        assert not offsets or result["offset"] == offset(1 + later)


def py_step(*args: str) -> list[str]:
    return [sys.executable, str(CLIENT_PY), *args]


# --- PyPI durable-streams ----------------------------------------------------------------


def test_python_client_resumes_across_a_sigkill(server_factory: Any) -> None:
    srv = server_factory(rate_limit=0, stream_long_poll_seconds=LONG_POLL_SECONDS)
    url = f"{srv.url}/v1/stream/py-interop"
    wrote = run_step(py_step("write", url, "20"), CLIENT_PY.parent)
    assert wrote["items"] == [{"n": n} for n in range(20)]
    assert wrote["offset"] == offset(20)
    assert wrote["saved"] == offset(10)

    srv.restart()  # SIGKILL, then the same data directory

    resumed = run_step(py_step("resume", url, wrote["saved"], "20", "30"), CLIENT_PY.parent)
    assert resumed["tail"] == offset(20)
    assert resumed["refused"] is True  # acknowledged before the kill: kept, and once
    assert resumed["rest"]["items"] == [{"n": n} for n in range(10, 30)]  # exactly the rest
    assert resumed["all"]["items"] == [{"n": n} for n in range(30)]
    assert resumed["all"]["offset"] == offset(30)


@pytest.mark.parametrize("mode", ["long-poll", "sse"])
async def test_python_client_tails_a_live_session(server_factory: Any, mode: str) -> None:
    srv = server_factory(rate_limit=0, stream_long_poll_seconds=LONG_POLL_SECONDS)
    # In SSE mode the 0.1.0 client updates its offset from the control event that follows
    # a data event, after it has handed the batch over: the offset lags by one batch.
    await tail_session(srv, py_step("tail"), mode, CLIENT_PY.parent, offsets=mode != "sse")


# --- npm @durable-streams/client -------------------------------------------------------


def _lock_digest() -> str:
    h = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        h.update(name.encode() + b"\0" + (CLIENT_JS / name).read_bytes() + b"\0")
    return h.hexdigest()


def install_js_client(timeout: float = 300.0) -> Path:
    """The cached npm project holding the client (``npm ci`` on first use; a file lock
    serialises installers, a digest stamp notices a changed lock)."""
    prefix = cache_root() / f"durable-streams-client-{JS_CLIENT_VERSION}"
    stamp = prefix / ".agentsync-installed"
    digest = _lock_digest()
    marker = prefix / "node_modules" / "@durable-streams" / "client" / "package.json"

    def installed() -> bool:
        return marker.exists() and stamp.exists() and stamp.read_text().strip() == digest

    if installed():
        return prefix
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        service_missing("node and npm are needed to run @durable-streams/client")
    prefix.mkdir(parents=True, exist_ok=True)
    with open(prefix.parent / f"durable-streams-client-{JS_CLIENT_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if installed():
            return prefix
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(CLIENT_JS / name, prefix / name)
        stamp.unlink(missing_ok=True)
        cmd = [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"]
        try:
            out = subprocess.run(cmd, cwd=prefix, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            service_missing(f"npm ci for @durable-streams/client took over {timeout}s")
        if out.returncode != 0 or not marker.exists():
            service_missing(f"npm ci for @durable-streams/client failed: {out.stderr[-2000:]}")
        stamp.write_text(digest + "\n")
    return prefix


@pytest.fixture(scope="module")
def js_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with interop.mjs beside a ``node_modules`` link to the cached client."""
    prefix = install_js_client()
    workdir = tmp_path_factory.mktemp("client_js")
    shutil.copyfile(CLIENT_JS / "interop.mjs", workdir / "interop.mjs")
    (workdir / "node_modules").symlink_to(prefix / "node_modules", target_is_directory=True)
    return workdir


def js_step(*args: str) -> list[str]:
    return [shutil.which("node") or "node", "interop.mjs", *args]


def test_js_producer_resumes_across_a_sigkill(server_factory: Any, js_client: Path) -> None:
    srv = server_factory(rate_limit=0, stream_long_poll_seconds=LONG_POLL_SECONDS)
    url = f"{srv.url}/v1/stream/js-interop"
    first = [{"phase": 1, "n": n} for n in range(20)]
    wrote = run_step(js_step("write", url, "20"), js_client)
    assert wrote["items"] == first
    assert wrote["upToDate"] is True
    assert wrote["offset"] == offset(4)  # one unit per producer POST (5 values each)

    srv.restart()  # SIGKILL, then the same data directory

    resumed = run_step(js_step("resume", url, wrote["offset"], "10"), js_client)
    second = [{"phase": 2, "n": n} for n in range(10)]
    assert resumed["rest"]["items"] == second  # from the saved offset: exactly the rest
    assert resumed["all"]["items"] == first + second
    assert resumed["all"]["offset"] == offset(6)
    assert "StaleEpochError" in resumed["fenced"]  # epoch 0 is fenced by epoch 1 (403)
    assert resumed["afterZombie"] == 30
    with httpx.Client(timeout=10.0) as http:
        head = http.head(url)
        assert head.headers["stream-next-offset"] == resumed["all"]["offset"]


@pytest.mark.parametrize("mode", ["long-poll", "sse"])
async def test_js_client_tails_a_live_session(
    server_factory: Any, js_client: Path, mode: str
) -> None:
    srv = server_factory(rate_limit=0, stream_long_poll_seconds=LONG_POLL_SECONDS)
    await tail_session(srv, js_step("tail"), mode, js_client)
