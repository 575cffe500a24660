"""Record what opencode's share client sends, into ``fixtures/capture-<version>.json``.

    .venv/bin/python -m tests.opencode.record_fixture [--out PATH] [--no-variants]

Runs the real CLI (installed by :func:`harness.install_opencode`) against
:class:`recorder.Recorder` and :class:`fake_llm.FakeLLM`, in phases:

1. ``run``: ``opencode serve`` + ``opencode run --attach URL --share`` with a scripted agent
   turn (reasoning, text, a ``read`` tool call held *pending*, a ``bash`` call that stays
   *running*, a ``read`` of a missing file that ends in *error*, a markdown answer).
2. ``import``: ``opencode import SHARE_URL`` in a fresh HOME, then ``opencode export`` there,
   compared with what serve holds.
3. ``revert``: ``POST /session/<id>/revert`` + ``unrevert`` on serve, the only way 1.18.33
   sends a non-empty ``session_diff``.
4. ``unshare``: ``DELETE /session/<id>/share`` on serve.
5. ``reshare``: ``POST /session/<id>/share`` on the finished session (one full sync).
6. ``delete``: ``DELETE /session/<id>`` on serve (the share goes with it).
7. ``import_variants`` (unless ``--no-variants``): ``GET .../data`` answered with altered
   payloads (items or fields removed, wrong shapes, HTTP errors) to learn what import needs.

Not part of the test suite: it takes a minute or two and its output is checked in.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .fake_llm import FakeLLM, default_script
from .harness import VERSION, HarnessError, Opencode, install_opencode
from .recorder import Recorder

FIXTURES = Path(__file__).parent / "fixtures"
Items = list[dict[str, Any]]


def _phase_log(rec: Recorder, since: int, phase: str) -> list[dict[str, Any]]:
    """The client's requests since ``since`` (the harness's own polls are left out)."""
    return [
        {"phase": phase, **r}
        for r in rec.requests()[since:]
        if not r["headers"].get("user-agent", "").startswith("Python-urllib")
    ]


def _settle(rec: Recorder, quiet: float = 2.5, limit: float = 15.0) -> None:
    """Wait until the client has sent nothing for ``quiet`` seconds (its batches are 1 s)."""
    deadline = time.monotonic() + limit
    seen = len(rec.requests())
    last_change = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        n = len(rec.requests())
        if n != seen:
            seen, last_change = n, time.monotonic()
        elif time.monotonic() - last_change >= quiet:
            return


def _without(items: Items, pred: Callable[[dict[str, Any]], bool]) -> Items:
    return [i for i in items if not pred(i)]


def _drop_key(items: Items, pred: Callable[[dict[str, Any]], bool], key: str) -> Items:
    out = copy.deepcopy(items)
    for item in out:
        if pred(item) and isinstance(item.get("data"), dict):
            item["data"].pop(key, None)
    return out


def _variants(full: Items) -> list[tuple[str, int, Any]]:
    """(name, HTTP status, payload) for the import experiments."""

    def is_type(kind: str) -> Callable[[dict[str, Any]], bool]:
        return lambda i: i.get("type") == kind

    def is_role(role: str) -> Callable[[dict[str, Any]], bool]:
        return lambda i: i.get("type") == "message" and i["data"].get("role") == role

    def is_part(kind: str) -> Callable[[dict[str, Any]], bool]:
        return lambda i: i.get("type") == "part" and i["data"].get("type") == kind

    out: list[tuple[str, int, Any]] = [
        ("full", 200, full),
        ("reversed_order", 200, list(reversed(full))),
        (
            "no_model_no_session_diff",
            200,
            _without(full, lambda i: i["type"] in ("model", "session_diff")),
        ),
        ("no_parts", 200, _without(full, is_type("part"))),
        ("no_session", 200, _without(full, is_type("session"))),
        ("no_messages", 200, _without(full, is_type("message"))),
        ("empty_list", 200, []),
        ("object_wrapping_list", 200, {"data": full}),
        ("unknown_item_type_added", 200, [*full, {"type": "bogus", "data": {"x": 1}}]),
        ("http_404", 404, {"error": "not found"}),
        ("http_500", 500, {"error": "boom"}),
        ("not_json", 200, "<html>not json</html>"),
    ]
    bogus_part = copy.deepcopy(next(i for i in full if is_part("text")(i)))
    bogus_part["data"]["type"] = "bogus"
    bogus_part["data"]["id"] = "prt_bogus000000000000000000"
    out.append(("part_unknown_type", 200, [*full, bogus_part]))
    orphan = copy.deepcopy(next(i for i in full if is_part("text")(i)))
    orphan["data"]["messageID"] = "msg_doesnotexist0000000000"
    orphan["data"]["id"] = "prt_orphan00000000000000000"
    out.append(("part_of_unknown_message", 200, [*full, orphan]))
    # One field removed at a time: which ones does the import decoder require?
    samples: list[tuple[str, Callable[[dict[str, Any]], bool]]] = [
        ("session", is_type("session")),
        ("message.user", is_role("user")),
        ("message.assistant", is_role("assistant")),
    ]
    kinds = sorted({i["data"].get("type") for i in full if i.get("type") == "part"})
    samples += [(f"part.{k}", is_part(k)) for k in kinds]
    for label, pred in samples:
        first = next(i for i in full if pred(i))
        for key in first["data"]:
            out.append((f"drop:{label}.{key}", 200, _drop_key(full, pred, key)))
    return out


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _outcome(proc_stdout: str, proc_stderr: str, rc: int | None) -> dict[str, Any]:
    """Exit status, stdout and the error text (stderr less opencode's log lines)."""
    errors = [
        _ANSI.sub("", line).rstrip()
        for line in proc_stderr.splitlines()
        if line.strip() and not line.startswith("timestamp=")
    ]
    return {
        "returncode": rc,
        "stdout": proc_stdout.strip()[-600:],
        "error": "\n".join(errors[-8:])[-800:],
        "imported": "Imported session:" in proc_stdout,
    }


def record(out: Path, variants: bool) -> dict[str, Any]:
    timings: dict[str, float] = {}
    t_all = time.monotonic()
    t = time.monotonic()
    binary = install_opencode()
    timings["install_or_check"] = round(time.monotonic() - t, 3)
    root = Path(tempfile.mkdtemp(prefix="opencode-capture-"))
    log: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    try:
        a_root = root / "a"
        project = a_root / "project"
        script = default_script(
            read_path=str(project / "notes.txt"),
            bash_command="sleep 1.5 && wc -l notes.txt | tee count.txt",
            missing_path=str(project / "missing.txt"),
        )
        with (
            Recorder() as rec,
            FakeLLM(script=script) as llm,
            Opencode(binary, a_root, rec.url) as oc,
        ):
            oc.setup(llm.base_url)
            share_origin = rec.url
            oc.start_serve()
            # -- 1. run --share ---------------------------------------------------------
            n = len(rec.requests())
            t = time.monotonic()
            run = oc.run("Read notes.txt and count its lines")
            assert run.share_id and run.session_id and run.share_url
            oc.wait_share_complete(run.share_id)
            timings["run_to_share_complete"] = round(time.monotonic() - t, 3)
            _settle(rec)
            log += _phase_log(rec, n, "run")
            share_id, session_id = run.share_id, run.session_id
            full = rec.merged(share_id)
            serve_messages = oc.messages(session_id)

            # -- 2. import into a fresh HOME ----------------------------------------------
            n = len(rec.requests())
            with oc.sibling("b") as other:
                proc = other.import_share(run.share_url)
                imported = other.export(session_id)
                timings["import"] = other.timings["import"]
                timings["export"] = other.timings["export"]
            import_log = _phase_log(rec, n, "import")
            log += import_log
            src_parts = sum(len(m["parts"]) for m in serve_messages)
            dst_parts = sum(len(m["parts"]) for m in imported["messages"])
            result["import"] = {
                "command": ["opencode", "import", run.share_url],
                "requests": [{k: r[k] for k in ("method", "path", "headers")} for r in import_log],
                **_outcome(proc.stdout(), proc.stderr(), proc.popen.returncode),
                "export_after_import": {
                    "messages": len(imported["messages"]),
                    "parts": dst_parts,
                    "serve_had_messages": len(serve_messages),
                    "serve_had_parts": src_parts,
                    "session_keys": sorted(imported["info"]),
                },
            }

            # -- 3. revert / unrevert -------------------------------------------------------
            n = len(rec.requests())
            bash_msg = next(
                m["info"]["id"]
                for m in serve_messages
                if any(p.get("type") == "tool" and p.get("tool") == "bash" for p in m["parts"])
            )
            oc.revert(session_id, bash_msg)
            _settle(rec)
            oc.unrevert(session_id)
            _settle(rec)
            log += _phase_log(rec, n, "revert")

            # -- 4. unshare -------------------------------------------------------------------
            n = len(rec.requests())
            oc.unshare(session_id)
            _settle(rec, quiet=1.5)
            log += _phase_log(rec, n, "unshare")

            # -- 5. share the finished session again -----------------------------------------
            n = len(rec.requests())
            t = time.monotonic()
            reshared = oc.share(session_id)
            new_id = reshared["share"]["url"].rsplit("/", 1)[-1]
            oc.wait_share_complete(new_id)
            timings["reshare_to_complete"] = round(time.monotonic() - t, 3)
            _settle(rec)
            log += _phase_log(rec, n, "reshare")

            # -- 6. delete the session ------------------------------------------------------
            n = len(rec.requests())
            oc.delete_session(session_id)
            _settle(rec, quiet=1.5)
            log += _phase_log(rec, n, "delete")
            timings.update({f"opencode.{k}": v for k, v in oc.timings.items()})

            # -- 7. what import accepts -------------------------------------------------------
            results: list[dict[str, Any]] = []
            if variants:
                t = time.monotonic()
                with oc.sibling("c") as probe:
                    for name, status, payload in _variants(full):
                        rec.data_override[share_id] = (status, payload)
                        try:
                            proc = probe.import_share(run.share_url)
                            outcome = _outcome(proc.stdout(), proc.stderr(), proc.popen.returncode)
                        except HarnessError as exc:
                            outcome = {"harness_error": str(exc)[:600]}
                        results.append({"variant": name, "status": status, **outcome})
                        print(f"{name}: {outcome.get('stdout', '')[:120]!r}", file=sys.stderr)
                rec.data_override.pop(share_id, None)
                timings["import_variants"] = round(time.monotonic() - t, 3)
            result["import_variants"] = results

            llm_calls = [
                {
                    "stream": b.get("stream"),
                    "roles": [m.get("role") for m in b.get("messages") or []],
                    "tools": sorted(
                        str((t.get("function") or {}).get("name")) for t in b.get("tools") or []
                    ),
                }
                for b in llm.completions()
            ]
        timings["total"] = round(time.monotonic() - t_all, 3)
        fixture = {
            "opencode_version": VERSION,
            "note": (
                "Recorded by tests/opencode/record_fixture.py: opencode serve + "
                "`opencode run --attach URL --share` against tests/opencode/recorder.py with "
                "a scripted fake LLM. requests[] is every request the share server got, in "
                "order; t is seconds since the recorder started; phase says which step "
                "caused it. Paths under meta.root and the share origin are machine-specific."
            ),
            "meta": {
                "root": str(a_root),
                "share_origin": share_origin,
                "share_id": share_id,
                "reshare_id": new_id,
                "session_id": session_id,
                "llm_calls": llm_calls,
                "timings": timings,
            },
            "requests": log,
            "merged_after_run": full,
            **result,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(fixture, indent=1) + "\n")
        return fixture
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=FIXTURES / f"capture-{VERSION}.json")
    parser.add_argument("--no-variants", action="store_true", help="skip import experiments")
    args = parser.parse_args()
    fixture = record(args.out, variants=not args.no_variants)
    print(json.dumps(fixture["meta"]["timings"], indent=1))
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
