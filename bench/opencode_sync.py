"""opencode's share path under load: syncs/s and latency, against native appends.

Starts ``agentsync serve`` (rate limits off, fresh temp data dir). C concurrent clients each
play an opencode session as opencode's share client sends it: every sync carries the
assistant message (tokens updated), its text part grown by a sentence, and every fifth
sync a tool part that goes pending → running → completed. The peer, in the same run, is
the native API: C clients appending, per request, as many ``message.delta`` events as the
matching sync stored. Reports requests/s, events/s and p50/p99 request latency.

    python bench/opencode_sync.py                      # 50 clients x 200 syncs
    python bench/opencode_sync.py --clients 20 --syncs 100 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from typing import Any

import httpx

from sdk_publish import start_server  # bench/ is the script's directory

SENTENCE = "The answer grows by one sentence per sync, as opencode batches a second. "


def sync_items(session: str, step: int) -> list[dict[str, Any]]:
    message = {
        "id": "msg_0002", "sessionID": session, "role": "assistant", "mode": "build",
        "agent": "build", "modelID": "m", "providerID": "p", "cost": 0.001 * step,
        "tokens": {"input": 100, "output": step * 12, "reasoning": 0,
                   "cache": {"read": 0, "write": 0}},
        "time": {"created": 1},
    }  # fmt: skip
    text = {
        "id": "prt_0001", "messageID": "msg_0002", "sessionID": session, "type": "text",
        "text": SENTENCE * (step + 1), "time": {"start": 1},
    }  # fmt: skip
    items = [{"type": "message", "data": message}, {"type": "part", "data": text}]
    if step % 5 == 4:
        tool = {
            "id": f"prt_1{step:04d}", "messageID": "msg_0002", "sessionID": session,
            "type": "tool", "tool": "bash", "callID": f"call_{step}",
            "state": {"status": "completed", "input": {"command": f"echo {step}"},
                      "output": f"{step}\n", "time": {"start": 1, "end": 2}},
        }  # fmt: skip
        items.append({"type": "part", "data": tool})
    return items


async def opencode_client(http: httpx.AsyncClient, syncs: int, sizes: list[int]) -> list[float]:
    share = (await http.post("/api/share", json={"sessionID": "ses_bench"})).json()
    url, secret = f"/api/share/{share['id']}/sync", share["secret"]
    latencies = []
    for step in range(syncs):
        start = time.perf_counter()
        res = await http.post(url, json={"secret": secret, "data": sync_items("ses_x", step)})
        latencies.append(time.perf_counter() - start)
        res.raise_for_status()
        sizes.append(len(res.json()["seqs"]))
    return latencies


async def native_client(http: httpx.AsyncClient, sizes: list[int]) -> list[float]:
    share = (await http.post("/v1/shares", json={})).json()
    url = f"/v1/sessions/{share['session_id']}/events"
    auth = {"Authorization": f"Bearer {share['secret']}"}
    first = {"type": "message", "data": {"id": "m", "role": "assistant", "content": ""}}
    (await http.post(url, json={"events": [first]}, headers=auth)).raise_for_status()
    latencies = []
    for size in sizes:
        events = [{"type": "message.delta", "data": {"id": "m", "delta": SENTENCE}}] * size
        start = time.perf_counter()
        res = await http.post(url, json={"events": events}, headers=auth)
        latencies.append(time.perf_counter() - start)
        res.raise_for_status()
    return latencies


def row(name: str, latencies: list[float], seconds: float, events: int) -> dict[str, Any]:
    latencies.sort()
    return {
        "path": name,
        "requests_per_s": len(latencies) / seconds,
        "events_per_s": events / seconds,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
    }


async def one_run(url: str, clients: int, syncs: int) -> list[dict[str, Any]]:
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
        sizes: list[list[int]] = [[] for _ in range(clients)]
        start = time.perf_counter()
        got = await asyncio.gather(
            *(opencode_client(http, syncs, sizes[i]) for i in range(clients))
        )
        oc_seconds = time.perf_counter() - start
        start = time.perf_counter()
        native = await asyncio.gather(*(native_client(http, sizes[i]) for i in range(clients)))
        native_seconds = time.perf_counter() - start
    events = sum(sum(s) for s in sizes)
    return [
        row("opencode /api/share/…/sync", [x for lat in got for x in lat], oc_seconds, events),
        row(
            "native /v1/…/events (peer)", [x for lat in native for x in lat], native_seconds, events
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--syncs", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    runs: list[list[dict[str, Any]]] = []
    for _ in range(args.repeat):
        tmp = tempfile.mkdtemp(prefix="agentsync-opencode-bench-")
        proc, url = start_server(os.path.join(tmp, "data"))
        try:
            runs.append(asyncio.run(one_run(url, args.clients, args.syncs)))
        finally:
            proc.kill()
            proc.wait()
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"{args.clients} clients x {args.syncs} syncs, median of {args.repeat} run(s)")
    print(f"{'path':<30}{'req/s':>9}{'events/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
    for i, name in enumerate(r["path"] for r in runs[0]):
        med = {k: statistics.median(run[i][k] for run in runs) for k in runs[0][i] if k != "path"}
        print(f"{name:<30}{med['requests_per_s']:>9,.0f}{med['events_per_s']:>10,.0f}"
              f"{med['p50_ms']:>9.1f}{med['p99_ms']:>9.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
