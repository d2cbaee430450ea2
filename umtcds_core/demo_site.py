"""Serve the bundled demo campus site (``data/demo_site/``, "Qingshan University / 青山大学") on 127.0.0.1.

Why a bundled site: a newcomer with no internet and no permission to crawl a real university can still run the whole
journey, and tests crawl a realistic site (navigation, footer and cookie-banner boilerplate, a GBK page declared as
gb2312, robots.txt) over real HTTP.

Usage::

    url, stop = serve_demo_site()          # free port, background thread
    ...crawl url...
    stop()

    with DemoSite() as site:               # the same as a context manager; site.requests lists the paths asked for
        crawl(site.url)

    python -m umtcds_core.demo_site --port 8080   # serve until Ctrl+C, e.g. to try the dashboard's wizard on it
"""

from __future__ import annotations

import argparse
import functools
import threading
from collections.abc import Callable
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DEMO_SITE_DIR = Path(__file__).resolve().parent.parent / "data" / "demo_site"
QA_SEED_FILE = DEMO_SITE_DIR / "qa_seed.jsonl"
"""Hand-written question/answer pairs grounded in the demo pages (``source`` is the page path relative to the site)."""

_HIDDEN = {"/qa_seed.jsonl"}  # part of the bundle, not of the "website"


class _Handler(SimpleHTTPRequestHandler):
    """Static files, no directory listings, quiet, and every request path recorded for tests."""

    server: _Server

    def send_head(self):
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        self.server.requests.append(path)
        if path in _HIDDEN or (path.endswith("/") and not (Path(self.translate_path(path)) / "index.html").exists()):
            self.send_error(404, "Not found")
            return None
        return super().send_head()

    def log_message(self, format, *args):  # noqa: A002 - signature from the base class
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    requests: list[str]


class DemoSite:
    """The demo site on a background thread; ``url`` ends with ``/`` (the English home page)."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1", root: Path | str = DEMO_SITE_DIR):
        root = Path(root)
        if not (root / "index.html").exists():
            from .errors import UserError

            raise UserError(
                f"The demo site is missing ({root}/index.html); restore data/demo_site from the repository.",
                zh=f"演示网站缺失（{root}/index.html）；请从代码仓库恢复 data/demo_site。",
            )
        handler = functools.partial(_Handler, directory=str(root))
        try:
            self._server = _Server((host, port), handler)
        except OSError as exc:
            from .errors import UserError

            raise UserError(
                f"Cannot serve the demo site on {host}:{port} ({exc.strerror}); choose another port.",
                zh=f"无法在 {host}:{port} 上运行演示网站（{exc.strerror}）；请换一个端口。",
            ) from exc
        self._server.requests = []
        self._thread = threading.Thread(target=self._server.serve_forever, name="demo-site", daemon=True)
        self._thread.start()
        self.host, self.port = self._server.server_address[:2]
        self.url = f"http://{self.host}:{self.port}/"

    @property
    def requests(self) -> list[str]:
        """Request paths in arrival order (query strings dropped)."""
        return self._server.requests

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self) -> DemoSite:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_demo_site(port: int = 0, host: str = "127.0.0.1") -> tuple[str, Callable[[], None]]:
    """Start serving the demo site; returns ``(url, stop)``. ``port=0`` picks a free port."""
    site = DemoSite(port=port, host=host)
    return site.url, site.stop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m umtcds_core.demo_site", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (0 = any free port)")
    args = parser.parse_args(argv)
    site = DemoSite(port=args.port)
    print(f"Demo campus site: {site.url}  (English)  {site.url}zh/index.html  (中文) — Ctrl+C to stop", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        site.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
