"""render.py + ``umtcds crawl --render``: a page whose text is written by JavaScript, crawled in each mode.

The fixture's ``/app/`` is an app shell ("加载中…") whose script ``/app/app.js`` writes the notice; it also asks for a
style sheet, an image and an off-site script, which a render must never request. One crawl per mode, one small page.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from crawl_helpers import FixtureSite  # noqa: E402

from umtcds_core import cli, render  # noqa: E402
from umtcds_core.crawl import MANIFEST, CrawlConfig, crawl  # noqa: E402

NOTICE = "本科生选课系统将于 9 月 2 日上午 9 点开放"


def _browser_missing() -> bool:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return True
    if render.system_chromium():
        return False
    with sync_playwright() as pw:
        return not Path(pw.chromium.executable_path).exists()


needs_browser = pytest.mark.skipif(
    _browser_missing(), reason="no Chromium: python -m playwright install chromium (or apt-get install chromium)"
)


@pytest.fixture(scope="module")
def sites():
    with FixtureSite() as offsite, FixtureSite(offsite_url=offsite.url("")) as site:
        yield site, offsite


def _rows(out: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (out / MANIFEST).read_text(encoding="utf-8").splitlines()]
    return {r["url"].split("/", 3)[3]: r for r in rows}


def test_auto_rule_renders_script_shells_only():
    shell = '<html><body><div id="app"></div><script src="/a.js"></script></body></html>'
    static = "<html><body><p>一条很短的通知。</p></body></html>"
    assert render.needs_render("auto", shell, 0)
    assert not render.needs_render("auto", shell, render.AUTO_MIN_CHARS)  # enough text already
    assert not render.needs_render("auto", static, 8)  # no script could add text
    assert render.needs_render("always", static, 8) and not render.needs_render("never", shell, 0)


@needs_browser
@pytest.mark.parametrize("mode", ["never", "auto", "always"])
def test_render_modes_on_a_javascript_page(sites, tmp_path, mode):
    site, offsite = sites
    site.access_log.clear()
    out = tmp_path / "pages"
    # depth 1: the rendered page's script-written link (/news/1.html, a static page) is followed too
    summary = crawl(CrawlConfig(site.url("/app/"), out, depth=1, delay=0, sitemap=False, render=mode))
    rows = _rows(out)
    app = rows["app/"]
    text = (out / app["path"]).read_text(encoding="utf-8")
    if mode == "never":
        assert "加载中" in text and NOTICE not in text and "rendered" not in app
        assert "news/1.html" not in rows  # the link exists only after the script ran
        assert site.requested_paths() == {"/robots.txt", "/app/"}
        return
    assert NOTICE in text and "加载中" not in text and app["rendered"] is True
    assert rows["news/1.html"]["rendered"] is (mode == "always")  # auto: a static page with text is left alone
    assert summary.rendered == (2 if mode == "always" else 1)
    # the page itself was fetched once (the browser got those bytes); only its in-scope script went out besides
    assert site.requested("/app/") == 1 and site.requested("/app/app.js") == 1
    assert not {"/app/style.css", "/app/logo.png"} & site.requested_paths()
    assert offsite.access_log == []


def test_no_browser_is_one_sentence_before_crawling(sites, tmp_path, capsys, monkeypatch):
    pytest.importorskip("playwright")
    site, _ = sites
    site.access_log.clear()
    monkeypatch.setenv("PLAYWRIGHT_BROWSERS_PATH", str(tmp_path / "no-browsers"))
    monkeypatch.setattr(render, "system_chromium", lambda: None)
    rc = cli.main(["crawl", site.url("/app/"), "--out", str(tmp_path / "p"), "--render", "auto", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "python -m playwright install chromium" in err and "Traceback" not in err
    assert err.strip().count("\n") == 0 and site.access_log == []
