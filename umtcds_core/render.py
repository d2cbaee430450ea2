"""Render pages whose text is written by JavaScript, with one headless Chromium (``umtcds crawl --render``).

Why a browser at all: some campus pages are app shells — an empty ``<div id="app">`` and a script that fetches the
notice and writes it into the page. The fetcher sees the shell, so the extractor finds no text. Loading the same URL in
Chromium (through Playwright) runs the script; the rendered DOM then goes through the same extractor.

How it stays polite and cheap:

- The page is fetched first by the crawl's normal fetcher (robots.txt, per-host delay, scope). The browser is handed
  those very bytes for the page's own URL, so the page is not requested twice; only what its scripts load goes out.
- Every request the browser makes is vetted: outside the crawl's scope (third-party analytics, CDNs, ads) or refused
  by robots.txt → aborted; images, fonts, media and style sheets → aborted (they never carry text we extract); the
  rest waits for the host's turn under the same per-host delay as the crawl (:meth:`Fetcher.pace`).
- One browser for the whole crawl, at most ``concurrency`` pages at once (each in its own context: no shared
  cookies or storage between pages); each page gets ``timeout`` seconds, after which what has rendered is kept.

Playwright's sync API is bound to the thread that started it, while the crawl fetches from a thread pool: so the
browser lives on one background thread with its own asyncio loop, and :meth:`Renderer.render` hands it work from any
thread. Playwright is imported lazily: the core and ``umtcds crawl --render never`` work without it.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .errors import UserError

MODES = ("never", "auto", "always")

AUTO_MIN_CHARS = 200
"""``--render auto`` renders an HTML page that has a ``<script>`` and whose extracted main text is shorter than this.

Measured: on the 181 real article pages of ``../shared/extraction-benchmark`` (every one has scripts) the shortest
extracted text is 367 characters (median several thousand), so 200 renders none of them; an app shell extracts
nothing or a "loading…" line (0–50 characters). Short static pages without any script (a one-line notice, a
redirect stub) are never rendered: a browser could not add text that no script writes."""

BLOCKED_TYPES = frozenset({"image", "media", "font", "stylesheet"})
"""Resource types the browser never requests: they carry no text for the extractor (the DOM is read, not pixels)."""

NETWORK_IDLE_S = 5.0
"""After ``load``, wait at most this long for the network to go quiet (scripts fetching the content). A page that
polls forever would otherwise hold its render slot for the whole timeout."""

_INSTALL = "python -m playwright install chromium"


def needs_render(mode: str, html: str, text_chars: int) -> bool:
    """Whether a fetched HTML page goes through the browser under ``mode`` (see :data:`AUTO_MIN_CHARS`)."""
    if mode == "always":
        return True
    if mode != "auto" or text_chars >= AUTO_MIN_CHARS:
        return False
    return re.search(r"<script\b", html, re.IGNORECASE) is not None


@dataclass
class Rendered:
    """The DOM after the page's scripts ran (``html``), the URL it ended at, or why rendering failed (``error``)."""

    html: str = ""
    final_url: str = ""
    error: str | None = None
    blocked: int = 0  # requests the browser wanted and we refused (off-site, robots.txt, images/fonts/media/css)


def system_chromium() -> str | None:
    """A Chromium or Chrome already on the machine (``UMTCDS_CHROMIUM`` first, then the usual names on PATH)."""
    named = os.environ.get("UMTCDS_CHROMIUM")
    if named:
        return named if Path(named).exists() or shutil.which(named) else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _no_browser(mode: str, detail: str = "") -> UserError:
    why = f" ({detail})" if detail else ""
    return UserError(
        f"--render {mode} needs a headless Chromium and none could be started{why}; install one with "
        f"`{_INSTALL}` (or crawl with --render never).",
        zh=f"--render {mode} 需要无界面的 Chromium 浏览器，但无法启动{why}；请运行 `{_INSTALL}` 安装"
        "（或改用 --render never 爬取）。",
    )


class Renderer:
    """One headless Chromium for a crawl. ``start()`` launches it (or raises one :class:`UserError`), ``render()``
    may be called from any thread, ``close()`` ends it.

    ``vet(url) -> str | None`` says why the browser may not request a URL (None: allowed); ``pace(url)`` blocks until
    the host's turn. Both come from the crawl (its scope, robots.txt and per-host delay) and run on worker threads.
    """

    def __init__(
        self,
        mode: str,
        vet: Callable[[str], str | None],
        pace: Callable[[str], None],
        concurrency: int = 2,
        timeout: float = 20.0,
        user_agent: str | None = None,
    ):
        self.mode = mode
        self.vet = vet
        self.pace = pace
        self.concurrency = concurrency
        self.timeout = timeout
        self.user_agent = user_agent
        self.executable: str | None = None  # None: Playwright's own Chromium
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._browser = None
        self._pw = None
        self._slots: asyncio.Semaphore | None = None

    # ---- lifetime ------------------------------------------------------------------------------------------------
    def start(self) -> Renderer:
        try:
            import playwright.async_api  # noqa: F401 - only to say clearly that the package is missing
        except ImportError:
            raise UserError(
                f"--render {self.mode} needs the playwright package; install it with `pip install playwright` "
                f"and then `{_INSTALL}` (or crawl with --render never).",
                zh=f"--render {self.mode} 需要 playwright 软件包；请先运行 `pip install playwright`，再运行 "
                f"`{_INSTALL}`（或改用 --render never 爬取）。",
            ) from None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="render", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._launch(), self._loop).result(timeout=120)
        except UserError:
            self.close()
            raise
        except Exception as exc:  # noqa: BLE001 - a browser that cannot start is one sentence, not a traceback
            self.close()
            raise _no_browser(self.mode, str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "") from None
        return self

    async def _launch(self) -> None:
        from playwright.async_api import async_playwright

        self._pw = await async_playwright().start()
        own = self._pw.chromium.executable_path
        if not own or not Path(own).exists():
            self.executable = system_chromium()
            if self.executable is None:
                raise _no_browser(self.mode)
        self._browser = await self._pw.chromium.launch(headless=True, executable_path=self.executable)
        self._slots = asyncio.Semaphore(self.concurrency)

    def close(self) -> None:
        loop = self._loop
        if loop is None:
            return
        if loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=30)
            except Exception:  # noqa: BLE001 - a browser that died already has nothing to close
                pass
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        loop.close()
        self._loop = None

    async def _shutdown(self) -> None:
        if self._browser is not None:
            await self._browser.close()
        if self._pw is not None:
            await self._pw.stop()

    def __enter__(self) -> Renderer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- rendering -----------------------------------------------------------------------------------------------
    def render(self, url: str, body: bytes, content_type: str | None) -> Rendered:
        """Load ``url`` in the browser, answering its own request with ``body`` (already fetched); the DOM after its
        scripts ran. Never raises: a failure is ``Rendered.error`` (the crawl then keeps the unrendered text)."""
        if self._loop is None:
            return Rendered(error="the browser is not running")
        fut = asyncio.run_coroutine_threadsafe(self._render(url, body, content_type), self._loop)
        try:
            # the slot wait is not bounded by the page's timeout; other pages' renders are
            return fut.result()
        except Exception as exc:  # noqa: BLE001 - one page's render failing is that page's note
            return Rendered(error=f"render failed ({type(exc).__name__}: {exc})"[:300])

    async def _render(self, url: str, body: bytes, content_type: str | None) -> Rendered:
        from playwright.async_api import Error as PlaywrightError
        from playwright.async_api import TimeoutError as PlaywrightTimeout

        assert self._slots is not None and self._browser is not None
        loop = asyncio.get_running_loop()
        out = Rendered(final_url=url)
        served = {"page": False}

        async def route(route, request) -> None:
            target = request.url
            if not served["page"] and request.is_navigation_request():
                served["page"] = True  # the page itself: the bytes the crawl already fetched, not a second request
                headers = {"content-type": content_type or "text/html"}
                await route.fulfill(status=200, headers=headers, body=body)
                return
            if urlsplit(target).scheme not in ("http", "https"):
                await route.continue_()
                return
            if request.resource_type in BLOCKED_TYPES:
                out.blocked += 1
                await route.abort("blockedbyclient")
                return
            reason = await loop.run_in_executor(None, self.vet, target)
            if reason is not None:
                out.blocked += 1
                await route.abort("blockedbyclient")
                return
            await loop.run_in_executor(None, self.pace, target)
            await route.continue_()

        async with self._slots:
            context = await self._browser.new_context(
                user_agent=self.user_agent, service_workers="block", accept_downloads=False
            )
            try:
                await context.route("**/*", route)
                page = await context.new_page()
                deadline = loop.time() + self.timeout
                try:
                    await page.goto(url, wait_until="load", timeout=self.timeout * 1000)
                    left = min(deadline - loop.time(), NETWORK_IDLE_S)
                    if left > 0:
                        try:
                            await page.wait_for_load_state("networkidle", timeout=left * 1000)
                        except PlaywrightTimeout:
                            pass  # keep what has rendered by now
                except PlaywrightTimeout:
                    out.error = f"did not finish loading within {self.timeout:g} s (--render-timeout)"
                    # a page that loaded partly may still hold its text: read the DOM below and let the caller judge
                out.html = await page.content()
                out.final_url = page.url or url
            except PlaywrightError as exc:
                out.error = f"render failed: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}"[:300]
            finally:
                await context.close()
        return out
