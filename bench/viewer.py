"""Share-page viewer benchmark: how fast ``GET /share/{id}`` is usable, and how smooth it stays.

Two sessions in the same run, on the same server: a big one (10,000 events: 1,000 messages,
alternating user prompts and assistant replies with markdown, fenced python/bash code, lists,
inline code; ~1,000 tool calls with JSON arguments and multi-line results, some failing; each
reply streamed as several ``message.delta`` events) and, as the baseline, the ~150-event
scripted demo session (``agentsync demo``). The server runs pinned to core 0
(``taskset -c 0``); this process and Chromium (``/usr/bin/chromium``, headless, driven by
Playwright, never downloaded) to ``--browser-cores`` (default core 1).

    python bench/viewer.py                          # big + small, 5 loads each, live streams
    python bench/viewer.py --repeat 3 --deltas 200
    python bench/viewer.py --sessions big --json

Per session:
- server: page size in bytes, and the wall time of an httpx GET of the page (first GET after
  the session was written: cold markdown cache; then warm), with the server's CPU per GET;
- load, ``--repeat`` times in a fresh browser context (no cache), 1280x900: navigation start
  to responseStart (TTFB), DOMContentLoaded, load, first contentful paint, LCP, and to
  ``body[data-conn=live]`` (the WebSocket greeting arrived; timestamped in the page by a
  MutationObserver, awaited with wait_for_selector); long tasks before live; JS heap and DOM
  nodes (CDP ``Performance.getMetrics``). Target: usable within 1 s (PASS/FAIL on the median
  time to live and to load);
- live: with the page open and scrolled to the end (following, as a watcher does), the bench
  POSTs a new assistant message and ``--deltas`` ``message.delta`` events at ``--rate``/s,
  one per request, plus a tool call and result every 100 deltas. In the page, a
  requestAnimationFrame loop records frame intervals, a PerformanceObserver long tasks, and a
  MutationObserver the ``Date.now()`` at which each delta's marker (``mkNz``) is in the DOM,
  plus the time of the first task after that frame (≈ painted). Latency = that time minus the
  bench's ``time.time()`` when the POST returned (same machine clock).

Output: markdown tables (medians, [min..max]); JSON to bench/results/viewer-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import httpx
from playwright.sync_api import Browser, BrowserContext, CDPSession, Page, sync_playwright

from fanout import LOAD_CORE, Server, fmt, free_port

HOST = "127.0.0.1"
CHROMIUM = os.environ.get("AGENTSYNC_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
TARGET_MS = 1000.0
RESULTS = Path(__file__).resolve().parent / "results"

# --------------------------------------------------------------------------------------
# The big session: plain data from a seeded RNG, the same on every run.
# --------------------------------------------------------------------------------------

MODULES = [
    "dates", "parser", "cache", "http_client", "auth", "storage", "scheduler", "config",
    "metrics", "cli", "export", "retry", "queue", "models", "render", "sync",
]  # fmt: skip
FUNCS = [
    "parse_date", "load_config", "retry_call", "flush_batch", "resolve_path", "encode_frame",
    "merge_settings", "normalise_name", "open_session", "compact_log", "render_page",
    "check_token", "next_run", "read_chunk", "apply_patch", "split_lines",
]  # fmt: skip
PROSE = (
    "the handler returns early when the cache is cold so the retry loop never sees the "
    "timeout and the caller gets a stale value instead of an error which is why the test "
    "only fails under load on the second run after a restart of the worker process"
)
WORDS = PROSE.split()
CONDITIONS = [
    "the input has a trailing newline",
    "the config file is empty",
    "two workers start at the same time",
    "the clock jumps forward for DST",
    "the response is chunked",
    "the path contains spaces",
    "the token expired a second ago",
    "the queue is full",
]


def words(rng: random.Random, n: int) -> str:
    start = rng.randrange(len(WORDS))
    return " ".join(WORDS[(start + i) % len(WORDS)] for i in range(n))


def python_code(rng: random.Random, lines: int) -> str:
    func, mod = rng.choice(FUNCS), rng.choice(MODULES)
    out = [
        f"def {func}(value: str, *, strict: bool = False) -> dict[str, object]:",
        f'    """{words(rng, 8).capitalize()}."""',
        f"    result = {{'source': {mod!r}, 'items': []}}",
    ]
    while len(out) < lines - 3:
        i = len(out)
        out += rng.choice(
            [
                [
                    f"    if not value.strip():  # {words(rng, 4)}",
                    f"        raise ValueError(f'empty {{value!r}} in {mod}')",
                ],
                [
                    f"    for part in value.split({rng.choice([',', ';', '|'])!r}):",
                    f"        result['items'].append(part.strip().lower()[:{10 + i}])",
                ],
                [f"    result['n{i}'] = len(value) * {rng.randint(2, 9)}"],
                [f"    logger.debug('{func}: %s', value)  # {words(rng, 3)}"],
            ]
        )
    out.append("    if strict and not result['items']:")
    out.append("        raise LookupError(value)")
    out.append("    return result")
    return "\n".join(out)


def bash_code(rng: random.Random) -> str:
    mod = rng.choice(MODULES)
    cmds = [
        f"pytest -q tests/test_{mod}.py -k {rng.choice(FUNCS)}",
        f"grep -rn '{rng.choice(FUNCS)}' src/ | head -20",
        "git diff --stat",
        f"ruff check src/{mod}.py && mypy src/{mod}.py",
        f"python -m {mod} --dry-run --verbose 2>&1 | tail -5",
    ]
    return "\n".join(rng.sample(cmds, rng.randint(1, 4)))


def user_text(rng: random.Random, i: int) -> str:
    func, mod = rng.choice(FUNCS), rng.choice(MODULES)
    kind = i % 4
    if kind == 0:
        return (
            f"`{func}` in `src/{mod}.py` fails when {rng.choice(CONDITIONS)}. "
            "Can you find out why and fix it, with a test?"
        )
    if kind == 1:
        return (
            f"I get this when I run `pytest tests/test_{mod}.py`:\n\n```text\n"
            f'  File "src/{mod}.py", line {rng.randint(10, 400)}, in {func}\n'
            f"    return cache[key]\nKeyError: '{mod}:{rng.randint(100, 999)}'\n```\n\n"
            f"What's going on? It started after {rng.choice(CONDITIONS)}."
        )
    if kind == 2:
        return (
            f"Next steps for `{mod}`:\n\n- make `{func}` idempotent\n- {words(rng, 7)}\n"
            f"- keep the public API of `{mod}` unchanged\n\nRun the tests when you're done."
        )
    return f"Looks good. Now {words(rng, rng.randint(6, 16))} in `{mod}`, please."


def assistant_text(rng: random.Random) -> str:
    func, mod = rng.choice(FUNCS), rng.choice(MODULES)
    parts = [
        f"Looking at `{func}` in `src/{mod}.py`: {words(rng, rng.randint(12, 30))}. "
        f"The fix is to check `strict` before the loop, not after."
    ]
    if rng.random() < 0.6:
        parts.append(
            "\n".join(
                f"- `{rng.choice(FUNCS)}()` {words(rng, rng.randint(4, 10))}" for _ in range(3)
            )
        )
    if rng.random() < 0.55:
        parts.append(f"```python\n{python_code(rng, rng.randint(6, 22))}\n```")
    if rng.random() < 0.4:
        parts.append(f"To check it:\n\n```bash\n{bash_code(rng)}\n```")
    if rng.random() < 0.3:
        parts.append("\n".join(f"{n}. {words(rng, rng.randint(5, 12))}" for n in range(1, 4)))
    if rng.random() < 0.2:
        parts.append(f"### Why\n\n{words(rng, rng.randint(20, 40))}. **Note:** `{mod}` is shared.")
    parts.append(f"Done: {words(rng, rng.randint(5, 15))}.")
    return "\n\n".join(parts)


def pytest_output(rng: random.Random, failing: bool) -> str:
    mod = rng.choice(MODULES)
    n = rng.randint(3, 40)
    if not failing:
        return (
            f"tests/test_{mod}.py {'.' * n}{' ' * max(1, 40 - n)}[100%]\n"
            f"{'=' * 30} {n} passed in {rng.uniform(0.05, 3):.2f}s {'=' * 30}"
        )
    func = rng.choice(FUNCS)
    lines = [
        f"{'=' * 30} test session starts {'=' * 30}",
        f"tests/test_{mod}.py {'.' * (n - 1)}F{' ' * 10}[100%]",
        f"{'_' * 25} test_{func} {'_' * 25}",
        "",
    ]
    for k in range(rng.randint(6, 30)):
        lines.append(f"    {words(rng, 6).replace(' ', '_')} = {func}(sample[{k}])  # {k}")
    lines += [
        f">       assert {func}('{words(rng, 2)}') == expected",
        f"E       AssertionError: assert {{'items': []}} == {{'items': ['{mod}']}}",
        f"src/{mod}.py:{rng.randint(10, 400)}: AssertionError",
        f"{'=' * 30} 1 failed, {n - 1} passed in {rng.uniform(0.1, 4):.2f}s {'=' * 30}",
    ]
    return "\n".join(lines)


def tool_call(rng: random.Random) -> tuple[str, Any, str, str | None]:
    """(name, arguments, output, error)."""
    mod, func = rng.choice(MODULES), rng.choice(FUNCS)
    name = rng.choice(["read_file", "read_file", "run_tests", "run_tests", "edit_file", "bash"])
    if name == "read_file":
        code = "\n\n".join(python_code(rng, rng.randint(8, 30)) for _ in range(rng.randint(1, 4)))
        if rng.random() < 0.08:
            return name, {"path": f"src/{mod}_v2.py"}, "", f"ENOENT: no such file src/{mod}_v2.py"
        return name, {"path": f"src/{mod}.py", "limit": 400}, code, None
    if name == "run_tests":
        failing = rng.random() < 0.35
        args = {"args": ["-q", f"tests/test_{mod}.py", "-k", func], "timeout": 120}
        err = "exit status 1: 1 test failed" if failing else None
        return name, args, pytest_output(rng, failing), err
    if name == "edit_file":
        diff = "\n".join(
            [f"@@ -{rng.randint(1, 300)},6 +{rng.randint(1, 300)},7 @@ def {func}("]
            + [f"-    {words(rng, 5)}" for _ in range(rng.randint(1, 4))]
            + [f"+    {words(rng, 6)}" for _ in range(rng.randint(1, 5))]
        )
        if rng.random() < 0.1:
            return name, {"path": f"src/{mod}.py", "diff": diff}, "", "hunk 1 does not apply"
        return (
            name,
            {"path": f"src/{mod}.py", "diff": diff},
            f"applied 1 hunk to src/{mod}.py",
            None,
        )
    command = bash_code(rng).split("\n")[0]
    lines = [
        f"src/{rng.choice(MODULES)}.py:{rng.randint(1, 900)}: {words(rng, rng.randint(3, 10))}"
        for _ in range(rng.randint(2, 40))
    ]
    if rng.random() < 0.1:
        return name, {"command": command, "cwd": "."}, "\n".join(lines[:3]), "exit status 2"
    return name, {"command": command, "cwd": "."}, "\n".join(lines), None


def split_text(rng: random.Random, text: str, n: int) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), min(n, len(text)) - 1))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


def big_session(total: int, seed: int) -> list[dict[str, Any]]:
    """``total`` events (a multiple of 20): pairs of a user prompt and a streamed reply."""
    rng = random.Random(seed)
    pairs = total // 20
    events: list[dict[str, Any]] = [
        {"type": "session.update", "data": {"title": "refactor: the 1,000-message session"}}
    ]
    for p in range(pairs):
        budget = 20 - (1 if p == 0 else 0) + (total - pairs * 20 if p == pairs - 1 else 0)
        uid, aid = f"u{p}", f"a{p}"
        events.append(
            {"type": "message", "data": {"id": uid, "role": "user", "content": user_text(rng, p)}}
        )
        events.append({"type": "status", "data": {"status": "thinking"}})
        events.append({"type": "message", "data": {"id": aid, "role": "assistant", "content": ""}})
        tools = rng.randint(0, 4)
        chunks = split_text(rng, assistant_text(rng), budget - 4 - 2 * tools)
        after = sorted(rng.randrange(len(chunks)) for _ in range(tools))
        t = 0
        for c, chunk in enumerate(chunks):
            events.append({"type": "message.delta", "data": {"id": aid, "delta": chunk}})
            while t < tools and after[t] == c:
                name, args, output, error = tool_call(rng)
                cid = f"{aid}t{t}"
                call = {"messageId": aid, "id": cid, "name": name, "arguments": args}
                result: dict[str, Any] = {"messageId": aid, "toolCallId": cid, "output": output}
                if error:
                    result["error"] = error
                events.append({"type": "tool_call", "data": call})
                events.append({"type": "tool_result", "data": result})
                t += 1
        events.append({"type": "status", "data": {"status": "idle"}})
    for n, e in enumerate(events):
        e["id"] = f"e{n}"
    return events


def small_session() -> list[dict[str, Any]]:
    """The scripted ``agentsync demo`` session (~150 events)."""
    from agentsync.cli_demo import script

    return [{"id": s.id, "type": s.type, "data": s.data} for s in script()]


# --------------------------------------------------------------------------------------
# Server side
# --------------------------------------------------------------------------------------


def start_server(data_dir: str) -> Server:
    exe = shutil.which("agentsync") or str(Path(sys.executable).with_name("agentsync"))
    port = free_port()
    cmd = [
        exe, "serve", "--host", HOST, "--port", str(port), "--data", data_dir,
        "--rate-limit", "0", "--no-address-limits", "--log-level", "warning",
    ]  # fmt: skip
    return Server("agentsync", cmd, port, {"AGENTSYNC_RATE_LIMIT": "0"})


def create_session(client: httpx.Client, events: list[dict[str, Any]]) -> dict[str, Any]:
    r = client.post("/v1/shares", json={})
    r.raise_for_status()
    share: dict[str, Any] = r.json()
    headers = {"Authorization": f"Bearer {share['secret']}"}
    t0 = time.perf_counter()
    for i in range(0, len(events), 1000):
        r = client.post(
            f"/v1/sessions/{share['session_id']}/events",
            json={"events": events[i : i + 1000]},
            headers=headers,
        )
        r.raise_for_status()
    share["ingest_s"] = time.perf_counter() - t0
    snap = client.get(f"/v1/sessions/{share['session_id']}").raise_for_status().json()
    share["seq"] = snap["seq"]
    share["messages"] = len(snap["messages"])
    share["tool_calls"] = sum(len(m.get("toolCalls") or []) for m in snap["messages"])
    return share


def time_gets(srv: Server, url: str, n: int) -> dict[str, Any]:
    """Wall time of a GET of the page (a fresh connection each), and the server's CPU."""
    walls, cpus, size, enc = [], [], 0, "identity"
    for _ in range(max(1, n)):
        c0 = srv.cpu()
        t0 = time.perf_counter()
        r = httpx.get(url, timeout=60)
        walls.append((time.perf_counter() - t0) * 1000)
        cpus.append((srv.cpu() - c0) * 1000)
        r.raise_for_status()
        size = len(r.content)
        enc = r.headers.get("content-encoding", "identity")
    return {
        "html_bytes": size,
        "content_encoding": enc,
        "get_ms": walls,
        "cpu_ms": cpus,
        "first_get_ms": walls[0],
        "first_cpu_ms": cpus[0],
        "warm_get_ms": walls[1:] or walls,
        "warm_cpu_ms": cpus[1:] or cpus,
    }


# --------------------------------------------------------------------------------------
# In the page
# --------------------------------------------------------------------------------------

INIT_JS = """
(() => {
  const b = (window.__bench = { live: null, longtasks: [], lcp: null });
  try {
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) b.longtasks.push([e.startTime, e.duration]);
    }).observe({ type: "longtask" });
  } catch (e) {}
  try {
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) b.lcp = e.startTime;
    }).observe({ type: "largest-contentful-paint", buffered: true });
  } catch (e) {}
  new MutationObserver(() => {
    if (b.live === null && document.body && document.body.dataset.conn === "live") {
      b.live = performance.now();
    }
  }).observe(document, { subtree: true, attributes: true, attributeFilter: ["data-conn"] });
})();
"""

COLLECT_JS = """
() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const paint = {};
  for (const e of performance.getEntriesByType("paint")) paint[e.name] = e.startTime;
  const b = window.__bench;
  return {
    ttfb: nav.responseStart, response_end: nav.responseEnd,
    dom_interactive: nav.domInteractive, dcl: nav.domContentLoadedEventEnd,
    load: nav.loadEventEnd, fcp: paint["first-contentful-paint"] ?? null, lcp: b.lcp,
    live: b.live, longtasks: b.longtasks.filter(([s]) => s <= b.live),
    messages: document.querySelectorAll("#transcript article.msg[data-id]").length,
    tools: document.querySelectorAll("#transcript details.tool").length,
    rendered: Number(document.body.dataset.rendered),
  };
}
"""

RECORD_JS = """
(msgId) => {
  const b = window.__bench;
  b.longtasks = [];
  b.frames = [];
  b.seen = {};
  b.painted = {};
  b.recording = true;
  let last = null;
  const loop = (t) => {
    if (!b.recording) return;
    if (last !== null) b.frames.push(t - last);
    last = t;
    requestAnimationFrame(loop);
  };
  requestAnimationFrame(loop);
  const re = /mk(\\d+)z/g;
  const scan = () => {
    const node = document.querySelector(`#transcript article.msg[data-id="${msgId}"] .body`);
    if (!node) return;
    const now = Date.now();
    const fresh = [];
    for (const m of node.textContent.matchAll(re)) {
      if (!(m[1] in b.seen)) { b.seen[m[1]] = now; fresh.push(m[1]); }
    }
    if (fresh.length) {
      // The first task after this frame: the frame (with the new text) has been painted.
      const ch = new MessageChannel();
      ch.port1.onmessage = () => { const t = Date.now(); for (const k of fresh) b.painted[k] = t; };
      ch.port2.postMessage(0);
    }
  };
  b.mo = new MutationObserver(scan);
  b.mo.observe(document.getElementById("transcript"), { childList: true, subtree: true });
  const el = document.documentElement;
  return { following: innerHeight + scrollY >= el.scrollHeight - 80, scroll: el.scrollHeight };
}
"""

STOP_JS = """
() => {
  const b = window.__bench;
  b.recording = false;
  b.mo.disconnect();
  return { frames: b.frames, longtasks: b.longtasks, seen: b.seen, painted: b.painted };
}
"""


def cdp_metrics(cdp: CDPSession) -> dict[str, float]:
    return {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}


def open_page(browser: Browser, url: str) -> tuple[BrowserContext, Page, CDPSession]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.add_init_script(INIT_JS)
    page = ctx.new_page()
    cdp = ctx.new_cdp_session(page)
    cdp.send("Performance.enable")
    page.goto(url, wait_until="load", timeout=60_000)
    page.wait_for_selector("body[data-conn=live]", timeout=60_000)
    return ctx, page, cdp


def load_once(browser: Browser, url: str) -> dict[str, Any]:
    ctx, page, cdp = open_page(browser, url)
    try:
        m: dict[str, Any] = page.evaluate(COLLECT_JS)
        perf = cdp_metrics(cdp)
    finally:
        ctx.close()
    lt = m.pop("longtasks")
    m.update(
        longtasks=len(lt),
        longtask_ms=sum(d for _, d in lt),
        longtask_max_ms=max((d for _, d in lt), default=0.0),
        heap_mb=perf.get("JSHeapUsedSize", 0.0) / 2**20,
        dom_nodes=perf.get("Nodes", 0.0),
        layout_ms=perf.get("LayoutDuration", 0.0) * 1000,
        style_ms=perf.get("RecalcStyleDuration", 0.0) * 1000,
        script_ms=perf.get("ScriptDuration", 0.0) * 1000,
    )
    return m


# --------------------------------------------------------------------------------------
# Live smoothness
# --------------------------------------------------------------------------------------


def live_events(n: int, mid: str) -> list[tuple[dict[str, Any], int | None]]:
    """(event, marker index or None): a new assistant message, n deltas, a tool every 100."""
    rng = random.Random(7)
    out: list[tuple[dict[str, Any], int | None]] = [
        ({"type": "status", "data": {"status": "thinking"}}, None),
        ({"type": "message", "data": {"id": mid, "role": "assistant", "content": ""}}, None),
    ]
    for k in range(n):
        text = f"{words(rng, rng.randint(1, 4))} mk{k}z "
        if k % 40 == 39:
            text += "\n\n"  # a new paragraph now and then
        elif k % 25 == 24:
            text += "`inline_code()` "
        out.append(({"type": "message.delta", "data": {"id": mid, "delta": text}}, k))
        if k % 100 == 50:
            name, args, _, _ = tool_call(rng)
            call = {"messageId": mid, "id": f"{mid}t{k}", "name": name, "arguments": args}
            out.append(({"type": "tool_call", "data": call}, None))
        if k % 100 == 60:
            result: dict[str, Any] = {
                "messageId": mid,
                "toolCallId": f"{mid}t{k - 10}",
                "output": pytest_output(rng, False),
            }
            out.append(({"type": "tool_result", "data": result}, None))
    out.append(({"type": "status", "data": {"status": "idle"}}, None))
    return out


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * q))]


def live_run(
    browser: Browser, base: str, share: dict[str, Any], deltas: int, rate: float, tag: str
) -> dict[str, Any]:
    ctx, page, cdp = open_page(browser, share["share_url"])
    try:
        # Follow the end of the transcript, like a watcher of a running session. With
        # content-visibility the height settles as the last articles get laid out.
        for _ in range(3):
            page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")
            page.wait_for_timeout(200)
        mid = f"live-{tag}"
        rec = page.evaluate(RECORD_JS, mid)
        page.wait_for_timeout(300)  # a few idle frames before the stream starts
        perf0 = cdp_metrics(cdp)
        plan = live_events(deltas, mid)
        path = f"/v1/sessions/{share['session_id']}/events"
        headers = {"Authorization": f"Bearer {share['secret']}"}
        sent: dict[int, float] = {}
        acked: dict[int, float] = {}
        ack_ms: list[float] = []
        last_seq = 0
        with httpx.Client(base_url=base, timeout=30) as client:
            t0 = time.monotonic()
            for i, (event, marker) in enumerate(plan):
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                event = {**event, "id": f"{mid}-{i}"}
                ts = time.time() * 1000
                r = client.post(path, json={"events": [event]}, headers=headers)
                ta = time.time() * 1000
                r.raise_for_status()
                last_seq = r.json()["last_seq"]
                ack_ms.append(ta - ts)
                if marker is not None:
                    sent[marker], acked[marker] = ts, ta
            stream_s = time.monotonic() - t0
        page.wait_for_function(  # a function, not an expression: the page's CSP has no eval
            "(n) => Number(document.body.dataset.rendered) >= n", arg=last_seq, timeout=30_000
        )
        page.wait_for_timeout(300)
        perf1 = cdp_metrics(cdp)
        got: dict[str, Any] = page.evaluate(STOP_JS)
    finally:
        ctx.close()
    frames = [float(x) for x in got["frames"]]
    lts = [float(d) for _, d in got["longtasks"]]
    seen = {int(k): float(v) for k, v in got["seen"].items()}
    painted = {int(k): float(v) for k, v in got["painted"].items()}
    dom = [seen[k] - acked[k] for k in acked if k in seen]
    paint = [painted[k] - acked[k] for k in acked if k in painted]
    from_send = [seen[k] - sent[k] for k in sent if k in seen]

    def busy(name: str) -> float:
        return (perf1.get(name, 0.0) - perf0.get(name, 0.0)) * 1000

    return {
        "following": rec["following"],
        "events": len(plan),
        "deltas": deltas,
        "stream_s": stream_s,
        "rate": len(plan) / stream_s,
        "frames": len(frames),
        "frame_p50_ms": pct(frames, 0.5),
        "frame_p99_ms": pct(frames, 0.99),
        "frame_max_ms": max(frames, default=None),
        "frames_over_50ms": sum(1 for f in frames if f > 50),
        "longtasks": len(lts),
        "longtask_ms": sum(lts),
        "longtask_max_ms": max(lts, default=0.0),
        "dom_p50_ms": pct(dom, 0.5),
        "dom_p99_ms": pct(dom, 0.99),
        "dom_max_ms": max(dom, default=None),
        "paint_p50_ms": pct(paint, 0.5),
        "paint_p99_ms": pct(paint, 0.99),
        "paint_max_ms": max(paint, default=None),
        "send_dom_p50_ms": pct(from_send, 0.5),
        "send_dom_p99_ms": pct(from_send, 0.99),
        "ack_p50_ms": pct(ack_ms, 0.5),
        "ack_p99_ms": pct(ack_ms, 0.99),
        "markers_missing": deltas - len(dom),
        "script_ms": busy("ScriptDuration"),
        "layout_ms": busy("LayoutDuration"),
        "style_ms": busy("RecalcStyleDuration"),
        "task_ms": busy("TaskDuration"),
        "thread_cpu_ms": busy("ThreadTime"),
        "process_cpu_ms": busy("ProcessTime"),
    }


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def med(xs: list[float | None]) -> tuple[float, float, float] | None:
    vals = [float(x) for x in xs if x is not None]
    if not vals:
        return None
    return statistics.median(vals), min(vals), max(vals)


def cell(xs: list[float | None], nd: int = 0) -> str:
    """Median [min..max] of the runs."""
    stats = med(xs)
    if stats is None:
        return "-"
    m, lo, hi = stats
    if lo == hi:
        return fmt(m, nd)
    return f"{fmt(m, nd)} [{fmt(lo, nd)}..{fmt(hi, nd)}]"


def verdict(xs: list[float | None]) -> str:
    stats = med(xs)
    if stats is None:
        return "-"
    m = stats[0]
    return f"{'PASS' if m <= TARGET_MS else 'FAIL'} ({m:.0f} ms)"


def load_table(res: dict[str, dict[str, Any]]) -> str:
    names = list(res)
    head = "| metric | " + " | ".join(f"{n} ({res[n]['seq']:,} events)" for n in names) + " |"
    lines = [head, "|---|" + "---|" * len(names)]

    def row(label: str, f: Callable[[dict[str, Any]], str]) -> None:
        lines.append(f"| {label} | " + " | ".join(f(res[n]) for n in names) + " |")

    def loads(*keys: str, nd: int = 0) -> Callable[[dict[str, Any]], str]:
        return lambda r: " / ".join(cell([x[k] for x in r["loads"]], nd) for k in keys)

    def http(key: str, nd: int = 0) -> Callable[[dict[str, Any]], str]:
        return lambda r: cell(r["http"][key], nd)

    def dom(r: dict[str, Any]) -> str:
        x = r["loads"][0]
        return f"{x['messages']:,} / {x['tools']:,}"

    row("messages / tool calls (DOM)", dom)
    row("ingest s (batches of <= 1000)", lambda r: f"{r['ingest_s']:.2f}")
    row("HTML bytes", lambda r: f"{r['http']['html_bytes']:,} ({r['http']['content_encoding']})")
    row("server GET ms, first (cold cache)", lambda r: f"{r['http']['first_get_ms']:.0f}")
    row("server GET ms, warm", http("warm_get_ms"))
    row("server CPU ms per GET, first", lambda r: f"{r['http']['first_cpu_ms']:.0f}")
    row("server CPU ms per GET, warm", http("warm_cpu_ms"))
    row("TTFB ms (responseStart)", loads("ttfb"))
    row("HTML received ms (responseEnd)", loads("response_end"))
    row("DOMContentLoaded ms", loads("dcl"))
    row("load ms", loads("load"))
    row("first contentful paint ms", loads("fcp"))
    row("largest contentful paint ms", loads("lcp"))
    row("**live ms** (body[data-conn=live])", loads("live"))
    row("long tasks before live: n", loads("longtasks"))
    row("long tasks before live: sum / max ms", loads("longtask_ms", "longtask_max_ms"))
    row("main thread ms: script / layout / style", loads("script_ms", "layout_ms", "style_ms"))
    row("JS heap used MB", loads("heap_mb", nd=1))
    row("DOM nodes", loads("dom_nodes"))
    row(f"target: live <= {TARGET_MS:.0f} ms", lambda r: verdict([x["live"] for x in r["loads"]]))
    row(f"target: load <= {TARGET_MS:.0f} ms", lambda r: verdict([x["load"] for x in r["loads"]]))
    return "\n".join(lines)


def live_table(res: dict[str, dict[str, Any]]) -> str:
    names = [n for n in res if res[n].get("live")]
    if not names:
        return ""
    lines = ["| live stream | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]

    def row(label: str, keys: tuple[str, ...], nd: int = 1) -> None:
        vals = []
        for n in names:
            lv = res[n]["live"]
            vals.append(" / ".join(fmt(lv[k], nd) if lv[k] is not None else "-" for k in keys))
        lines.append(f"| {label} | " + " | ".join(vals) + " |")

    row("events posted / seconds / ev/s", ("events", "stream_s", "rate"))
    row("following the end", ("following",))
    row("frames recorded", ("frames",), 0)
    row("frame interval ms p50 / p99 / max", ("frame_p50_ms", "frame_p99_ms", "frame_max_ms"))
    row("frames > 50 ms", ("frames_over_50ms",), 0)
    row("long tasks n / total ms / max ms", ("longtasks", "longtask_ms", "longtask_max_ms"))
    row("POST return → in DOM ms p50 / p99 / max", ("dom_p50_ms", "dom_p99_ms", "dom_max_ms"))
    row(
        "POST return → painted ms p50 / p99 / max",
        ("paint_p50_ms", "paint_p99_ms", "paint_max_ms"),
    )
    row("POST send → in DOM ms p50 / p99", ("send_dom_p50_ms", "send_dom_p99_ms"))
    row("POST ack ms p50 / p99", ("ack_p50_ms", "ack_p99_ms"))
    row("markers missing", ("markers_missing",), 0)
    row("main thread ms: script / layout / style", ("script_ms", "layout_ms", "style_ms"), 0)
    row("main thread ms: all tasks (wall) / CPU", ("task_ms", "thread_cpu_ms"), 0)
    row("renderer process CPU ms", ("process_cpu_ms",), 0)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sessions", default="big,small", help="comma list: big,small")
    ap.add_argument("--events", type=int, default=10_000, help="big session events (÷20)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5, help="page loads per session")
    ap.add_argument("--gets", type=int, default=5, help="timed httpx GETs of each page")
    ap.add_argument("--deltas", type=int, default=500, help="live deltas (0: no live test)")
    ap.add_argument("--rate", type=float, default=50.0, help="live events per second")
    ap.add_argument(
        "--browser-cores", default=str(LOAD_CORE), help="cores for this process and Chromium"
    )
    ap.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    a = ap.parse_args()
    if a.events % 20:
        ap.error("--events must be a multiple of 20")
    with contextlib.suppress(OSError, ValueError):
        os.sched_setaffinity(0, {int(c) for c in a.browser_cores.split(",")})
    started = time.monotonic()
    names = [s.strip() for s in a.sessions.split(",") if s.strip()]
    data_dir = tempfile.mkdtemp(prefix="agentsync-bench-")
    srv = start_server(data_dir)
    base = f"http://{HOST}:{srv.port}"
    res: dict[str, dict[str, Any]] = {}
    version = ""
    try:
        with httpx.Client(base_url=base, timeout=120) as client:
            for name in names:
                events = big_session(a.events, a.seed) if name == "big" else small_session()
                res[name] = create_session(client, events)
                res[name]["events_posted"] = len(events)
                print(
                    f"# {name}: {len(events)} events posted, seq {res[name]['seq']}, "
                    f"{res[name]['messages']} messages, {res[name]['tool_calls']} tool calls, "
                    f"ingest {res[name]['ingest_s']:.2f} s",
                    file=sys.stderr,
                )
        for name in names:
            res[name]["http"] = time_gets(srv, res[name]["share_url"], a.gets)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                version = browser.version
                for name in names:
                    res[name]["loads"] = [
                        load_once(browser, res[name]["share_url"]) for _ in range(a.repeat)
                    ]
                    lv = [x["live"] for x in res[name]["loads"]]
                    print(f"# {name}: live ms {[round(x) for x in lv]}", file=sys.stderr)
                if a.deltas:
                    for name in names:
                        res[name]["live"] = live_run(
                            browser, base, res[name], a.deltas, a.rate, name
                        )
                        print(f"# {name}: live stream done", file=sys.stderr)
            finally:
                browser.close()
    finally:
        srv.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    out = {
        "args": vars(a),
        "cpus": os.cpu_count(),
        "browser": version,
        "elapsed_s": time.monotonic() - started,
        "sessions": {
            n: {k: v for k, v in r.items() if k not in ("secret",)} for n, r in res.items()
        },
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"viewer-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=1))
    if a.json:
        print(json.dumps(out, indent=1))
        return
    print(
        f"Chromium {out['browser']}, headless, 1280x900, cores {a.browser_cores} "
        f"(server: core 0); loads: median [min..max] of {a.repeat}; "
        f"elapsed {out['elapsed_s']:.0f} s\n"
    )
    print(load_table(res))
    lt = live_table(res)
    if lt:
        print(
            f"\nLive: {a.deltas} deltas at {a.rate:g}/s into a new assistant message "
            "(+ a tool call and result per 100), page following the end\n"
        )
        print(lt)
    print(f"\nJSON: {path}")


if __name__ == "__main__":
    main()
