"""Exactly once, in order: across a killed server, a killed agent and a network outage."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agentsync.client import AsyncShare, Share

from ._support import normalize, of_log, read_log

pytestmark = pytest.mark.timeout(60)

AGENT = Path(__file__).with_name("agent_script.py")


async def stream(
    share: AsyncShare, produced: list[tuple[str, dict[str, Any]]], messages: int, deltas: int
) -> None:
    """Publish like an agent: messages with token deltas, a tool call each, some pauses."""
    for m in range(messages):
        mid = share.add_message("assistant", "", id=f"m{m}")
        produced.append(("message", {"id": mid, "role": "assistant", "content": ""}))
        for j in range(deltas):
            share.stream_text(mid, f"{m}.{j} ")
            produced.append(("message.delta", {"id": mid, "delta": f"{m}.{j} "}))
            if j % 10 == 0:
                await asyncio.sleep(0.002)
        call = share.tool_call(mid, "grep", {"n": m}, id=f"t{m}")
        produced.append(("tool_call", {"messageId": mid, "id": call, "arguments": {"n": m}}))


async def test_server_killed_and_restarted_mid_stream(srv: Any, outbox_path: Path) -> None:
    share = await AsyncShare.create(srv.url, title="kill the server", outbox=outbox_path)
    produced: list[tuple[str, dict[str, Any]]] = []
    agent = asyncio.create_task(stream(share, produced, messages=40, deltas=100))
    await asyncio.sleep(0.3)
    await srv.arestart()  # SIGKILL, then the same port and data
    await asyncio.sleep(0.2)
    await srv.arestart()
    await agent
    async with asyncio.timeout(30):
        await share.flush()
    assert share._conn is not None and share._conn.connects >= 2
    await share.close()
    assert of_log(read_log(srv.url, share.session_id)) == normalize(produced)


def outbox_rows(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT event_id FROM outbox ORDER BY ord")]
    finally:
        conn.close()


def stored_ids(path: Path) -> set[str]:
    """Event ids in a stopped server's SQLite database."""
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT event_id FROM events")}
    finally:
        conn.close()


@pytest.mark.parametrize("server_down", [False, True], ids=["server-up", "server-down"])
def test_agent_killed_mid_stream_then_restarted(
    srv: Any, tmp_path: Path, server_down: bool
) -> None:
    """SIGKILL the agent at a random moment; a new process on the same outbox delivers
    what the outbox had committed. With ``server_down`` the kill comes while the server is
    unreachable, so the outbox certainly holds committed events that were never sent."""
    from .agent_script import plan

    share = Share.create(srv.url, outbox=tmp_path / "creator.db")
    url, secret = share.url, share.secret
    assert secret is not None
    share.close()
    outbox, log_path = tmp_path / "agent.db", tmp_path / "agent.log"
    argv = [sys.executable, str(AGENT), "produce", url, secret, str(outbox), str(log_path)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while not (log_path.exists() and log_path.read_text().count("\n") >= 2):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the agent never flushed"
            time.sleep(0.01)
        time.sleep(random.uniform(0.05, 0.6))
        if server_down:
            srv.kill()
            time.sleep(random.uniform(0.1, 0.3))
            # Under load the agent may not have produced since the server went away:
            # wait until its outbox holds an event the server's database does not.
            stored = stored_ids(srv.data_dir / "agentsync.db")
            deadline = time.monotonic() + 10
            while not set(outbox_rows(outbox)) - stored:
                assert time.monotonic() < deadline, "the agent wrote nothing while offline"
                time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()
    flushed = int(log_path.read_text().split()[-1])  # plan steps acknowledged for sure
    if server_down:
        srv.start()
    before = [e["id"] for e in read_log(srv.url, share.session_id)]
    leftover = outbox_rows(outbox)  # committed, maybe not acknowledged
    if server_down:
        assert set(leftover) - set(before), "the outbox should hold unsent events"

    drain = subprocess.run(
        [sys.executable, str(AGENT), "drain", url, secret, str(outbox), str(log_path)],
        capture_output=True,
        timeout=45,
    )
    assert drain.returncode == 0, drain.stderr.decode()
    assert outbox_rows(outbox) == []
    log = read_log(srv.url, share.session_id)
    ids = [e["id"] for e in log]
    assert ids == before + [i for i in leftover if i not in set(before)]
    got = of_log(log)
    want = normalize([plan(i) for i in range(len(log) * 200)])  # more than enough
    assert got[:-1] == want[: len(got) - 1]
    last, expected = got[-1], want[len(got) - 1]
    assert last[:2] == expected[:2] and expected[2].startswith(last[2])
    assert len(normalize([plan(i) for i in range(flushed)])) <= len(got)


async def test_network_outage_costs_only_delay(srv: Any, outbox_path: Path) -> None:
    share = await AsyncShare.create(srv.url, outbox=outbox_path)
    mid = share.add_message("assistant")
    await share.flush()
    srv.kill()
    text, slowest = [], 0.0
    for i in range(3000):
        t = time.perf_counter()
        share.stream_text(mid, f"{i} ")
        slowest = max(slowest, time.perf_counter() - t)
        text.append(f"{i} ")
        if i % 100 == 0:
            await asyncio.sleep(0.05)  # ~1.5 s of publishing while the server is down
    assert slowest < 0.05, f"a publish call blocked for {slowest * 1000:.1f} ms"
    assert share.pending > 0
    await asyncio.to_thread(srv.start)
    async with asyncio.timeout(30):
        await share.flush()
    await share.close()
    log = read_log(srv.url, share.session_id)
    assert of_log(log) == [("message", mid, ""), ("delta", mid, "".join(text))]
