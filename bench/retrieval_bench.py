"""Retrieval benchmark: recall@5 on the demo site, indexing time for 1,000 pages, query latency. Prints JSON.

Usage::

    python bench/retrieval_bench.py [--pages 1000] [--queries 300] [--out bench/results/retrieval_cpu.json]

1. **Recall@k on the demo site** — the bundled demo site (``umtcds_core.demo_site``) is crawled over real HTTP and
   indexed with the default settings. Each hand-written pair of ``data/demo_site/qa_seed.jsonl`` names its ``source``
   page; a question is a hit when a chunk of that page is among the top k. Reported for the seed questions and for
   the hand-written paraphrases below (other words than the page's: 借阅 for 借, "weekdays" for "Monday to
   Friday"), per language, with the misses listed.
2. **Indexing 1,000 pages** — generated pages (half Chinese, half English; sentences of the demo pages recombined
   with varied numbers and names, ~1,500 characters each) with a crawl-style ``manifest.jsonl``: a cold build, a
   re-run with nothing changed, and a re-run after 10 pages changed (only those are re-chunked).
3. **Query latency** — ``Index.search`` over the 1,000-page index for mixed Chinese/English questions: p50/p95/max
   in ms (the index loaded once, as the chat keeps it).

Targets (issue 15): recall@5 ≥ 0.95, indexing 1,000 pages ≤ 60 s on 2 cores, a query ≤ 50 ms p95.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from umtcds_core.crawl import CrawlConfig, crawl  # noqa: E402
from umtcds_core.demo_site import QA_SEED_FILE, DemoSite  # noqa: E402
from umtcds_core.fileio import read_jsonl, write_jsonl_atomic  # noqa: E402
from umtcds_core.index import Index, build_index  # noqa: E402

# Hand-written paraphrases of seed questions: (question, source page). Other words than the page uses.
PARAPHRASES = [
    ("What time does the library open from Monday to Friday?", "library.html"),
    ("How late can I stay in the library on a weekday evening?", "library.html"),
    ("How many books may a student check out at once?", "library.html"),
    ("What is the penalty for returning a book late?", "library.html"),
    ("What does a year of undergraduate study cost?", "admissions.html"),
    ("When do the autumn classes begin?", "calendar.html"),
    ("Where can I eat halal meals on campus?", "canteen.html"),
    ("How many people live in one dorm room?", "dormitories.html"),
    ("How much does it cost to wash clothes in the dorms?", "dormitories.html"),
    ("What grade point average is required for a scholarship?", "scholarships.html"),
    ("Where can I get help with my computer or Wi-Fi?", "it-helpdesk.html"),
    ("一次最多能借阅多少本书籍？", "zh/library.html"),
    ("周末图书馆什么时候开放？", "zh/library.html"),
    ("住在学生宿舍一年要交多少钱？", "zh/dormitories.html"),
    ("校园巴士的发车间隔是多少？", "zh/bus.html"),
    ("国奖的金额是多少？", "zh/scholarships.html"),
    ("宿舍里几个人住一间？", "zh/dormitories.html"),
    ("图书馆服务台的联系电话是多少？", "zh/library.html"),
]


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "packages": {p: version(p) for p in ("bm25s", "jieba", "numpy", "scipy")},
    }


def page_of(url: str) -> str:
    path = urlsplit(url).path.lstrip("/")
    return path + "index.html" if path == "" or path.endswith("/") else path


def recall(index: Index, items: list[tuple[str, str]], k: int) -> dict:
    hits, misses = 0, []
    by_lang: dict[str, list[int]] = {"zh": [], "en": []}
    for question, source in items:
        found = [page_of(h["url"]) for h in index.search(question, k=k)]
        ok = source in found
        hits += ok
        by_lang["zh" if re.search(r"[\u4e00-\u9fff]", question) else "en"].append(int(ok))
        if not ok:
            misses.append({"question": question, "source": source, "got": found[:3]})
    return {
        "questions": len(items),
        f"recall@{k}": round(hits / len(items), 4),
        "by_language": {lang: round(sum(v) / len(v), 4) for lang, v in by_lang.items() if v},
        "misses": misses,
    }


def demo_recall(k: int) -> dict:
    seed = [(r["question"], r["source"]) for r in read_jsonl(QA_SEED_FILE)]
    with DemoSite() as site, tempfile.TemporaryDirectory() as tmp:
        pages, index_dir = Path(tmp) / "pages", Path(tmp) / "index"
        crawl(CrawlConfig(start_url=site.url, out_dir=pages, depth=3, delay=0))
        report = build_index(pages, index_dir)
        index = Index.load(index_dir)
        return {
            "pages": report.pages,
            "chunks": report.chunks,
            "seed": recall(index, seed, k),
            "paraphrases": recall(index, PARAPHRASES, k),
            "seed_recall@1": recall(index, seed, 1)["recall@1"],
        }


def generated_pages(folder: Path, n: int, seed: int = 0) -> None:
    """``n`` pages recombining the demo site's sentences with varied numbers and names, plus a manifest."""
    rng = random.Random(seed)
    with DemoSite() as site, tempfile.TemporaryDirectory() as tmp:
        crawl(CrawlConfig(start_url=site.url, out_dir=Path(tmp), depth=3, delay=0))
        texts = [p.read_text(encoding="utf-8") for p in Path(tmp).glob("*.txt")]
    zh = [s for t in texts for s in re.split(r"(?<=[。！？])|\n", t) if re.search(r"[\u4e00-\u9fff]", s) and len(s) > 6]
    en = [s for t in texts for s in t.split("\n") if len(s) > 20 and not re.search(r"[\u4e00-\u9fff]", s)]
    names = ["王", "李", "张", "刘", "陈", "Smith", "Chen", "Garcia", "Kumar", "Novak"]
    folder.mkdir(parents=True)
    manifest = []
    for i in range(n):
        pool = zh if i % 2 == 0 else en
        sentences, size = [], 0
        while size < 1500:
            s = re.sub(r"\d+", lambda m: str(rng.randint(1, 99)), rng.choice(pool)).replace("王", rng.choice(names))
            sentences.append(s)
            size += len(s) * (2 if pool is zh else 1)
        title = (f"通知 {i}" if pool is zh else f"Notice {i}") + " " + rng.choice(names)
        body = "\n".join(sentences[j] + ("\n" if j % 4 == 3 else "") for j in range(len(sentences)))
        name = f"page_{i:04d}.txt"
        (folder / name).write_text(f"{title}\n\n{body}\n", encoding="utf-8")
        manifest.append({"url": f"http://bench.example/{i}.html", "final_url": f"http://bench.example/{i}.html",
                         "path": name, "title": title})  # fmt: skip
    write_jsonl_atomic(folder / "manifest.jsonl", manifest)


def indexing_and_latency(n_pages: int, n_queries: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        pages, index_dir = Path(tmp) / "pages", Path(tmp) / "index"
        generated_pages(pages, n_pages)
        chars = sum(len(p.read_text(encoding="utf-8")) for p in pages.glob("*.txt"))
        t0 = time.perf_counter()
        cold = build_index(pages, index_dir)
        cold_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = build_index(pages, index_dir)
        again_s = time.perf_counter() - t0
        for p in sorted(pages.glob("*.txt"))[:10]:
            p.write_text(p.read_text(encoding="utf-8") + "\n补充说明：本通知自发布之日起施行。\n", encoding="utf-8")
        t0 = time.perf_counter()
        changed = build_index(pages, index_dir)
        changed_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        index = Index.load(index_dir)
        load_s = time.perf_counter() - t0
        questions = [q for q, _ in PARAPHRASES] + [r["question"] for r in read_jsonl(QA_SEED_FILE)]
        index.search(questions[0])  # warm-up (jieba's dictionary)
        times, returned = [], 0
        for i in range(n_queries):
            t = time.perf_counter()
            returned += len(index.search(questions[i % len(questions)], k=5))
            times.append((time.perf_counter() - t) * 1000)
        times.sort()
        return {
            "pages": n_pages,
            "chars": chars,
            "chunks": cold.chunks,
            "cold_build_s": round(cold_s, 2),
            "rerun_unchanged_s": round(again_s, 2),
            "rerun_unchanged_counts": {"unchanged": again.unchanged, "new": again.new, "changed": again.changed},
            "rerun_10_changed_s": round(changed_s, 2),
            "rerun_10_changed_counts": {"unchanged": changed.unchanged, "changed": changed.changed},
            "load_s": round(load_s, 3),
            "query_ms": {
                "queries": n_queries,
                "mean_hits_returned": round(returned / n_queries, 2),
                "p50": round(statistics.median(times), 2),
                "p95": round(times[int(0.95 * (len(times) - 1))], 2),
                "max": round(times[-1], 2),
            },
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "retrieval_cpu.json"))
    args = parser.parse_args()
    result = {
        "bench": "retrieval",
        "machine": machine(),
        "demo_recall": demo_recall(args.k),
        "scale": indexing_and_latency(args.pages, args.queries),
        "targets": {"recall@5": 0.95, "index_1000_pages_s": 60, "query_p95_ms": 50},
    }
    demo, scale = result["demo_recall"], result["scale"]
    result["meets_targets"] = {
        "recall@5_seed": demo["seed"][f"recall@{args.k}"] >= 0.95,
        "recall@5_paraphrases": demo["paraphrases"][f"recall@{args.k}"] >= 0.95,
        "index_1000_pages": scale["cold_build_s"] <= 60 * scale["pages"] / 1000,
        "query_p95": scale["query_ms"]["p95"] <= 50,
    }
    text = json.dumps(result, ensure_ascii=False, indent=2)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
