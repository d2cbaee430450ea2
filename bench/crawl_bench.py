"""Crawl benchmark: throughput at concurrency 1 vs 8, and extraction quality on the fixture pages. Prints JSON.

Usage::

    python bench/crawl_bench.py [--pages 200] [--latency 0.05] [--out bench/results/crawl_cpu.json]

1. **Throughput** — a generated local site (``--pages`` notice pages linked from ``/``, every response delayed by
   ``--latency`` seconds, like a slow campus server) is crawled twice in the same run with ``--delay 0``: once with
   one worker (the baseline) and once with eight. Reported: pages/s of each and their ratio.
2. **Extraction quality** — trafilatura's own evaluation method on ``tests/fixtures/site``: each page has "with"
   snippets (main text that must appear) and "without" snippets (nav, footer, cookie banner, logo that must not).
   A found "with" is a true positive, a missing one a false negative, a found "without" a false positive. Scored for
   all-text baseline, trafilatura's presets, trafilatura on raw bytes (its own decoding), and our setting.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/benchlib.py
from benchlib import emit  # noqa: E402
from crawl_helpers import FIXTURE_DIR, WWW, BenchSite  # noqa: E402

from umtcds_core.crawl import CrawlConfig, Crawler  # noqa: E402
from umtcds_core.extract import PRUNE_XPATH, extract_html  # noqa: E402
from umtcds_core.fetch import decode_html  # noqa: E402


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "packages": {p: version(p) for p in ("trafilatura", "requests", "lxml", "charset-normalizer", "protego")},
    }


def throughput(pages: int, latency: float, concurrency: int) -> dict:
    with BenchSite(pages=pages, latency=latency) as site, tempfile.TemporaryDirectory() as tmp:
        cfg = CrawlConfig(site.url("/"), Path(tmp), depth=1, max_pages=pages + 1, concurrency=concurrency, delay=0)
        t0 = time.perf_counter()
        summary = Crawler(cfg).run()
        wall = time.perf_counter() - t0
        requests = len(site.access_log)
    return {
        "concurrency": concurrency,
        "pages_saved": summary.saved,
        "requests": requests,
        "wall_s": round(wall, 3),
        "pages_per_s": round(summary.saved / wall, 2),
    }


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s or "").strip()


def score(extract, evaldata: dict) -> dict:
    tp = fn = fp = tn = 0
    misses: list[str] = []
    t0 = time.perf_counter()
    for name, entry in evaldata.items():
        raw = (WWW / name).read_bytes()
        text = _norm(extract(raw))
        for s in entry["with"]:
            if _norm(s) in text:
                tp += 1
            else:
                fn += 1
                misses.append(f"{name}: missing {s[:20]}")
        for s in entry["without"]:
            if _norm(s) in text:
                fp += 1
                misses.append(f"{name}: kept {s[:20]}")
            else:
                tn += 1
    elapsed = time.perf_counter() - t0
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": round(precision, 3),
        "recall": round(recall, 3),
        "accuracy": round((tp + tn) / (tp + tn + fp + fn), 3),
        "f1": round(f1, 3),
        "ms_per_page": round(elapsed / len(evaldata) * 1000, 1),
        "errors": misses[:12],
    }


def extraction_quality() -> dict:
    import trafilatura

    evaldata = json.loads((FIXTURE_DIR / "evaldata.json").read_text(encoding="utf-8"))

    def text_of(raw: bytes) -> str:
        return decode_html(raw, "text/html").text

    configs = {
        "all_text_baseline": lambda raw: trafilatura.html2txt(text_of(raw)),
        "trafilatura_default": lambda raw: trafilatura.extract(text_of(raw), include_comments=False),
        "trafilatura_favor_precision": lambda raw: trafilatura.extract(
            text_of(raw), include_comments=False, favor_precision=True
        ),
        "trafilatura_favor_recall": lambda raw: trafilatura.extract(
            text_of(raw), include_comments=False, favor_recall=True
        ),
        "trafilatura_on_raw_bytes": lambda raw: trafilatura.extract(raw, include_comments=False, favor_recall=True),
        # what extract_html does now: precision- and recall-oriented passes, the better one kept per page; landmark
        # pruning undone on a page where it cost more text than the landmarks held
        "umtcds_extract_html (precision/recall chosen per page + checked landmark pruning)": lambda raw: (
            extract_html(text_of(raw), "http://x/").text
        ),
    }
    return {
        "pages": len(evaldata),
        "snippets_with": sum(len(e["with"]) for e in evaldata.values()),
        "snippets_without": sum(len(e["without"]) for e in evaldata.values()),
        "prune_xpath": PRUNE_XPATH,
        "results": {name: score(fn, evaldata) for name, fn in configs.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds the server waits before each answer")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()

    base = throughput(args.pages, args.latency, 1)
    fast = throughput(args.pages, args.latency, 8)
    result = {
        "benchmark": "crawl",
        "machine": machine(),
        "site": {"pages": args.pages + 1, "latency_s": args.latency, "delay_s": 0},
        "throughput": {
            "baseline_concurrency_1": base,
            "concurrency_8": fast,
            "speedup_8_vs_1": round(fast["pages_per_s"] / base["pages_per_s"], 2),
        },
        "extraction_quality": extraction_quality(),
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
