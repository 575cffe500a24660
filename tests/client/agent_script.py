"""An agent for the kill test: ``python agent_script.py produce|drain URL SECRET OUTBOX LOG``.

``produce`` publishes a deterministic plan with a blocking ``Share`` and, after each
``flush()`` that completes, appends to LOG how many plan steps were published by then (a
flush that times out, the server being away, is skipped); it is meant to be killed with
SIGKILL. ``drain`` reopens the share on the same outbox and flushes.
"""

from __future__ import annotations

import sys
from typing import Any

from agentsync.client import Share

STEPS = 100_000


def plan(i: int) -> tuple[str, dict[str, Any]]:
    """Step ``i`` of the plan: every 40th a new message, every 40th+20 a tool call."""
    mid = f"m{i // 40}"
    if i % 40 == 0:
        return "message", {"id": mid, "role": "assistant", "content": ""}
    if i % 40 == 20:
        return "tool_call", {"messageId": mid, "id": f"t{i}", "name": "grep", "arguments": i}
    return "message.delta", {"id": mid, "delta": f"{i} "}


def main() -> None:
    mode, url, secret, outbox, log_path = sys.argv[1:6]
    share = Share.open(url, secret, outbox=outbox, name="agent")
    if mode == "drain":
        share.close(timeout=30)
        return
    with open(log_path, "a") as log:
        for i in range(STEPS):
            type_, data = plan(i)
            if type_ == "message":
                share.add_message("assistant", "", id=data["id"])
            elif type_ == "tool_call":
                share.tool_call(data["messageId"], "grep", data["arguments"], id=data["id"])
            else:
                share.stream_text(data["id"], data["delta"])
            if i % 97 == 96:
                try:
                    share.flush(timeout=1.0)
                except TimeoutError:
                    # The server is away: go on producing into the outbox (the kill test
                    # waits for events that exist only there), log nothing as flushed.
                    continue
                log.write(f"{i + 1}\n")
                log.flush()


if __name__ == "__main__":
    main()
