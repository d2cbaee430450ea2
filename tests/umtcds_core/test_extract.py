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


# ---- issue 17: defects found on real third-party pages (bench/extract_bench.py) ------------------------------------

EXTRACT_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "extract"


def test_header_that_nests_the_article_is_not_pruned():
    # an unclosed <div> in the site header makes parsers nest <main>/<article> inside <header>; the landmark rule
    # used to remove it with the article and keep only "Skip to content"
    html = (EXTRACT_FIXTURES / "header_nests_article.html").read_text(encoding="utf-8")
    page = extract_html(html, "http://demo.edu.cn/lib/winter.html")
    assert "图书馆总馆每天 8:30 至 17:00 开放" in page.text
    assert "电话 010-12345679" in page.text
    assert page.text != "Skip to content" and page.extractor.startswith("trafilatura")


def test_prune_landmarks_keeps_article_inside_header_and_counts_what_it_removed():
    from trafilatura.utils import load_html

    from umtcds_core.extract import prune_landmarks

    tree = load_html(
        "<html><body><header><a>Home</a><article><p>正文</p></article></header><nav>菜单</nav></body></html>"
    )
    pruned, removed = prune_landmarks(tree)
    assert pruned.xpath("//article") and not pruned.xpath("//nav")
    assert removed == len("菜单")
    assert tree.xpath("//nav")  # the caller's tree is untouched (it is the unpruned fallback)


def test_choose_text_prefers_precision_unless_it_lost_the_article():
    from umtcds_core.extract import choose_text

    article = "第一段正文。" * 40
    related = "\n".join(f"相关新闻 {i}：校园简讯标题" for i in range(8))
    assert choose_text(article, article + "\n" + related) == (article, "precision")
    fragment = "第一段正文。" * 5
    assert choose_text(fragment, article) == (article, "recall")


def test_auto_mode_drops_furniture_lines_that_the_recall_preset_kept():
    html = (EXTRACT_FIXTURES / "related_block.html").read_text(encoding="utf-8")
    recall = extract_html(html, "http://demo.edu/news/5", mode="recall")
    page = extract_html(html, "http://demo.edu/news/5")
    assert page.extractor in ("trafilatura-precision", "trafilatura-recall")
    assert "open until midnight on weekdays" in page.text and "010-12345679" in page.text
    for line in ("Comments", "上一篇：图书馆寒假开放安排", "Library extends opening hours for exams"):
        assert line not in page.text.splitlines(), line  # widget label, prev/next link, repeated headline
    assert page.file_text().splitlines()[0] == "Library extends opening hours for exams"  # the title still leads
    assert len(page.text) <= len(recall.text)
    with pytest.raises(ValueError):
        extract_html(html, "http://x/", mode="fastest")


def test_output_is_nfc_normalised():
    decomposed = "Caf\u0065\u0301 und Universita\u0308t: 한국어"  # é, ä and Hangul as combining sequences
    import unicodedata

    hangul = unicodedata.normalize("NFD", "한국어")
    body = "".join(
        f"<p>{decomposed.replace('한국어', hangul)} — paragraph {i} about the opening hours of the library.</p>"
        for i in range(6)
    )
    page = extract_html(f"<html><body><article>{body}</article></body></html>", "http://x/")
    assert "Café und Universität: 한국어" in page.text
    assert page.text == unicodedata.normalize("NFC", page.text)
