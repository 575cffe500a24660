"""Schemathesis against a real ``agentsync serve``, with the schema the server serves.

Every documented operation is fuzzed with schema-valid (positive) and schema-violating
(negative) requests: against a real share with its real secret (so the fuzzer reaches
parsing, validation and the store, not only 404s), against a guarded ``token`` share with
wrong credentials, against made-up ids, and at the end against a deleted share. Every
answer must be a documented status with the documented content type and body, never a
5xx; and the guarded share's stored rows, export and snapshot must be exactly what they
were before the run.

Bounded for CI: a fixed number of examples per operation, derandomized (the same inputs
on every run), no example database.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from ._support import Share, create_share, seed, stored_state

pytestmark = pytest.mark.timeout(180)

EXAMPLES = 50  # per operation in the main phase
GONE_EXAMPLES = 5  # per operation against the deleted share
REQUEST_TIMEOUT = 5.0
STREAM_SECONDS = 0.3  # an SSE stream is read this long (or until its first event)
MAX_WAIT = 0.2  # long-polls the fuzzer asks for are clamped to this

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]

EXPORT = (
    b'{"format":"agentsync.export/1","session":{"title":"imported"},"epoch":"x","last_seq":2}\n'
    b'{"seq":1,"id":"a","type":"message","ts":1,"data":{"id":"m","role":"user","content":"x"}}\n'
    b'{"seq":2,"id":"b","type":"message.delta","ts":2,"data":{"id":"m","delta":"y"}}\n'
)


# an import body is text: send what the generator made, as it is
schemathesis.serializer.alias("application/x-ndjson", "text/plain")


def _clamp(case: Any) -> Any:
    """Keep long-polls short; the bound itself (wait <= 60) is the schema's business."""
    query = case.query
    if isinstance(query, dict) and "wait" in query:
        try:
            if float(query["wait"]) > MAX_WAIT:
                query["wait"] = MAX_WAIT
        except (TypeError, ValueError, OverflowError):
            pass
    return case


def _strategies(
    op: Any, target: Share, guarded: Share, *, gone: bool = False
) -> list[st.SearchStrategy[Any]]:
    """Positive and negative cases aimed at the target, the guarded share and random ids."""
    has_id = "{session_id}" in op.path
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    out: list[st.SearchStrategy[Any]] = []
    right = {"Authorization": f"Bearer {target.secret}"}
    wrong = {"Authorization": "Bearer not-the-secret"}
    for mode in modes:
        variants: list[dict[str, Any]] = []
        if has_id:
            ids = {"session_id": target.session_id}
            if gone or op.method.upper() != "DELETE":
                variants.append({"path_parameters": ids, "headers": right})
            variants.append({"path_parameters": ids, "headers": wrong})
            variants.append({"path_parameters": ids})
            if not gone:
                bad = {"session_id": guarded.session_id}
                variants.append({"path_parameters": bad, "headers": wrong})
                variants.append({"path_parameters": bad})
                variants.append({})  # made-up ids
        else:
            variants.append({})
            if op.path == "/v1/sessions/import":
                variants.append({"body": EXPORT.decode(), "media_type": "application/x-ndjson"})
        for kwargs in variants:
            try:
                strategy = op.as_strategy(generation_mode=mode, **kwargs)
            except Exception:  # nothing to negate in this operation, e.g. GET /healthz
                continue
            out.append(strategy.map(_clamp))
    assert out, f"no strategy for {op.label}"
    return out


def _fuzz(
    op: Any,
    base_url: str,
    strategies: list[st.SearchStrategy[Any]],
    examples: int,
    seen: Callable[[int], None],
) -> None:
    session = requests.Session()
    timeout = STREAM_SECONDS if op.path.endswith("/stream") else REQUEST_TIMEOUT

    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @given(case=st.one_of(strategies))
    def run(case: Any) -> None:
        response = case.call(base_url=base_url, session=session, timeout=timeout)
        seen(response.status_code)
        case.validate_response(response, checks=CHECKS)

    try:
        run()
    finally:
        session.close()


def _operations(schema: Any) -> list[Any]:
    ops = [result.ok() for result in schema.get_all_operations()]
    documented = {f"{op.method.upper()} {op.path}" for op in ops}
    assert documented >= {
        "POST /v1/shares",
        "DELETE /v1/shares/{session_id}",
        "POST /v1/sessions/import",
        "POST /v1/sessions/{session_id}/events",
        "GET /v1/sessions/{session_id}/events",
        "GET /v1/sessions/{session_id}",
        "GET /v1/sessions/{session_id}/stream",
        "GET /v1/sessions/{session_id}/export",
        "GET /share/{session_id}",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /openapi.json",
        "GET /v1/admin/shares",
        "GET /v1/admin/shares/{session_id}",
        "DELETE /v1/admin/shares/{session_id}",
        "POST /v1/admin/shares/{session_id}/expire",
        "POST /api/share",
        "POST /api/share/{session_id}/sync",
        "GET /api/share/{session_id}/data",
        "DELETE /api/share/{session_id}",
    }, documented
    return ops


def test_every_documented_route_survives_schemathesis(server_factory: Any) -> None:
    srv = server_factory(address_limits=False)  # per-address limits would answer 429s
    started = time.monotonic()
    with httpx.Client(base_url=srv.url, timeout=10) as client:
        target = create_share(client, title="fuzz target")
        seed(client, target)
        guarded = create_share(client, title="guarded", read="token")
        seed(client, guarded)
        before = stored_state(srv, client, guarded)

        # the schema the running server serves (from_url would skip /openapi.json itself)
        served = client.get("/openapi.json")
        assert served.status_code == 200, served.text
        schema = schemathesis.openapi.from_dict(served.json())
        schema.config.max_stream_events = 1
        ops = _operations(schema)
        statuses: dict[str, set[int]] = {}
        for op in ops:
            label = f"{op.method.upper()} {op.path}"
            strategies = _strategies(op, target, guarded)
            _fuzz(op, srv.url, strategies, EXAMPLES, statuses.setdefault(label, set()).add)

        # nothing a rejected request did reached the guarded share
        assert stored_state(srv, client, guarded) == before
        # the fuzzer got past authentication and validation on the target
        assert 200 in statuses["POST /v1/sessions/{session_id}/events"], statuses
        assert 200 in statuses["GET /v1/sessions/{session_id}/events"], statuses
        assert {401, 403, 404} <= statuses["GET /v1/sessions/{session_id}"] | statuses[
            "DELETE /v1/shares/{session_id}"
        ], statuses

        # the target, deleted, answers every route with a documented status (410 mostly)
        resp = client.delete(
            f"/v1/shares/{target.session_id}",
            headers={"Authorization": f"Bearer {target.secret}"},
        )
        assert resp.status_code == 204, resp.text
        gone: dict[str, set[int]] = {}
        for op in ops:
            if "{session_id}" not in op.path or op.path.startswith("/v1/admin/"):
                continue  # the admin API is off here: 403 whatever the share
            label = f"{op.method.upper()} {op.path}"
            strategies = _strategies(op, target, guarded, gone=True)
            _fuzz(op, srv.url, strategies, GONE_EXAMPLES, gone.setdefault(label, set()).add)
        # opencode's unshare of a share already gone is done: 204 (see server/opencode.py)
        assert 204 in gone.pop("DELETE /api/share/{session_id}")
        assert all(410 in codes for codes in gone.values()), gone

        assert stored_state(srv, client, guarded) == before
        assert client.get("/healthz").status_code == 200
    assert srv.proc is not None and srv.proc.poll() is None, srv.logs()
    print(f"schemathesis: {time.monotonic() - started:.1f}s; statuses {statuses}; gone {gone}")


def test_import_rejects_an_unknown_read_policy(server_factory: Any) -> None:
    srv = server_factory(address_limits=False)  # per-address limits would answer 429s
    with httpx.Client(base_url=srv.url, timeout=10) as client:
        resp = client.post(
            "/v1/sessions/import",
            params={"read": "tokens"},
            content=EXPORT,
            headers={"Content-Type": "application/x-ndjson"},
        )
        assert resp.status_code == 400, resp.text
