"""A real crawl of the bundled demo site (English and Chinese pages), indexed, for the retrieval and grounding tests."""

from __future__ import annotations

from pathlib import Path


def crawl_demo(pages_dir: str | Path) -> Path:
    """Crawl the demo site (served on 127.0.0.1) into ``pages_dir``; returns it."""
    from umtcds_core.crawl import CrawlConfig, crawl
    from umtcds_core.demo_site import DemoSite

    pages_dir = Path(pages_dir)
    with DemoSite() as site:
        crawl(CrawlConfig(start_url=site.url, out_dir=pages_dir, depth=3, delay=0))
    return pages_dir


def crawl_and_index_demo(folder: str | Path) -> tuple[Path, Path]:
    """``(pages_dir, index_dir)`` under ``folder``: the demo site crawled and indexed with the default settings."""
    from umtcds_core.index import build_index

    folder = Path(folder)
    pages = crawl_demo(folder / "pages")
    build_index(pages, folder / "index")
    return pages, folder / "index"


def page_path(url: str) -> str:
    """The site path of a hit's URL (``http://127.0.0.1:PORT/zh/library.html`` → ``zh/library.html``)."""
    from urllib.parse import urlsplit

    return urlsplit(url).path.lstrip("/")
