"""The bundled demo campus site: it serves over real HTTP, its GBK page is really GBK, its seed pairs are grounded."""

from __future__ import annotations

import html
import json
import re
import urllib.error
import urllib.request

import pytest

from umtcds_core.demo_site import DEMO_SITE_DIR, QA_SEED_FILE, DemoSite, serve_demo_site


def _get(url: str) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _page_text(rel: str) -> str:
    raw = (DEMO_SITE_DIR / rel).read_bytes()
    text = raw.decode("gb18030") if b'charset="gb2312"' in raw else raw.decode("utf-8")
    return html.unescape(re.sub(r"<[^>]+>", " ", text))


def test_serves_pages_robots_and_hides_the_seed_file():
    url, stop = serve_demo_site()
    try:
        assert url.startswith("http://127.0.0.1:")
        status, _, body = _get(url)
        assert status == 200 and b"Qingshan University" in body
        status, _, body = _get(url + "zh/index.html")
        assert status == 200 and "青山大学".encode() in body
        status, _, body = _get(url + "robots.txt")
        assert status == 200 and b"Disallow: /staff-only/" in body
        assert _get(url + "qa_seed.jsonl")[0] == 404  # part of the bundle, not of the website
        assert _get(url + "static/")[0] == 404  # no directory listings
        assert _get(url + "no-such-page.html")[0] == 404
    finally:
        stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)


def test_gbk_page_declares_gb2312_but_needs_gbk_and_sends_no_charset():
    with DemoSite() as site:
        status, headers, body = _get(site.url + "zh/bus.html")
        assert site.requests == ["/zh/bus.html"]
    assert status == 200
    assert "charset" not in headers.get("Content-type", headers.get("Content-Type", ""))
    assert b'<meta charset="gb2312">' in body
    with pytest.raises(UnicodeDecodeError):
        body.decode("gb2312")  # 喆 and 镕 exist only in GBK
    text = body.decode("gb18030")
    assert "王喆" in text and "朱镕" in text and "每20分钟一班" in text


def test_every_page_has_boilerplate_and_about_fifteen_pages_link_from_the_home_pages():
    pages = sorted(p.relative_to(DEMO_SITE_DIR).as_posix() for p in DEMO_SITE_DIR.rglob("*.html"))
    assert len(pages) >= 15
    for rel in pages:
        if rel.startswith("staff-only/"):
            continue
        text = (DEMO_SITE_DIR / rel).read_bytes()
        assert b'id="cookie-banner"' in text and b"<nav" in text and b"<footer" in text, rel
    home = (DEMO_SITE_DIR / "index.html").read_text(encoding="utf-8")
    linked = set(re.findall(r'href="([\w\-/]+\.html)"', home))
    assert {"library.html", "admissions.html", "zh/index.html"} <= linked
    assert "staff-only/index.html" in linked  # linked from the footer, disallowed by robots.txt


def test_seed_pairs_are_grounded_in_their_pages():
    rows = [json.loads(line) for line in QA_SEED_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(rows) >= 40
    assert {"question", "answer", "source"} <= set(rows[0])
    assert any(re.search(r"[\u4e00-\u9fff]", r["question"]) for r in rows)  # some Chinese pairs too
    checked = 0
    for row in rows:
        page = _page_text(row["source"])
        # Every number, time or date in the answer must appear in the page it cites.
        for fact in re.findall(r"\d[\d:,.\-]*\d|\d", row["answer"]):
            assert fact in page, (row, fact)
            checked += 1
    assert checked >= 40
