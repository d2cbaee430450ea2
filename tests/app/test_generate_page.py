"""The Generate page: backend fields, test connection, a real background job against a local chat-completions
server (key typed into the page, handed over only via the job's environment), preview, failures and retry."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fake_llm_server import FakeLLMServer  # noqa: E402

from umtcds_core.jobs import latest_job  # noqa: E402
from umtcds_core.qa import GENERATE  # noqa: E402
from umtcds_core.workspace import Workspace  # noqa: E402

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "2_generate.py")
KEY = "sk-page-test-a1b2c3d4e5f6g7h8"


@pytest.fixture
def ws(_isolated_workspaces, monkeypatch, tmp_path):
    monkeypatch.setenv("UMTCDS_SECRETS_FILE", str(tmp_path / "no-secrets.toml"))
    for var in ("ZHIPUAI_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    w = Workspace.create("gen-page")
    w.pages_dir.mkdir(parents=True)
    (w.pages_dir / "library.txt").write_text(
        "Library\nThe university library opens at 7:30 and closes at 22:00 every day.\n"
        "Students can borrow up to 20 books for 60 days with their campus card.\n",
        encoding="utf-8",
    )
    (w.pages_dir / "blank.txt").write_text("\n", encoding="utf-8")
    return w


def _page(ws: Workspace) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["workspace"] = str(ws.root)
    at.session_state["lang"] = "en"
    return at.run()


def _wait_for_job(ws: Workspace, timeout: float = 90) -> str:
    job = latest_job(ws, "generate")
    assert job is not None
    return job.wait(timeout=timeout)


def test_page_renders_fields_and_warns_without_a_key(ws):
    at = _page(ws)
    assert not at.exception
    assert at.radio(key="gen_backend").value == "zhipuai"
    assert any("No key found" in w.value for w in at.warning)
    assert at.text_input(key="gen_api_key").proto.type == at.text_input(key="gen_api_key").proto.PASSWORD
    at.radio(key="gen_backend").set_value("local").run()
    assert not at.exception
    at.button(key="gen_test").click().run()
    assert any("smollm2-135m" in s.value for s in at.success)


def test_connection_start_job_preview_and_retry_without_writing_the_key(ws):
    with FakeLLMServer(api_key=KEY) as srv:
        at = _page(ws)
        at.radio(key="gen_backend").set_value("openai").run()
        at.text_input(key="gen_base_url").set_value(srv.openai_base)
        at.text_input(key="gen_api_key").set_value(KEY).run()
        assert any("sk-p…g7h8" in c.value for c in at.caption)  # masked, never shown whole
        at.button(key="gen_test").click().run()
        assert not at.error, [e.value for e in at.error]
        assert any("Connected" in s.value and "fake-model" in s.value for s in at.success)
        at.number_input(key="gen_pairs").set_value(2)
        at.button(key="gen_start").click().run()
        assert not at.exception
        assert _wait_for_job(ws) == "done", latest_job(ws, "generate").log_tail()
        at.run()
        assert not at.exception
        assert at.selectbox(key="gen_preview_file").value == "library.txt"
        assert any("Q:" in m.value for m in at.markdown)
        assert any("library opens" in c.value for c in at.code)
        fails = [json.loads(x) for x in ws.qa_dir.joinpath("failures.jsonl").read_text().splitlines()]
        assert [f["file"] for f in fails] == ["blank.txt"]
        assert at.dataframe  # the failures list
        n = len(srv.chat_requests())
        at.number_input(key="gen_pairs").set_value(4).run()  # on screen now; the retry keeps the failed job's 2
        at.button(key="gen_retry").click().run()
        assert _wait_for_job(ws) == "done"
        job = latest_job(ws, "generate")
        assert "--retry-failed" in job.meta["argv"]
        assert GENERATE.load_yaml(job.settings_file)["pairs_per_page"] == 2
        assert len(srv.chat_requests()) == n  # the blank page fails before any request
    assert all(r["headers"]["authorization"] == f"Bearer {KEY}" for r in srv.chat_requests())
    for path in ws.root.rglob("*"):
        if path.is_file():
            assert KEY not in path.read_text(encoding="utf-8", errors="replace"), path


def test_prompt_editor_validates_and_saves(ws):
    at = _page(ws)
    at.text_area(key="gen_prompts").set_value("en:\n  qa_user: no placeholder here\n")
    at.button(key="gen_save_prompts").click().run()
    assert any("{text}" in e.value for e in at.error)
    assert not (ws.qa_dir / "prompts.yaml").exists()
    at.text_area(key="gen_prompts").set_value('en:\n  qa_system: "Only JSON."\n')
    at.button(key="gen_save_prompts").click().run()
    assert (ws.qa_dir / "prompts.yaml").read_text(encoding="utf-8").startswith("en:")


def test_start_is_disabled_without_a_key_and_says_why(ws):
    at = _page(ws)
    assert at.radio(key="gen_backend").value == "zhipuai"
    assert at.button(key="gen_start").disabled
    assert any("needs an API key" in w.value and "ZHIPUAI_API_KEY" in w.value for w in at.warning)
    at.text_input(key="gen_api_key").set_value(KEY).run()
    assert not at.button(key="gen_start").disabled
    at.text_input(key="gen_api_key").set_value("").run()
    at.radio(key="gen_backend").set_value("openai").run()
    assert at.button(key="gen_start").disabled
    at.text_input(key="gen_base_url").set_value("http://127.0.0.1:9/v1").run()  # a local server needs no key
    assert not at.button(key="gen_start").disabled


def test_coming_back_while_a_job_runs_shows_its_settings(ws):
    import time

    from fake_llm_server import default_responder

    def slow(body):
        time.sleep(1.0)
        return default_responder(body)

    with FakeLLMServer(api_key=KEY, responder=slow) as srv:
        at = _page(ws)
        at.radio(key="gen_backend").set_value("openai").run()
        at.text_input(key="gen_base_url").set_value(srv.openai_base)
        at.text_input(key="gen_api_key").set_value(KEY)
        at.number_input(key="gen_pairs").set_value(3).run()
        at.button(key="gen_start").click().run()
        job = latest_job(ws, "generate")
        try:
            assert job.status() == "running"
            back = _page(ws)  # a new session: the page's widgets start empty
            assert back.radio(key="gen_backend").value == "openai"
            assert back.number_input(key="gen_pairs").value == 3
            assert back.text_input(key="gen_base_url").value == srv.openai_base
            assert back.number_input(key="gen_pairs").disabled and back.button(key="gen_start").disabled
            assert any("these are its settings" in i.value for i in back.info)
        finally:
            job.stop()


def test_local_embedded_model_says_what_it_is_for(ws):
    """Issue 21 §10: choosing the embedded model on Generate shows the one sentence about its limits."""
    at = _page(ws)
    at.radio(key="gen_backend").set_value("local").run()
    assert not at.exception
    assert any("for trying the flow only" in i.value for i in at.info)


def test_new_generation_options_come_from_their_declarations(ws):
    """Unanswerable questions, paraphrases and personal-data masking are on the page, drawn from GenerateSettings."""
    from umtcds_core.qa import GENERATE

    at = _page(ws)
    assert not at.exception
    assert at.number_input(key="gen_unanswerable").value == GENERATE["unanswerable"].default
    assert at.radio(key="gen_pii").value == GENERATE["pii"].default
    at.radio(key="gen_pii").set_value("off").run()
    assert not at.exception and at.radio(key="gen_pii").value == "off"
