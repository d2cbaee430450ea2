"""Step 1 — crawl one site, breadth first, into one UTF-8 text file per page (``umtcds crawl``).

Usage::

    umtcds crawl https://www.example.edu.cn/ --out pages/ [--depth 1] [--max-pages 500] [--concurrency 4]
                 [--delay 0.5] [--ignore-robots] [--include REGEX] [--exclude REGEX] [--subdomains] [--attachments]
                 [--no-sitemap] [--refresh] [--render {never,auto,always}]
    umtcds crawl --config settings.yaml [any flag above, which wins over the file]

Every setting is declared once in :class:`CrawlSettings` (type, default, bounds, labels, help, YAML comment, flag);
the flags, the settings YAML the Crawl page saves in its job folder and the page's labels come from it.

Features, each with its flag and trade-off:

- **Scope** — the start URL's host only; ``--subdomains`` widens it to the registrable domain (``jwc.x.edu.cn`` under
  ``www.x.edu.cn``; tldextract's bundled suffix list, no network). Off-site links are never requested, and a redirect
  that leaves the site is stopped before its target is contacted.
- **Depth / size** — ``--depth`` counts link hops from the start page (0 = the start page only); ``--max-pages`` is
  a hard cap on pages saved in DIR (earlier runs included). Attachments (``--attachments``: PDF, DOCX) may sit one
  hop beyond ``--depth``, because notices link their files from the notice page.
- **Politeness** — robots.txt (protego) is obeyed unless ``--ignore-robots``, including Crawl-delay; ``--delay`` is
  the minimum gap between requests to one host (the larger of the two wins); ``--concurrency`` threads fetch in
  parallel (with a delay they overlap network latency but never exceed the host's pace); 429/503 back off.
- **Dedupe** — URLs are canonicalised (fragments, tracking parameters such as ``utm_*``, ``index.html``, trailing
  slashes, http/https, redirect source = target) and pages whose extracted text is identical are saved once.
- **Resume** — ``DIR/.crawl_state.jsonl`` gets one line per finished page, flushed, so a killed crawl loses at most
  the pages in flight; re-running into the same DIR never fetches a saved page again and continues the frontier
  (a larger ``--depth`` continues from the pages already saved).
- **Sitemaps** (``--sitemap``, default on; ``--no-sitemap``) — the ``Sitemap:`` lines of robots.txt and
  ``/sitemap.xml`` (indexes followed; parsed by ``ultimate-sitemap-parser``, fetched by our polite fetcher) seed the
  crawl: their URLs count as depth 1 and obey every scope rule. Read once per crawl (the journal keeps the URLs).
- **Refresh** (``--refresh``) — re-visits every page saved in DIR before, with ``If-None-Match`` /
  ``If-Modified-Since`` from its last ``ETag`` / ``Last-Modified``; a page the sitemap dates (``lastmod``) before our
  last visit is not requested at all. Every manifest row of the run carries ``change`` (see :data:`CHANGES`) and
  ``checked`` (``304``, ``lastmod`` or ``hash``); a changed page is rewritten in place, a removed page's file moves
  to ``DIR/removed/`` (never deleted). Cron it: the README shows the line.
- **Pages that need a browser** (``--render``, default ``never``; :mod:`render`) — ``auto`` loads an HTML page in
  headless Chromium (Playwright) when it has scripts and under :data:`render.AUTO_MIN_CHARS` characters of text (an
  app shell), ``always`` every HTML page. The page is fetched by the normal fetcher first and the browser is handed
  those bytes; what its scripts load obeys the scope (third parties never contacted), robots.txt and the per-host
  delay, and images/fonts/media/CSS are never requested. One browser, ``--render-concurrency`` pages at once,
  ``--render-timeout`` seconds each. No browser installed → one sentence with the install command, before any fetch.

Output: ``DIR/<readable-name>.txt`` (title first, then the main text) and ``DIR/manifest.jsonl`` with one object per
URL tried: ``{"url","final_url","status","path","title","chars","error"}`` plus ``depth, bytes, content_type, kind,
encoding, duplicate_of, fetched_at, run`` (``path`` is relative to DIR, null when nothing was saved; ``run`` tells the
rows of one crawl run from another's), and on a refresh ``change``, ``checked`` and ``removed_to``; with ``--render auto|always`` ``rendered`` (and
``render_error`` when the browser failed and the served text was kept).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import re
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit

from . import schema as S
from .errors import UserError
from .fetch import (
    DEFAULT_MAX_BYTES,
    DEFAULT_TIMEOUT,
    DEFAULT_USER_AGENT,
    Fetcher,
    FetchResult,
    decode_html,
    sniff_binary,
)
from .fileio import append_jsonl, iter_jsonl, write_text_atomic
from .render import needs_render

setting = S.setting
optional_text = S.optional_text

MANIFEST = "manifest.jsonl"
STATE = ".crawl_state.jsonl"
LOCK = ".crawl.lock"

ATTACHMENT_EXT = {".pdf": "pdf", ".docx": "docx"}
# Never requested: they cannot contribute text (or, for old Office formats, we have no reader).
SKIP_EXT = set(
    ".jpg .jpeg .png .gif .bmp .svg .webp .ico .tif .tiff .css .js .json .xml .rss .zip .rar .7z .gz .tgz .tar .bz2 "
    ".mp3 .mp4 .m4a .wav .avi .mov .wmv .flv .mkv .exe .msi .apk .dmg .iso .bin .doc .xls .xlsx .ppt .pptx .wps .et "
    ".swf .woff .woff2 .ttf .eot .caj .epub".split()
)
HTML_MIMES = {"text/html", "application/xhtml+xml", ""}
PDF_MIMES = {"application/pdf", "application/x-pdf"}
DOCX_MIMES = {"application/vnd.openxmlformats-officedocument.wordprocessingml.document"}
_INDEX_RE = re.compile(r"/(?:index|default)\.(?:html?|shtml|php|jsp|aspx?)$", re.IGNORECASE)
_EXTRA_TRACKERS = re.compile(r"^(?:spm|from|share_token|_hsenc|_hsmi|mc_cid|mc_eid|wfr|isappinstalled)$", re.I)
_UNSAFE_NAME = re.compile(r"[^\w.\-]+", re.UNICODE)


# ---- configuration ------------------------------------------------------------------------------------------------


def validate_start_url(url: str) -> str:
    """The start URL, trimmed, or a UserError saying how to write it."""
    url = (url or "").strip()
    if not url:
        raise UserError(
            "No start URL given; enter the address of the site's home page, e.g. https://www.example.edu.cn/.",
            zh="没有填写起始网址；请输入网站首页的地址，例如 https://www.example.edu.cn/。",
        )
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        if "://" not in url and "." in url.split("/")[0]:
            raise UserError(
                f"'{url}' has no http:// or https:// in front; write it as https://{url} (or http://).",
                zh=f"“{url}”前面缺少 http:// 或 https://；请写成 `https://{url}`（或 `http://{url}`）。",
            )
        raise UserError(
            f"'{url}' is not a web address; write it as https://host/path, e.g. https://www.example.edu.cn/.",
            zh=f"“{url}”不是网址；请写成 https://主机/路径，例如 `https://www.example.edu.cn/`。",
        )
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise UserError(
            f"'{url}' has an invalid port number; check the address.", zh=f"“{url}”的端口号无效；请检查地址。"
        ) from None
    if " " in parts.netloc:
        raise UserError(
            f"'{url}' contains a space in the host name; check the address.",
            zh=f"“{url}”的主机名里有空格；请检查地址。",
        )
    return url


def compile_patterns(patterns: list[str] | tuple[str, ...], flag: str) -> list[re.Pattern]:
    compiled = []
    for p in patterns or ():
        try:
            compiled.append(re.compile(p))
        except re.error as exc:
            raise UserError(
                f"{flag} pattern '{p}' is not a valid regular expression ({exc}); fix or remove it.",
                zh=f"{flag} 规则“{p}”不是有效的正则表达式（{exc}）；请修改或删除。",
            ) from None
    return compiled


# ---- settings: each declared once (schema.py), read by the CLI, the settings YAML, the page and CrawlConfig ------


@dataclass
class CrawlSettings:
    """The crawl step's settings as the user gives them (``umtcds crawl`` flags, a settings YAML, the Crawl page)."""

    start_url: str | None = optional_text(
        ("起始网址", "Start URL"),
        "start page, e.g. https://www.example.edu.cn/ (the URL argument)",
        help=(
            "学校网站首页或某个栏目页，需以 http:// 或 https:// 开头。",
            "The site's home or a section page, with http(s)://.",
        ),
        flag="",
        widget="text",
    )
    out_dir: str | None = optional_text(
        ("输出文件夹", "Output folder"),
        "folder for the .txt files and manifest.jsonl",
        flag="--out",
        widget="hidden",
    )
    depth: int = setting(
        1,
        ("深度（链接跳数）", "Depth (link hops)"),
        "link hops from the start page; 0 = the start page only, each hop can multiply the pages",
        help=("0 = 只取起始页；1 = 起始页及其直接链接。", "0 = only the start page; 1 = it and the pages it links to."),
        min=0,
        typical=(0, 5),
        range_msg=("must be 0 or more (0 = only the start page)", "必须大于或等于 0（0 表示只爬起始页）"),
    )
    max_pages: int = setting(
        500,
        ("最多页数", "Max pages"),
        "hard cap on pages saved in the folder (earlier runs included)",
        help=("文件夹里最多保存的页面数（包括以前爬取的）。", "Most pages kept in the folder, earlier runs included."),
        min=1,
        range_msg=("must be at least 1", "至少为 1"),
    )
    concurrency: int = setting(
        4,
        ("并发数", "Concurrency"),
        "parallel requests; more: faster, harder on the server (the delay still paces each host)",
        help=("同时进行的请求数；4 对学校服务器比较友好。", "Parallel requests; 4 is kind to a campus server."),
        min=1,
        max=32,
        range_msg=(
            "must be between 1 and 32; 4 is kind to a campus server",
            "必须在 1 到 32 之间；设为 4 对学校的服务器比较友好",
        ),
    )
    delay: float = setting(
        0.5,
        ("请求间隔（秒）", "Delay (seconds)"),
        "minimum seconds between requests to one host; robots.txt Crawl-delay wins if larger",
        help=(
            "同一主机两次请求之间的最短间隔；robots.txt 的 Crawl-delay 更大时以其为准。",
            "Minimum gap between requests to one host; robots.txt Crawl-delay wins when larger.",
        ),
        min=0,
        step=0.1,
        range_msg=(
            "cannot be negative; use 0 for no pause between requests",
            "不能为负数；如果请求之间不需要停顿，请设为 0",
        ),
    )
    respect_robots: bool = setting(
        True,
        ("遵守 robots.txt", "Respect robots.txt"),
        "false only with the site owner's permission (the flag is --ignore-robots)",
        flag="",
    )
    include: list[str] | None = setting(
        None,
        ("只跟随匹配的链接（正则，每行一个）", "Follow only links matching (regex, one per line)"),
        "follow only links matching one of these regular expressions; null = every same-site link",
        kind=list,
        nullable=True,
        flag="",
        example='["/info/", "/tzgg/"]',
    )
    exclude: list[str] | None = setting(
        None,
        ("不跟随匹配的链接（正则，每行一个）", "Never follow links matching (regex, one per line)"),
        "never follow links matching one of these regular expressions",
        kind=list,
        nullable=True,
        flag="",
        example='["/en/"]',
    )
    subdomains: bool = setting(
        False,
        ("包含子域名（如 jwc.xxx.edu.cn）", "Include subdomains (e.g. jwc.xxx.edu.cn)"),
        "also crawl other hosts of the same domain (jwc.x.edu.cn)",
    )
    attachments: bool = setting(
        False,
        ("提取 PDF / Word 附件", "Extract PDF / Word attachments"),
        "also extract linked PDF and DOCX files",
    )
    user_agent: str = setting(
        DEFAULT_USER_AGENT,
        ("User-Agent", "User-Agent"),
        "User-Agent header (also used for robots.txt)",
        widget="text",
    )
    timeout: float = setting(
        DEFAULT_TIMEOUT,
        ("超时（秒）", "Timeout (s)"),
        "seconds per request; raise it for a slow server",
        min=0,
        min_open=True,
        step=1.0,
        range_msg=("must be a positive number of seconds", "必须是大于 0 的秒数"),
    )
    max_mb: float = setting(
        DEFAULT_MAX_BYTES / 1024 / 1024,
        ("单个文件上限（MB）", "Largest file (MB)"),
        "skip responses larger than this many MB",
        min=0,
        min_open=True,
        step=1.0,
        range_msg=("must be a positive number of MB", "必须是大于 0 的 MB 数"),
    )
    sitemap: bool = setting(
        True,
        ("读取站点地图（sitemap）", "Read sitemaps"),
        "seed the crawl with the URLs of robots.txt Sitemap: lines and /sitemap.xml (as depth 1, same scope rules)",
        help=(
            "站点地图里的网址算作第 1 层，同样遵守范围、包含/排除和 robots.txt 规则。",
            "Sitemap URLs count as depth 1 and obey the scope, include/exclude and robots.txt rules.",
        ),
    )
    refresh: bool = setting(
        False,
        ("刷新：重新检查已爬取的网页", "Refresh: re-check the pages crawled before"),
        "re-visit an earlier crawl in this folder with conditional requests; each row says new/changed/unchanged/removed",
        help=(
            "用条件请求（ETag / Last-Modified）重新访问上次爬取的网页，标记新增、修改、未变和已删除的网页；"
            "删除的网页移到 removed/ 文件夹。",
            "Re-visits the earlier crawl with conditional requests (ETag / Last-Modified) and marks pages new, "
            "changed, unchanged or removed; removed pages move to removed/.",
        ),
    )
    render: str = setting(
        "never",
        ("用浏览器渲染网页", "Render pages in a browser"),
        "never: the HTML as served; auto: pages with scripts and little text (app shells) are rendered in headless "
        "Chromium; always: every HTML page (slow)",
        help=(
            "有些网页的正文由 JavaScript 写入。自动：只渲染带脚本且几乎没有正文的网页；总是：渲染每个网页（慢）。"
            "需要 Chromium：`python -m playwright install chromium`。",
            "Some pages write their text with JavaScript. auto: only pages with scripts and almost no text; "
            "always: every page (slow). Needs Chromium: `python -m playwright install chromium`.",
        ),
        choices=("never", "auto", "always"),
        choice_labels={"never": ("从不", "never"), "auto": ("自动", "auto"), "always": ("总是", "always")},
        widget="radio",
    )
    render_concurrency: int = setting(
        2,
        ("同时渲染的网页数", "Pages rendered at once"),
        "pages open in the one browser at the same time; each takes memory (~100 MB) and a share of a core",
        min=1,
        max=8,
        range_msg=("must be between 1 and 8", "必须在 1 到 8 之间"),
        show=lambda v: v.get("render", "never") != "never",
    )
    render_timeout: float = setting(
        20.0,
        ("单页渲染超时（秒）", "Render timeout per page (s)"),
        "seconds a page may take in the browser; what has rendered by then is kept",
        min=0,
        min_open=True,
        step=1.0,
        range_msg=("must be a positive number of seconds", "必须是大于 0 的秒数"),
        show=lambda v: v.get("render", "never") != "never",
    )


CRAWL = S.from_dataclass(
    CrawlSettings, "crawl", title="UMTCDS crawl settings — written by the Crawl page; run with `umtcds crawl --config`"
)
"""The crawl step's schema: the CLI flags, the settings YAML, the page's labels and :class:`CrawlConfig`'s checks."""


@dataclass
class CrawlConfig:
    """What a crawl runs with: :class:`CrawlSettings` resolved (a Path, compiled patterns, bytes); defaults from it."""

    start_url: str
    out_dir: Path
    depth: int = CRAWL["depth"].default
    max_pages: int = CRAWL["max_pages"].default
    concurrency: int = CRAWL["concurrency"].default
    delay: float = CRAWL["delay"].default
    respect_robots: bool = CRAWL["respect_robots"].default
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    subdomains: bool = CRAWL["subdomains"].default
    attachments: bool = CRAWL["attachments"].default
    user_agent: str = CRAWL["user_agent"].default
    timeout: float = CRAWL["timeout"].default
    max_bytes: int = DEFAULT_MAX_BYTES
    sitemap: bool = CRAWL["sitemap"].default
    refresh: bool = CRAWL["refresh"].default
    render: str = CRAWL["render"].default
    render_concurrency: int = CRAWL["render_concurrency"].default
    render_timeout: float = CRAWL["render_timeout"].default

    def __post_init__(self) -> None:
        self.start_url = validate_start_url(self.start_url)
        self.out_dir = Path(self.out_dir)
        for name in (
            "depth",
            "max_pages",
            "concurrency",
            "delay",
            "timeout",
            "render",
            "render_concurrency",
            "render_timeout",
        ):
            S.check_value(CRAWL, name, getattr(self, name))
        if not self.user_agent.strip():
            raise UserError(
                "--user-agent cannot be empty; leave it out to use the default.",
                zh="--user-agent 不能为空；不填写即可使用默认值。",
            )
        self.include_re = compile_patterns(self.include, "--include")
        self.exclude_re = compile_patterns(self.exclude, "--exclude")

    @classmethod
    def from_settings(cls, values: dict) -> CrawlConfig:
        """The config of validated :data:`CRAWL` values (the start URL is checked here, with its own sentences)."""
        if not values.get("out_dir"):
            raise UserError(
                "No output folder: give --out DIR (or out_dir in the settings file).",
                zh="没有输出文件夹：请用 --out DIR 指定（或在设置文件中写 out_dir）。",
            )
        return cls(
            start_url=values.get("start_url") or "",
            out_dir=Path(values["out_dir"]),
            depth=values["depth"],
            max_pages=values["max_pages"],
            concurrency=values["concurrency"],
            delay=float(values["delay"]),
            respect_robots=values["respect_robots"],
            include=list(values.get("include") or []),
            exclude=list(values.get("exclude") or []),
            subdomains=values["subdomains"],
            attachments=values["attachments"],
            user_agent=values["user_agent"],
            timeout=float(values["timeout"]),
            max_bytes=int(values["max_mb"] * 1024 * 1024),
            sitemap=values["sitemap"],
            refresh=values["refresh"],
            render=values["render"],
            render_concurrency=values["render_concurrency"],
            render_timeout=float(values["render_timeout"]),
        )


# ---- URLs -----------------------------------------------------------------------------------------------------------


def clean_url(url: str) -> str:
    """The URL we request: no fragment, no tracking parameters, lower-case host, query sorted (courlan)."""
    from courlan import normalize_url

    try:
        url = normalize_url(url)
    except (ValueError, AttributeError):
        pass
    parts = urlsplit(url)
    query = "&".join(
        kv for kv in parts.query.split("&") if kv and not _EXTRA_TRACKERS.match(unquote(kv.split("=", 1)[0]))
    )
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", query, ""))


def canonical(url: str) -> str:
    """The dedupe key of a URL: scheme-less, ``index.html`` and trailing slash removed, trackers dropped."""
    parts = urlsplit(clean_url(url))
    path = _INDEX_RE.sub("/", parts.path or "/")
    if len(path) > 1:
        path = path.rstrip("/") or "/"
    netloc = parts.netloc
    if parts.scheme == "http" and netloc.endswith(":80"):
        netloc = netloc[:-3]
    if parts.scheme == "https" and netloc.endswith(":443"):
        netloc = netloc[:-4]
    return "//" + netloc + path + ("?" + parts.query if parts.query else "")


def _encode_url(url: str, encoding: str | None) -> str:
    """Percent-encode a resolved href like a browser: path as UTF-8, query in the page's encoding (WHATWG)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if not netloc.isascii():
        try:
            host = parts.hostname.encode("idna").decode("ascii") if parts.hostname else ""
            netloc = host + (f":{parts.port}" if parts.port else "")
        except (UnicodeError, ValueError):
            pass
    path = quote(parts.path, safe="/%:@!$&'()*+,;=-._~")
    try:
        query = quote(parts.query, safe="=&%:@!$'()*+,;/?-._~", encoding=encoding or "utf-8", errors="strict")
    except (UnicodeEncodeError, LookupError):
        query = quote(parts.query, safe="=&%:@!$'()*+,;/?-._~")
    return urlunsplit((parts.scheme, netloc, path, query, parts.fragment))


_tld = None
_tld_lock = threading.Lock()


def registrable_domain(host: str) -> str:
    """``jwc.xxx.edu.cn`` → ``xxx.edu.cn``; IPs and single labels are their own domain. Offline (bundled list)."""
    global _tld
    with _tld_lock:
        if _tld is None:
            import tldextract

            _tld = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
    ext = _tld(host)
    return ext.top_domain_under_public_suffix or host


def _host_port(url: str) -> tuple[str, int | None]:
    parts = urlsplit(url)
    port = parts.port
    if (parts.scheme, port) in (("http", 80), ("https", 443)):
        port = None
    return (parts.hostname or "").lower().rstrip("."), port


class Scope:
    """Which URLs belong to the crawl: the start host (any scheme), or with ``subdomains`` its registrable domain."""

    def __init__(self, start_url: str, subdomains: bool = False):
        self.subdomains = subdomains
        host, port = _host_port(start_url)
        self.hosts = {(host, port)}
        self.domain = registrable_domain(host)
        self.port = port

    def add_host(self, url: str) -> None:
        self.hosts.add(_host_port(url))

    def same_domain(self, url: str) -> bool:
        host, port = _host_port(url)
        return port == self.port and registrable_domain(host) == self.domain

    def __call__(self, url: str) -> bool:
        if urlsplit(url).scheme not in ("http", "https"):
            return False
        if self.subdomains:
            return self.same_domain(url)
        return _host_port(url) in self.hosts


def _extension(url: str) -> str:
    name = urlsplit(url).path.rsplit("/", 1)[-1].lower()
    return "." + name.rsplit(".", 1)[-1] if "." in name else ""


def url_verdict(url: str, cfg: CrawlConfig, scope: Scope | None = None) -> str | None:
    """None when a link to ``url`` would be followed, else the reason it would not (robots.txt not consulted)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return "not a web address (only http/https links are followed)"
    if not (scope or Scope(cfg.start_url, cfg.subdomains))(url):
        return "off-site (outside the start URL's " + ("domain" if cfg.subdomains else "host") + ")"
    ext = _extension(url)
    if ext in ATTACHMENT_EXT and not cfg.attachments:
        return f"attachment ({ext}); enable attachments to extract PDF/DOCX files"
    if ext in SKIP_EXT:
        return f"file type {ext} is never fetched"
    for rx in cfg.exclude_re:
        if rx.search(url):
            return f"matches exclude pattern {rx.pattern}"
    if cfg.include_re and not any(rx.search(url) for rx in cfg.include_re):
        return "matches no include pattern"
    return None


def robots_verdict(url: str, cfg: CrawlConfig) -> str | None:
    """None when the site's robots.txt lets this crawler fetch ``url`` (or robots.txt is off), else the reason.

    Why a separate check: :func:`url_verdict` is offline (it answers as you type); this one reads robots.txt, so a
    URL tester does not promise to follow a page the crawl will then skip."""
    if not cfg.respect_robots:
        return None
    fetcher = Fetcher(user_agent=cfg.user_agent, timeout=cfg.timeout, delay=0, retries=0)
    try:
        if fetcher.allowed(url):
            return None
        note = fetcher.robots_note(url)
        return "blocked by robots.txt" + (f" ({note})" if note else "")
    finally:
        fetcher.close()


_XML_DECL = re.compile(r"^\s*<\?xml[^>]*\?>", re.IGNORECASE)
_REFRESH_URL = re.compile(r"url\s*=\s*['\"]?([^'\";]+)", re.IGNORECASE)


def extract_links(html: str, base_url: str, encoding: str | None = None, same_page_only: bool = False) -> list[str]:
    """Absolute http(s) links of a page (a, area, frame, iframe, meta refresh), in document order, unique.

    ``same_page_only``: only the targets that are part of this page rather than links away from it — a
    ``<meta http-equiv=refresh>`` (old campus home pages are often just a refresh to ``main.htm``) and ``<frame>``
    sources. The crawler gives those the page's own depth, like a redirect.
    """
    import lxml.html
    from lxml import etree

    try:
        doc = lxml.html.document_fromstring(_XML_DECL.sub("", html, count=1))
    except (etree.ParserError, ValueError):
        return []
    base = base_url
    for href in doc.xpath("//base/@href"):
        base = urljoin(base_url, href.strip())
        break
    xpath = "//frame/@src" if same_page_only else "//a/@href | //area/@href | //frame/@src | //iframe/@src"
    raw = doc.xpath(xpath)
    for content in doc.xpath("//meta[translate(@http-equiv,'REFSH','refsh')='refresh']/@content"):
        m = _REFRESH_URL.search(content)
        if m:
            raw.append(m.group(1))
    seen, links = set(), []
    for href in raw:
        href = str(href).strip()
        if not href or href.startswith("#"):
            continue
        scheme = href.split(":", 1)[0].lower() if ":" in href.split("/", 1)[0] else ""
        if scheme and scheme not in ("http", "https"):
            continue  # mailto:, tel:, javascript:, data:, ftp:
        try:
            absolute = _encode_url(urljoin(base, href), encoding)
        except ValueError:
            continue
        if urlsplit(absolute).scheme not in ("http", "https"):
            continue
        if absolute not in seen:
            seen.add(absolute)
            links.append(absolute)
    return links


def safe_filename(url: str, taken: set[str], suffix: str = ".txt") -> str:
    """A readable, unique file name from a URL: ``host_path_segments[_query].txt`` (Chinese kept, no separators)."""
    parts = urlsplit(url)
    host = (parts.hostname or "page") + (f"_{parts.port}" if parts.port else "")
    path = unquote(parts.path)
    path = re.sub(r"\.(?:s?html?|php|aspx?|jspx?)$", "", path, flags=re.IGNORECASE)
    pieces = [host] + [p for p in path.split("/") if p]
    if parts.query:
        pieces.append(unquote(parts.query))
    name = _UNSAFE_NAME.sub("_", "_".join(pieces)).strip("._") or "page"
    digest = hashlib.sha1(url.encode("utf-8")).hexdigest()[:8]
    if len(name) > 100:
        name = name[:100].rstrip("._") + "-" + digest
    candidate = name + suffix
    if candidate.lower() in taken:
        candidate = f"{name}-{digest}{suffix}"
    n = 2
    while candidate.lower() in taken:
        candidate = f"{name}-{digest}-{n}{suffix}"
        n += 1
    taken.add(candidate.lower())
    return candidate


def text_fingerprint(text: str) -> str:
    return hashlib.sha1(re.sub(r"\s+", "", text).encode("utf-8")).hexdigest()


# ---- sitemaps -------------------------------------------------------------------------------------------------------

MAX_SITEMAP_FILES = 50  # sitemap files (indexes and their children) read per crawl
MAX_SITEMAP_URLS = 20_000  # page URLs taken from them; --max-pages caps what is saved anyway


def _sitemap_client(fetcher: Fetcher, scope):
    """A ``usp`` web client that fetches through our :class:`Fetcher`: robots.txt, pacing, size cap and the crawl's
    scope apply to sitemap files as to pages (usp's own client would ignore all four)."""
    from usp.web_client.abstract_client import (
        AbstractWebClient,
        AbstractWebClientSuccessResponse,
        WebClientErrorResponse,
    )

    class Response(AbstractWebClientSuccessResponse):
        def __init__(self, res: FetchResult):
            self.res = res

        def status_code(self) -> int:
            return self.res.status or 200

        def status_message(self) -> str:
            return "OK"

        def header(self, case_insensitive_name: str) -> str | None:
            if case_insensitive_name.lower() == "content-type":
                return self.res.content_type or None
            return None  # usp also asks for Content-Encoding; requests has already decoded the body

        def raw_data(self) -> bytes:
            return self.res.body

        def url(self) -> str:
            return self.res.final_url

    class Client(AbstractWebClient):
        def __init__(self):
            self.files = 0

        def set_max_response_data_length(self, max_response_data_length: int | None) -> None:
            pass  # the fetcher's own --max-mb cap applies

        def get(self, url: str):
            if not scope(url):
                return WebClientErrorResponse(f"{url} is outside the crawl's scope", retryable=False)
            if self.files >= MAX_SITEMAP_FILES:
                return WebClientErrorResponse(f"more than {MAX_SITEMAP_FILES} sitemap files", retryable=False)
            self.files += 1
            res = fetcher.get(url, scope=scope)
            if res.error or not res.ok:
                return WebClientErrorResponse(res.error or f"HTTP {res.status}", retryable=False)
            return Response(res)

    return Client()


def read_sitemaps(fetcher: Fetcher, base_url: str, scope, log=None) -> dict[str, float | None]:
    """``{page URL: lastmod (epoch seconds) or None}`` from the ``Sitemap:`` lines of ``base_url``'s robots.txt and
    its ``/sitemap.xml`` (indexes followed), parsed by ``ultimate-sitemap-parser``; never raises.

    Why a parser library: sitemap indexes, gzip, plain-text and RSS/Atom sitemaps, and lenient XML are all in the
    wild on campus sites, and ``usp`` handles each; we only supply the polite fetching."""
    import logging

    from usp.fetch_parse import SitemapFetcher

    logging.getLogger("usp").setLevel(logging.ERROR)  # its per-file notes would interleave with our log lines
    origin = f"{urlsplit(base_url).scheme}://{urlsplit(base_url).netloc}"
    rules = fetcher.robots(base_url)
    roots = [str(u).strip() for u in (rules.sitemaps if rules is not None else [])]
    roots = list(dict.fromkeys([*roots, origin + "/sitemap.xml"]))
    client = _sitemap_client(fetcher, scope)
    found: dict[str, float | None] = {}
    for root in roots:
        try:
            tree = SitemapFetcher(root, recursion_level=0, web_client=client, quiet_404=True).sitemap()
            for page in tree.all_pages():
                if len(found) >= MAX_SITEMAP_URLS:
                    break
                lastmod = page.last_modified.timestamp() if page.last_modified is not None else None
                found.setdefault(page.url, lastmod)
        except Exception as exc:  # noqa: BLE001 - a broken sitemap must not stop the crawl
            if log:
                log(f"[sitemap] {root}: {type(exc).__name__}: {exc}"[:300])
    if log and found:
        log(f"[sitemap] {len(found)} URLs from {', '.join(roots)}")
    return found


# ---- the crawl ------------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a worker thread hands back to the main thread (which alone touches files and state)."""

    url: str
    depth: int
    res: FetchResult
    page: object | None = None  # PageText
    links: list[str] = field(default_factory=list)
    same_depth: list[str] = field(default_factory=list)  # meta refresh / frame targets
    error: str | None = None
    error_kind: str | None = None
    kind: str | None = None
    encoding: str | None = None
    not_modified: str | None = None  # refresh: "304" (the server said so) or "lastmod" (the sitemap did; no request)
    rendered: bool = False  # the text comes from the DOM after the page's scripts ran (--render)
    render_error: str | None = None


CHANGES = ("new", "changed", "unchanged", "removed")
"""A refresh run's ``change`` values: about the text kept in DIR for a URL, so downstream steps know what to redo.
``new``: saved now, not before; ``changed``: saved before, different text now; ``unchanged``: the same text (a 304,
a sitemap ``lastmod`` older than the last visit, an equal content hash, or a failed request that keeps the earlier
copy), or no text before or now (a link that was and is broken); ``removed``: saved before, now gone (4xx, no text
left, or a duplicate of another page) — its file is moved to ``DIR/removed/``."""
REMOVED_DIR = "removed"


@dataclass
class CrawlSummary:
    saved: int = 0
    robots: int = 0
    duplicates: int = 0
    errors: int = 0
    tried: int = 0
    saved_before: int = 0
    stopped_at_cap: bool = False
    start_outcome: Outcome | None = None
    refresh: bool = False
    changes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHANGES, 0))
    """Refresh: pages per ``change`` value (unchanged counts pages with text only)."""
    not_modified: int = 0  # refresh: pages confirmed unchanged by a 304
    sitemap_urls: int = 0
    rendered: int = 0  # pages whose text came from the browser (--render)


class _ConditionalFetcher(Fetcher):
    """The fetcher with validators: a URL saved by the previous run is asked for with ``If-None-Match`` /
    ``If-Modified-Since``, so an unchanged page costs a 304 and no body."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.validators: dict[str, dict[str, str]] = {}  # canonical URL -> {"ETag": …, "Last-Modified": …}

    def request_headers(self, url: str) -> dict[str, str]:
        v = self.validators.get(canonical(url)) or {}
        headers = {}
        if v.get("ETag"):
            headers["If-None-Match"] = v["ETag"]
        if v.get("Last-Modified"):
            headers["If-Modified-Since"] = v["Last-Modified"]
        return headers


class Crawler:
    """``Crawler(cfg).run()`` — BFS over the site; the main thread owns the frontier, files and state."""

    def __init__(self, cfg: CrawlConfig, log=None, progress=None):
        self.cfg = cfg
        self.out = cfg.out_dir
        self.log = log or (lambda msg: None)
        self.progress = progress
        self.scope = Scope(cfg.start_url, cfg.subdomains)
        self.fetcher = _ConditionalFetcher(
            user_agent=cfg.user_agent,
            timeout=cfg.timeout,
            max_bytes=cfg.max_bytes,
            delay=cfg.delay,
            respect_robots=cfg.respect_robots,
            pool_size=max(4, cfg.concurrency * 2),
        )
        self.summary = CrawlSummary()
        self.done: dict[str, dict] = {}  # canonical key -> last state record
        self.hashes: dict[str, str] = {}  # text fingerprint -> url of the saved page
        self.taken: set[str] = set()
        self.queued: set[str] = set()
        self.queue: list[tuple[str, int]] = []
        self.prev: dict[str, dict] = {}  # refresh: canonical key -> the previous run's record of a saved page
        self.lastmod: dict[str, float] = {}  # canonical key -> the sitemap's lastmod (epoch seconds)
        self.run_id = datetime.now().astimezone().isoformat(timespec="microseconds")  # tells runs apart in the manifest
        self.summary.refresh = cfg.refresh
        self._sitemaps_read = False
        self.claimed: set[str] = set()  # files a row of this run points at
        self._prev_start: str | None = None  # refresh: where the previous run's start page ended up
        self.renderer = None  # render.Renderer while a --render auto/always crawl runs

    # ---- state ---------------------------------------------------------------------------------------------------
    def _prepare_dir(self) -> None:
        if self.out.exists() and not self.out.is_dir():
            raise UserError(
                f"{self.out} is a file, not a folder; choose another --out.",
                zh=f"{self.out} 是一个文件，不是文件夹；请换一个 --out。",
            )
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"Cannot create the output folder {self.out} ({exc.strerror}); choose another --out.",
                zh=f"无法创建输出文件夹 {self.out}（{exc.strerror}）；请换一个 --out。",
            ) from None
        self.taken = {p.name.lower() for p in self.out.glob("*.txt")}
        self._lock_file = open(self.out / LOCK, "a")  # noqa: SIM115 - held for the whole crawl, closed in run()
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            raise UserError(
                f"Another crawl is already writing into {self.out}; wait for it to finish or stop it first.",
                zh=f"另一个爬取任务正在写入 {self.out}；请等它结束，或先停止它。",
            ) from None

    def _load_state(self) -> list[tuple[str, int]]:
        """Replay the journal: what is done, and the frontier it implies (links of done pages not yet done)."""
        path = self.out / STATE
        records = list(iter_jsonl(path, errors=[])) if path.exists() else []
        self._sitemaps_read = any(rec.get("sitemap") for rec in records)  # read once; the journal keeps the URLs
        if self.cfg.refresh:
            return self._load_for_refresh(records)
        for rec in records:
            for key in rec.get("keys", []):
                self.done[key] = rec
            if rec.get("path") and rec.get("sha"):
                self.hashes.setdefault(rec["sha"], rec.get("url", ""))
        saved_paths = {rec["path"] for rec in self.done.values() if rec.get("path")}
        self.summary.saved_before = sum(1 for p in saved_paths if (self.out / p).exists())
        frontier: list[tuple[str, int]] = []
        start_key = canonical(self.cfg.start_url)
        if start_key not in self.done or self.done[start_key].get("retry"):
            frontier.append((self.cfg.start_url, 0))
        for rec in records:
            if rec.get("final_url") and not rec.get("error") and rec.get("depth", 0) == 0:
                self.scope.add_host(rec["final_url"])  # the start page's redirect target host (www. etc.)
        for rec in records:
            if rec.get("retry") and self.done.get(rec["keys"][0]) is rec:
                frontier.append((rec["url"], rec.get("depth", 0)))
            depth = rec.get("depth", 0)
            same = rec.get("same_depth", [])
            frontier.extend((clean_url(u), depth) for u in same if url_verdict(u, self.cfg, self.scope) is None)
            frontier.extend(self._follow(rec.get("links", []), depth))
        frontier.sort(key=lambda item: item[1])  # breadth first across both runs
        return frontier

    def _load_for_refresh(self, records: list[dict]) -> list[tuple[str, int]]:
        """Refresh: nothing counts as done; every page saved before is queued again at its depth, with its validators,
        hash and links remembered, so it can be answered by a 304 and compared."""
        self._sitemaps_read = False  # a refresh reads the sitemaps again (new URLs, new lastmod dates)
        latest: dict[str, dict] = {}
        for rec in records:
            for key in rec.get("keys", []):
                latest[key] = rec
            if rec.get("final_url") and not rec.get("error") and rec.get("depth", 0) == 0:
                self.scope.add_host(rec["final_url"])
                self._prev_start = rec["final_url"]
        frontier: list[tuple[str, int]] = [(self.cfg.start_url, 0)]
        seen: set[int] = set()
        for rec in latest.values():
            if id(rec) in seen or not rec.get("path") or not (self.out / rec["path"]).exists():
                continue  # a file deleted by hand has nothing to compare with: the page comes back as new
            seen.add(id(rec))
            for k in rec["keys"]:
                self.prev[k] = rec
                if rec.get("validators"):
                    self.fetcher.validators[k] = rec["validators"]
            if rec.get("sha"):
                self.hashes[rec["sha"]] = rec.get("final_url") or rec.get("url", "")
            url = clean_url(rec["url"])  # as first asked: a redirect's source and target are then fetched once
            if url_verdict(url, self.cfg, self.scope) is None:
                frontier.append((url, rec.get("depth", 0)))
        frontier.sort(key=lambda item: item[1])
        return frontier

    def _follow(self, links: list[str], depth: int) -> list[tuple[str, int]]:
        out = []
        for link in links:
            next_depth = depth + 1
            is_attachment = _extension(link) in ATTACHMENT_EXT
            limit = self.cfg.depth + (1 if is_attachment else 0)
            if next_depth > limit or (is_attachment and depth > self.cfg.depth):
                continue
            if url_verdict(link, self.cfg, self.scope) is not None:
                continue
            out.append((clean_url(link), next_depth))
        return out

    def _enqueue(self, items: list[tuple[str, int]]) -> None:
        for url, depth in items:
            key = canonical(url)
            if key in self.queued or (key in self.done and not self.done[key].get("retry")):
                continue
            self.queued.add(key)
            self.queue.append((url, depth))

    # ---- worker --------------------------------------------------------------------------------------------------
    def _lastmod_unchanged(self, url: str, prev: dict) -> bool:
        """The sitemap dates this URL no later than our last visit: skip the request (refresh only)."""
        lastmod, fetched = self.lastmod.get(canonical(url)), prev.get("fetched")
        return lastmod is not None and fetched is not None and lastmod <= fetched

    def _scope_for(self, depth: int):
        if depth == 0:
            # the start page may redirect within its registrable domain (example.edu.cn → www.example.edu.cn)
            return lambda u: self.scope(u) or self.scope.same_domain(u)
        return self.scope

    def _process(self, url: str, depth: int) -> Outcome:
        from .extract import extract_docx, extract_html, extract_pdf, extract_plain

        prev = self.prev.get(canonical(url))
        if prev is not None and self._lastmod_unchanged(url, prev):
            res = FetchResult(url, prev.get("final_url") or url)
            return Outcome(url, depth, res, not_modified="lastmod")
        res = self.fetcher.get(url, scope=self._scope_for(depth))
        out = Outcome(url, depth, res)
        if res.status == 304 and (prev is not None or canonical(res.final_url) in self.prev):
            out.not_modified = "304"
            return out
        if res.error:
            out.error, out.error_kind = res.error, res.error_kind
            return out
        mime, body, final = res.mime, res.body, res.final_url
        sniffed = sniff_binary(body)
        ext = _extension(final)
        try:
            if mime in PDF_MIMES or sniffed == "application/pdf":
                out.kind = "pdf"
                if not self.cfg.attachments:
                    out.error, out.error_kind = "not HTML (PDF); use --attachments to extract PDFs", "not-html"
                    return out
                out.page = extract_pdf(body, final)
            elif mime in DOCX_MIMES or (sniffed == "application/zip" and ext == ".docx"):
                out.kind = "docx"
                if not self.cfg.attachments:
                    out.error, out.error_kind = "not HTML (DOCX); use --attachments to extract Word files", "not-html"
                    return out
                out.page = extract_docx(body, final)
            elif sniffed:
                out.kind = "binary"
                out.error = f"binary content ({sniffed}) served as {mime or 'an unknown type'}; skipped"
                out.error_kind = "not-html"
                return out
            elif mime in HTML_MIMES or mime == "text/plain":
                decoded = decode_html(body, res.content_type)
                out.encoding = decoded.encoding
                if decoded.replaced and decoded.replaced > max(20, len(decoded.text) // 50):
                    out.error = f"undecodable text ({decoded.replaced} invalid characters); skipped"
                    out.error_kind = "not-html"
                    return out
                if mime == "text/plain":
                    out.kind = "text"
                    out.page = extract_plain(decoded.text, final, decoded.encoding, decoded.source)
                else:
                    out.kind = "html"
                    html, base = decoded.text, final
                    out.page = extract_html(html, final, decoded.encoding, decoded.source, replaced=decoded.replaced)
                    if self.renderer is not None and needs_render(self.cfg.render, html, len(out.page.text)):
                        html, base = self._render(out, html, base)
                    out.links = extract_links(html, base, decoded.encoding)
                    out.same_depth = extract_links(html, base, decoded.encoding, same_page_only=True)
            else:
                out.kind = "other"
                out.error, out.error_kind = f"not HTML ({mime})", "not-html"
                return out
        except Exception as exc:  # noqa: BLE001 - a broken document is one page's error, not the crawl's
            out.error, out.error_kind = f"could not extract text ({type(exc).__name__}: {exc})"[:300], "extract"
            return out
        if out.page is None or not out.page.text.strip():
            out.error, out.error_kind = "no text extracted", "empty"
        return out

    def _render(self, out: Outcome, html: str, base: str) -> tuple[str, str]:
        """Load the fetched page in the browser (worker thread); keep the rendered text when it has any. Returns the
        HTML and base URL links are read from (the rendered DOM: menus written by scripts are links too)."""
        from .extract import extract_html

        res = out.res
        shown = self.renderer.render(res.final_url, res.body, res.content_type)
        out.render_error = shown.error
        if not shown.html:
            return html, base
        page = extract_html(shown.html, res.final_url, out.encoding, "browser")
        if not page.text.strip() and out.page is not None and out.page.text.strip():
            return html, base  # the script emptied the page (an error screen): the served text is better than none
        out.page, out.rendered = page, True
        where = shown.final_url if self.scope(shown.final_url) else base
        return shown.html, where

    def _render_vet(self, url: str) -> str | None:
        """Why the browser may not request ``url`` (None: it may). The site's own hosts — the crawl's scope or its
        registrable domain, where campus sites keep their API and static hosts — are allowed; everything else is a
        third party (analytics, CDNs, ads) and never contacted. robots.txt applies as to any page."""
        if not (self.scope(url) or self.scope.same_domain(url)):
            return "off-site"
        if not self.fetcher.allowed(url):
            return "blocked by robots.txt"
        return None

    def _start_renderer(self) -> None:
        """Launch the one browser before any page is fetched, so a missing browser stops the crawl at once."""
        if self.cfg.render == "never":
            return
        from .render import Renderer

        self.renderer = Renderer(
            self.cfg.render,
            vet=self._render_vet,
            pace=self.fetcher.pace,
            concurrency=self.cfg.render_concurrency,
            timeout=self.cfg.render_timeout,
            user_agent=self.cfg.user_agent,
        ).start()
        where = self.renderer.executable or "Playwright's Chromium"
        self.log(f"[render] {self.cfg.render}: {where}, {self.cfg.render_concurrency} pages at once")

    # ---- main thread ---------------------------------------------------------------------------------------------
    def _record(self, out: Outcome) -> None:
        res = out.res
        key, final_key = canonical(out.url), canonical(res.final_url)
        prev = self.prev.get(key) or self.prev.get(final_key)  # refresh: the earlier saved page of this URL
        record = {
            "url": out.url,
            "final_url": res.final_url,
            "status": res.status,
            "path": None,
            "title": out.page.title if out.page is not None else None,
            "chars": 0,
            "error": out.error,
            "depth": out.depth,
            "bytes": len(res.body),
            "content_type": res.content_type or None,
            "kind": out.kind,
            "encoding": out.encoding,
            "extractor": out.page.extractor if out.page is not None else None,
            "duplicate_of": None,
            "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "run": self.run_id,
        }
        if self.cfg.render != "never":
            record["rendered"] = out.rendered
            if out.render_error:
                record["render_error"] = out.render_error
            self.summary.rendered += out.rendered
        sha = None
        counter = None
        change = "unchanged"
        links, same_depth = out.links, out.same_depth
        validators = res.validators
        if out.not_modified and prev is not None:
            self._keep_previous(record, prev)
            record["checked"] = out.not_modified
            sha, counter = prev.get("sha"), "saved"
            links, same_depth = prev.get("links", []), prev.get("same_depth", [])
            validators = validators or prev.get("validators") or {}
            self.summary.not_modified += out.not_modified == "304"
        elif out.error is None and final_key != key and final_key in self.done and self.done[final_key].get("path"):
            record["error"] = "duplicate (redirects to a page already saved)"
            record["duplicate_of"] = self.done[final_key].get("url")
            counter = "duplicates"
        elif out.error is None and out.page is not None:
            sha = text_fingerprint(out.page.text)
            holder = self.hashes.get(sha)
            if holder is not None and not self._same_page(holder, key, final_key, prev):
                record["error"] = "duplicate (same text as another page)"
                record["duplicate_of"] = holder
                counter = "duplicates"
            else:
                if prev is not None:
                    name = prev["path"]
                    change = "unchanged" if prev.get("sha") == sha else "changed"
                    record["checked"] = "hash"
                else:
                    name = safe_filename(res.final_url, self.taken)
                    change = "new"
                if change != "unchanged" or not (self.out / name).exists():
                    write_text_atomic(self.out / name, out.page.file_text())
                self.hashes[sha] = res.final_url
                record["path"], record["chars"] = name, out.page.chars
                counter = "saved"
        else:
            counter = "robots" if out.error_kind == "robots" else "errors"
        if prev is not None and record["path"] is None:
            if prev["path"] in self.claimed:
                pass  # the same page, saved this run under another of its URLs (a redirect's source and target)
            elif self._transient(out) and (self.out / prev["path"]).exists():
                self._keep_previous(record, prev)
                record["error"] = f"{record['error']}; the earlier copy is kept"
                sha = prev.get("sha")
                links, same_depth = prev.get("links", []), prev.get("same_depth", [])
                validators = prev.get("validators") or {}
            else:
                record["removed_to"] = self._move_to_removed(prev["path"])
                change = "removed"
        if record["path"]:
            self.claimed.add(record["path"])
        if self.cfg.refresh:
            record["change"] = change
            if change != "unchanged" or record["path"]:
                self.summary.changes[change] += 1
        record["chars"] = record["chars"] or 0
        retry = out.error_kind in ("timeout", "network", "retry-after") or (
            out.error_kind == "http" and (res.status or 0) >= 500
        )
        state = {
            "keys": sorted({key, final_key}) if out.error_kind != "offsite" else [key],
            "url": out.url,
            "final_url": res.final_url,
            "depth": out.depth,
            "path": record["path"],
            "sha": sha if record["path"] else None,
            "error": record["error"],
            "retry": retry and not record["path"],
            "links": links,
            "same_depth": same_depth,
            "title": record["title"],
            "chars": record["chars"],
            "validators": validators if record["path"] else {},
            "fetched": time.time(),
        }
        append_jsonl(self.out / MANIFEST, record)
        append_jsonl(self.out / STATE, state)
        for k in state["keys"]:
            self.done[k] = state
        setattr(self.summary, counter, getattr(self.summary, counter) + 1)
        self.summary.tried += 1
        if out.depth == 0 and self.summary.start_outcome is None:
            self.summary.start_outcome = out
            if out.error is None:
                self.scope.add_host(res.final_url)
                if self._sitemaps_due():
                    self._seed_sitemaps(res.final_url)
        self._enqueue([(clean_url(u), out.depth) for u in same_depth if url_verdict(u, self.cfg, self.scope) is None])
        self._enqueue(self._follow(links, out.depth))
        shown = record["path"] or record["error"]
        tag = f"{counter}, {change}" if self.cfg.refresh else counter
        self.log(f"[{tag}] {out.url} -> {shown}")

    # ---- refresh helpers (main thread) ---------------------------------------------------------------------------
    def _keep_previous(self, record: dict, prev: dict) -> None:
        """Fill a manifest row from the earlier copy of a page that was not downloaded again (304, lastmod, an error)."""
        record["path"] = prev["path"]
        record["title"] = prev.get("title")
        record["chars"] = prev.get("chars") or 0
        record["error"] = None
        if record["title"] is None or not record["chars"]:
            try:
                text = (self.out / prev["path"]).read_text(encoding="utf-8", errors="replace")
            except OSError:
                text = ""
            record["title"] = record["title"] or (text.splitlines()[0].strip() if text.strip() else None)
            record["chars"] = record["chars"] or len(text)

    def _same_page(self, holder: str, key: str, final_key: str, prev: dict | None) -> bool:
        """Whether the saved page holding a text hash is this URL itself (its earlier copy, or a redirect alias)."""
        hk = canonical(holder)
        return hk in (key, final_key) or (prev is not None and hk in prev.get("keys", ()))

    @staticmethod
    def _transient(out: Outcome) -> bool:
        """A failure that says nothing about the page (network, 5xx, robots, size): keep the earlier copy."""
        if out.error_kind in ("timeout", "network", "retry-after", "dns", "refused", "tls", "robots", "too-large"):
            return True
        status = out.res.status or 0
        return status >= 500 or status in (408, 429)

    def _move_to_removed(self, name: str) -> str | None:
        """Move a removed page's file to ``DIR/removed/`` (never deleted); its new path relative to DIR."""
        src = self.out / name
        if not src.exists():
            return None
        dest_dir = self.out / REMOVED_DIR
        dest_dir.mkdir(exist_ok=True)
        dest = dest_dir / name
        if dest.exists():
            dest = dest_dir / f"{src.stem}-{re.sub(r'[^0-9]', '', self.run_id)[:14]}{src.suffix}"
        os.replace(src, dest)
        return str(dest.relative_to(self.out))

    def _sitemaps_due(self) -> bool:
        return self.cfg.sitemap and self.cfg.depth >= 1 and not self._sitemaps_read

    def _seed_sitemaps(self, base_url: str) -> None:
        """Read the site's sitemaps once and queue their URLs as links of the start page (depth 1, every scope rule);
        the journal keeps them, so a resumed crawl continues them without reading the sitemaps again."""
        self._sitemaps_read = True
        found = read_sitemaps(self.fetcher, base_url, self.scope, log=self.log)
        self.summary.sitemap_urls = len(found)
        for url, lastmod in found.items():
            if lastmod is not None:
                self.lastmod[canonical(url)] = lastmod
        state = {"keys": [], "sitemap": True, "url": None, "depth": 0, "path": None, "links": list(found)}
        append_jsonl(self.out / STATE, state)
        self._enqueue(self._follow(list(found), 0))

    def _saved_total(self) -> int:
        return self.summary.saved_before + self.summary.saved

    def run(self) -> CrawlSummary:
        self._prepare_dir()
        try:
            self._start_renderer()
            return self._run()
        finally:
            if self.renderer is not None:
                self.renderer.close()
            self._lock_file.close()  # releases the flock

    def _run(self) -> CrawlSummary:
        self._enqueue(self._load_state())
        start = self.done.get(canonical(self.cfg.start_url))
        if self._sitemaps_due() and ((self.cfg.refresh and self.prev) or (start and not start.get("error"))):
            # refresh: before any page is fetched, so the sitemap's lastmod dates can spare requests; a resumed crawl
            # whose start page is done (read at depth 0 before): now. Otherwise once the start page is in (_record).
            self._seed_sitemaps(self._prev_start or (start or {}).get("final_url") or self.cfg.start_url)
        inflight: dict[Future, tuple[str, int]] = {}
        pool = ThreadPoolExecutor(max_workers=self.cfg.concurrency, thread_name_prefix="crawl")
        try:
            while self.queue or inflight:
                while self.queue and len(inflight) < self.cfg.concurrency:
                    if self._saved_total() + len(inflight) >= self.cfg.max_pages:
                        self.summary.stopped_at_cap = True
                        break
                    url, depth = self.queue.pop(0)
                    done = self.done.get(canonical(url))
                    if done is not None and not done.get("retry"):
                        continue  # became known meanwhile (the target of an earlier redirect)
                    inflight[pool.submit(self._process, url, depth)] = (url, depth)
                if not inflight:
                    break
                finished, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for fut in finished:
                    url, depth = inflight.pop(fut)
                    self._record(fut.result())
                    self.queued.discard(canonical(url))
                    self._report(len(inflight))
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        self.fetcher.close()
        if self.queue and self._saved_total() >= self.cfg.max_pages:
            self.summary.stopped_at_cap = True
        return self.summary

    def _report(self, inflight: int) -> None:
        if self.progress is None:
            return
        s = self.summary
        total = s.tried + len(self.queue) + inflight
        if self.progress.total != total:
            self.progress.set_total(total)
        self.progress.update(
            1,
            saved=s.saved,
            robots=s.robots,
            duplicates=s.duplicates,
            errors=s.errors,
            queue=len(self.queue),
        )


# ---- user-facing failure sentences ------------------------------------------------------------------------------


def failure_sentence(out: Outcome, cfg: CrawlConfig, robots_note: str | None = None) -> tuple[str, str]:
    """One sentence for a start page that gave nothing, saying what to do: (English, Chinese)."""
    url, res = out.url, out.res
    host = urlsplit(url).netloc
    kind = out.error_kind
    if kind == "dns":
        return (
            f"The host {host} could not be found; check the spelling of the address and the network connection.",
            f"找不到主机 {host}；请检查网址拼写和网络连接。",
        )
    if kind == "refused":
        return (
            f"Could not connect to {host} (connection refused); check the address and that the site is up.",
            f"无法连接到 {host}（连接被拒绝）；请检查网址，并确认网站正在运行。",
        )
    if kind == "tls":
        return (
            f"The TLS certificate of {host} could not be verified; check the address, or try http:// if the site has no valid HTTPS.",
            f"无法验证 {host} 的 TLS 证书；请检查网址，如果网站没有有效的 HTTPS，可以试试 http://。",
        )
    if kind == "timeout":
        return (
            f"{url} did not answer within {cfg.timeout:g} s; try again later or raise --timeout.",
            f"{url} 在 {cfg.timeout:g} 秒内没有响应；请稍后再试，或调大超时时间。",
        )
    if kind == "robots":
        why = f" ({robots_note})" if robots_note else ""
        return (
            f"robots.txt of {host} does not allow crawling {url}{why}; ask the site owner, "
            "or use --ignore-robots only with their permission.",
            f"{host} 的 robots.txt 不允许爬取 {url} 这个网址{why}；请联系网站管理者，只有在获得许可后才可忽略 robots.txt。",
        )
    if kind == "offsite":
        target = res.redirects[-1] if res.redirects else res.final_url
        return (
            f"{url} redirects to {target}, which is outside the site; start from {target} instead (or use --subdomains).",
            f"{url} 跳转到了站外的 {target} 这个网址；请改从 {target} 开始爬取（或允许子域名）。",
        )
    if kind == "http":
        return (
            f"The start page {url} answered HTTP {res.status}; check the address.",
            f"起始页 {url} 返回了 HTTP {res.status}；请检查网址。",
        )
    if kind == "not-html":
        return (
            f"The start page {url} is not a readable web page ({out.error}); give the address of an HTML page.",
            f"起始页 {url} 不是可读取的网页（{out.error}）；请给出一个 HTML 网页的地址。",
        )
    if kind == "too-large":
        return (
            f"The start page {url} is {out.error}; start from a normal web page.",
            f"起始页 {url} 过大（{out.error}）；请从普通网页开始。",
        )
    if kind == "empty":
        return (
            f"No text could be extracted from {url}; the page may be empty or built by JavaScript.",
            f"无法从 {url} 提取正文；页面可能是空的，或由 JavaScript 生成。",
        )
    return (
        f"Nothing could be crawled from {url}: {out.error}; check the address and try again.",
        f"无法从 {url} 爬取任何内容：{out.error}；请检查网址后重试。",
    )


def crawl(cfg: CrawlConfig, log=None, progress=None) -> CrawlSummary:
    """Run a crawl; raise UserError (one sentence) when it saved nothing and nothing was saved before."""
    crawler = Crawler(cfg, log=log, progress=progress)
    summary = crawler.run()
    if summary.saved == 0 and summary.saved_before == 0 and not summary.changes["removed"]:
        start = summary.start_outcome
        if start is not None and start.error:
            en, zh = failure_sentence(start, cfg, crawler.fetcher.robots_note(start.url))
            raise UserError(en, zh=zh)
        if start is not None:
            raise UserError(
                f"No page with text was found at {cfg.start_url} within depth {cfg.depth}; "
                "check --include/--exclude or raise --depth.",
                zh=f"在 {cfg.start_url} 的 {cfg.depth} 层链接内没有找到有正文的网页；请检查包含/排除规则，或加大爬取深度。",
            )
        raise UserError(
            f"Nothing to crawl at {cfg.start_url}; check the address.",
            zh=f"{cfg.start_url} 没有可爬取的内容；请检查网址。",
        )
    return summary


# ---- CLI ------------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The URL, ``--ignore-robots`` and the repeatable ``--include``/``--exclude`` by hand; every other flag (and
    ``--config``) from :data:`CRAWL`."""
    parser.add_argument(
        "start_url",
        metavar="URL",
        nargs="?",
        help="start page, e.g. https://www.example.edu.cn/ (may come from --config instead)",
    )
    parser.add_argument(
        "--ignore-robots",
        dest="respect_robots",
        action="store_const",
        const=False,
        default=None,
        help="do not read robots.txt — only with the site owner's permission",
    )
    for name, what in (("include", "follow only links matching"), ("exclude", "never follow links matching")):
        parser.add_argument(
            f"--{name}", dest=name, action="append", default=None, metavar="REGEX", help=f"{what} (repeatable)"
        )
    CRAWL.add_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no per-page lines, only the progress bar and summary")


def _sigterm_to_interrupt(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .progress import Progress

    cfg = CrawlConfig.from_settings(CRAWL.from_args(args))
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm_to_interrupt)  # a stopped job exits through the same path as Ctrl-C
    if not cfg.respect_robots:
        print("Warning: robots.txt is ignored; crawl only sites whose owner has given permission.", file=sys.stderr)

    def log(msg: str) -> None:
        if not args.quiet:
            tqdm.write(msg, file=sys.stderr)

    with Progress(None, unit="pages", desc="crawl") as progress:
        summary = crawl(cfg, log=log, progress=progress)
    parts = [f"{summary.robots} blocked by robots.txt", f"{summary.duplicates} duplicates", f"{summary.errors} errors"]
    if cfg.render != "never":
        parts.append(f"{summary.rendered} rendered in Chromium (--render {cfg.render})")
    before = f" ({summary.saved_before} from earlier runs kept)" if summary.saved_before else ""
    cap = f"; stopped at --max-pages {cfg.max_pages}" if summary.stopped_at_cap else ""
    if summary.refresh:
        c = summary.changes
        print(
            f"Refreshed {cfg.out_dir}: {c['new']} new, {c['changed']} changed, {c['unchanged']} unchanged, "
            f"{c['removed']} removed (moved to {REMOVED_DIR}/); {summary.not_modified} answered 304 Not Modified; "
            f"{', '.join(parts)}{cap}. Manifest: {cfg.out_dir / MANIFEST}"
        )
    elif summary.tried == 0:
        print(f"Nothing new to crawl; {summary.saved_before} pages already in {cfg.out_dir}{cap}.")
    else:
        print(
            f"Saved {summary.saved} pages to {cfg.out_dir}{before}; {', '.join(parts)}{cap}. "
            f"Manifest: {cfg.out_dir / MANIFEST}"
        )
    return 0
