"""crawl.py against the fixture campus site on 127.0.0.1: files, manifest, and what the server was (not) asked for."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from crawl_helpers import FixtureSite  # noqa: E402

from umtcds_core import cli  # noqa: E402
from umtcds_core.crawl import (  # noqa: E402
    MANIFEST,
    CrawlConfig,
    Scope,
    canonical,
    crawl,
    extract_links,
    safe_filename,
    url_verdict,
)
from umtcds_core.errors import UserError  # noqa: E402

MANIFEST_KEYS = {"url", "final_url", "status", "path", "title", "chars", "error"}


# ---- units ---------------------------------------------------------------------------------------------------------


def test_canonical_merges_variants():
    base = canonical("http://www.x.edu.cn/news/1.html")
    for variant in (
        "http://www.x.edu.cn/news/1.html#comments",
        "http://WWW.X.edu.cn:80/news/1.html?utm_source=wechat&utm_medium=share",
        "https://www.x.edu.cn/news/1.html?spm=a2c4g.11186623",
    ):
        assert canonical(variant) == base
    assert canonical("http://x.edu.cn/about/index.html") == canonical("http://x.edu.cn/about/") == "//x.edu.cn/about"
    assert canonical("http://x.edu.cn/") == canonical("http://x.edu.cn") == canonical("http://x.edu.cn/index.htm")
    assert canonical("http://x.edu.cn/list.jsp?b=2&a=1") == canonical("http://x.edu.cn/list.jsp?a=1&b=2")
    assert canonical("http://x.edu.cn/info.jsp?id=1") != canonical("http://x.edu.cn/info.jsp?id=2")


def test_scope_host_and_subdomains_offline():
    host_only = Scope("https://www.pku.edu.cn/")
    assert host_only("http://www.pku.edu.cn/a")  # scheme does not matter
    assert not host_only("https://jwc.pku.edu.cn/")
    wide = Scope("https://www.pku.edu.cn/", subdomains=True)
    assert wide("https://jwc.pku.edu.cn/notice.htm")
    assert not wide("https://www.tsinghua.edu.cn/")
    assert not wide("https://edu.cn/")
    assert not Scope("http://127.0.0.1:8000/")("http://127.0.0.1:8001/")


def test_url_verdict_reasons(tmp_path):
    cfg = CrawlConfig("https://www.x.edu.cn/", tmp_path, include=[r"/info/"], exclude=[r"\.jsp\?.*print"])
    assert url_verdict("https://www.x.edu.cn/info/1021/3456.htm", cfg) is None
    assert "include" in url_verdict("https://www.x.edu.cn/news/1.htm", cfg)
    assert "exclude" in url_verdict("https://www.x.edu.cn/info/a.jsp?x=1&print=1", cfg)
    assert "off-site" in url_verdict("https://www.y.edu.cn/info/1.htm", cfg)
    assert "attachment" in url_verdict("https://www.x.edu.cn/info/a.pdf", cfg)
    assert "never fetched" in url_verdict("https://www.x.edu.cn/info/a.jpg", cfg)


def test_bad_settings_are_one_sentence(tmp_path):
    for kwargs, needle in (
        ({"start_url": "www.x.edu.cn"}, "https://www.x.edu.cn"),
        ({"start_url": "ftp://x.edu.cn/"}, "not a web address"),
        ({"start_url": "http://x.edu.cn:99999/"}, "port"),
        ({"include": ["("]}, "--include"),
        ({"depth": -1}, "--depth"),
        ({"concurrency": 0}, "--concurrency"),
    ):
        args = {"start_url": "https://www.x.edu.cn/", "out_dir": tmp_path} | kwargs
        with pytest.raises(UserError) as exc:
            CrawlConfig(**args)
        msg = str(exc.value)
        assert needle in msg and msg.endswith(".") and "\n" not in msg


def test_extract_links_ignores_non_web_schemes_and_encodes_gbk_queries():
    html = """<html><head><base href="/sub/"></head><body>
      <a href="mailto:a@b.cn">m</a><a href="tel:123">t</a><a href="javascript:void(0)">j</a>
      <a href="#top">top</a><a href="page.htm">rel</a><a href="/search.jsp?q=选课">q</a>
      <iframe src="/frame.html"></iframe></body></html>"""
    links = extract_links(html, "http://x.edu.cn/index.html", encoding="gb18030")
    assert links == [
        "http://x.edu.cn/sub/page.htm",
        "http://x.edu.cn/search.jsp?q=%D1%A1%BF%CE",  # the query is encoded in the page's encoding (WHATWG)
        "http://x.edu.cn/frame.html",
    ]


def test_safe_filename_is_readable_and_unique():
    taken: set[str] = set()
    a = safe_filename("http://www.x.edu.cn/info/1021/3456.htm", taken)
    assert a == "www.x.edu.cn_info_1021_3456.txt"
    assert safe_filename("http://www.x.edu.cn/%E6%96%B0%E9%97%BB/", taken) == "www.x.edu.cn_新闻.txt"
    b = safe_filename("http://www.x.edu.cn/info/1021/3456.html", taken)
    assert b != a and b.startswith("www.x.edu.cn_info_1021_3456-")
    assert len(safe_filename("http://x.cn/" + "a" * 500, taken)) < 130


# ---- the crawl on a real server -------------------------------------------------------------------------------


@pytest.fixture
def sites():
    with FixtureSite() as offsite, FixtureSite(offsite_url=offsite.url("/offsite.html")) as site:
        yield site, offsite


def _manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST).read_text(encoding="utf-8").splitlines()]


def _cfg(site, out, **kw) -> CrawlConfig:
    return CrawlConfig(site.url("/"), out, delay=0, **kw)


def test_depth1_crawl_files_manifest_and_access_log(sites, tmp_path):
    site, offsite = sites
    out = tmp_path / "pages"
    summary = crawl(_cfg(site, out, depth=1))
    records = _manifest(out)
    assert all(MANIFEST_KEYS <= set(r) for r in records)
    by_url = {r["url"].replace(site.url(""), ""): r for r in records}

    # saved pages: title first, boilerplate gone. /print/1.html is the same article: whichever of the two concurrent
    # fetches finishes first is saved, the other is recorded as its duplicate
    article = [by_url[u] for u in ("/news/1.html", "/print/1.html")]
    saved_article = [r for r in article if r["path"]]
    assert len(saved_article) == 1
    dup = next(r for r in article if not r["path"])
    assert "duplicate" in dup["error"] and dup["duplicate_of"] == saved_article[0]["url"]
    news = out / saved_article[0]["path"]
    lines = news.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "关于 2024 年秋季学期选课的通知"
    text = news.read_text(encoding="utf-8")
    assert "每名学生本学期最多可选 28 学分" in text
    for junk in ("本网站使用 Cookie", "京ICP备", "示范大学 Demo University", "服务热线"):
        assert junk not in text
    # GBK declared as gb2312, no charset header
    gbk = by_url["/gbk.html"]
    assert gbk["encoding"] == "gb18030" and gbk["title"] == "校史馆参观须知"
    assert "朱镕基校友与张喆教授" in (out / gbk["path"]).read_text(encoding="utf-8")

    # URL variants fetched once; redirect recorded with its target; content duplicate detected
    assert site.requested("/news/1.html") == 1
    assert not any(p.startswith("/news/1.html?") for p, _ in site.access_log)
    assert site.requested("/about/") + site.requested("/about/index.html") == 1
    old = by_url["/old-news"]
    assert old["final_url"] == site.url("/news/2.html") and old["path"]
    assert site.requested("/news/2.html") == 1
    # failures are recorded, nothing saved for them
    assert by_url["/missing.html"]["status"] == 404 and by_url["/missing.html"]["path"] is None
    assert by_url["/blob.html"]["path"] is None and "binary" in by_url["/blob.html"]["error"]
    assert by_url["/private/secret.html"]["error"] == "blocked by robots.txt"
    # never requested: robots-disallowed, off-site, non-web links, attachments without --attachments, depth 2
    paths = site.requested_paths()
    assert "/private/secret.html" not in paths and offsite.access_log == []
    assert not {"/files/guide.pdf", "/files/form.docx", "/images/campus.jpg", "/level2.html"} & paths
    assert site.requested("/robots.txt") == 1
    assert not any("SECRET-MARKER" in p.read_text(encoding="utf-8") for p in out.glob("*.txt"))

    saved = sorted(p.name for p in out.glob("*.txt"))
    assert len(saved) == summary.saved == sum(1 for r in records if r["path"])
    assert (summary.robots, summary.duplicates, summary.errors) == (1, 1, 2)
    for r in records:
        if r["path"]:
            assert r["chars"] > 0 and (out / r["path"]).exists()


def test_resume_fetches_only_what_is_new(sites, tmp_path):
    site, _ = sites
    out = tmp_path / "pages"
    crawl(_cfg(site, out, depth=1))
    first = set(site.requested_paths())
    n_manifest = len(_manifest(out))
    site.access_log.clear()
    summary = crawl(_cfg(site, out, depth=2, attachments=True))
    again = site.requested_paths() - {"/robots.txt"}
    assert "/level2.html" in again and "/files/guide.pdf" in again and "/files/form.docx" in again
    assert not (again & (first - {"/robots.txt", "/missing.html"}))  # saved pages are not fetched again
    assert summary.saved_before >= 7
    pdf = next(r for r in _manifest(out)[n_manifest:] if r["url"].endswith("guide.pdf"))
    assert "New students report on September 1" in (out / pdf["path"]).read_text(encoding="utf-8")


def test_max_pages_is_a_hard_cap(sites, tmp_path):
    site, _ = sites
    summary = crawl(_cfg(site, tmp_path, depth=3, max_pages=3, concurrency=4))
    assert len(list(tmp_path.glob("*.txt"))) == 3 and summary.stopped_at_cap


def test_include_exclude_limit_what_is_requested(sites, tmp_path):
    site, _ = sites
    crawl(_cfg(site, tmp_path, depth=1, exclude=[r"/news/", r"gbk|print"]))
    assert not {"/news/1.html", "/gbk.html", "/print/1.html"} & site.requested_paths()
    assert "/about/" in site.requested_paths() and "/level1.html" in site.requested_paths()


def test_killed_crawl_resumes_without_refetching(sites, tmp_path):
    site, _ = sites
    out = tmp_path / "pages"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    argv = [sys.executable, "-m", "umtcds_core.cli", "crawl", site.url("/"), "--out", str(out)]
    proc = subprocess.Popen([*argv, "--delay", "0.4", "--concurrency", "1"], env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 20
    while time.time() < deadline and (not (out / MANIFEST).exists() or len(_manifest(out)) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = [r for r in _manifest(out) if r["path"]]
    assert 1 <= len(done_before) < 9
    site.access_log.clear()
    crawl(_cfg(site, out, depth=1))
    refetched = site.requested_paths()
    for r in done_before:
        assert r["url"].replace(site.url(""), "/").replace("//", "/") not in refetched
    names = [p.name for p in out.glob("*.txt")]
    assert len(names) == len(set(names)) >= 7


# ---- bad input through the CLI: one sentence, exit 1 ------------------------------------------------------------


def _cli(capsys, *argv) -> tuple[int, str]:
    rc = cli.main(["crawl", *argv, "--delay", "0", "--quiet"])
    err = capsys.readouterr().err
    return rc, err


def test_cli_connection_refused(capsys, tmp_path):
    with FixtureSite() as s:
        url = s.url("/")
    rc, err = _cli(capsys, url, "--out", str(tmp_path))
    assert rc == 1 and "connection refused" in err and err.strip().startswith("Error: ") and "Traceback" not in err


def test_cli_malformed_url(capsys, tmp_path):
    rc, err = _cli(capsys, "www.x.edu.cn", "--out", str(tmp_path))
    assert rc == 1 and "https://www.x.edu.cn" in err


def test_cli_robots_disallow_all(capsys, tmp_path):
    with FixtureSite(robots="User-agent: *\nDisallow: /\n") as s:
        rc, err = _cli(capsys, s.url("/"), "--out", str(tmp_path))
        assert s.requested("/") == 0
    assert rc == 1 and "robots.txt" in err and "--ignore-robots" in err


def test_cli_start_redirects_off_host(capsys, tmp_path):
    with FixtureSite() as other, FixtureSite() as s:
        s.routes["/start"] = (302, b"", "text/html", {"Location": other.url("/")})
        rc, err = _cli(capsys, s.url("/start"), "--out", str(tmp_path))
        assert other.access_log == []
    assert rc == 1 and "outside the site" in err


def test_cli_start_page_not_html(capsys, tmp_path):
    with FixtureSite() as s:
        rc, err = _cli(capsys, s.url("/files/guide.pdf"), "--out", str(tmp_path))
        rc2, err2 = _cli(capsys, s.url("/blob.html"), "--out", str(tmp_path))
    assert rc == 1 and "not a readable web page" in err
    assert rc2 == 1 and "binary" in err2
    assert not list(tmp_path.glob("*.txt"))


def test_cli_ok_and_nothing_new(capsys, tmp_path):
    with FixtureSite() as s:
        assert cli.main(["crawl", s.url("/"), "--out", str(tmp_path), "--depth", "0", "--delay", "0"]) == 0
        out = capsys.readouterr().out
        assert "Saved 1 pages" in out
        assert cli.main(["crawl", s.url("/"), "--out", str(tmp_path), "--depth", "0", "--delay", "0"]) == 0
        assert "Nothing new to crawl" in capsys.readouterr().out


def test_cli_unknown_host_and_tls_error(capsys, tmp_path):
    rc, err = _cli(capsys, "http://no-such-host.invalid/", "--out", str(tmp_path))
    assert rc == 1 and "could not be found" in err
    with FixtureSite() as s:  # https:// against a plain-HTTP server fails the TLS handshake
        rc, err = _cli(capsys, s.url("/").replace("http://", "https://"), "--out", str(tmp_path))
    assert rc == 1 and "TLS" in err


def test_meta_refresh_home_page_counts_as_a_redirect(tmp_path):
    with FixtureSite() as s:
        s.routes["/"] = (
            200,
            b'<html><head><meta http-equiv="Refresh" content="0; URL=/news/1.html"></head></html>',
            "text/html",
        )
        summary = crawl(CrawlConfig(s.url("/"), tmp_path, depth=0, delay=0))
        assert s.requested("/news/1.html") == 1
    assert summary.saved == 1
    assert "28 学分" in next(tmp_path.glob("*news_1.txt")).read_text(encoding="utf-8")


def test_cli_reads_a_settings_file_and_flags_win(capsys, tmp_path):
    """`umtcds crawl --config FILE` (what the dashboard runs): URL and folder from the file; a flag given wins."""
    from umtcds_core.crawl import CRAWL

    out = tmp_path / "pages"
    with FixtureSite() as s:
        values = CRAWL.check({"start_url": s.url("/"), "out_dir": str(out), "depth": 3, "delay": 0})
        path = CRAWL.save_yaml(values, tmp_path / "settings.yaml")
        assert "# link hops from the start page" in path.read_text(encoding="utf-8")
        assert cli.main(["crawl", "--config", str(path), "--depth", "0", "--quiet"]) == 0
    assert "Saved 1 pages" in capsys.readouterr().out  # --depth 0 won over depth: 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"out_dir: {out}\ndepth: -1\ndelay: 0\n", encoding="utf-8")
    assert cli.main(["crawl", "https://www.x.edu.cn/", "--config", str(bad)]) == 1
    assert "depth: must be 0 or more" in capsys.readouterr().err


# ---- sitemaps -------------------------------------------------------------------------------------------------------


def _urlset(*entries: tuple[str, str | None]) -> bytes:
    urls = "".join(
        f"<url><loc>{loc}</loc>{f'<lastmod>{lastmod}</lastmod>' if lastmod else ''}</url>" for loc, lastmod in entries
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{urls}</urlset>'
    ).encode()


def _sitemap_site(site: FixtureSite, offsite: FixtureSite) -> None:
    """robots.txt names a sitemap index (and an off-site sitemap); /sitemap.xml lists one more page."""
    site.robots = (
        f"User-agent: *\nDisallow: /private/\nSitemap: {site.url('/maps/index.xml')}\n"
        f"Sitemap: {offsite.url('/their-sitemap.xml')}\n"
    )
    index = (
        '<?xml version="1.0" encoding="UTF-8"?><sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
        f"<sitemap><loc>{site.url('/maps/news.xml')}</loc></sitemap></sitemapindex>"
    ).encode()
    news = _urlset(
        (site.url("/only-in-sitemap.html"), "2020-01-01"),  # linked from nowhere
        (site.url("/private/secret.html"), None),  # robots.txt says no
        (offsite.url("/x.html"), None),  # another site
        (site.url("/files/guide.pdf"), None),  # an attachment, not wanted without --attachments
    )
    xml = "application/xml"
    site.routes["/maps/index.xml"] = (200, index, xml)
    site.routes["/maps/news.xml"] = (200, news, xml)
    site.routes["/sitemap.xml"] = (200, _urlset((site.url("/level2.html"), "2999-01-01")), xml)
    site.routes["/only-in-sitemap.html"] = (
        200,
        "<html><head><title>校车时刻表</title></head><body><article><h1>校车时刻表</h1><p>校车每天早上七点从东门"
        "发车，经过图书馆和体育馆，晚上九点末班车返回东门。</p></article></body></html>".encode(),
        "text/html; charset=utf-8",
    )


def test_sitemaps_seed_the_crawl_at_depth_1_within_every_scope_rule(sites, tmp_path):
    site, offsite = sites
    _sitemap_site(site, offsite)
    out = tmp_path / "pages"
    summary = crawl(_cfg(site, out, depth=1))
    by_url = {r["url"].replace(site.url(""), ""): r for r in _manifest(out)}
    # the robots.txt Sitemap: line (an index, followed) and /sitemap.xml were read, each once, robots.txt once
    for path in ("/maps/index.xml", "/maps/news.xml", "/sitemap.xml", "/robots.txt"):
        assert site.requested(path) == 1, path
    assert summary.sitemap_urls == 5
    # their pages count as depth 1: /level2.html is two link hops from the start page but in the sitemap
    assert by_url["/only-in-sitemap.html"]["depth"] == 1 and by_url["/only-in-sitemap.html"]["path"]
    assert by_url["/level2.html"]["depth"] == 1 and by_url["/level2.html"]["path"]
    # and obey every scope rule: robots.txt, other hosts (the off-site sitemap too), attachments
    assert "/private/secret.html" not in site.requested_paths() and offsite.access_log == []
    assert "/files/guide.pdf" not in site.requested_paths()


def test_no_sitemap_flag_and_depth_0_read_no_sitemap(sites, tmp_path):
    site, offsite = sites
    _sitemap_site(site, offsite)
    crawl(_cfg(site, tmp_path / "a", depth=0))
    assert cli.main(["crawl", site.url("/"), "--out", str(tmp_path / "b"), "--no-sitemap", "--delay", "0"]) == 0
    assert not {"/maps/index.xml", "/sitemap.xml", "/only-in-sitemap.html"} & site.requested_paths()


def test_refresh_skips_pages_the_sitemap_dates_before_the_last_visit(sites, tmp_path, capsys):
    site, offsite = sites
    _sitemap_site(site, offsite)
    out = tmp_path / "pages"
    crawl(_cfg(site, out, depth=1))
    site.access_log.clear()
    crawl(_cfg(site, out, depth=1, refresh=True))
    rows = {r["url"].replace(site.url(""), ""): r for r in _manifest(out) if r.get("change")}
    # lastmod 2020 < our first visit: not requested at all, still there and unchanged
    assert site.requested("/only-in-sitemap.html") == 0
    assert (
        rows["/only-in-sitemap.html"]["change"] == "unchanged" and rows["/only-in-sitemap.html"]["checked"] == "lastmod"
    )
    assert (out / rows["/only-in-sitemap.html"]["path"]).exists()
    # lastmod in the future: asked again; no lastmod (a plain link): asked again
    assert site.requested("/level2.html") == 1 and site.requested("/news/2.html") == 1
