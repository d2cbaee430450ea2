from pathlib import Path

from streamlit.testing.v1 import AppTest

from umtcds_core.workspace import Workspace

HOME = str(Path(__file__).resolve().parents[2] / "Home.py")


def _create_button(at: AppTest):
    return next(b for b in at.button if b.label in ("创建项目", "Create project"))


def _home() -> AppTest:
    return AppTest.from_file(HOME, default_timeout=60)


def test_home_renders_in_chinese_by_default_and_in_english():
    at = _home().run()
    assert not at.exception
    assert "校园问答" in at.title[0].value
    at.session_state["lang"] = "en"
    at.run()
    assert not at.exception
    assert "campus Q&A" in at.title[0].value


def test_create_a_workspace_and_see_every_step_status(_isolated_workspaces):
    at = _home().run()
    at.session_state["lang"] = "en"
    at.run()
    at.text_input(key="_ws_new_name").set_value("qingshan")
    _create_button(at).click()
    at.run()
    assert not at.exception
    assert (_isolated_workspaces / "qingshan" / "workspace.json").exists()
    assert any("Steps — qingshan" in s.value for s in at.subheader)
    statuses = [m.value for m in at.markdown if "not started" in m.value]
    assert len(statuses) == 7


def test_bad_workspace_name_shows_a_message(_isolated_workspaces):
    at = _home().run()
    at.text_input(key="_ws_new_name").set_value("../escape")
    _create_button(at).click()
    at.run()
    assert not at.exception
    assert any("“../escape”不能用作项目名" in e.value for e in at.error)  # the dashboard's default language
    assert not any(_isolated_workspaces.parent.glob("escape"))
    at.session_state["lang"] = "en"
    at.run()
    at.text_input(key="_ws_new_name").set_value("../escape")
    _create_button(at).click()
    at.run()
    assert any("'../escape' is not a usable workspace name" in e.value for e in at.error)


def test_password_gate(monkeypatch):
    monkeypatch.setenv("UMTCDS_PASSWORD", "s3cret-campus")
    at = _home().run()
    assert not at.exception
    assert not at.subheader  # nothing of the app before the password
    at.text_input(key="login_password").set_value("wrong")
    at.button[0].click()
    at.run()
    assert any("密码不正确" in e.value for e in at.error)
    at.text_input(key="login_password").set_value("s3cret-campus")
    at.button[0].click()
    at.run()
    assert at.session_state["authenticated"] is True
    assert "校园问答" in at.title[0].value


def test_public_address_without_password_warns():
    at = _home()
    at.run()
    assert not any("UMTCDS_PASSWORD" in w.value for w in at.warning)  # the test server binds loopback (config.toml)
    from umtcds_core.secrets import public_without_password

    assert public_without_password("0.0.0.0") is True
    assert public_without_password("127.0.0.1") is False


# ---- one current project, titles, next step, language in the URL (issue 21 items 3, 5, 8, 9, 10) ---------------------
def _wait_until(condition, timeout: float = 60.0, what: str = "the condition"):
    """Poll ``condition`` until it is truthy (jobs run in other processes); fail with ``what`` after ``timeout`` s."""
    import time

    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
    return value


def _create(at: AppTest, name: str) -> None:
    at.text_input(key="_ws_new_name").set_value(name)
    _create_button(at).click()
    at.run()
    assert not at.exception


def _pickers(at: AppTest) -> dict[str, str]:
    return {s.key: s.value for s in at.selectbox if s.key.startswith("_ws_choice_")}


def _every_page_shows(at: AppTest, root: Path) -> None:
    """Each step page names the current project under its "N · title" header, then Home shows it in both pickers.

    (AppTest runs a step page without Home.py's sidebar, because the checkout has a ``pages/`` folder; the sidebar
    picker is the same bound widget on every page, so it is checked on Home.)
    """
    from umtcds_core import steps

    for step in steps.PAGE_STEPS:
        at.switch_page(step.page).run()
        assert not at.exception, (step.name, at.exception)
        assert at.header[0].value == steps.title(step.name, "en")  # "N · title", one style
        assert f"Current project: **{root.name}**" in at.caption[0].value, step.name
        assert at.session_state["workspace"] == str(root)
    at.switch_page("Home.py").run()
    assert _pickers(at) == {"_ws_choice_sidebar": str(root), "_ws_choice_home": str(root)}
    assert any(f"Steps — {root.name}" in s.value for s in at.subheader)


def test_one_current_project_after_creating_a_second_one(_isolated_workspaces):
    from tests.crawl_helpers import FixtureSite
    from umtcds_core.jobs import latest_job

    alpha, beta = _isolated_workspaces / "alpha", _isolated_workspaces / "beta"
    at = _home()
    at.session_state["lang"] = "en"
    at.run()
    _create(at, "alpha")
    _create(at, "beta")
    # The new project is the current one, and every picker and header says so.
    assert at.session_state["workspace"] == str(beta)
    _every_page_shows(at, beta)

    # Switching in the sidebar moves every page and the jobs to the other project.
    at.selectbox(key="_ws_choice_sidebar").set_value(str(alpha)).run()
    _every_page_shows(at, alpha)

    # The crawl page names its target before starting, and the job writes exactly there.
    at.switch_page("pages/1_crawl.py").run()
    assert any(c.value == "→ project alpha" for c in at.caption)
    with FixtureSite() as site:
        dead = site.url("/")  # closed at once: the job fails quickly, but it is started in a project
    at.text_input(key="crawl_url").set_value(dead)
    at.button(key="crawl_start").click().run()
    job = _wait_until(lambda: latest_job(Workspace.open(alpha), "crawl"), what="the crawl job in alpha")
    assert latest_job(Workspace.open(beta), "crawl") is None
    assert job.wait(timeout=60) == "failed"


def test_home_picker_moves_the_sidebar_picker_too(_isolated_workspaces):
    a, b = Workspace.create("a-campus"), Workspace.create("b-campus")
    at = _home().run()
    assert _pickers(at) == {"_ws_choice_sidebar": str(a.root), "_ws_choice_home": str(a.root)}
    at.selectbox(key="_ws_choice_home").set_value(str(b.root)).run()
    assert _pickers(at) == {"_ws_choice_sidebar": str(b.root), "_ws_choice_home": str(b.root)}
    assert any("步骤状态 — b-campus" in s.value for s in at.subheader)
    at.selectbox(key="_ws_choice_sidebar").set_value(str(a.root)).run()
    assert _pickers(at) == {"_ws_choice_sidebar": str(a.root), "_ws_choice_home": str(a.root)}


def test_next_step_link_appears_once_the_step_is_done(_isolated_workspaces):
    ws = Workspace.create("campus")
    at = _home()
    at.session_state["lang"] = "en"
    at.run()
    at.switch_page("pages/1_crawl.py").run()
    assert not at.get("page_link")  # nothing crawled yet: no next step
    ws.pages_dir.mkdir()
    (ws.pages_dir / "index.txt").write_text("Library hours: 8:00-22:00", encoding="utf-8")
    at.run()
    links = [(p.proto.label, p.proto.page) for p in at.get("page_link")]
    assert links == [("Next step: 2 · Generate Q&A", "generate")]


def test_language_survives_a_reload():
    at = _home().run()
    assert "lang" not in at.query_params  # the default language keeps the URL clean
    at.radio(key="_lang_choice").set_value("en").run()
    assert "campus Q&A" in at.title[0].value
    assert at.query_params["lang"] in ("en", ["en"])

    reloaded = _home()  # a new session with the same URL
    reloaded.query_params["lang"] = "en"
    reloaded.run()
    assert not reloaded.exception
    assert "campus Q&A" in reloaded.title[0].value
    assert reloaded.radio(key="_lang_choice").value == "en"

    at.radio(key="_lang_choice").set_value("zh").run()
    assert "校园问答" in at.title[0].value and "lang" not in at.query_params


def test_home_says_what_the_embedded_model_is_for():
    at = _home().run()
    assert any("smollm2-135m" in i.value and "Qwen2.5-7B-Instruct" in i.value and "中文" in i.value for i in at.info)
    at.session_state["lang"] = "en"
    at.run()
    assert any("for trying the flow only" in i.value and "GLM-4-9B-chat" in i.value for i in at.info)


def test_a_step_page_opened_without_home_still_asks_for_the_password(monkeypatch):
    """A fresh server's first request for a step URL runs that page without Home.py (Streamlit sees ``pages/``)."""
    monkeypatch.setenv("UMTCDS_PASSWORD", "s3cret-campus")
    Workspace.create("campus")
    at = AppTest.from_file(str(Path(HOME).parent / "pages" / "1_crawl.py"), default_timeout=60).run()
    assert not at.exception
    assert not at.header and at.text_input(key="login_password")  # nothing of the page before the password
    at.text_input(key="login_password").set_value("s3cret-campus")
    at.button[0].click()
    at.run()
    assert at.header[0].value == "1 · 爬取网页"


def test_home_update_button_runs_the_refresh_chain_as_one_job(_isolated_workspaces, monkeypatch):
    """A crawled, indexed and generated project whose site then changes: Home's button runs crawl --refresh → index →
    generate as one job; only the new and changed pages reach the LLM, pairs of changed/removed pages turn stale."""
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from crawl_helpers import FixtureSite
    from fake_llm_server import FakeLLMServer

    from tests.umtcds_core.test_refresh import KEY, _site_v1, _site_v2
    from umtcds_core import cli
    from umtcds_core.crawl import CrawlConfig, crawl
    from umtcds_core.index import index_dir_of, index_status
    from umtcds_core.jobs import cli_argv, latest_job, start_job
    from umtcds_core.qa import GENERATE

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    ws = Workspace.create("campus")
    with FixtureSite() as site, FakeLLMServer(api_key=KEY) as srv:
        _site_v1(site)
        crawl(CrawlConfig(site.url("/"), ws.pages_dir, delay=0, depth=1, sitemap=False))
        ws.update_meta(start_url=site.url("/"))
        assert cli.main(["index", str(ws.pages_dir), "--out", str(index_dir_of(ws)), "--quiet"]) == 0
        values = GENERATE.check(
            dict(in_dir=str(ws.pages_dir), out_dir=str(ws.qa_dir), backend="openai", model="fake-model")
            | dict(base_url=srv.openai_base, pairs_per_page=2, clean=False, unanswerable=0, paraphrase=False)
        )
        first = start_job(ws, "generate", cli_argv("generate"), settings=GENERATE.to_yaml(values))
        assert first.wait(timeout=120) == "done", first.log_tail()
        asked_before = len(srv.chat_requests())

        _site_v2(site)
        at = _home()
        at.session_state["workspace"] = str(ws.root)
        at.session_state["lang"] = "en"
        at.run()
        assert not at.exception and not any("site changed" in i.value for i in at.info)  # no refresh has run yet
        at.button(key="home_refresh").click().run()
        job = latest_job(ws, "refresh")
        assert job is not None and job.wait(timeout=180) == "done", job.log_tail()
        asked = len(srv.chat_requests()) - asked_before
    at.run()
    assert not at.exception
    assert any("The site changed: 1 new, 1 changed, 1 removed" in i.value for i in at.info)
    assert "Refresh done" in job.log_tail() and "[refresh 3/3] generate: umtcds generate" in job.log_tail()
    assert asked == 2  # one call per page: d (new) and b (changed) only
    qa = [json.loads(x) for x in ws.qa_file.read_text(encoding="utf-8").splitlines()]
    assert {p["file"].rsplit("_", 1)[-1] for p in qa if p.get("stale")} == {"b.txt", "c.txt"}
    assert any(p["file"].endswith("_d.txt") for p in qa)
    assert index_status(index_dir_of(ws)).stale == ()  # the index caught up with the changed pages
