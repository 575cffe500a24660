"""SDK publish benchmark: the agent's time per ``stream_text`` call, and end-to-end events/s.

Starts ``agentsync serve`` (rate limits off, fresh temp data dir) and, for ``AsyncShare`` and
the blocking ``Share``, times each of N ``stream_text`` calls with ``perf_counter_ns`` (the
agent's cost: the call returns before anything touches the network), reports median/p99/max,
then ``flush()``es and reports end-to-end events/s (first call to everything committed to the
outbox and acknowledged by the server). Three rows per class: "burst" (calls back to back,
deltas coalesce heavily), "alternate" (deltas to two messages in turn: nothing coalesces,
every call is one stored event) and "paced" (a 2 ms pause every 50 calls, like tokens).

    python bench/sdk_publish.py                 # N = 100,000 calls per row
    python bench/sdk_publish.py --calls 20000 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx

from agentsync.client import AsyncShare, Share


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(data: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, "-m", "agentsync.cli", "serve", "--host", "127.0.0.1",
           "--port", str(port), "--data", data, "--rate-limit", "0",
           "--no-address-limits", "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("server did not start")


def summarize(name: str, mode: str, ns: list[int], total_s: float, events: int) -> dict[str, Any]:
    ns.sort()
    return {
        "client": name,
        "mode": mode,
        "calls": len(ns),
        "median_us": statistics.median(ns) / 1000,
        "p99_us": ns[int(len(ns) * 0.99)] / 1000,
        "max_us": ns[-1] / 1000,
        "end_to_end_calls_per_s": len(ns) / total_s,
        "events_stored": events,
    }


def stored(url: str, session_id: str) -> int:
    return int(httpx.get(f"{url}/v1/sessions/{session_id}", timeout=10).json()["seq"])


def run_calls(share: AsyncShare | Share, mids: list[str], calls: int, paced: bool) -> list[int]:
    clock = time.perf_counter_ns
    ns = [0] * calls
    n = len(mids)
    for i in range(calls):
        mid = mids[i % n]
        t = clock()
        share.stream_text(mid, "tok ")
        ns[i] = clock() - t
        if paced and i % 50 == 49:
            time.sleep(0.002)
    return ns


async def bench_async(url: str, outbox: str, calls: int, mode: str) -> dict[str, Any]:
    paced = mode == "paced"
    share = await AsyncShare.create(url, title="bench", outbox=outbox)
    mids = [share.add_message("assistant") for _ in range(2 if mode == "alternate" else 1)]
    await share.flush()
    start = time.perf_counter()
    # Paced runs sleep with asyncio so the connection keeps sending meanwhile.
    clock = time.perf_counter_ns
    ns = [0] * calls
    n = len(mids)
    for i in range(calls):
        mid = mids[i % n]
        t = clock()
        share.stream_text(mid, "tok ")
        ns[i] = clock() - t
        if paced and i % 50 == 49:
            await asyncio.sleep(0.002)
    await share.flush()
    total = time.perf_counter() - start
    await share.close()
    return summarize("AsyncShare", mode, ns, total,
                     stored(url, share.session_id))  # fmt: skip


def bench_sync(url: str, outbox: str, calls: int, mode: str) -> dict[str, Any]:
    share = Share.create(url, title="bench", outbox=outbox)
    mids = [share.add_message("assistant") for _ in range(2 if mode == "alternate" else 1)]
    share.flush()
    start = time.perf_counter()
    ns = run_calls(share, mids, calls, mode == "paced")
    share.flush()
    total = time.perf_counter() - start
    share.close()
    return summarize("Share", mode, ns, total,
                     stored(url, share.session_id))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="agentsync-sdk-bench-")
    proc, url = start_server(os.path.join(tmp, "data"))
    rows = []
    try:
        for mode in ("burst", "alternate", "paced"):
            calls = args.calls if mode != "paced" else min(args.calls, 20_000)
            rows.append(asyncio.run(bench_async(url, f"{tmp}/a-{mode}.db", calls, mode)))
            rows.append(bench_sync(url, f"{tmp}/s-{mode}.db", calls, mode))
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'client':<11}{'mode':<10}{'calls':>8}{'median µs':>11}{'p99 µs':>9}{'max µs':>10}"
          f"{'calls/s e2e':>13}{'events':>8}")  # fmt: skip
    for r in rows:
        print(f"{r['client']:<11}{r['mode']:<10}{r['calls']:>8}{r['median_us']:>11.2f}"
              f"{r['p99_us']:>9.2f}{r['max_us']:>10.0f}{r['end_to_end_calls_per_s']:>13,.0f}"
              f"{r['events_stored']:>8}")  # fmt: skip
    print("events = events the server stored (consecutive deltas are coalesced in the outbox)")


if __name__ == "__main__":
    main()
