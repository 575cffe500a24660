"""The harness itself, against the recording stand-in: the real opencode CLI shares a scripted
session, imports it from the share URL into a fresh HOME and unshares it.

Run by hand (`python -m pytest tests/opencode/selftest.py`); not collected in CI yet.

Needs npm (first run installs ``opencode-ai`` into the cache, ~10 s) and takes ~15 s.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .fake_llm import FakeLLM, default_script
from .harness import Opencode, binary_path, install_opencode
from .recorder import Recorder

pytestmark = pytest.mark.skipif(
    shutil.which("npm") is None and not binary_path().exists(),
    reason="npm is needed to install opencode-ai",
)


@pytest.fixture
def binary() -> Path:
    return install_opencode()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    with Recorder() as rec:
        yield rec


def test_share_import_unshare(binary: Path, recorder: Recorder, tmp_path: Path) -> None:
    project = tmp_path / "a" / "project"
    script = default_script(
        read_path=str(project / "notes.txt"),
        bash_command="wc -l notes.txt",
        missing_path=str(project / "missing.txt"),
        pause=0.0,
    )
    with FakeLLM(script=script) as llm, Opencode(binary, tmp_path / "a", recorder.url) as oc:
        oc.setup(llm.base_url)
        oc.start_serve()
        run = oc.run("Read notes.txt and count its lines")
        assert run.share_id and run.share_url and run.session_id
        assert run.share_url == f"{recorder.url}/share/{run.share_id}"
        items = oc.wait_share_complete(run.share_id)

        kinds = {i["type"] for i in items}
        assert kinds == {"session", "message", "part", "session_diff", "model"}
        parts = [i["data"] for i in items if i["type"] == "part"]
        assert {p["type"] for p in parts} >= {"text", "reasoning", "tool", "step-start"}
        tools = {(p["tool"], p["state"]["status"]) for p in parts if p["type"] == "tool"}
        assert tools == {("read", "completed"), ("bash", "completed"), ("read", "error")}
        user_text = [p["text"] for p in parts if p["type"] == "text" and "time" not in p]
        assert user_text == ["Read notes.txt and count its lines"]

        sync = [r for r in recorder.requests() if r["path"].endswith("/sync")]
        assert sync and all(r["headers"]["user-agent"].startswith("opencode/") for r in sync)

        with oc.sibling("b") as other:
            imported = other.import_share(run.share_url)
            assert f"Imported session: {run.session_id}" in imported.stdout(), other.logs()
            exported = other.export(run.session_id)
        assert len(exported["messages"]) == len(oc.messages(run.session_id))

        oc.unshare(run.session_id)
        deletes = [r for r in recorder.requests() if r["method"] == "DELETE"]
        assert [r["path"] for r in deletes] == [f"/api/share/{run.share_id}"]
        assert deletes[0]["body"] == {"secret": recorder.shares[run.share_id].secret}
        status, _ = oc.share_data(run.share_id)
        assert status == 404
