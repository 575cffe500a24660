"""opencode sessions on the share page, in real headless Chromium.

The syncs opencode 1.18.33 really sent (``tests/opencode/fixtures``) are replayed into a
server: the first paint (plain HTTP, and Chromium without JavaScript) must show the prompt,
the reasoning, the answer, the tool calls with their states and the steps, each part under
its message; a page open before the syncs must end with the same articles, in the same
order and with the same markup, as a fresh load, however the items arrived; text that
grows across syncs must grow on the page. The display order itself is checked against
``opencode.display_order`` with awkward keys, and opencode's fields go through the same
"nothing runs" check as every other piece of content.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentsync.opencode import display_order
from agentsync.server.web.opencode_view import article_html, count, duration, money
from agentsync.server.web.render import message_html
from e2e._support import append, create_share, uid

from .conftest import open_page
from .test_viewer import LIVE, wait_rendered
from .test_xss import EVIL, PAYLOADS, RECORD, assert_inert

FIXTURE = Path(__file__).parents[1] / "opencode" / "fixtures" / "capture-1.18.33.json"
CAPTURE = json.loads(FIXTURE.read_text())

# What the page shows, per article: id, classes and text; and the same as a canonical tree
# (attributes sorted, data-rev left out, markdown as its text) to compare markup built by
# the server with markup built by the script.
ARTICLES = """() => [...document.querySelectorAll('#transcript > article.msg')].map(a => ({
    id: a.dataset.id, cls: a.className, text: a.textContent.replace(/\\s+/g, ' ').trim()}))"""
CANONICAL = """() => {
    const root = document.body.cloneNode(true);
    root.normalize();
    const canon = (node) => {
        if (node.nodeType === Node.TEXT_NODE) return node.data;
        if (node.nodeType !== Node.ELEMENT_NODE) return null;
        const attrs = [...node.attributes].filter(a => a.name !== 'data-rev')
            .map(a => a.name + '=' + a.value).sort();
        if (node.classList.contains('md')) {
            return [node.tagName, attrs, node.textContent.replace(/\\s+/g, ' ').trim()];
        }
        return [node.tagName, attrs, [...node.childNodes].map(canon).filter(c => c !== null)];
    };
    return [...root.querySelectorAll('#session-info, #session-diff, #transcript > article')]
        .map(canon);
}"""


def captured(phases: tuple[str, ...] = ("run", "revert")) -> list[list[dict[str, Any]]]:
    """The ``data`` of each sync of the recorded share, in the order opencode sent them."""
    path = f"/api/share/{CAPTURE['meta']['share_id']}/sync"
    return [
        r["body"]["data"]
        for r in CAPTURE["requests"]
        if r["method"] == "POST" and r["path"] == path and r["phase"] in phases
    ]


def reshare() -> list[dict[str, Any]]:
    """The one sync of a re-share: every item, all messages first, then all parts."""
    path = f"/api/share/{CAPTURE['meta']['reshare_id']}/sync"
    return next(r["body"]["data"] for r in CAPTURE["requests"] if r["path"] == path)


SCENARIOS = {
    "run": captured,
    "reshare": lambda: [reshare()],
    # The re-share's items in two syncs, messages then parts: in the log every part comes
    # after every message, so each one must be put in its place on the page.
    "split": lambda: [
        [i for i in reshare() if i["type"] != "part"],
        [i for i in reshare() if i["type"] == "part"],
    ],
}


async def new_share(http: httpx.AsyncClient) -> dict[str, Any]:
    res = await http.post("/api/share", json={"sessionID": CAPTURE["meta"]["session_id"]})
    assert res.status_code == 200, res.text
    return dict(res.json())


async def sync(http: httpx.AsyncClient, share: dict[str, Any], data: list[Any]) -> int:
    """One sync; returns the share's last seq after it."""
    res = await http.post(
        f"/api/share/{share['id']}/sync", json={"secret": share["secret"], "data": data}
    )
    assert res.status_code == 200, res.text
    return int(res.json()["last_seq"])


async def snapshot(http: httpx.AsyncClient, session_id: str) -> dict[str, Any]:
    res = await http.get(f"/v1/sessions/{session_id}")
    assert res.status_code == 200, res.text
    return dict(res.json())


def url(server: Any, session_id: str) -> str:
    return f"{server.url}/share/{session_id}"


async def static_page(browser: Any, server: Any, session_id: str) -> Any:
    page, errors = await open_page(
        browser, url(server, session_id), java_script_enabled=False, timezone_id="UTC"
    )
    assert not errors.exceptions
    return page


async def live_page(browser: Any, server: Any, session_id: str) -> tuple[Any, Any]:
    page, errors = await open_page(browser, url(server, session_id), timezone_id="UTC")
    await page.wait_for_selector(LIVE, timeout=5000)
    return page, errors


def parent_of(message: dict[str, Any]) -> str | None:
    oc = message["metadata"]["opencode"]
    return oc["part"]["messageID"] if oc["kind"] == "part" else None


# --- first paint ------------------------------------------------------------------------


async def test_first_paint_shows_the_session_in_creation_order(
    server: Any, http: httpx.AsyncClient, browser: Any
) -> None:
    share = await new_share(http)
    for batch in captured():
        await sync(http, share, batch)
    snap = await snapshot(http, share["id"])
    expected = [m["id"] for m in sorted(snap["messages"], key=lambda m: m["metadata"]["order"])]

    # A plain fetcher gets all of it.
    page_html = (await http.get(f"/share/{share['id']}")).text
    shown_texts = [
        "Fake session title", "Read notes.txt and count its lines", "The user wants the notes",
        "hello from the fixture", "File not found", "tee count.txt", "tool-calls", "changed:",
        "Fake model", "opencode 1.18.33",
    ]  # fmt: skip
    for text in shown_texts:
        assert text in page_html, text

    page = await static_page(browser, server, share["id"])
    shown = await page.evaluate(ARTICLES)
    assert [a["id"] for a in shown] == expected
    # Each part sits in its message's group: the nearest header above it is its message.
    by_id = {m["id"]: m for m in snap["messages"]}
    header = None
    for article in shown:
        if "oc-message" in article["cls"]:
            header = article["id"]
        else:
            assert parent_of(by_id[article["id"]]) == header, article
    # Parts carry no role label of their own; headers do.
    assert await page.locator("article.oc-part .role").count() == 0
    assert await page.locator("article.oc-message .role").all_text_contents() == [
        "user", "assistant", "assistant", "assistant", "assistant",
    ]  # fmt: skip

    prompt = page.locator("article.role-user.part-text")
    assert (await prompt.text_content() or "").strip() == "Read notes.txt and count its lines"
    headers = page.locator("article.oc-message.role-assistant > header")
    first = await headers.first.text_content()
    assert first is not None
    for text in ("build", "fake/fake-model", "100 in · 19 out", "$0.0000", "2.5s"):
        assert text in first, (text, first)
    assert await page.locator(".oc-working").count() == 0

    reasoning = page.locator("article.part-reasoning details.oc-fold")
    assert await reasoning.count() == 3
    assert await page.locator("details.oc-fold[open]").count() == 0
    assert await reasoning.first.locator(".oc-fold-label").text_content() == "Reasoning"
    await reasoning.first.locator("summary").click()
    assert "I will read it" in await reasoning.first.locator(".body").inner_text()

    tools = await page.evaluate(
        """() => [...document.querySelectorAll('article.part-tool details.tool')].map(d => [
            d.querySelector('.tool-name').textContent,
            d.querySelector('.tool-summary').textContent,
            d.querySelector('.tool-state').textContent])"""
    )
    assert tools == [
        ["read", "notes.txt", "done"],
        ["bash", "sleep 1.5 && wc -l notes.txt | tee count.txt", "done"],
        ["read", "missing.txt", "error"],
    ]
    failed = page.locator("details.tool.state-error")
    await failed.locator("summary").click()
    assert "File not found" in await failed.locator("pre.tool-out").inner_text()

    steps = await page.locator("article.part-step-finish .oc-reason").all_text_contents()
    assert steps == ["tool-calls", "tool-calls", "tool-calls", "stop"]
    step = await page.locator("article.part-step-finish").first.text_content()
    assert step is not None and "100 in · 19 out" in step and "$0.0000" in step
    assert await page.locator("article.part-patch .oc-files").text_content() == "count.txt"
    assert await page.locator("article.part-step-start:visible").count() == 0

    info = await page.locator("#session-info").text_content()
    assert info is not None
    for text in ("Fake model", "400 in · 74 out", "$0.0000", "opencode 1.18.33"):
        assert text in info, (text, info)
    diff = page.locator("#session-diff")
    assert "count.txt" in (await diff.text_content() or "")
    assert await diff.locator(".oc-diff-file .oc-add").text_content() == "+1"
    assert await page.locator("#status").inner_text() == "idle"


async def test_a_plain_session_has_no_opencode_markup(server: Any, http: httpx.AsyncClient) -> None:
    share = await create_share(http, title="plain")
    await append(
        http, share, [{"id": uid(), "type": "message", "data": {"id": "u1", "role": "user"}}]
    )
    page_html = (await http.get(f"/share/{share['session_id']}")).text
    assert "<section id='session-diff' class='session-diff' hidden></section>" in page_html
    assert "<div id='session-info' class='session-info' hidden></div>" in page_html
    assert " oc " not in page_html and "oc-" not in page_html


# --- live updates -----------------------------------------------------------------------


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
async def test_a_live_page_ends_equal_to_a_fresh_load(
    server: Any, http: httpx.AsyncClient, browser: Any, scenario: str
) -> None:
    share = await new_share(http)
    page, errors = await live_page(browser, server, share["id"])
    last = 0
    for batch in SCENARIOS[scenario]():
        last = await sync(http, share, batch)
        await asyncio.sleep(0.05)
    await wait_rendered(page, last)

    snap = await snapshot(http, share["id"])
    logged = [m["id"] for m in snap["messages"]]
    ordered = [m["id"] for m in display_order(snap["messages"])]
    if scenario == "split":
        assert logged != ordered, "the split re-share should store parts after all messages"
    live = await page.evaluate(ARTICLES)
    assert [a["id"] for a in live] == ordered
    fresh = await static_page(browser, server, share["id"])
    assert live == await fresh.evaluate(ARTICLES)
    # Markup too: the script's articles are the server's, attribute for attribute.
    assert await page.evaluate(CANONICAL) == await fresh.evaluate(CANONICAL)
    assert not errors.exceptions and not errors.console


async def test_growing_text_and_tool_states_update_in_place(
    server: Any, http: httpx.AsyncClient, browser: Any
) -> None:
    share = await new_share(http)
    ses = "ses_grow"
    t0 = 1_700_000_000_000
    user = {"id": "msg_01", "sessionID": ses, "role": "user", "time": {"created": t0}}
    asked = {"id": "prt_01", "messageID": "msg_01", "sessionID": ses, "type": "text"}
    info = {
        "id": "msg_02", "sessionID": ses, "role": "assistant", "agent": "build",
        "providerID": "acme", "modelID": "m-1", "time": {"created": t0 + 1000},
    }  # fmt: skip
    thought = {"id": "prt_02", "messageID": "msg_02", "sessionID": ses, "type": "reasoning"}
    answer = {"id": "prt_04", "messageID": "msg_02", "sessionID": ses, "type": "text"}
    grep = {
        "id": "prt_03", "messageID": "msg_02", "sessionID": ses, "type": "tool",
        "tool": "grep", "callID": "call_1",
    }  # fmt: skip
    session = {"id": ses, "title": "growing", "directory": "/w", "version": "1.18.33"}

    def item(kind: str, data: dict[str, Any]) -> dict[str, Any]:
        return {"type": kind, "data": data}

    page, errors = await live_page(browser, server, share["id"])
    last = await sync(
        http,
        share,
        [
            item("session", session),
            item("message", user),
            item("part", {**asked, "text": "count the TODOs"}),
            item("message", info),
            item("part", {**thought, "text": "Let me", "time": {"start": t0 + 1100}}),
        ],
    )
    await wait_rendered(page, last)
    assert await page.locator("#status").inner_text() == "thinking"
    assert await page.locator("article[data-id=msg_02] .oc-working").count() == 1
    fold = page.locator("article[data-id=prt_02] details.oc-fold")
    assert await fold.locator(".oc-fold-label").text_content() == "Thinking…"
    await fold.locator("summary").click()
    # Marks on the elements show which were updated in place rather than rebuilt.
    await page.evaluate("() => document.querySelector('article[data-id=prt_02]').__kept = 1")

    last = await sync(
        http,
        share,
        [item("part", {**thought, "text": "Let me grep", "time": {"start": t0 + 1100}})],
    )
    await wait_rendered(page, last)
    assert await fold.locator(".body").inner_text() == "Let me grep"
    assert await fold.evaluate("d => d.open"), "the open reasoning block closed as it grew"

    states = ["pending", "running", "completed"]
    for status in states:
        state: dict[str, Any] = {"status": status, "input": {"pattern": "TODO"}}
        if status == "completed":
            state |= {"output": "a.py:3: TODO", "title": "TODO", "time": {"start": 1, "end": 2}}
        last = await sync(http, share, [item("part", {**grep, "state": state})])
        await wait_rendered(page, last)
        tool = page.locator("article[data-id=prt_03] details.tool")
        assert await tool.locator(".tool-summary").text_content() == "TODO"
        label = "done" if status == "completed" else "running"
        assert await tool.locator(".tool-state").text_content() == label

    text = ""
    for word in ["There ", "are ", "**two** ", "TODOs."]:
        text += word
        last = await sync(http, share, [item("part", {**answer, "text": text})])
        await wait_rendered(page, last)
        body = page.locator("article[data-id=prt_04] .body")
        assert (await body.inner_text()).strip() == text.replace("**", "").strip()
    assert await page.locator("article[data-id=prt_04] strong").text_content() == "two"

    done = {
        **info,
        "time": {"created": t0 + 1000, "completed": t0 + 62_300},
        "cost": 0.03125,
        "tokens": {"input": 1_234_567, "output": 999_999, "reasoning": 1000, "cache": {"read": 5}},
        "finish": "stop",
    }
    last = await sync(
        http,
        share,
        [
            item("message", done),
            item("part", {**thought, "text": "Let me grep", "time": {"start": 1, "end": 2}}),
        ],
    )
    await wait_rendered(page, last)
    header = await page.locator("article[data-id=msg_02] > header").text_content()
    assert header is not None
    for text in ("acme/m-1", "1.2M in · 999.9k out · 1k reasoning", "$0.0313", "1m 1s"):
        assert text in header, (text, header)
    assert await page.locator(".oc-working").count() == 0
    assert await page.locator("#status").inner_text() == "idle"
    assert await fold.locator(".oc-fold-label").text_content() == "Reasoning"
    assert await page.evaluate("() => document.querySelector('article[data-id=prt_02]').__kept")

    ids = [a["id"] for a in await page.evaluate(ARTICLES)]
    assert ids == ["msg_01", "prt_01", "msg_02", "prt_02", "prt_03", "prt_04"]
    await fold.locator("summary").click()  # closed, as a fresh page shows it
    fresh = await static_page(browser, server, share["id"])
    assert await page.evaluate(CANONICAL) == await fresh.evaluate(CANONICAL)
    assert not errors.exceptions and not errors.console


async def test_replay_scrubs_an_out_of_order_log_in_display_order(
    server: Any, http: httpx.AsyncClient, browser: Any
) -> None:
    share = await new_share(http)
    last = 0
    for batch in SCENARIOS["split"]():
        last = await sync(http, share, batch)
    page, errors = await live_page(browser, server, share["id"])
    final = await page.evaluate(ARTICLES)
    await page.click("#replay-toggle")
    await page.wait_for_selector("#replay:not([hidden])")
    for index in (last // 2, last - 3, last, 5, last):
        await page.locator("#replay-scrubber").fill(str(index))
        await page.wait_for_function(
            "n => document.body.dataset.replayIndex === String(n)", arg=index
        )
        ids = [a["id"] for a in await page.evaluate(ARTICLES)]
        order = [a["id"] for a in final]
        assert ids == [i for i in order if i in set(ids)], f"out of order at {index}"
    assert await page.evaluate(ARTICLES) == final
    await page.click("#replay-exit")
    assert await page.evaluate(ARTICLES) == final
    assert not errors.exceptions


@pytest.mark.parametrize("width", [390, 1280])
async def test_layout_fits_the_screen_with_everything_open(
    server: Any, http: httpx.AsyncClient, browser: Any, width: int
) -> None:
    share = await new_share(http)
    for batch in captured():
        await sync(http, share, batch)
    long = "x" * 300
    ses, mid = CAPTURE["meta"]["session_id"], "msg_zzz"

    def part(n: int, kind: str, **fields: Any) -> dict[str, Any]:
        ids = {"id": f"prt_z{n}", "messageID": mid, "sessionID": ses}
        return {"type": "part", "data": {**ids, "type": kind, **fields}}

    info = {
        "id": mid, "sessionID": ses, "role": "assistant", "time": {"created": 1},
        "agent": long, "providerID": long, "modelID": long,
        "error": {"name": long, "data": {"message": long}},
    }  # fmt: skip
    state = {
        "status": "completed", "input": {"command": f"echo {long}"}, "output": long,
        "title": long, "metadata": {"diff": f"@@ -1 +1 @@\n-{long}\n+{long}"},
    }  # fmt: skip
    diff = {"file": f"{long}.txt", "patch": f"+{long}", "additions": 1, "status": long}
    items = [
        {"type": "message", "data": info},
        part(1, "tool", tool="bash", callID="c", state=state),
        part(2, "patch", files=[f"/{long}/{long}.txt"]),
        part(3, "reasoning", text=f"`{long}`"),
        {"type": "session_diff", "data": [diff]},
    ]
    last = await sync(http, share, items)
    page, _ = await open_page(
        browser, url(server, share["id"]), viewport={"width": width, "height": 800}
    )
    await page.wait_for_selector(LIVE, timeout=5000)
    await wait_rendered(page, last)
    await page.evaluate("() => document.querySelectorAll('details').forEach(d => d.open = true)")
    await page.wait_for_timeout(100)
    overflow = await page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px at {width}px"


# --- the display order ------------------------------------------------------------------


def test_display_order_sorts_stably_and_inherits_keys() -> None:
    def m(mid: str, order: Any = None) -> dict[str, Any]:
        return {"id": mid, "metadata": {"order": order} if order is not None else {}}

    messages = [
        m("plain"),  # before any key: ""
        m("b", "b"),
        m("b/3", "b/3"),
        m("after-b/3"),  # takes "b/3"
        m("a", "a"),
        m("b/1", "b/1"),
        m("number", 7),  # not a string: takes "b/1"
        m("b/3-again", "b/3"),
        {"id": "no-metadata"},  # takes "b/3"
    ]
    assert [x["id"] for x in display_order(messages)] == [
        "plain", "a", "b", "b/1", "number", "b/3", "after-b/3", "b/3-again", "no-metadata",
    ]  # fmt: skip
    # A session that never says an order keeps its own.
    plain = [{"id": str(n), "role": "user"} for n in range(5)]
    assert display_order(plain) == plain
    # Keys compare as JavaScript compares strings, by UTF-16 code unit: U+1F600 is the
    # surrogate pair D83D DE00, which sorts before U+FFFF.
    astral = [m("ffff", "\uffff"), m("emoji", "\U0001f600")]
    assert [x["id"] for x in display_order(astral)] == ["emoji", "ffff"]


def test_tool_calls_match_results_as_the_client_does() -> None:
    """Ids inline in a message event are not validated: a dict id once made the page 500.
    Matching follows the client's Map: strings and numbers by value, true is not 1."""
    calls = [{"id": {"a": 1}, "name": "t"}, {"id": 1, "name": "u"}, {"id": "c", "name": "v"}]
    results = [{"toolCallId": [1]}, {"toolCallId": True}, {"toolCallId": "c", "output": "ok"}]
    message: dict[str, Any] = {
        "id": "m",
        "role": "assistant",
        "content": "",
        "toolCalls": calls,
        "toolResults": results,
    }
    part = {"kind": "part", "part": {"type": "tool"}}
    for markup in (
        message_html(message),
        article_html({**message, "metadata": {"opencode": part}}),
    ):
        assert markup.count("<details") == 5, markup  # three calls, two results of no call
        assert markup.count("state-ok") == 3 and "ok</pre>" in markup


def test_number_formats() -> None:
    assert [count(n) for n in (0, 999, 1000, 1049, 1999, 999_999, 1_000_000, 12_345_678)] == [
        "0", "999", "1k", "1k", "1.9k", "999.9k", "1M", "12.3M",
    ]  # fmt: skip
    # toFixed rounds the exact binary value half up: 0.03125 is exact, so it is a tie.
    assert [money(x) for x in (0, -0.0, 0.03125, 0.00005, 1.5, -1, True, "1")] == [
        "$0.0000", "$0.0000", "$0.0313", "$0.0001", "$1.5000", "", "", "",
    ]  # fmt: skip
    assert [duration(ms) for ms in (0, 999, 1000, 59_999, 61_234)] == [
        "0ms", "999ms", "1.0s", "59.9s", "1m 1s",
    ]  # fmt: skip


async def test_awkward_orders_and_values_render_alike_live_and_fresh(
    server: Any, http: httpx.AsyncClient, browser: Any
) -> None:
    """Plain agentsync events carrying opencode metadata, with keys that sort differently
    by code point and by UTF-16 unit, messages without keys, and numbers at the edges of
    the formats: the live page, a fresh load and display_order agree."""
    share = await create_share(http, title="awkward")
    page, errors = await live_page(browser, server, share["session_id"])

    def header(mid: str, order: Any, **info: Any) -> dict[str, Any]:
        meta = {"order": order, "opencode": {"kind": "message", "info": info}}
        data = {"id": mid, "role": "assistant", "content": "", "metadata": meta}
        return {"id": uid(), "type": "message", "data": data}

    def part(mid: str, order: Any, content: str = "", **raw: Any) -> dict[str, Any]:
        meta = {"order": order, "opencode": {"kind": "part", "part": raw}}
        data = {"id": mid, "role": "assistant", "content": content, "metadata": meta}
        return {"id": uid(), "type": "message", "data": data}

    def plain(mid: str, text: str) -> dict[str, Any]:
        data = {"id": mid, "role": "user", "content": text}
        return {"id": uid(), "type": "message", "data": data}

    usage = {"input": 999_999, "output": 1000, "reasoning": 5}
    spent = {"cost": 0.03125, "time": {"created": 1, "completed": 61_234}, "tokens": usage}
    changed = {"file": "a.txt", "additions": 2, "deletions": 1, "status": "modified"}
    metadata = {
        "opencode.session": {"directory": "/w/", "version": "9"},
        "opencode.session_diff": [{**changed, "patch": "@@ -1 +1,2 @@\n-a\n+b\n+c"}],
    }
    failure = {"name": "APIError", "data": {"message": "rate limited"}}
    batches = [
        [plain("p0", "before everything")],
        [header("h", "m", providerID="x", **spent), part("m/3", "m/3", "third", type="text")],
        [plain("p1", "inherits m/3")],
        [part("m/1", "m/1", type="step-finish", reason="stop", cost=1e-5, tokens={"input": 1})],
        [part("m/2", "m/2", type="file", filename="a.png", url="data:image/png;base64,AA")],
        [part("odd", 5, type="compaction")],
        [part("ffff", "\uffff", "last", type="text"), part("emoji", "\U0001f600", type="text")],
        [header("e", "m/0", error=failure)],
        [{"id": uid(), "type": "session.update", "data": {"metadata": metadata}}],
        [
            part("m/4", "m/4", type="patch", files=["/w/src/a.txt", "/elsewhere/b.txt"]),
            part("m/5", "m/5", type="subtask", description="look around"),
        ],
    ]
    last = 0
    for batch in batches:
        last = (await append(http, share, batch))["last_seq"]
    await wait_rendered(page, last)

    snap = await snapshot(http, share["session_id"])
    expected = [m["id"] for m in display_order(snap["messages"])]
    assert expected == [
        "p0", "h", "e", "m/1", "m/2", "odd", "m/3", "p1", "m/4", "m/5", "emoji", "ffff",
    ]  # fmt: skip
    live = await page.evaluate(ARTICLES)
    assert [a["id"] for a in live] == expected
    fresh = await static_page(browser, server, share["session_id"])
    assert await page.evaluate(CANONICAL) == await fresh.evaluate(CANONICAL)
    texts = {a["id"]: a["text"] for a in live}
    assert "$0.0313" in texts["h"] and "999.9k in · 1k out · 5 reasoning" in texts["h"]
    assert "APIError rate limited" in texts["e"] and "working" not in texts["e"]
    assert texts["m/2"] == "file: a.png"
    assert await page.locator("article[data-id='m/2'] a").count() == 0  # a data: URL
    assert texts["m/4"] == "changed: src/a.txt, /elsewhere/b.txt"
    assert texts["m/5"] == "subtask look around"
    assert "$0.0313" in (await page.locator("#session-info").text_content() or "")
    assert not errors.exceptions and not errors.console


# --- safety -----------------------------------------------------------------------------


async def test_opencode_fields_are_inert_on_both_render_paths(
    server: Any, http: httpx.AsyncClient, browser: Any
) -> None:
    evil = PAYLOADS[1] + EVIL

    def batch(prefix: str) -> list[dict[str, Any]]:
        mid = f"msg_{prefix}1"

        def part(n: int, kind: str, **fields: Any) -> dict[str, Any]:
            ids = {"id": f"prt_{prefix}{n}", "messageID": mid, "sessionID": "ses_x"}
            return {"type": "part", "data": {**ids, "type": kind, **fields}}

        session = {"id": "ses_x", "title": evil, "directory": evil, "version": evil}
        diff = {"file": evil, "patch": f"+{evil}\n-{PAYLOADS[0]}", "additions": evil}
        info = {
            "id": mid, "sessionID": "ses_x", "role": "assistant", "agent": evil,
            "providerID": evil, "modelID": evil, "time": {"created": 1},
            "error": {"name": evil, "data": {"message": PAYLOADS[0]}},
        }  # fmt: skip
        state = {
            "status": evil, "title": evil, "input": {"x": evil}, "error": evil,
            "metadata": {"diff": f"+{evil}"},
        }  # fmt: skip
        return [
            {"type": "session", "data": {**session, "model": {"id": evil}}},
            {"type": "model", "data": [{"id": evil, "providerID": evil, "name": evil}]},
            {"type": "session_diff", "data": [{**diff, "status": evil}]},
            {"type": "message", "data": info},
            part(1, "text", text=PAYLOADS[2]),
            part(2, "reasoning", text=PAYLOADS[6]),
            part(3, "tool", tool=evil, callID=evil, state=state),
            part(4, "file", filename=evil, mime=evil, url="javascript:window.__xss=13"),
            part(5, "patch", files=[evil]),
            part(6, evil, name=evil),
            part(7, "step-finish", reason=evil, tokens={"input": evil}, cost=evil),
        ]

    share = await new_share(http)
    await sync(http, share, batch("a"))
    ctx = await browser.new_context()
    await ctx.add_init_script(RECORD)
    requests: list[str] = []
    ctx.on("request", lambda req: requests.append(req.url))
    page = await ctx.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: dialogs.append(d.message))
    await page.goto(url(server, share["id"]))
    await page.wait_for_selector(LIVE, timeout=5000)
    await assert_inert(page, requests)
    assert evil in (await page.locator("article.oc-message").first.text_content() or "")

    # The script's renderer, with everything expanded.
    last = await sync(http, share, batch("b"))
    await wait_rendered(page, last)
    await page.evaluate("() => document.querySelectorAll('details').forEach(d => d.open = true)")
    await page.wait_for_timeout(200)
    await assert_inert(page, requests)
    assert await page.locator("article.part-file a").count() == 0
    assert not dialogs
