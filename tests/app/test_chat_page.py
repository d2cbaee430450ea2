"""Chat page: pick a run from the workspace, load it (cached), stream answers, compare base vs tuned, unload."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

from tests.chat_helpers import FACTS
from umtcds_core import chat
from umtcds_core.models import DEFAULT_MODEL
from umtcds_core.ui import embedded_model_note

ROOT = Path(__file__).resolve().parents[2]


def _page(ws):
    at = AppTest.from_file(str(ROOT / "pages" / "6_chat.py"), default_timeout=180)
    at.session_state["workspace"] = str(ws.root)
    at.session_state["lang"] = "en"
    return at.run()


def _texts(at) -> str:
    return "\n".join(m.value for m in at.markdown)


def test_chat_page_load_stream_compare_unload(workspace, fact_adapter):
    shutil.copytree(fact_adapter, workspace.runs_dir / "run-1", ignore=shutil.ignore_patterns("eval", "merged"))
    at = _page(workspace)
    assert not at.exception
    assert at.selectbox(key="chat_pick").value.endswith("run-1")  # the newest run is preselected
    at.button(key="chat_load").click().run()
    assert not at.exception and at.session_state["chat_loaded"][1].endswith("run-1")
    assert any("run-1" in c.value for c in at.caption)

    at.slider(key="chat_temp").set_value(0.0).run()
    q, a = FACTS[0]
    at.chat_input(key="chat_input").set_value(q).run()
    assert not at.exception
    assert a in _texts(at)
    assert at.session_state["chat_history"][-1]["content"] == a

    at.button(key="chat_clear").click().run()
    assert at.session_state["chat_history"] == []

    at.toggle(key="chat_compare").set_value(True).run()
    q2, a2 = FACTS[2]
    at.chat_input(key="chat_input").set_value(q2).run()
    last = at.session_state["chat_history"][-1]
    assert last["content"] == a2 and last["base"] and a2 not in last["base"]  # side by side: base differs
    # each column ends with its own status line (none still "generating…"), the base answer without a loop or "�"
    assert len([c for c in at.caption if c.value.startswith("✓ done")]) >= 2
    assert not any("generating" in c.value or "queued" in c.value for c in at.caption)
    assert chat.find_repetition(last["base"]) is None and "\ufffd" not in last["base"] + last["content"]

    assert at.radio(key="chat_export_format").value == "hf"
    at.button(key="chat_merge").click().run()  # export as a background job: the merged HF folder in the run folder
    assert not at.exception
    deadline = time.monotonic() + 180
    while not any("merged" in s.value for s in at.success) and time.monotonic() < deadline:
        time.sleep(0.5)  # the job runs `umtcds export` in its own process; the page shows its result when done
        at.run()
    assert any("merged" in s.value for s in at.success), [e.value for e in at.error]
    assert (workspace.runs_dir / "run-1" / "merged" / "config.json").exists()

    at.button(key="chat_unload").click().run()
    assert not at.exception
    assert "chat_loaded" not in at.session_state
    assert any("unloaded" in s.value for s in at.success)


def test_chat_page_names_the_embedded_models_limits(workspace, monkeypatch):
    """Chatting with the embedded model: the page says in one sentence what it is for (the shared note)."""
    monkeypatch.setenv("UMTCDS_LANG", "en")  # embedded_model_note() below, outside the page, in the page's language
    at = _page(workspace)
    assert at.selectbox(key="chat_pick").value == "—" and at.text_input(key="chat_base").value == DEFAULT_MODEL
    at.button(key="chat_load").click().run()
    assert not at.exception and at.session_state["chat_loaded"] == [DEFAULT_MODEL, ""]
    assert embedded_model_note() in [i.value for i in at.info]
    at.button(key="chat_unload").click().run()
