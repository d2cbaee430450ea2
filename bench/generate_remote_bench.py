"""Remote-API Q&A generation: the sliding window of pages ``umtcds generate`` uses vs waves of pages. Prints JSON.

Usage::

    python bench/generate_remote_bench.py                       # 48 pages, concurrency 4, clean + Q&A stages
    python bench/generate_remote_bench.py --pages 96 --concurrency 8 --out bench/results/generate_remote_cpu.json

What is measured. A local HTTP server speaking the OpenAI chat-completions protocol (``tests/fake_llm_server.py``)
plays the LLM with a per-request latency drawn from a log-normal distribution (median ``--median-s``, spread
``--sigma``: most replies are quick, a few are slow, as with a real API), seeded by the request's content so both
schedules see exactly the same latency for the same request. The real ``OpenAIBackend`` and ``qa.generate`` run
twice over the same synthetic pages: ``waves`` (groups of 2 × concurrency pages, each stage of a group waiting for
its slowest request: the previous implementation) and ``window`` (``--concurrency`` pages in flight, a new one
starting whenever one finishes). Both write the same pages and pairs; only the wall time differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

WORDS = "Library Canteen Dormitory Gymnasium Clinic Museum Laboratory Bookshop Registry Stadium Garden Theatre".split()


def make_pages(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w = f"{WORDS[i % len(WORDS)]}{i}"
        text = (
            f"{w} is open from {7 + i % 3}:30 to {20 + i % 3}:00 every weekday.\n"
            f"{w} Office is in Room {100 + i} of Building {1 + i % 9}, phone 0571-8866{i:04d}.\n"
            f"{w} cards are issued by the service desk within {2 + i % 5} working days.\n"
        )
        (folder / f"page{i:03d}.txt").write_text(text, encoding="utf-8")


def latency_of(body: dict, median: float, sigma: float) -> float:
    digest = hashlib.sha256(json.dumps(body.get("messages"), sort_keys=True).encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    return min(10.0, median * math.exp(sigma * rng.gauss(0.0, 1.0)))


def run(schedule: str, pages: Path, args, srv, key: str) -> dict:
    from umtcds_core.llm import OpenAIBackend, RetryPolicy
    from umtcds_core.qa import GenSettings, generate

    out = Path(tempfile.mkdtemp(prefix=f"umtcds-remote-{schedule}-"))
    backend = OpenAIBackend("fake-model", key, srv.openai_base, timeout=30, retry=RetryPolicy(base_delay=0.05))
    settings = GenSettings(backend="openai", clean=True, pairs_per_page=3)
    t0 = time.perf_counter()
    summary = generate(
        pages, out, backend, settings, concurrency=args.concurrency, schedule="waves" if schedule == "waves" else "auto"
    )
    seconds = time.perf_counter() - t0
    return {
        "schedule": schedule,
        "seconds": round(seconds, 2),
        "pages_per_s": round(summary.processed / seconds, 2),
        "pages": summary.processed,
        "pairs": summary.pairs,
        "failures": summary.failures,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pages", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--median-s", type=float, default=0.25, help="median reply latency, seconds")
    ap.add_argument("--sigma", type=float, default=0.9, help="log-normal spread of the latency")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)

    from fake_llm_server import FakeLLMServer, default_responder

    key = "sk-bench-remote-0000"

    def responder(body: dict) -> str:
        time.sleep(latency_of(body, args.median_s, args.sigma))
        return default_responder(body)

    pages = Path(tempfile.mkdtemp(prefix="umtcds-remote-pages-"))
    make_pages(pages, args.pages)
    with FakeLLMServer(api_key=key, responder=responder) as srv:
        baseline = run("waves", pages, args, srv, key)
        ours = run("window", pages, args, srv, key)
    result = {
        "bench": "generate_remote",
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
        "settings": {
            "pages": args.pages,
            "concurrency": args.concurrency,
            "stages": "clean + Q&A (2 requests per page)",
            "latency": f"log-normal, median {args.median_s} s, sigma {args.sigma}, capped at 10 s, same per request",
        },
        "baseline": baseline,
        "ours": ours,
        "speedup": round(baseline["seconds"] / ours["seconds"], 2) if ours["seconds"] else None,
    }
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text)
    return result


if __name__ == "__main__":
    main()
