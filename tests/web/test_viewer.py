"""The share page in real headless Chromium: first paint, live updates, resume across a
server SIGKILL, SSE fallback, replay, presence, and the ends of a share's life."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import httpx
import pytest

from e2e._support import append, bearer, create_share, delta, message, status, uid

from .conftest import open_page, transcript

LIVE = "body[data-conn=live]"


def page_url(server: Any, share: dict[str, Any]) -> str:
    return f"{server.url}/share/{share['session_id']}"


async def wait_rendered(page: Any, seq: int, wait_ms: float = 10_000) -> None:
    await page.wait_for_function(
        "seq => Number(document.body.dataset.rendered) >= seq", arg=seq, timeout=wait_ms
    )


def tool_call(mid: str, cid: str, name: str, arguments: Any) -> dict[str, Any]:
    data = {"messageId": mid, "id": cid, "name": name, "arguments": arguments}
    return {"id": uid(), "type": "tool_call", "data": data}


def tool_result(mid: str, cid: str, output: Any, error: Any = None) -> dict[str, Any]:
    data = {"messageId": mid, "toolCallId": cid, "output": output}
    if error is not None:
        data["error"] = error
    return {"id": uid(), "type": "tool_result", "data": data}


def expected_transcript(snapshot: dict[str, Any]) -> list[dict[str, Any]]:
    """What the page must show for a snapshot whose contents are plain text."""
    out = []
    for m in snapshot["messages"]:
        results = {r["toolCallId"]: r for r in m["toolResults"]}
        tools = []
        for call in m["toolCalls"]:
            result = results.get(call["id"])
            state = "running" if result is None else "error" if result.get("error") else "done"
            tools.append({"id": call["id"], "name": call["name"], "state": state})
        out.append({"id": m["id"], "role": m["role"], "text": m["content"].strip(), "tools": tools})
    return out


async def snapshot_of(http: httpx.AsyncClient, share: dict[str, Any]) -> dict[str, Any]:
    resp = await http.get(f"/v1/sessions/{share['session_id']}")
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


async def test_first_paint_is_the_whole_transcript_without_javascript(
    server: Any, http: httpx.AsyncClient, browser: Any
) -> None:
    share = await create_share(http, title="Fix the flaky test")
    await append(
        http,
        share,
        [
            message("u1", "Why does test_dates fail?", role="user"),
            message("a1", "Looking at it.\n\n```python\nprint('hi')\n```"),
            tool_call("a1", "c1", "read_file", {"path": "dates.py"}),
            tool_result("a1", "c1", "def parse(): ..."),
            status("thinking"),
        ],
    )
    # A plain HTTP fetcher gets everything.
    resp = await http.get(f"/share/{share['session_id']}")
    assert resp.status_code == 200
    page_html = resp.text
    for text in ("Fix the flaky test", "Why does test_dates fail?", "read_file", "dates.py",
                 "def parse(): ...", "thinking"):  # fmt: skip
        assert text in page_html, text
    assert 'class="kn"' not in page_html and '<span class="nb">print</span>' in page_html
    csp = resp.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp

    # And so does a browser with scripts off: the transcript is there, tool calls fold.
    page, errors = await open_page(browser, page_url(server, share), java_script_enabled=False)
    shown = await transcript(page)
    assert [m["id"] for m in shown] == ["u1", "a1"]
    assert shown[1]["tools"] == [{"id": "c1", "name": "read_file", "state": "done"}]
    assert await page.locator("#status").inner_text() == "thinking"
    assert await page.locator("details.tool[open]").count() == 0
    await page.locator("details.tool summary").click()
    assert "dates.py" in await page.locator("details.tool pre.tool-args").inner_text()
    assert await page.locator("body[data-conn]").count() == 0  # no script ran
    assert not errors.exceptions


async def test_live_events_appear_within_a_second_and_stream(
    server: Any, http: httpx.AsyncClient, browser: Any
) -> None:
    share = await create_share(http, title="live")
    await append(http, share, [message("u1", "hello", role="user")])
    page, errors = await open_page(browser, page_url(server, share))
    await page.wait_for_selector(LIVE, timeout=5000)

    await append(http, share, [message("a1", "", id="m-a1")])
    posted = time.monotonic()
    await page.wait_for_selector('article.msg[data-id="a1"]', timeout=1000)
    assert time.monotonic() - posted < 1.0

    words = [f"word{i} " for i in range(40)]
    for chunk in words:
        body = await append(http, share, [delta("a1", chunk)])
    await append(
        http,
        share,
        [tool_call("a1", "c1", "bash", {"cmd": "ls"}), status("thinking")],
    )
    await append(http, share, [tool_result("a1", "c1", "", error="exit 2")])
    last = (await append(http, share, [status("idle")]))["last_seq"]
    assert last > body["last_seq"]
    await wait_rendered(page, last)
    shown = await transcript(page)
    assert shown == expected_transcript(await snapshot_of(http, share))
    assert shown[1]["text"] == "".join(words).strip()
    assert shown[1]["tools"][0]["state"] == "error"
    assert await page.locator("#status").inner_text() == "idle"
    assert not errors.exceptions and not errors.console


async def test_page_resumes_across_a_server_kill_and_ends_equal_to_the_log(
    server: Any, http: httpx.AsyncClient, browser: Any
) -> None:
    share = await create_share(http, title="restarts")
    await append(http, share, [message("m0", "start", role="user")])
    page, errors = await open_page(browser, page_url(server, share))
    await page.wait_for_selector(LIVE, timeout=5000)
    stop = asyncio.Event()

    async def writer() -> None:
        """Stream messages and deltas; retry each batch with its ids until acknowledged."""
        n = 0
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
            while not stop.is_set():
                n += 1
                mid = f"m{n}"
                batches = [[message(mid, "", role="assistant" if n % 2 else "user")]]
                batches += [[delta(mid, f"{mid}-part{i} ")] for i in range(5)]
                if n % 3 == 0:
                    batches.append([tool_call(mid, f"c{n}", "run", {"n": n})])
                    batches.append([tool_result(mid, f"c{n}", f"ok {n}")])
                for batch in batches:
                    while True:
                        try:
                            resp = await client.post(
                                f"/v1/sessions/{share['session_id']}/events",
                                json={"events": batch},
                                headers=bearer(share["secret"]),
                            )
                            if resp.status_code == 200:
                                break
                        except httpx.HTTPError:
                            pass
                        await asyncio.sleep(0.05)
                    await asyncio.sleep(0.01)

    task = asyncio.create_task(writer())
    try:
        for _ in range(2):
            await asyncio.sleep(1.0)
            server.kill()
            await page.wait_for_selector("body[data-conn=reconnecting]", timeout=5000)
            await asyncio.sleep(0.3)
            await server.arestart()
            await page.wait_for_selector(LIVE, timeout=10_000)
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    snap = await snapshot_of(http, share)
    await wait_rendered(page, snap["seq"])
    shown = await transcript(page)
    assert shown == expected_transcript(snap)
    assert len(shown) > 5
    assert not errors.exceptions


async def test_sse_is_used_when_websocket_is_refused(
    server: Any, http: httpx.AsyncClient, browser: Any
) -> None:
    share = await create_share(http, title="sse")
    await append(http, share, [message("u1", "hi", role="user")])
    ctx = await browser.new_context()
    page = await ctx.new_page()
    refused = 0

    async def refuse(ws: Any) -> None:
        nonlocal refused
        refused += 1
        await ws.close(code=1011, reason="no websockets here")

    await page.route_web_socket("**/ws", refuse)
    await page.goto(page_url(server, share))
    await page.wait_for_selector(LIVE, timeout=10_000)
    assert refused >= 2
    assert "SSE" in await page.locator("#conn").inner_text()
    last = (await append(http, share, [message("a1", "over SSE")]))["last_seq"]
    await wait_rendered(page, last)
    assert (await transcript(page))[-1]["text"] == "over SSE"
    server.kill()
    await server.arestart()
    last = (await append(http, share, [delta("a1", ", resumed")]))["last_seq"]
    await wait_rendered(page, last)
    assert await transcript(page) == expected_transcript(await snapshot_of(http, share))


async def test_replay_plays_scrubs_and_returns_to_live(
    server: Any, http: httpx.AsyncClient, browser: Any
) -> None:
    share = await create_share(http, title="replay")
    events: list[dict[str, Any]] = []
    for n in range(6):
        mid = f"m{n}"
        events.append(message(mid, "", role="user" if n % 2 == 0 else "assistant"))
        events += [delta(mid, f"{mid}-{i} ") for i in range(4)]
    last = 0
    for event in events:  # one by one, so the events carry distinct timestamps
        last = (await append(http, share, [event]))["last_seq"]
    final = expected_transcript(await snapshot_of(http, share))
    page, errors = await open_page(browser, page_url(server, share))
    await page.wait_for_selector(LIVE, timeout=5000)

    await page.click("#replay-toggle")
    await page.wait_for_selector("#replay:not([hidden])")
    assert await transcript(page) == []  # replay starts from the empty session
    assert await page.get_attribute("#replay-scrubber", "max") == str(last)
    await page.select_option("#replay-speed", "16")
    await page.click("#replay-play")
    await page.wait_for_function(
        "n => document.body.dataset.replayIndex === String(n)", arg=last, timeout=10_000
    )
    assert await transcript(page) == final

    # Scrub back to the middle: exactly the first half of the log is shown.
    middle = last // 2
    await page.locator("#replay-scrubber").fill(str(middle))
    await page.wait_for_function("n => document.body.dataset.replayIndex === String(n)", arg=middle)
    shown = await transcript(page)
    assert 0 < len(shown) < len(final)
    assert [m["id"] for m in shown] == [m["id"] for m in final[: len(shown)]]

    # Live events that arrive during the replay are shown when going back to live.
    last = (await append(http, share, [message("late", "after replay")]))["last_seq"]
    await page.click("#replay-exit")
    await wait_rendered(page, last)
    assert await transcript(page) == expected_transcript(await snapshot_of(http, share))
    assert not errors.exceptions


async def test_watchers_token_shares_and_deleted_shares(
    server: Any, http: httpx.AsyncClient, browser: Any
) -> None:
    share = await create_share(http, title="private", read="token")
    await append(http, share, [message("u1", "secret plan", role="user")])
    url = page_url(server, share)
    assert (await http.get(f"/share/{share['session_id']}")).status_code == 401

    first, errors = await open_page(browser, f"{url}?token={share['read_token']}")
    await first.wait_for_selector(LIVE, timeout=5000)
    second, _ = await open_page(browser, f"{url}?token={share['read_token']}")
    await second.wait_for_selector(LIVE, timeout=5000)
    await first.wait_for_function(
        "() => document.getElementById('watchers').textContent === '2 watching'"
    )
    href = await first.get_attribute("#download", "href")
    assert href is not None and href.endswith(f"?token={share['read_token']}")
    export = await http.get(href)
    assert export.status_code == 200 and "secret plan" in export.text

    resp = await http.delete(f"/v1/shares/{share['session_id']}", headers=bearer(share["secret"]))
    assert resp.status_code in (200, 204)
    await first.wait_for_selector("body[data-conn=ended]", timeout=5000)
    assert "secret plan" in (await transcript(first))[0]["text"]  # what was seen stays
    with contextlib.suppress(Exception):
        await second.close()
    assert not errors.exceptions


@pytest.mark.parametrize("width", [390, 1280])
async def test_layout_fits_the_screen(
    server: Any, http: httpx.AsyncClient, browser: Any, width: int
) -> None:
    share = await create_share(http, title="a long title " * 8)
    long_line = "x" * 400
    await append(
        http,
        share,
        [
            message(
                "a1", f"`{long_line}`\n\n```\n{long_line}\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |"
            ),
            tool_call("a1", "c1", "bash", {"cmd": long_line}),
        ],
    )
    page, _ = await open_page(
        browser, page_url(server, share), viewport={"width": width, "height": 800}
    )
    await page.wait_for_selector(LIVE, timeout=5000)
    overflow = await page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px at {width}px"


async def test_duplicated_and_lost_frames_neither_double_nor_skip(
    server: Any, http: httpx.AsyncClient, browser: Any
) -> None:
    """A proxy between page and server repeats some frames and drops others: the page
    skips what it already holds, notices each gap, resumes from its seq, and ends equal
    to the log."""
    share = await create_share(http, title="lossy")
    await append(http, share, [message("m0", "start", role="user")])
    meddling = True
    dropped = repeated = 0

    async def proxy(ws: Any) -> None:
        upstream = ws.connect_to_server()
        count = 0

        def from_server(frame: str | bytes) -> None:
            nonlocal count, dropped, repeated
            count += 1
            is_events = isinstance(frame, str) and frame.startswith('{"op":"events"')
            if meddling and is_events and count % 3 == 0:
                dropped += 1
                return
            ws.send(frame)
            if meddling and is_events and count % 2 == 0:
                repeated += 1
                ws.send(frame)

        upstream.on_message(from_server)

    ctx = await browser.new_context()
    page = await ctx.new_page()
    await page.route_web_socket("**/ws", proxy)
    await page.goto(page_url(server, share))
    await page.wait_for_selector(LIVE, timeout=5000)
    for n in range(1, 16):
        await append(http, share, [message(f"m{n}", "", role="assistant")])
        for i in range(4):
            await append(http, share, [delta(f"m{n}", f"m{n}-{i} ")])
            await asyncio.sleep(0.01)
    meddling = False
    last = (await append(http, share, [status("idle")]))["last_seq"]
    await wait_rendered(page, last)
    assert dropped >= 2 and repeated >= 2
    assert await transcript(page) == expected_transcript(await snapshot_of(http, share))
