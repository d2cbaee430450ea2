"""A real campus-like web site on 127.0.0.1 for the crawl tests and the crawl benchmark.

``FixtureSite`` serves ``tests/fixtures/site/www`` with a ThreadingHTTPServer and records every request in
``access_log`` (path + User-Agent), so tests can assert what was and was not requested. Special routes:

    /robots.txt        Disallow: /private/  (text configurable)
    /gbk.html          GBK bytes declaring gb2312, served as "text/html" with NO charset
    /old-news          301 → /news/2.html
    /print/1.html      the same article as /news/1.html (content duplicate under another URL)
    /missing.html      404
    /blob.html         random binary bytes served as text/html
    /files/guide.pdf   a small PDF (built here); /files/form.docx a small DOCX (python-docx)
    /flaky.html        503 + Retry-After: 1 on the first request, then 200
    /big.html          a 3 MB page (for the size cap)
    /slow.html         answers after 3 s (for timeouts)
    /app/              an app shell: its text is written by /app/app.js (for ``--render``); it also asks for a
                       style sheet, an image and an off-site script, none of which a render may request

``{OFFSITE}`` in a page is replaced by the URL of a second server (``offsite``), which must never be requested.

``routes`` is a mutable table (``path -> (status, body, content_type[, headers])``) that wins over the files, so a test
can change the site between two crawls. A 200 route with an ``ETag`` / ``Last-Modified`` header answers a matching
``If-None-Match`` / ``If-Modified-Since`` with 304 (If-None-Match first, as RFC 9110 says); ``conditional`` records
every conditional request ``(path, If-None-Match, If-Modified-Since)`` and ``not_modified`` every 304 sent.
``BenchSite`` is a generated N-page site with a fixed latency per response.
"""

from __future__ import annotations

import io
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "site"
WWW = FIXTURE_DIR / "www"
DEFAULT_ROBOTS = "User-agent: *\nDisallow: /private/\n"


def make_pdf(lines: list[str], title: str = "Freshman Guide") -> bytes:
    """A minimal valid one-page PDF with a text layer (Helvetica, ASCII text)."""

    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    ops = ["BT /F1 12 Tf 72 720 Td 16 TL"] + [f"({esc(line)}) Tj T*" for line in lines] + ["ET"]
    stream = "\n".join(ops).encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> "
        b"/Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Title (" + esc(title).encode("latin-1") + b") >>",
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for i, obj in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % i + obj + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for off in offsets:
        out.write(b"%010d 00000 n \n" % off)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R /Info 6 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def make_docx(title: str, paragraphs: list[str], table: list[list[str]] | None = None) -> bytes:
    import docx

    document = docx.Document()
    document.core_properties.title = title
    document.add_heading(title, level=1)
    for p in paragraphs:
        document.add_paragraph(p)
    if table:
        t = document.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, cell in enumerate(row):
                t.cell(r, c).text = cell
    buf = io.BytesIO()
    document.save(buf)
    return buf.getvalue()


PDF_BYTES = make_pdf(
    [
        "Freshman Guide 2024",
        "New students report on September 1 at the North Gate registration hall.",
        "Bring your admission letter, ID card and four passport photos.",
    ]
)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Base:
    """Start/stop plumbing shared by the fixture and bench sites."""

    handler: type[BaseHTTPRequestHandler]

    def __init__(self):
        self.access_log: list[tuple[str, str]] = []  # (path, user agent), in arrival order
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        site = self

        class Handler(self.handler):  # type: ignore[misc, valid-type]
            pass

        Handler.site = site
        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def note(self, path: str, ua: str) -> int:
        with self._lock:
            self.access_log.append((path, ua))
            self.counts[path] = self.counts.get(path, 0) + 1
            return self.counts[path]

    def requested(self, path: str) -> int:
        """How many times ``path`` (with its query string, as sent) was requested."""
        return sum(1 for p, _ in self.access_log if p == path)

    def requested_paths(self) -> set[str]:
        return {p.split("?", 1)[0] for p, _ in self.access_log}


class _FixtureHandler(BaseHTTPRequestHandler):
    site: FixtureSite
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet: the access log is kept in memory
        pass

    def _send(self, status: int, body: bytes = b"", ctype: str | None = "text/html; charset=utf-8", headers=None):
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 - http.server API
        site = self.site
        n = site.note(self.path, self.headers.get("User-Agent", ""))
        path = self.path.split("?", 1)[0]
        if path in site.routes:
            status, body, ctype, *extra = site.routes[path]
            headers = extra[0] if extra else {}
            inm, ims = self.headers.get("If-None-Match"), self.headers.get("If-Modified-Since")
            if inm or ims:
                site.conditional.append((path, inm, ims))
            fresh = inm == headers.get("ETag") if inm else bool(ims) and ims == headers.get("Last-Modified")
            if status == 200 and fresh:
                site.not_modified.append(path)
                return self._send(304, b"", None, headers)
            return self._send(status, body, ctype, headers)
        if path == "/robots.txt":
            if site.robots is None:
                return self._send(404, b"not found", "text/plain")
            return self._send(200, site.robots.encode(), "text/plain")
        if path == "/old-news":
            return self._send(301, b"", None, {"Location": "/news/2.html"})
        if path == "/blob.html":
            rnd = random.Random(7)
            return self._send(200, bytes(rnd.randrange(256) for _ in range(4096)), "text/html")
        if path == "/files/guide.pdf":
            return self._send(200, PDF_BYTES, "application/pdf")
        if path == "/files/form.docx":
            body = make_docx(
                "奖学金申请表",
                ["申请人须于 10 月 15 日前将本表交至学生处 201 室。", "学业成绩排名须位于专业前 30%。"],
                [["姓名", "学号"], ["", ""]],
            )
            return self._send(200, body, "application/vnd.openxmlformats-officedocument.wordprocessingml.document")
        if path == "/flaky.html":
            if n == 1:
                return self._send(503, b"busy", "text/plain", {"Retry-After": "1"})
            return self._send(200, (WWW / "news" / "2.html").read_bytes())
        if path == "/big.html":
            return self._send(200, b"<html><body>" + b"<p>x</p>" * 400_000 + b"</body></html>")
        if path == "/slow.html":
            time.sleep(3)
            return self._send(200, (WWW / "news" / "2.html").read_bytes())
        if path == "/print/1.html":
            path = "/news/1.html"
        file = (WWW / path.lstrip("/")).resolve()
        if file.is_dir() or path.endswith("/"):
            file = file / "index.html"
        if WWW not in file.parents or not file.is_file():
            return self._send(404, b"<html><body><h1>404 Not Found</h1></body></html>")
        body = file.read_bytes()
        body = body.replace(b"{OFFSITE}", (site.offsite_url or "http://offsite.invalid/").encode())
        ctype = "text/html" if file.name == "gbk.html" else "text/html; charset=utf-8"
        if file.suffix == ".js":
            ctype = "text/javascript; charset=utf-8"
        return self._send(200, body, ctype)


class FixtureSite(_Base):
    """The fixture campus site. ``routes`` adds ``path -> (status, body, content_type[, headers])`` answers."""

    handler = _FixtureHandler

    def __init__(self, robots: str | None = DEFAULT_ROBOTS, offsite_url: str | None = None):
        self.robots = robots
        self.offsite_url = offsite_url
        self.routes: dict[str, tuple] = {}
        self.conditional: list[tuple[str, str | None, str | None]] = []
        self.not_modified: list[str] = []
        super().__init__()


class _BenchHandler(BaseHTTPRequestHandler):
    site: BenchSite
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        site = self.site
        site.note(self.path, self.headers.get("User-Agent", ""))
        time.sleep(site.latency)
        path = self.path.split("?", 1)[0]
        if path == "/robots.txt":
            body, ctype, status = b"User-agent: *\nAllow: /\n", "text/plain", 200
        elif path == "/":
            links = "".join(f'<li><a href="/p/{i}.html">Notice {i}</a></li>' for i in range(site.pages))
            body = f"<html><head><title>Bench home</title></head><body><ul>{links}</ul></body></html>".encode()
            ctype, status = "text/html; charset=utf-8", 200
        elif path.startswith("/p/") and path[3:-5].isdigit() and int(path[3:-5]) < site.pages:
            i = int(path[3:-5])
            paras = "".join(
                f"<p>第 {i} 号通知第 {k} 段：本科生院提醒同学们按时完成第 {i * 7 + k} 项事务，办理地点为行政楼 {100 + k} 室。</p>"
                for k in range(6)
            )
            body = (
                f"<html><head><title>通知 {i}</title></head><body><nav><a href='/'>首页</a></nav>"
                f"<article><h1>通知 {i}</h1>{paras}</article><footer>版权所有 示范大学</footer></body></html>"
            ).encode()
            ctype, status = "text/html; charset=utf-8", 200
        else:
            body, ctype, status = b"not found", "text/plain", 404
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class BenchSite(_Base):
    """``pages`` notice pages linked from ``/``; every response waits ``latency`` seconds first."""

    handler = _BenchHandler

    def __init__(self, pages: int = 200, latency: float = 0.05):
        self.pages = pages
        self.latency = latency
        super().__init__()
