"""Content is untrusted: nothing from a session may run or load anything in the viewer.

Every payload goes through both render paths, the server's first paint and the client's
live rendering, into every place the page shows session content. The page must run no
payload, break no CSP rule (a payload blocked by the CSP alone would still be a rendering
bug) and fetch nothing from elsewhere.
"""

from __future__ import annotations

from typing import Any

import httpx

from e2e._support import append, create_share, message, uid, ws_open

from .test_viewer import LIVE, page_url, tool_call, tool_result, wait_rendered

PAYLOADS = [
    "<script>window.__xss = 1</script>",
    '<img src=x onerror="window.__xss = 2">',
    "[click me](javascript:window.__xss=3) [upper](JAVASCRIPT:window.__xss=3)",
    "[tab](java&#x09;script:window.__xss=3) [spaces](  javascript:window.__xss=3 )",
    '<a href="javascript:window.__xss=3">raw link</a>',
    "[data](data:text/html;base64,PHNjcmlwdD5wYXJlbnQuX194c3M9Mzwvc2NyaXB0Pg==)",
    '<svg onload="window.__xss = 4"><script>window.__xss = 4</script></svg>',
    '![pixel](https://tracker.example/pixel.png) ![x](x" onerror="window.__xss=5)',
    "![js](javascript:window.__xss=5) ![svg](data:image/svg+xml,<svg onload=alert(5)>)",
    '<iframe srcdoc="<script>parent.__xss = 6</script>"></iframe>',
    "<style>body { display: none }</style>",
    "```html\n<script>window.__xss = 7</script>\n```",
    '```"><script>window.__xss=8</script>\nx\n```',
    "<details open ontoggle=window.__xss=9>toggle</details>",
    "<math><mtext><table><mglyph><style><img src=x onerror=window.__xss=10>",
    "<form action=https://tracker.example/><button>go</button></form>",
    "<meta http-equiv=refresh content='0;url=javascript:window.__xss=11'>",
]
EVIL = '"><img src=x onerror=window.__xss=12>'

RECORD = """
window.__violations = [];
document.addEventListener('securitypolicyviolation',
    e => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));
"""

INSPECT = """() => {
    const root = document.getElementById('transcript');
    const bad = [...root.querySelectorAll(
        'script, img, svg, iframe, style, math, form, meta, object, embed, link, base')]
        .map(e => e.tagName);
    const handlers = [...document.querySelectorAll('*')]
        .flatMap(e => [...e.attributes].filter(a => a.name.startsWith('on'))
        .map(a => e.tagName + '[' + a.name + ']'));
    const links = [...root.querySelectorAll('a[href]')].map(a => a.getAttribute('href'))
        .filter(h => !/^(https?:|mailto:)/i.test(h));
    return {xss: window.__xss, violations: window.__violations, bad, handlers, links};
}"""


def payload_events(prefix: str) -> list[dict[str, Any]]:
    events = []
    for n, payload in enumerate(PAYLOADS):
        mid = f"{prefix}{n}{EVIL}"
        events.append(message(mid, payload, role="assistant" if n % 2 else "user"))
    mid = f"{prefix}tools"
    events += [
        message(mid, "tools"),
        tool_call(mid, EVIL, EVIL, {"cmd": PAYLOADS[0], "html": PAYLOADS[1]}),
        tool_result(mid, EVIL, PAYLOADS[6]),
        tool_call(mid, "c2", PAYLOADS[1], PAYLOADS[0]),
        tool_result(mid, "c2", "", error=PAYLOADS[9]),
        {"id": uid(), "type": "status", "data": {"status": EVIL}},
        {"id": uid(), "type": "session.update", "data": {"title": PAYLOADS[0] + EVIL}},
    ]
    return events


async def assert_inert(page: Any, requests: list[str]) -> None:
    found = await page.evaluate(INSPECT)
    assert found == {"xss": None, "violations": [], "bad": [], "handlers": [], "links": []}
    assert not [url for url in requests if "tracker.example" in url]


async def test_no_content_runs_or_loads_on_either_render_path(
    server: Any, http: httpx.AsyncClient, browser: Any
) -> None:
    share = await create_share(http, title=EVIL + PAYLOADS[0])
    await append(http, share, payload_events("first"))
    # A participant's name is content too.
    watcher = await ws_open(server, share["session_id"], name=EVIL)

    ctx = await browser.new_context()
    await ctx.add_init_script(RECORD)
    requests: list[str] = []
    ctx.on("request", lambda req: requests.append(req.url))
    dialogs: list[str] = []
    page = await ctx.new_page()
    page.on("dialog", lambda d: dialogs.append(d.message))
    await page.goto(page_url(server, share))
    await page.wait_for_selector(LIVE, timeout=5000)
    await assert_inert(page, requests)
    # Escaped, not dropped: the reader sees what the agent wrote.
    assert "<script>window.__xss = 1</script>" in await page.locator("#transcript").inner_text()
    assert await page.title() == f"{PAYLOADS[0]}{EVIL} · agentsync"

    # The client's renderer, for live events, with the tool calls expanded.
    last = (await append(http, share, payload_events("live")))["last_seq"]
    await wait_rendered(page, last)
    for summary in await page.locator("details.tool summary").all():
        await summary.click()
    await page.wait_for_timeout(200)
    await assert_inert(page, requests)
    assert await page.locator("article.msg").count() == 2 * (len(PAYLOADS) + 1)
    assert await page.locator("#status").inner_text() == EVIL
    assert not dialogs
    await watcher.close()
