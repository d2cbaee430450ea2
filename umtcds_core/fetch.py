"""Polite HTTP GET for the crawler: robots.txt, per-host pacing, timeouts, a size cap, retries, and the decode ladder.

Why we decode ourselves: many Chinese campus pages declare ``gb2312`` but use GBK-only characters (镕, 喆), and
``requests`` assumes ISO-8859-1 when the server sends no charset. Both end in mojibake unless the bytes are decoded
with the browser's rules before anything else sees them. :func:`decode_html` is that ladder:

    BOM → HTTP charset → <meta>/XML declaration → (gb2312/gbk read as gb18030) → strict decode
        → the declared codec again if it failed only on a few stray bytes (replaced, counted)
        → detection limited to plausible codecs (charset_normalizer) → UTF-8 with replacement (recorded)

:class:`Fetcher` is shared by the crawler's worker threads. Each host gets one cached robots.txt (protego, including
Crawl-delay) and a pacing slot so requests to one host start at least ``delay`` seconds apart, whatever the thread
count. Redirects are followed by hand, one hop at a time, so every hop is checked against robots.txt and the crawl's
scope before it is requested (an off-site redirect target is never contacted).
"""

from __future__ import annotations

import codecs
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import requests
from protego import Protego

from .retry import RetryPolicy, parse_retry_after
from .text import CJK_PUNCT, HAN

DEFAULT_USER_AGENT = "Mozilla/5.0 (compatible; UMTCDS-crawler/0.1; campus Q&A dataset builder)"
DEFAULT_TIMEOUT = 20.0
DEFAULT_MAX_BYTES = 15 * 1024 * 1024  # campus PDFs can be large; HTML pages are far smaller
RETRY_STATUSES = {429, 502, 503, 504}
MAX_RETRY_WAIT = 120.0  # a Retry-After longer than this is not worth waiting for inside one crawl
MAX_REDIRECTS = 5

# ---- the decode ladder ------------------------------------------------------------------------------------------

_BOMS = (  # UTF-32 before UTF-16: the UTF-32-LE BOM starts with the UTF-16-LE one
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# WHATWG maps these labels to a superset decoder; Python's own codecs are strict subsets and fail on real pages.
_LABEL_MAP = {
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "cp936": "gb18030",
    "ms936": "gb18030",
    "windows-936": "gb18030",
    "euc-cn": "gb18030",
    "hz-gb-2312": "gb18030",
    "gb_2312-80": "gb18030",
    "big5": "big5hkscs",
    "big5-hkscs": "big5hkscs",
    "iso-8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "us-ascii": "cp1252",
    "ascii": "cp1252",
    "windows-1252": "cp1252",
    "utf8": "utf-8",
    "unicode-1-1-utf-8": "utf-8",
}
# What a Chinese university site plausibly uses; detection outside this set is mostly noise on short, ASCII-heavy pages.
PLAUSIBLE_CODECS = ["utf_8", "gb18030", "big5hkscs", "cp1252"]

_META_RE = re.compile(
    rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_\-:.]+)""",
    re.IGNORECASE,
)
_XML_DECL_RE = re.compile(rb"""^\s*<\?xml[^>]+encoding\s*=\s*["']([A-Za-z0-9_\-.]+)""", re.IGNORECASE)
_CHARSET_RE = re.compile(r"""charset\s*=\s*["']?\s*([A-Za-z0-9_\-:.]+)""", re.IGNORECASE)


@dataclass
class Decoded:
    """A decoded document and how we got there (``source``: bom|http|meta|utf-8|detected|fallback)."""

    text: str
    encoding: str
    source: str
    replaced: int = 0  # U+FFFD characters introduced by the last-resort decode


def normalize_charset(label: str | None) -> str | None:
    """A declared charset label → the Python codec we decode it with, or None when Python knows no such codec."""
    if not label:
        return None
    label = label.strip().strip("\"'").lower()
    label = _LABEL_MAP.get(label, label)
    try:
        name = codecs.lookup(label).name
    except LookupError:
        return None
    # codecs.lookup normalises e.g. "gbk" itself; map its names too
    return {"gbk": "gb18030", "gb2312": "gb18030", "big5": "big5hkscs", "latin-1": "cp1252", "ascii": "cp1252"}.get(
        name, name
    )


def http_charset(content_type: str | None) -> str | None:
    if not content_type:
        return None
    m = _CHARSET_RE.search(content_type)
    return m.group(1) if m else None


def meta_charset(body: bytes) -> str | None:
    """The charset a ``<meta>`` tag or XML declaration in the first 4 KB declares (raw label)."""
    head = body[:4096]
    m = _XML_DECL_RE.search(head) or _META_RE.search(head)
    return m.group(1).decode("ascii", "ignore") if m else None


def _try(body: bytes, codec: str) -> str | None:
    try:
        return body.decode(codec)
    except (UnicodeDecodeError, LookupError):
        return None


_CHINESE_RE = re.compile(f"[{HAN}{CJK_PUNCT}]")


def _looks_chinese(text: str) -> bool:
    """Most non-ASCII characters are Chinese characters or CJK punctuation: the signature of a right GB decode."""
    non_ascii = [c for c in text if ord(c) > 127]
    if not non_ascii:
        return False
    return len(_CHINESE_RE.findall("".join(non_ascii))) / len(non_ascii) > 0.8


def _detect(body: bytes) -> str | None:
    from charset_normalizer import from_bytes

    best = from_bytes(body, cp_isolation=PLAUSIBLE_CODECS).best()
    if best is None:
        return None
    enc = normalize_charset(best.encoding)
    # A nav-heavy GBK page often scores as a single-byte Western codepage; prefer GB18030 when it decodes strictly
    # and yields Chinese text.
    if enc == "cp1252":
        gb = _try(body, "gb18030")
        if gb is not None and _looks_chinese(gb):
            return "gb18030"
    return enc


# A declared codec survives this many invalid sequences per 1,000 non-ASCII bytes: browsers keep the declaration and
# show U+FFFD for a stray byte (a truncated upload, one mis-pasted character); a page mostly in another codec fails
# far above it (GBK read as UTF-8 is nearly all errors).
STRAY_BYTES_PER_MILLE = 10
STRAY_BYTES_MIN = 2


def _tolerant(body: bytes, codec: str) -> tuple[str, int] | None:
    """``body`` in ``codec`` with its few stray bytes replaced, or None when the errors are too many to be strays."""
    try:
        text = body.decode(codec, "replace")
    except LookupError:
        return None
    bad = text.count("\ufffd")
    non_ascii = sum(1 for b in body if b > 127)
    if bad <= max(STRAY_BYTES_MIN, non_ascii * STRAY_BYTES_PER_MILLE // 1000):
        return text, bad
    return None


def decode_html(body: bytes, content_type: str | None = None) -> Decoded:
    """Decode a fetched document with the browser's order of evidence, never raising.

    A declared codec that fails only on a few stray bytes is kept, with those bytes replaced (``replaced`` counts
    them): switching to another codec for one bad byte garbles the whole page.
    """
    for bom, codec in _BOMS:
        if body.startswith(bom):
            return Decoded(body[len(bom) :].decode(codec, "replace"), codec, "bom")
    for source, label in (("http", http_charset(content_type)), ("meta", meta_charset(body))):
        codec = normalize_charset(label)
        if codec in ("utf-16-le", "utf-16-be", "utf-16"):  # a meta tag readable as ASCII cannot be UTF-16
            codec = "utf-8"
        if codec:
            text = _try(body, codec)
            if text is not None:
                return Decoded(text, codec, source)
            tolerant = _tolerant(body, codec)
            if tolerant is not None:
                return Decoded(tolerant[0], codec, source, replaced=tolerant[1])
            break  # the declaration is wrong: fall through to evidence from the bytes themselves
    text = _try(body, "utf-8")
    if text is not None:
        return Decoded(text, "utf-8", "utf-8")
    detected = _detect(body)
    if detected:
        text = _try(body, detected)
        if text is not None:
            return Decoded(text, detected, "detected")
    tolerant = _tolerant(body, "utf-8")  # undeclared UTF-8 with a stray byte: still UTF-8
    if tolerant is not None:
        return Decoded(tolerant[0], "utf-8", "utf-8", replaced=tolerant[1])
    text = body.decode("utf-8", "replace")
    return Decoded(text, "utf-8", "fallback", replaced=text.count("\ufffd"))


# ---- content sniffing ------------------------------------------------------------------------------------------

_MAGIC = (
    (b"%PDF-", "application/pdf"),
    (b"PK\x03\x04", "application/zip"),
    (b"\x89PNG", "image/png"),
    (b"GIF8", "image/gif"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x1f\x8b", "application/gzip"),
    (b"Rar!", "application/x-rar"),
    (b"\xd0\xcf\x11\xe0", "application/msword"),
    (b"7z\xbc\xaf", "application/x-7z-compressed"),
)


def sniff_binary(body: bytes) -> str | None:
    """A MIME type when the bytes are clearly not text (magic numbers, NULs, control bytes), else None."""
    head = body[:8192]
    if any(head.startswith(bom) for bom, _ in _BOMS[1:]):
        return None  # UTF-16/32 text legitimately contains NULs
    for magic, mime in _MAGIC:
        if head.startswith(magic):
            return mime
    if b"\x00" in head:
        return "application/octet-stream"
    controls = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13, 27))
    if head and controls / len(head) > 0.05:
        return "application/octet-stream"
    return None


# ---- fetching ------------------------------------------------------------------------------------------------------


@dataclass
class FetchResult:
    """One URL's outcome. ``error`` is a short English phrase for the manifest; None on success."""

    url: str
    final_url: str
    status: int | None = None
    content_type: str = ""
    body: bytes = b""
    error: str | None = None
    error_kind: str | None = None  # robots|offsite|dns|refused|tls|timeout|too-large|http|network|retry-after
    redirects: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    location: str | None = None  # raw Location header of a redirect
    retry_after: str | None = None  # raw Retry-After header of a 429/503
    validators: dict[str, str] = field(default_factory=dict)  # ETag / Last-Modified as sent (for a later refresh)

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and 200 <= self.status < 300

    @property
    def mime(self) -> str:
        return self.content_type.split(";")[0].strip().lower()


def host_key(url: str) -> str:
    """``scheme://host:port`` — robots.txt and pacing are per origin."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.lower()}"


def _describe(exc: requests.RequestException) -> tuple[str, str]:
    text = str(exc)
    if isinstance(exc, requests.exceptions.SSLError):
        return "tls", "TLS/certificate error"
    if isinstance(exc, requests.exceptions.Timeout):
        return "timeout", "timed out"
    if isinstance(exc, requests.exceptions.ConnectionError):
        low = text.lower()
        if "name or service not known" in low or "nodename nor servname" in low or "getaddrinfo" in low:
            return "dns", "host not found"
        if "temporary failure in name resolution" in low or "no address associated" in low:
            return "dns", "host not found"
        if "refused" in low:
            return "refused", "connection refused"
        return "network", "connection failed"
    if isinstance(exc, requests.exceptions.TooManyRedirects):
        return "network", "too many redirects"
    return "network", type(exc).__name__


class Fetcher:
    """Thread-safe polite GET.

    ``delay``: minimum seconds between request starts to one host (raised to robots.txt's Crawl-delay).
    ``respect_robots``: False skips robots.txt entirely (only with the site owner's permission).
    ``max_bytes``: responses larger than this are abandoned mid-download.
    ``retries``: extra attempts on 429/502/503/504 and read timeouts, waiting Retry-After or an exponential backoff.
    """

    def __init__(
        self,
        user_agent: str = DEFAULT_USER_AGENT,
        timeout: float = DEFAULT_TIMEOUT,
        max_bytes: int = DEFAULT_MAX_BYTES,
        delay: float = 0.5,
        respect_robots: bool = True,
        retries: int = 3,
        backoff: float = 1.0,
        pool_size: int = 16,
    ):
        self.user_agent = user_agent
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.delay = max(0.0, delay)
        self.respect_robots = respect_robots
        self.retries = retries
        self.policy = RetryPolicy(max_attempts=retries + 1, base_delay=backoff, max_retry_after=MAX_RETRY_WAIT)
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update(
            {
                "User-Agent": user_agent,
                "Accept": "text/html,application/xhtml+xml,application/pdf;q=0.9,*/*;q=0.8",
                "Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8",
            }
        )
        self._lock = threading.Lock()
        self._robots: dict[str, Protego | None] = {}
        self._robots_notes: dict[str, str] = {}
        self._robots_locks: dict[str, threading.Lock] = {}
        self._next_slot: dict[str, float] = {}

    def close(self) -> None:
        self.session.close()

    # ---- robots.txt --------------------------------------------------------------------------------------------
    def robots(self, url: str) -> Protego | None:
        """The parsed robots.txt of ``url``'s origin (fetched once, cached), or None when it allows everything."""
        key = host_key(url)
        with self._lock:
            if key in self._robots:
                return self._robots[key]
            lock = self._robots_locks.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                if key in self._robots:
                    return self._robots[key]
            rules = self._load_robots(key)
            with self._lock:
                self._robots[key] = rules
            return rules

    def _load_robots(self, origin: str) -> Protego | None:
        robots_url = origin + "/robots.txt"
        res = self._get_following(robots_url, scope=lambda u: host_key(u) == origin, check_robots=False)
        if res.status is not None and 200 <= res.status < 300:
            return Protego.parse(res.body.decode("utf-8", "replace"))
        if res.status is not None and res.status >= 500:
            # RFC 9309 §2.3.1.4: an unreachable robots.txt means "assume complete disallow".
            self._robots_notes[origin] = f"robots.txt answered HTTP {res.status}"
            return Protego.parse("User-agent: *\nDisallow: /\n")
        return None  # 4xx, missing, or unreachable host: the page fetch itself will report a dead host

    def robots_note(self, url: str) -> str | None:
        return self._robots_notes.get(host_key(url))

    def allowed(self, url: str) -> bool:
        if not self.respect_robots:
            return True
        rules = self.robots(url)
        return rules is None or rules.can_fetch(url, self.user_agent)

    def host_delay(self, url: str) -> float:
        """Seconds between requests to this host: our delay, raised to robots.txt's Crawl-delay/Request-rate."""
        delay = self.delay
        if self.respect_robots:
            rules = self.robots(url)
            if rules is not None:
                cd = rules.crawl_delay(self.user_agent)
                if cd:
                    delay = max(delay, float(cd))
                rate = rules.request_rate(self.user_agent)
                if rate and rate.requests:
                    delay = max(delay, rate.seconds / rate.requests)
        return delay

    # ---- pacing ------------------------------------------------------------------------------------------------
    def _wait_turn(self, url: str, delay: float) -> None:
        key = host_key(url)
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next_slot.get(key, 0.0))
            self._next_slot[key] = slot + delay
        if slot > now:
            time.sleep(slot - now)

    def pace(self, url: str) -> None:
        """Wait for this host's turn under the per-host delay (raised to robots.txt's Crawl-delay), for a request made
        outside this fetcher: the renderer's browser loading a page's scripts and data keeps the crawl's pace."""
        self._wait_turn(url, self.host_delay(url))

    def _push_back(self, url: str, seconds: float) -> None:
        """After a 429/503 the whole host waits, not only the thread that got it."""
        key = host_key(url)
        with self._lock:
            self._next_slot[key] = max(self._next_slot.get(key, 0.0), time.monotonic() + seconds)

    # ---- GET ---------------------------------------------------------------------------------------------------
    def get(self, url: str, scope: Callable[[str], bool] | None = None) -> FetchResult:
        """GET ``url`` politely. ``scope(url) -> bool`` vets redirect targets before they are contacted."""
        return self._get_following(url, scope=scope, check_robots=self.respect_robots)

    def _get_following(self, url: str, scope: Callable[[str], bool] | None, check_robots: bool) -> FetchResult:
        started = time.monotonic()
        current = url
        redirects: list[str] = []
        for _hop in range(MAX_REDIRECTS + 1):
            if check_robots and not self.allowed(current):
                return FetchResult(
                    url, current, error="blocked by robots.txt", error_kind="robots", redirects=redirects
                )
            # robots.txt itself is paced with our own delay only (its Crawl-delay is not known yet)
            res = self._get_once(current, self.host_delay(current) if check_robots else self.delay)
            res.url, res.redirects = url, redirects
            if res.status in (301, 302, 303, 307, 308) and res.error is None:
                location = res.location
                if not location:
                    res.error, res.error_kind = f"redirect without Location (HTTP {res.status})", "http"
                    break
                target = urljoin(current, location)
                if urlsplit(target).scheme not in ("http", "https"):
                    res.error, res.error_kind = f"redirects to a non-web address {target}", "offsite"
                    break
                redirects.append(target)
                if scope is not None and not scope(target):
                    res.final_url = target
                    res.error, res.error_kind = f"redirects off-site to {target}", "offsite"
                    break
                current = target
                continue
            break
        else:
            res.error, res.error_kind = "too many redirects", "network"
        res.elapsed = time.monotonic() - started
        return res

    def _get_once(self, url: str, delay: float) -> FetchResult:
        attempt = 0
        while True:
            self._wait_turn(url, delay)
            res = self._request(url)
            retryable = res.status in RETRY_STATUSES or res.error_kind == "timeout"
            if not retryable or attempt >= self.retries:
                if res.status in RETRY_STATUSES and res.error is None:
                    res.error, res.error_kind = f"HTTP {res.status} after {attempt + 1} attempts", "http"
                return res
            wait = parse_retry_after({"retry-after": res.retry_after})
            if wait is not None and wait > MAX_RETRY_WAIT:
                res.error = f"HTTP {res.status}; the server asked to wait {int(wait)} s (Retry-After), too long"
                res.error_kind = "retry-after"
                return res
            wait = self.policy.delay(attempt, wait)
            self._push_back(url, wait)
            attempt += 1

    def request_headers(self, url: str) -> dict[str, str]:
        """Extra headers for one request; none here. The crawler's refresh adds If-None-Match / If-Modified-Since."""
        return {}

    def _request(self, url: str) -> FetchResult:
        res = FetchResult(url, url)
        try:
            headers = self.request_headers(url) or None
            with self.session.get(url, timeout=self.timeout, stream=True, allow_redirects=False, headers=headers) as r:
                res.status = r.status_code
                res.content_type = r.headers.get("Content-Type", "")
                res.validators = {k: r.headers[k] for k in ("ETag", "Last-Modified") if r.headers.get(k)}
                res.location = r.headers.get("Location")
                res.retry_after = r.headers.get("Retry-After")
                if r.is_redirect or r.status_code in RETRY_STATUSES:
                    return res
                length = r.headers.get("Content-Length", "")
                if length.isdigit() and int(length) > self.max_bytes:
                    res.error, res.error_kind = f"larger than the {self.max_bytes // 1024} KB cap", "too-large"
                    return res
                chunks, size = [], 0
                for chunk in r.iter_content(64 * 1024):
                    size += len(chunk)
                    if size > self.max_bytes:
                        res.error, res.error_kind = f"larger than the {self.max_bytes // 1024} KB cap", "too-large"
                        return res
                    chunks.append(chunk)
                res.body = b"".join(chunks)
                if not 200 <= r.status_code < 300:
                    res.error, res.error_kind = f"HTTP {r.status_code}", "http"
        except requests.RequestException as exc:
            res.error_kind, res.error = _describe(exc)
        return res
