"""Drives PyPI ``durable-streams`` against an agentsync server, one step per run.

Run as a script (``python interop.py STEP ...``), in its own process as a user's program
would: tests/durable_streams/test_clients.py runs the steps and SIGKILLs the server
between two of them. (In pytest's process ``durable_streams`` is the test package of the
same name, which shadows the client.) Each step prints one JSON line per result on stdout
and exits 0, or exits non-zero with the traceback on stderr.

    python interop.py write  URL N               create a JSON stream, N appends with
                                                 Stream-Seq, read it; "saved" is the
                                                 offset after the first N/2
    python interop.py resume URL SAVED FROM TO   after a restart: re-send append FROM-1
                                                 (refused), append FROM..TO-1, read from
                                                 SAVED and from the start
    python interop.py tail   URL TOKEN MODE N    read a session from the start, live
                                                 (long-poll or sse), until N items
"""

from __future__ import annotations

import json
import sys
from typing import Any

from durable_streams import DurableStream, SeqConflictError, stream

JSON = "application/json"


def emit(obj: Any) -> None:
    print(json.dumps(obj), flush=True)


def seq(n: int) -> str:
    return f"{n:08d}"  # Stream-Seq compares as strings: fixed width keeps the order


def read(url: str, offset: str | None = None) -> dict[str, Any]:
    with stream(url, offset=offset, live=False) as res:
        return {"items": res.read_json(), "offset": res.offset}


def write(url: str, n: int) -> None:
    saved = None
    with DurableStream.create(url, content_type=JSON, ttl_seconds=3600) as handle:
        for i in range(n):
            result = handle.append({"n": i}, seq=seq(i))
            if i == n // 2 - 1:
                saved = result.next_offset
    emit({"step": "write", "saved": saved, **read(url)})


def resume(url: str, saved: str, first: int, end: int) -> None:
    with DurableStream(url, content_type=JSON) as handle:
        tail = handle.head().offset
        try:  # a writer unsure whether its last append landed sends it again
            handle.append({"n": first - 1}, seq=seq(first - 1))
            refused = False
        except SeqConflictError:
            refused = True
        for i in range(first, end):
            handle.append({"n": i}, seq=seq(i))
    emit({"step": "resume", "tail": tail, "refused": refused, "rest": read(url, saved),
          "all": read(url)})  # fmt: skip


def tail(url: str, token: str, mode: str, n: int) -> None:
    items: list[Any] = []
    headers = {"Authorization": f"Bearer {token}"}
    with stream(url, offset="-1", live=mode, headers=headers, timeout=10.0) as res:  # type: ignore[arg-type]
        for batch in res.iter_json_batches():
            items += batch
            emit({"batch": len(batch), "offset": res.offset})
            if len(items) >= n:
                break
        emit({"step": "tail", "items": items, "offset": res.offset})


if __name__ == "__main__":
    step, args = sys.argv[1], sys.argv[2:]
    if step == "write":
        write(args[0], int(args[1]))
    elif step == "resume":
        resume(args[0], args[1], int(args[2]), int(args[3]))
    elif step == "tail":
        tail(args[0], args[1], args[2], int(args[3]))
    else:
        sys.exit(f"unknown step {step!r}")
