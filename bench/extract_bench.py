"""Main-text extraction benchmark: our extractor next to trafilatura's defaults and its other settings, same run.

Usage::

    python bench/extract_bench.py [--data ../shared/extraction-benchmark] [--jobs 2] [--cache DIR]
                                  [--out bench/results/extract_bench.json]

Data: the article-extraction-benchmark copy (181 real article pages, gzipped UTF-8 HTML under ``html/``, and
``ground-truth.json`` mapping each page id to its ``articleBody``). It stays outside the repo; we only read it.

Every system gets the same input: the page's bytes decoded by our own ladder (:func:`umtcds_core.fetch.decode_html`),
so the comparison is about extraction, not decoding. Systems:

* ``ours`` — :func:`umtcds_core.extract.extract_html` exactly as the crawler calls it (body text, title not added);
* ``trafilatura_default`` — ``trafilatura.extract(html)`` with the library defaults;
* ``trafilatura_<setting>`` — precision/recall presets, comments off, tables off, ``fast``; ``trafilatura_best`` in the
  summary is whichever of these scored the highest mean F1 *in this run* (an oracle choice over the whole set, so
  it is an upper bound for "trafilatura with one fixed setting").

Scoring (our own code, not the benchmark's ``evaluate.py``):

* **Tokenisation** — NFC-normalise, then every CJK character (Han, kana, Hangul, CJK symbols excluded) is one token;
  every other maximal run of letters/digits (``\\w`` without the CJK ranges) is one token, lower-cased. Punctuation
  and whitespace are not tokens. Both the prediction and the ground truth are tokenised the same way.
* **Per page** — tokens are compared as multisets: overlap = Σ min(count in prediction, count in truth);
  precision = overlap / |prediction|, recall = overlap / |truth|, F1 their harmonic mean. An empty prediction of a
  non-empty truth scores 0/0/0; both empty scores 1/1/1.
* **Summary** — macro means over pages (each page counts once), for all pages, the development split and the
  held-out split (every 5th page in sorted id order, ``index % 5 == 4``; used only to check that a rule tuned on the
  development pages generalises).
* **Catastrophic loss** — a page where our overlap with the truth is less than half of trafilatura's overlap on that
  page ("we lose > 50 % of the main text that trafilatura keeps"), counted against the default and the best setting.
  Also counted: pages where our recall is below 0.5 at all.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import platform
import re
import sys
import time
import unicodedata
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_DATA = ROOT.parent / "shared" / "extraction-benchmark"

# CJK characters counted one token each: CJK Unified Ideographs (+Ext A, compatibility), kana, Hangul syllables.
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\u31f0-\u31ff\uac00-\ud7af"
_TOKEN_RE = re.compile(f"[{_CJK}]|[^\\W{_CJK}]+")

TRAFILATURA_SETTINGS: dict[str, dict] = {
    "default": {},
    "favor_precision": {"favor_precision": True},
    "favor_recall": {"favor_recall": True},
    "no_comments": {"include_comments": False},
    "precision_no_comments": {"favor_precision": True, "include_comments": False},
    "recall_no_comments": {"favor_recall": True, "include_comments": False},
    "no_tables": {"include_tables": False},
    "fast": {"fast": True},
}


def tokens(text: str) -> Counter:
    """The multiset of scoring tokens of ``text`` (see the module docstring)."""
    return Counter(t.lower() for t in _TOKEN_RE.findall(unicodedata.normalize("NFC", text or "")))


def prf(pred: Counter, truth: Counter) -> dict:
    n_pred, n_truth = sum(pred.values()), sum(truth.values())
    if n_truth == 0:
        ok = 1.0 if n_pred == 0 else 0.0
        return {"p": ok, "r": ok, "f1": ok, "overlap": 0, "n_pred": n_pred, "n_truth": 0}
    overlap = sum((pred & truth).values())
    p = overlap / n_pred if n_pred else 0.0
    r = overlap / n_truth
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"p": p, "r": r, "f1": f1, "overlap": overlap, "n_pred": n_pred, "n_truth": n_truth}


def load(data: Path) -> list[dict]:
    truth = json.loads((data / "ground-truth.json").read_text(encoding="utf-8"))
    pages = []
    for i, pid in enumerate(sorted(truth)):
        pages.append(
            {
                "id": pid,
                "url": truth[pid].get("url") or "",
                "truth": truth[pid]["articleBody"],
                "path": str(data / "html" / f"{pid}.html.gz"),
                "split": "heldout" if i % 5 == 4 else "dev",
            }
        )
    return pages


def _decoded(path: str) -> str:
    from umtcds_core.fetch import decode_html

    raw = gzip.decompress(Path(path).read_bytes())
    return decode_html(raw, "text/html").text


def _run_trafilatura(html: str, url: str, options: dict) -> str:
    import trafilatura

    return trafilatura.extract(html, url=url or None, **options) or ""


def _run_ours(html: str, url: str) -> str:
    from umtcds_core.extract import extract_html

    return extract_html(html, url).text


def run_page(page: dict, cache_dir: str | None, traf_version: str) -> dict:
    """All systems on one page (one worker process). Trafilatura outputs may come from ``cache_dir``."""
    html = _decoded(page["path"])
    out, seconds = {}, {}
    for name, options in TRAFILATURA_SETTINGS.items():
        key = f"trafilatura_{name}"
        cached = None
        if cache_dir:
            digest = hashlib.sha1(f"{traf_version}|{name}|{page['id']}".encode()).hexdigest()[:16]
            cached = Path(cache_dir) / f"{digest}.json"
            if cached.exists():
                hit = json.loads(cached.read_text(encoding="utf-8"))
                out[key], seconds[key] = hit["text"], hit["seconds"]
                continue
        t0 = time.perf_counter()
        out[key] = _run_trafilatura(html, page["url"], options)
        seconds[key] = time.perf_counter() - t0
        if cached is not None:
            cached.write_text(json.dumps({"text": out[key], "seconds": seconds[key]}), encoding="utf-8")
    t0 = time.perf_counter()
    out["ours"] = _run_ours(html, page["url"])
    seconds["ours"] = time.perf_counter() - t0
    return {"id": page["id"], "texts": out, "seconds": seconds}


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "packages": {p: version(p) for p in ("trafilatura", "lxml", "justext", "charset-normalizer")},
    }


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 4) if values else 0.0


def summarise(pages: list[dict], scores: dict[str, dict[str, dict]], seconds: dict[str, dict[str, float]]) -> dict:
    systems = list(scores)
    splits = {"all": [p["id"] for p in pages]}
    for split in ("dev", "heldout"):
        splits[split] = [p["id"] for p in pages if p["split"] == split]
    means: dict[str, dict] = {}
    for split, ids in splits.items():
        means[split] = {
            name: {
                "precision": _mean([scores[name][i]["p"] for i in ids]),
                "recall": _mean([scores[name][i]["r"] for i in ids]),
                "f1": _mean([scores[name][i]["f1"] for i in ids]),
                "pages": len(ids),
            }
            for name in systems
        }
    traf = [n for n in systems if n.startswith("trafilatura_")]
    best = max(traf, key=lambda n: means["all"][n]["f1"])

    def lost(against: str, ids: list[str]) -> list[str]:
        return [i for i in ids if scores["ours"][i]["overlap"] < 0.5 * scores[against][i]["overlap"]]

    catastrophic = {
        split: {
            "vs_trafilatura_default": len(lost("trafilatura_default", ids)),
            "vs_trafilatura_best": len(lost(best, ids)),
            "ours_recall_below_0.5": sum(1 for i in ids if scores["ours"][i]["r"] < 0.5),
            "pages_vs_best": lost(best, ids),
        }
        for split, ids in splits.items()
    }
    by_id = {p["id"]: p for p in pages}
    worst = sorted(by_id, key=lambda i: scores["ours"][i]["f1"])[:15]
    worst_cases = [
        {
            "id": i,
            "url": by_id[i]["url"],
            "split": by_id[i]["split"],
            "ours": {k: round(v, 3) for k, v in scores["ours"][i].items() if k in ("p", "r", "f1")},
            "trafilatura_best": {k: round(v, 3) for k, v in scores[best][i].items() if k in ("p", "r", "f1")},
            "truth_tokens": scores["ours"][i]["n_truth"],
            "ours_tokens": scores["ours"][i]["n_pred"],
        }
        for i in worst
    ]
    behind = sorted(by_id, key=lambda i: scores["ours"][i]["f1"] - scores[best][i]["f1"])[:10]
    return {
        "trafilatura_best": best,
        "means": means,
        "ours_minus_best_f1": {s: round(means[s]["ours"]["f1"] - means[s][best]["f1"], 4) for s in splits},
        "catastrophic": catastrophic,
        "seconds_per_page": {n: round(sum(seconds[n].values()) / len(seconds[n]), 4) for n in systems},
        "worst_pages_ours": worst_cases,
        "most_behind_best": [
            {
                "id": i,
                "url": by_id[i]["url"],
                "ours_f1": round(scores["ours"][i]["f1"], 3),
                "best_f1": round(scores[best][i]["f1"], 3),
            }
            for i in behind
        ],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--cache", help="folder caching trafilatura outputs between runs (ours is always re-run)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N pages (quick checks)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "extract_bench.json")
    ap.add_argument("--dump", type=Path, help="also write every system's text per page to this JSON file")
    args = ap.parse_args()
    if not (args.data / "ground-truth.json").exists():
        print(f"No benchmark data at {args.data}: pass --data with the extraction-benchmark folder.", file=sys.stderr)
        return 2
    pages = load(args.data)
    if args.limit:
        pages = pages[: args.limit]
    if args.cache:
        Path(args.cache).mkdir(parents=True, exist_ok=True)
    traf_version = version("trafilatura")
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(run_page, pages, [args.cache] * len(pages), [traf_version] * len(pages)))
    wall = time.perf_counter() - t0
    truth = {p["id"]: tokens(p["truth"]) for p in pages}
    systems = ["ours"] + [f"trafilatura_{n}" for n in TRAFILATURA_SETTINGS]
    scores = {n: {r["id"]: prf(tokens(r["texts"][n]), truth[r["id"]]) for r in results} for n in systems}
    seconds = {n: {r["id"]: r["seconds"][n] for r in results} for n in systems}
    result = {
        "benchmark": "extract_bench",
        "data": "scrapinghub/article-extraction-benchmark (181 pages, MIT), read from " + str(args.data),
        "machine": machine(),
        "wall_seconds": round(wall, 1),
        "cached_trafilatura": bool(args.cache),
        **summarise(pages, scores, seconds),
    }
    text = json.dumps(result, ensure_ascii=False, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n", encoding="utf-8")
    if args.dump:
        args.dump.write_text(json.dumps({r["id"]: r["texts"] for r in results}, ensure_ascii=False), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
