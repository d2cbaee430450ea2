"""Main text of one fetched document: trafilatura for HTML, pypdf for PDF, python-docx for DOCX.

HTML arrives here already decoded (see :func:`umtcds_core.fetch.decode_html`): trafilatura's own encoding guess is
wrong on nav-heavy GBK pages, so it only ever sees a ``str``.

Why not one fixed trafilatura setting: measured on real third-party article pages (``bench/extract_bench.py``), the
precision preset is the better one on most pages but on some layouts it keeps only a fragment of the article, while
the recall preset keeps "related articles" blocks and sign-up boxes. So both run on the same parsed tree and the
choice is made per page from what can be measured without knowing the answer (:func:`choose_text`): precision's text
unless it kept less than half of what recall found. Site landmarks are pruned first, but only when pruning does not
gut the page (a ``<header>`` that holds the article, or a template whose post header trafilatura needs). The kept
text then loses lines that are page furniture by any site's standard (the headline repeated, "Comments", "上一篇",
sign-up prompts), and is NFC-normalised so decomposed accents match what users type.
"""

from __future__ import annotations

import io
import re
import unicodedata
from copy import deepcopy
from dataclasses import dataclass

# Site-wide landmarks outside the article: campus templates put the logo, menus, ICP licence and cookie notices
# here, and trafilatura keeps some of them on short pages (measured in bench/crawl_bench.py). A landmark that holds
# the article itself (broken markup nests <article> inside <header>) is never pruned. Nested <article>s inside an
# article are, by the HTML spec, related items (teasers, comments), not the article.
PRUNE_XPATH = [
    "//header[not(ancestor::article or ancestor::main)][not(.//article or .//main)]",
    "//footer[not(ancestor::article or ancestor::main)][not(.//article or .//main)]",
    "//nav[not(.//article or .//main)]",
    "//*[self::div or self::section or self::aside or self::p or self::dialog]"
    "[contains(translate(@class,'COKIE','cokie'),'cookie') or contains(translate(@id,'COKIE','cokie'),'cookie')]"
    "[not(.//main or .//article)]",
    "//article[ancestor::article][preceding-sibling::article or following-sibling::article]",
]
# Pruned text shorter than this share of the unpruned text, lost beyond what the pruned landmarks held, means the
# pruning upset trafilatura's reading of the page (seen: removing a post's own <header> made it miss the article).
PRUNE_KEEP_RATIO = 0.5
# Precision's text shorter than this share of recall's means precision dropped part of the article.
PRECISION_KEEP_RATIO = 0.5

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
    """Whitespace tidied line by line, and NFC: a decomposed "é" or "가" must match the composed one users type."""
    text = unicodedata.normalize("NFC", text)
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


def _trafilatura_text(tree, url: str, mode: str) -> str:
    """One trafilatura pass (``mode``: precision|recall|balanced) on a parsed tree; trafilatura copies the tree."""
    import trafilatura

    doc = trafilatura.bare_extraction(
        tree,
        url=url,
        with_metadata=False,  # metadata means date parsing: slow, and we only need the title
        include_comments=False,
        include_tables=True,
        favor_precision=mode == "precision",
        favor_recall=mode == "recall",
    )
    return clean_text(doc.text or "") if doc is not None else ""


def prune_landmarks(tree):
    """A copy of ``tree`` without the :data:`PRUNE_XPATH` landmarks, and how many characters of text they held.

    Tail text is kept (it belongs to the parent, not to the landmark)."""
    pruned = deepcopy(tree)
    doomed = {el for xpath in PRUNE_XPATH for el in pruned.xpath(xpath)}
    removed = 0
    for el in doomed:
        if any(a in doomed for a in el.iterancestors()):
            continue  # removed with its ancestor
        parent = el.getparent()
        if parent is None:
            continue
        removed += len(el.text_content()) - len(el.tail or "")
        if el.tail:
            prev = el.getprevious()
            if prev is None:
                parent.text = (parent.text or "") + el.tail
            else:
                prev.tail = (prev.tail or "") + el.tail
        parent.remove(el)
    return pruned, removed


def choose_text(precision: str, recall: str) -> tuple[str, str]:
    """The per-page choice between the two presets, from the texts alone (never from any reference answer).

    Precision's output is nearly always a subset of recall's; the difference is either furniture (related links,
    sign-up boxes: short) or article paragraphs precision judged too risky (long). When precision kept less than
    :data:`PRECISION_KEEP_RATIO` of recall's text it lost article, so recall wins; otherwise precision does.
    """
    if len(precision) < PRECISION_KEEP_RATIO * len(recall):
        return recall, "recall"
    return precision, "precision"


# Whole lines that are page furniture on any site: labels of widgets, not content. Compared case-folded, without
# list bullets and a trailing colon.
_FURNITURE_LINES = {
    "comments", "comment", "tags", "tag", "share", "share this", "share this article", "share this story", "print",
    "print article", "print this page", "text size", "related", "related articles", "related stories",
    "related posts", "related content", "more", "read more", "read next", "see also", "you may also like",
    "you might also like", "don't miss", "recommended", "most popular", "trending", "advertisement", "sponsored",
    "thank you", "sorry!", "close", "caption", "image", "updated", "order reprints", "back to top", "back to gallery",
    "skip to content", "skip to main content", "loading...",
    "上一篇", "下一篇", "上一条", "下一条", "打印", "打印本页", "打印此页", "关闭", "关闭窗口", "分享", "分享到",
    "相关新闻", "相关文章", "相关阅读", "推荐阅读", "热门文章", "返回顶部", "返回列表", "收藏", "评论",
}  # fmt: skip
# Line starts that mark navigation between notices or hit counters on Chinese campus templates.
_FURNITURE_PREFIX_RE = re.compile(
    r"^[【\[]?(上一篇|下一篇|上一条|下一条|分享到)|^(浏览次数|点击数|点击次数|阅读次数|访问次数|浏览量)\s*[:：]?\s*\d*\s*(次)?$"
)
# Prompts to sign up, follow or retry: short lines only, a paragraph that mentions a newsletter is kept.
_PROMPT_RE = re.compile(
    r"\b(sign up|subscribe)\b.*\b(newsletters?|inbox|e-?mail)\b"
    r"|\bnewsletters?\b.*\b(sign up|subscribe|inbox)\b"
    r"|\bfollow (us|him|her|them|me)\b.*\b(twitter|facebook|instagram|youtube|linkedin)\b"
    r"|\ban error has occurred\b|\bthere was an error processing\b|\bplease try again later\b"
    r"|\bfor your personal,? non-commercial use only\b"
    r"|扫一扫|扫描二维码|长按识别|关注.{0,8}(微信|公众号)",
    re.IGNORECASE,
)
_CSS_NAME_RE = re.compile(r"^[a-z]+(?:-[a-z]+){2,}$")  # "medium-wide-browser-and-larger": template residue
_BULLET_RE = re.compile(r"^[-•·*]\s*")
_WORD_RE = re.compile(r"\w+")


def _norm_line(line: str) -> str:
    return _BULLET_RE.sub("", line.strip()).rstrip(":：").strip().casefold()


def _same_words(a: str, b: str) -> bool:
    wa, wb = _WORD_RE.findall(a.casefold()), _WORD_RE.findall(b.casefold())
    return bool(wa) and wa == wb


def drop_furniture(text: str, titles: list[str], url: str = "") -> str:
    """Lines no reader counts as the page's text: the headline repeated at the top (the title is stored apart and
    written first by :meth:`PageText.file_text`), widget labels, prev/next links, sign-up prompts, the page's own
    URL and template class names. Repeated paragraphs stay: interviews and recipes repeat lines on purpose."""
    lines = text.split("\n")
    out: list[str] = []
    leading = True
    bare_url = url.split("#")[0].rstrip("/")
    for line in lines:
        stripped = line.strip()
        if not stripped:
            out.append(line)
            continue
        key = _norm_line(stripped)
        if leading and any(_same_words(stripped, t) for t in titles if t):
            continue
        leading = False
        if key in _FURNITURE_LINES or _FURNITURE_PREFIX_RE.search(stripped) or _CSS_NAME_RE.match(key):
            continue
        if bare_url and stripped.rstrip("/") == bare_url:
            continue
        if len(_WORD_RE.findall(stripped)) <= 40 and _PROMPT_RE.search(stripped):
            continue
        out.append(line)
    return clean_text("\n".join(out))


def _html_titles(html: str) -> list[str]:
    """Headline candidates: the ``<h1>``s and the ``<title>`` (whole and its first part) of the page."""
    found = [_strip_tags(h) for h in re.findall(r"<h1[^>]*>(.*?)</h1>", html, re.IGNORECASE | re.DOTALL)[:3]]
    m = re.search(r"<title[^>]*>(.*?)</title>", html, re.IGNORECASE | re.DOTALL)
    if m:
        full = _strip_tags(m.group(1))
        found += [full] + [part.strip() for part in _TITLE_SEP_RE.split(full) if len(part.strip()) > 1][:1]
    return [t for t in found if t]


def extract_html(
    html: str,
    url: str,
    encoding: str | None = None,
    encoding_source: str | None = None,
    favor_precision: bool = False,
    replaced: int = 0,
    prune: bool = True,
    mode: str = "auto",
) -> PageText:
    """Main text of a decoded page.

    ``mode``: ``auto`` (precision and recall presets, chosen per page by :func:`choose_text`), ``precision`` or
    ``recall`` (one preset; ``favor_precision=True`` is the old spelling of ``precision``). ``prune``: remove site
    landmarks first, undone per page when the pruned text is under :data:`PRUNE_KEEP_RATIO` of the unpruned one.
    Falls back to trafilatura's baseline extractor when the main-text passes find nothing.
    """
    import trafilatura
    from trafilatura.utils import load_html

    if favor_precision:
        mode = "precision"
    if mode not in ("auto", "precision", "recall"):
        raise ValueError(f"unknown extraction mode {mode!r}: use auto, precision or recall")
    title = page_title(html)
    tree = load_html(html)
    text, extractor = "", "trafilatura"
    if tree is not None:
        modes = ["precision", "recall"] if mode == "auto" else [mode]
        base, removed = prune_landmarks(tree) if prune else (tree, 0)
        texts = {m: _trafilatura_text(base, url, m) for m in modes}
        if prune and removed:
            # measured, not assumed: pruning that cost far more text than the landmarks held broke trafilatura's
            # reading of the page; one unpruned pass (the widest preset asked for) shows it
            probe = modes[-1]
            unpruned = _trafilatura_text(tree, url, probe)
            lost = len(unpruned) - len(texts[probe])
            if len(texts[probe]) < PRUNE_KEEP_RATIO * len(unpruned) and lost > removed:
                texts = {m: unpruned if m == probe else _trafilatura_text(tree, url, m) for m in modes}
        if mode == "auto":
            text, chosen = choose_text(texts["precision"], texts["recall"])
        else:
            text, chosen = texts[mode], mode
        extractor = f"trafilatura-{chosen}"
        text = drop_furniture(text, _html_titles(html), url)
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
