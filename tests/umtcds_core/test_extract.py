"""extract.py: main text of the fixture pages (trafilatura's with/without snippet rule), titles, PDF and DOCX."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from crawl_helpers import FIXTURE_DIR, WWW, make_docx, make_pdf  # noqa: E402

from umtcds_core.extract import PageText, extract_docx, extract_html, extract_pdf, page_title  # noqa: E402
from umtcds_core.fetch import decode_html  # noqa: E402

EVAL = json.loads((FIXTURE_DIR / "evaldata.json").read_text(encoding="utf-8"))


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()


@pytest.mark.parametrize("name", sorted(EVAL))
def test_fixture_pages_keep_main_text_and_drop_boilerplate(name):
    raw = (WWW / name).read_bytes()
    decoded = decode_html(raw, "text/html")  # gbk.html is served without a charset
    page = extract_html(decoded.text, "http://demo.edu.cn/" + name, decoded.encoding, decoded.source)
    text = _norm(page.text)
    for snippet in EVAL[name]["with"]:
        assert _norm(snippet) in text, f"{name}: lost {snippet!r}"
    for snippet in EVAL[name]["without"]:
        assert _norm(snippet) not in text, f"{name}: kept boilerplate {snippet!r}"
    assert page.title and page.title != "示范大学 Demo University"  # the page's own title, not the logo


def test_title_comes_first_and_is_not_repeated():
    page = PageText("选课通知", "选课通知\n正文内容。", "http://x/")
    assert page.file_text() == "选课通知\n正文内容。\n"
    page = PageText("选课通知", "正文内容。", "http://x/")
    assert page.file_text().splitlines()[0] == "选课通知"


def test_page_title_ladder():
    assert (
        page_title("<html><head><title>招生简章 - 示范大学</title></head><body><h1>2024 招生简章</h1>")
        == "2024 招生简章"
    )
    two_h1 = "<title>招生简章_示范大学本科招生网</title><h1>a</h1><h1>b</h1>"
    assert page_title(two_h1) == "招生简章"


def test_short_page_falls_back_without_losing_text():
    page = extract_html("<html><body><p>电话：010-1234</p></body></html>", "http://x/")
    assert "010-1234" in page.text


def test_pdf_and_docx():
    pdf = extract_pdf(make_pdf(["Library opens at 8:00.", "Closed on holidays."], title="Library"), "http://x/a.pdf")
    assert pdf.kind == "pdf" and pdf.title == "Library" and "Library opens at 8:00." in pdf.text
    docx = extract_docx(make_docx("申请表", ["截止日期 10 月 15 日。"], [["姓名", "学号"]]), "http://x/f.docx")
    assert docx.title == "申请表" and "截止日期 10 月 15 日。" in docx.text and "姓名 | 学号" in docx.text
