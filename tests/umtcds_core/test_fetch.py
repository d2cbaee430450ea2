"""fetch.py: the decode ladder (bytes made in-test) and the polite GET against a real local HTTP server."""

from __future__ import annotations

import codecs
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from crawl_helpers import FixtureSite  # noqa: E402

from umtcds_core.fetch import Fetcher, decode_html, normalize_charset, sniff_binary  # noqa: E402

GBK_ONLY = "朱镕基校友与张喆教授"  # 镕 and 喆 are in GBK but not in GB2312


def _page(body: str, meta: str = "") -> str:
    return f"<html><head>{meta}<title>t</title></head><body>{body}</body></html>"


# ---- decode ladder --------------------------------------------------------------------------------------------------


def test_gbk_only_chars_declared_gb2312_decode_as_gb18030():
    raw = _page(f"<p>{GBK_ONLY}</p>", '<meta charset="gb2312">').encode("gbk")
    with pytest.raises(UnicodeDecodeError):
        raw.decode("gb2312")  # why the ladder exists
    d = decode_html(raw, "text/html")  # no charset in the header, like many campus servers
    assert GBK_ONLY in d.text
    assert (d.encoding, d.source) == ("gb18030", "meta")


def test_http_equiv_meta_and_header_charset():
    raw = _page(f"<p>{GBK_ONLY}</p>", '<meta http-equiv="Content-Type" content="text/html; charset=GBK">').encode("gbk")
    assert decode_html(raw, None).source == "meta"
    d = decode_html(raw, "text/html; charset=gb2312")
    assert (d.encoding, d.source) == ("gb18030", "http") and GBK_ONLY in d.text


def test_header_without_charset_is_not_read_as_latin1():
    raw = _page("<p>选课通知：请于周五前完成。</p>").encode("utf-8")
    d = decode_html(raw, "text/html")
    assert "选课通知" in d.text and d.encoding == "utf-8"


def test_nav_heavy_gbk_page_without_any_declaration_is_detected():
    nav = "".join(f'<li><a href="/c/{i}.htm">Link {i}</a></li>' for i in range(200))
    body = (
        f"<ul>{nav}</ul><p>{GBK_ONLY}捐赠的珍贵文物。团体参观须提前三个工作日预约。</p><footer>Copyright 2024</footer>"
    )
    d = decode_html(_page(body).encode("gbk"), None)
    assert GBK_ONLY in d.text
    assert d.encoding == "gb18030" and d.source == "detected"


def test_wrong_declaration_falls_back_to_the_bytes():
    raw = _page(f"<p>{GBK_ONLY}，开放时间为周二至周日。</p>", '<meta charset="utf-8">').encode("gbk")
    d = decode_html(raw, "text/html; charset=utf-8")
    assert GBK_ONLY in d.text and d.encoding == "gb18030"


def test_boms_win():
    text = _page("<p>迎新</p>", '<meta charset="gbk">')
    assert decode_html(codecs.BOM_UTF8 + text.encode("utf-8"), "text/html; charset=gbk").source == "bom"
    d = decode_html(codecs.BOM_UTF16_LE + text.encode("utf-16-le"), None)
    assert "迎新" in d.text and d.encoding == "utf-16-le"


def test_big5_and_latin_declarations():
    raw = _page("<p>國立臺灣大學圖書館</p>", '<meta charset="big5">').encode("big5")
    assert "國立臺灣大學" in decode_html(raw).text
    raw = _page("<p>Café “quotes”</p>", '<meta charset="iso-8859-1">').encode("cp1252")
    d = decode_html(raw)
    assert "“quotes”" in d.text and d.encoding == "cp1252"  # WHATWG: latin1 label means windows-1252


def test_last_resort_is_recorded():
    # undecodable in every plausible codec (0x81 is unassigned in cp1252, 0xff is no GB/Big5 lead byte)
    raw = b"<html><body>\xff\x81\x8d\x90\x9d\xff broken</body></html>"
    d = decode_html(raw, "text/html; charset=no-such-codec")
    assert (d.encoding, d.source, d.replaced) == ("utf-8", "fallback", 6)
    assert d.text.startswith("<html><body>") and d.text.endswith("broken</body></html>")


def test_normalize_charset():
    assert normalize_charset("GB2312") == "gb18030"
    assert normalize_charset("x-gbk") == "gb18030"
    assert normalize_charset("cp936") == "gb18030"
    assert normalize_charset("big5") == "big5hkscs"
    assert normalize_charset("UTF8") == "utf-8"
    assert normalize_charset("nonsense") is None


def test_sniff_binary():
    assert sniff_binary(b"%PDF-1.4\n...") == "application/pdf"
    assert sniff_binary(b"PK\x03\x04rest") == "application/zip"
    assert sniff_binary(bytes(range(256)) * 8) is not None
    assert sniff_binary(_page("<p>正常页面</p>").encode("gbk")) is None
    assert sniff_binary(codecs.BOM_UTF16_LE + "<html>".encode("utf-16-le")) is None


# ---- polite GET against a real server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site():
    with FixtureSite(robots="User-agent: *\nDisallow: /private/\n") as s:
        yield s


def test_robots_is_fetched_once_and_obeyed(site):
    f = Fetcher(delay=0, user_agent="TestBot/1.0")
    before = site.requested("/robots.txt")
    assert f.get(site.url("/news/1.html")).ok
    assert f.get(site.url("/news/2.html")).ok
    blocked = f.get(site.url("/private/secret.html"))
    assert blocked.error_kind == "robots" and blocked.status is None
    assert site.requested("/robots.txt") - before == 1
    assert site.requested("/private/secret.html") == 0
    assert ("/news/1.html", "TestBot/1.0") in site.access_log


def test_ignore_robots_never_reads_it():
    with FixtureSite(robots="User-agent: *\nDisallow: /\n") as s:
        f = Fetcher(delay=0, respect_robots=False)
        assert f.get(s.url("/news/1.html")).ok
        assert s.requested("/robots.txt") == 0


def test_crawl_delay_from_robots_spaces_requests():
    with FixtureSite(robots="User-agent: *\nCrawl-delay: 1\n") as s:
        f = Fetcher(delay=0)
        assert f.host_delay(s.url("/")) == 1.0
        t0 = time.monotonic()
        f.get(s.url("/news/1.html"))
        f.get(s.url("/news/2.html"))
        assert time.monotonic() - t0 >= 0.95


def test_retry_after_on_503_is_honoured(site):
    f = Fetcher(delay=0)
    t0 = time.monotonic()
    res = f.get(site.url("/flaky.html"))
    assert res.ok and res.status == 200
    assert time.monotonic() - t0 >= 0.95  # Retry-After: 1
    assert site.requested("/flaky.html") == 2


def test_size_cap_and_timeout(site):
    big = Fetcher(delay=0, max_bytes=1024 * 1024).get(site.url("/big.html"))
    assert big.error_kind == "too-large" and not big.ok
    slow = Fetcher(delay=0, timeout=0.5, retries=0).get(site.url("/slow.html"))
    assert slow.error_kind == "timeout"


def test_redirects_are_followed_and_offsite_targets_never_contacted(site):
    same_site = lambda u: u.startswith(site.url("/"))  # noqa: E731
    f = Fetcher(delay=0)
    res = f.get(site.url("/old-news"), scope=same_site)
    assert res.ok and res.final_url == site.url("/news/2.html") and res.redirects == [site.url("/news/2.html")]
    with FixtureSite() as other:
        site.routes["/to-other"] = (302, b"", "text/html", {"Location": other.url("/offsite.html")})
        res = f.get(site.url("/to-other"), scope=same_site)
        assert res.error_kind == "offsite" and res.final_url == other.url("/offsite.html")
        assert other.access_log == []


def test_connection_refused_is_classified():
    with FixtureSite() as s:
        url = s.url("/")
    res = Fetcher(delay=0, retries=0).get(url)
    assert res.error_kind == "refused"


def test_robots_5xx_means_disallow():
    with FixtureSite(robots=None) as s:
        s.routes["/robots.txt"] = (500, b"oops", "text/plain")
        f = Fetcher(delay=0, retries=0)
        res = f.get(s.url("/news/1.html"))
        assert res.error_kind == "robots"
        assert "500" in (f.robots_note(s.url("/")) or "")


def test_429_gives_up_after_retries_and_refuses_long_waits(site):
    from umtcds_core.retry import parse_retry_after

    def _retry_after(value):
        return parse_retry_after({"retry-after": value})

    assert _retry_after("3") == 3.0 and _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    site.routes["/busy"] = (429, b"slow down", "text/plain", {"Retry-After": "0"})
    res = Fetcher(delay=0, retries=2).get(site.url("/busy"))
    assert res.status == 429 and res.error == "HTTP 429 after 3 attempts" and site.requested("/busy") == 3
    site.routes["/closed"] = (503, b"maintenance", "text/plain", {"Retry-After": "3600"})
    t0 = time.monotonic()
    res = Fetcher(delay=0).get(site.url("/closed"))
    assert res.error_kind == "retry-after" and site.requested("/closed") == 1 and time.monotonic() - t0 < 1


# ---- issue 17: one stray byte must not switch the codec ---------------------------------------------------------


def test_utf8_page_with_one_stray_byte_keeps_utf8():
    text = _page("<p>选课通知：请于周五前完成选课。Café ümlaut.</p>" * 20, '<meta charset="utf-8">')
    raw = text.encode("utf-8")
    cut = raw.index("周五".encode()) + 3  # between 周 and 五
    raw = raw[:cut] + b"\xff" + raw[cut:]  # one invalid byte, as a truncated upload leaves
    for content_type in ("text/html; charset=utf-8", "text/html", None):
        d = decode_html(raw, content_type)
        assert d.encoding == "utf-8" and d.replaced == 1, content_type
        assert "周\ufffd五" in d.text and "Café ümlaut" in d.text and "选课通知" in d.text
    # a European page: every byte but the stray one is also valid windows-1252, which detection used to pick
    raw = _page("<p>Café, Universität, naïve façade — über alles.</p>" * 20, '<meta charset="utf-8">').encode("utf-8")
    raw = raw.replace(b"alles", b"al\xffles", 1)
    d = decode_html(raw, "text/html")
    assert (d.encoding, d.source, d.replaced) == ("utf-8", "meta", 1)
    assert "Universität, naïve façade" in d.text and "al\ufffdles" in d.text


def test_gbk_page_with_one_stray_byte_keeps_gbk():
    text = _page(f"<p>{GBK_ONLY}捐赠的珍贵文物。团体参观须提前三个工作日预约。</p>" * 10, '<meta charset="gbk">')
    raw = text.encode("gbk")
    cut = raw.index("团体".encode("gbk"))
    raw = raw[:cut] + b"\xff" + raw[cut:]  # 0xff is never a GBK lead byte
    d = decode_html(raw, "text/html")
    assert (d.encoding, d.source, d.replaced) == ("gb18030", "meta", 1)
    assert GBK_ONLY in d.text and "\ufffd团体参观" in d.text


def test_many_invalid_bytes_still_mean_a_wrong_declaration():
    # the same GBK bytes declared UTF-8 fail on almost every character: not strays, the declaration is wrong
    raw = _page(f"<p>{GBK_ONLY}，开放时间为周二至周日。</p>" * 10, '<meta charset="utf-8">').encode("gbk")
    d = decode_html(raw, "text/html; charset=utf-8")
    assert d.encoding == "gb18030" and d.replaced == 0 and GBK_ONLY in d.text
