"""Main text of one fetched document: trafilatura for HTML, pypdf for PDF, python-docx for DOCX.

HTML arrives here already decoded (see :func:`umtcds_core.fetch.decode_html`): trafilatura's own encoding guess is
wrong on nav-heavy GBK pages, so it only ever sees a ``str``. Extraction favours recall (the Q&A step needs every
fact on a page more than it needs a perfectly clean page) and drops comments, navigation, footers and cookie banners.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

# Site-wide landmarks outside the article: campus templates put the logo, menus, ICP licence and cookie notices
# here, and trafilatura keeps some of them on short pages (measured in bench/crawl_bench.py).
PRUNE_XPATH = [
    "//header[not(ancestor::article or ancestor::main)]",
    "//footer[not(ancestor::article or ancestor::main)]",
    "//nav",
    "//*[self::div or self::section or self::aside or self::p or self::dialog]"
    "[contains(translate(@class,'COKIE','cokie'),'cookie') or contains(translate(@id,'COKIE','cokie'),'cookie')]"
    "[not(.//main or .//article)]",
]

_WS_RE = re.compile(r"[ \t\u3000\xa0]+")
_BLANKS_RE = re.compile(r"\n{3,}")


@dataclass
class PageText:
    """What one page contributes to the corpus. ``kind``: html|pdf|docx|text; ``extractor``: which tool produced it."""

    title: str
    text: str
    url: str
    encoding: str | None = None
    encoding_source: str | None = None
    kind: str = "html"
    extractor: str = "trafilatura"
    replaced: int = 0  # U+FFFD characters from a last-resort decode

    @property
    def chars(self) -> int:
        return len(self.text)

    def file_text(self) -> str:
        """The .txt content: the title on the first line, then the text (title not repeated when it leads the text)."""
        body = self.text.strip()
        title = self.title.strip()
        if title and body.split("\n", 1)[0].strip() != title:
            return f"{title}\n\n{body}\n"
        return body + "\n"


def clean_text(text: str) -> str:
    lines = [_WS_RE.sub(" ", line).strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return _BLANKS_RE.sub("\n\n", "\n".join(lines)).strip()


_TITLE_SEP_RE = re.compile(r"\s+[-|_–—·]\s+|\s*[|_–—]\s*")


def _strip_tags(fragment: str) -> str:
    import html as _html

    return clean_text(_html.unescape(re.sub(r"<[^>]+>", " ", fragment))).replace("\n", " ")


def page_title(html: str) -> str:
    """The page's own title: its only ``<h1>``, else ``<title>`` without the site-name suffix.

    Why not trafilatura's metadata: it runs htmldate/dateparser (seconds per page on CJK pages) and on campus
    templates often returns the logo text, the same for every page.
    """
    h1s = re.findall(r"<h1[^>]*>(.*?)</h1>", html, re.IGNORECASE | re.DOTALL)
    if len(h1s) == 1 and _strip_tags(h1s[0]):
        return _strip_tags(h1s[0])[:200]
    m = re.search(r"<title[^>]*>(.*?)</title>", html, re.IGNORECASE | re.DOTALL)
    if not m:
        return ""
    full = _strip_tags(m.group(1))
    first = next((part.strip() for part in _TITLE_SEP_RE.split(full) if len(part.strip()) > 1), "")
    return (first or full)[:200]


def extract_html(
    html: str,
    url: str,
    encoding: str | None = None,
    encoding_source: str | None = None,
    favor_precision: bool = False,
    replaced: int = 0,
    prune: bool = True,
) -> PageText:
    """trafilatura on a decoded page; falls back to its baseline extractor when the main-text pass finds nothing."""
    import trafilatura

    doc = trafilatura.bare_extraction(
        html,
        url=url,
        with_metadata=False,  # metadata means date parsing: slow, and we only need the title
        include_comments=False,
        include_tables=True,
        favor_precision=favor_precision,
        favor_recall=not favor_precision,
        prune_xpath=PRUNE_XPATH if prune else None,
    )
    title = page_title(html)
    text = clean_text(doc.text or "") if doc is not None else ""
    extractor = "trafilatura"
    if not text:
        _tree, base_text, _n = trafilatura.baseline(html)
        text, extractor = clean_text(base_text or ""), "baseline"
    return PageText(title, text, url, encoding, encoding_source, "html", extractor, replaced)


def extract_pdf(data: bytes, url: str) -> PageText:
    """Text of every page of a PDF (scanned PDFs without a text layer come back empty)."""
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    parts = []
    for page in reader.pages:
        try:
            parts.append(page.extract_text() or "")
        except Exception:  # noqa: BLE001 - one broken page must not lose the rest of the document
            continue
    title = ""
    try:
        title = (reader.metadata.title if reader.metadata else None) or ""
    except Exception:  # noqa: BLE001 - broken metadata dictionary
        title = ""
    text = clean_text("\n\n".join(parts))
    return PageText(title.strip() or _name_from_url(url), text, url, None, None, "pdf", "pypdf")


def extract_docx(data: bytes, url: str) -> PageText:
    """Paragraphs and tables of a Word document, in document order for paragraphs, tables after."""
    import docx

    document = docx.Document(io.BytesIO(data))
    lines = [p.text for p in document.paragraphs]
    for table in document.tables:
        for row in table.rows:
            lines.append(" | ".join(cell.text.strip() for cell in row.cells))
    title = (document.core_properties.title or "").strip()
    if not title:
        title = next((p.text.strip() for p in document.paragraphs if p.text.strip()), "") or _name_from_url(url)
    return PageText(title, clean_text("\n".join(lines)), url, None, None, "docx", "python-docx")


def extract_plain(text: str, url: str, encoding: str | None = None, encoding_source: str | None = None) -> PageText:
    return PageText(_name_from_url(url), clean_text(text), url, encoding, encoding_source, "text", "plain")


def _name_from_url(url: str) -> str:
    from urllib.parse import unquote, urlsplit

    path = unquote(urlsplit(url).path.rstrip("/"))
    return path.rsplit("/", 1)[-1] or url
