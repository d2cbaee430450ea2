"""pages/1_crawl.py through AppTest: validation, the robots warning, the URL tester, a real crawl job, dropping pages."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from crawl_helpers import FixtureSite  # noqa: E402

from umtcds_core.jobs import latest_job  # noqa: E402
from umtcds_core.workspace import Workspace  # noqa: E402

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "1_crawl.py")


@pytest.fixture
def ws(tmp_path, monkeypatch):
    monkeypatch.setenv("UMTCDS_WORKSPACES", str(tmp_path))
    return Workspace.create("campus")


def _app(ws: Workspace) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=30)
    at.session_state["workspace"] = str(ws.root)
    at.session_state["lang"] = "en"
    return at.run()


def test_bad_url_is_one_sentence_and_starts_nothing(ws):
    at = _app(ws)
    assert not at.exception
    at.text_input(key="crawl_url").set_value("www.example.edu.cn")
    at.button(key="crawl_start").click().run()
    assert any("https://www.example.edu.cn" in e.value for e in at.error)
    assert latest_job(ws, "crawl") is None


def test_robots_off_shows_the_permission_warning(ws):
    at = _app(ws)
    assert not any("permission" in w.value for w in at.warning)
    at.toggle(key="crawl_robots").set_value(False).run()
    assert any("permission" in w.value for w in at.warning)


def test_url_tester_explains_each_verdict(ws):
    at = _app(ws)
    at.text_input(key="crawl_url").set_value("https://www.x.edu.cn/")
    at.text_area(key="crawl_exclude").set_value(r"/en/")
    at.text_input(key="crawl_probe").set_value("https://www.x.edu.cn/en/about.htm").run()
    assert any("exclude" in i.value for i in at.info)
    at.text_input(key="crawl_probe").set_value("https://other.edu.cn/").run()
    assert any("off-site" in i.value for i in at.info)
    at.text_input(key="crawl_probe").set_value("https://www.x.edu.cn/info/1.htm").run()
    assert at.success and not at.exception


def test_crawl_job_then_browse_and_drop(ws):
    with FixtureSite() as site:
        at = _app(ws)
        at.text_input(key="crawl_url").set_value(site.url("/"))
        at.number_input(key="crawl_delay").set_value(0.0)
        at.button(key="crawl_start").click().run()
        assert not at.exception
        job = latest_job(ws, "crawl")
        assert job is not None
        assert job.wait(timeout=60) == "done", job.log_tail()
    counters = job.progress()["counters"]
    assert (
        counters["saved"] >= 6 and counters["robots"] == 1 and counters["duplicates"] == 1 and counters["errors"] == 2
    )
    at.run()
    assert not at.exception
    saved = sorted(p.name for p in ws.pages_dir.glob("*.txt"))
    assert len(saved) >= 6
    assert ws.meta()["start_url"] == site.url("/")
    # recent URLs + saved pages tables, and a page's text
    assert len(at.dataframe) == 2
    assert set(at.selectbox(key="crawl_open").options) == set(saved)
    gbk = next(n for n in saved if "gbk" in n)
    at.selectbox(key="crawl_open").set_value(gbk).run()
    assert any("朱镕基" in c.value for c in at.code)
    # drop a page: its file goes, the rest stays
    at.multiselect(key="crawl_drop").set_value([gbk]).run()
    at.button(key="crawl_drop_btn").click().run()
    assert not at.exception
    assert not (ws.pages_dir / gbk).exists()
    assert len(list(ws.pages_dir.glob("*.txt"))) == len(saved) - 1
    assert any("Dropped 1" in s.value for s in at.success)


def test_failed_crawl_shows_the_sentence_and_progress_counters(ws):
    with FixtureSite() as site:
        dead = site.url("/")
    at = _app(ws)
    at.text_input(key="crawl_url").set_value(dead)
    at.button(key="crawl_start").click().run()
    job = latest_job(ws, "crawl")
    assert job.wait(timeout=60) == "failed"
    at.run()
    assert any("connection refused" in e.value for e in at.error)
    assert (job.progress() or {}).get("desc") == "crawl"


def test_errors_are_shown_in_chinese_in_the_chinese_dashboard(ws):
    at = AppTest.from_file(PAGE, default_timeout=30)
    at.session_state["workspace"] = str(ws.root)
    at.session_state["lang"] = "zh"
    at.run()
    at.text_input(key="crawl_url").set_value("www.example.edu.cn")
    at.button(key="crawl_start").click().run()
    assert [e.value for e in at.error] == [
        "“www.example.edu.cn”前面缺少 http:// 或 https://；请写成 `https://www.example.edu.cn`（或 `http://www.example.edu.cn`）。"
    ]
    assert latest_job(ws, "crawl") is None


def test_a_failed_crawl_job_explains_itself_in_chinese_in_the_chinese_dashboard(ws):
    with FixtureSite() as site:
        dead = site.url("/")
    at = AppTest.from_file(PAGE, default_timeout=30)
    at.session_state["workspace"] = str(ws.root)
    at.session_state["lang"] = "zh"
    at.run()
    at.text_input(key="crawl_url").set_value(dead)
    at.button(key="crawl_start").click().run()
    assert latest_job(ws, "crawl").wait(timeout=60) == "failed"
    at.run()
    shown = "\n".join(e.value for e in at.error)
    # issue 21 §6: one language per screen — the Chinese sentence, not the English one after it
    assert "（连接被拒绝）" in shown and "connection refused" not in shown


def test_url_tester_reads_robots_txt(ws):
    with FixtureSite() as site:  # its robots.txt disallows /private/
        at = _app(ws)
        at.text_input(key="crawl_url").set_value(site.url("/"))
        at.text_input(key="crawl_probe").set_value(site.url("/private/staff.html")).run()
        assert any("robots.txt" in i.value for i in at.info) and not at.success
        at.toggle(key="crawl_robots").set_value(False).run()
        assert any("robots.txt is off" in s.value for s in at.success)


def test_a_new_crawl_shows_only_its_own_urls_and_no_raw_none(ws):
    with FixtureSite() as dead_site:
        dead = dead_site.url("/")
    at = _app(ws)
    at.text_input(key="crawl_url").set_value(dead)
    at.button(key="crawl_start").click().run()
    assert latest_job(ws, "crawl").wait(timeout=60) == "failed"
    at.run()
    assert dead in at.dataframe[0].value.iloc[:, 0].tolist()  # the failed URL is this crawl's
    with FixtureSite() as site:
        at.text_input(key="crawl_url").set_value(site.url("/"))
        at.number_input(key="crawl_delay").set_value(0.0)
        at.button(key="crawl_start").click().run()
        job = latest_job(ws, "crawl")
        assert job.wait(timeout=60) == "done", job.log_tail()
    assert job.settings_file.exists() and "--config" in job.meta["argv"]
    at.run()
    recent = at.dataframe[0].value
    assert dead not in recent.iloc[:, 0].tolist() and len(recent) > 0
    for table in at.dataframe:
        assert not (table.value.astype(str) == "None").any().any()


def test_render_option_comes_from_the_schema_and_reveals_its_settings(ws):
    at = _app(ws)
    radio = at.radio(key="crawl_render")
    assert radio.value == "never" and not any(n.key == "crawl_render_concurrency" for n in at.number_input)
    radio.set_value("auto").run()
    assert not at.exception
    keys = {n.key for n in at.number_input}
    assert {"crawl_render_concurrency", "crawl_render_timeout"} <= keys
