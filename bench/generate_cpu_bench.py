"""The offline CPU path of Q&A generation: today's path against the new one, on the demo site's real Q&A prompts.

What a first-time user waits for (issue 19, goal 5): the embedded model (smollm2-135m) writing Q&A pairs for the
22-page demo site on a CPU. Both sides run ``LocalBackend.chat_batch`` on the same conversations the generate step
builds (the demo site served and crawled here, chunked and prompted by ``qa.Generator``), greedy, in turn, after a
warm-up:

* ``today``: static batches (one ``generate`` per ``--batch`` prompts), every reply runs until the model stops or
  hits ``--max-tokens`` (no ``done``), torch's default threads — the path before issue 19;
* ``early_stop``: the same static batches, a row stops once its reply holds ``--pairs`` settled pairs
  (``qa.pairs_done``), threads from ``llm.cpu_threads``;
* ``step``: what ships on a CPU — early stop plus the step engine (``LocalBackend(engine="step")``, :mod:`decode`): a
  running batch of ``--batch`` rows in which a finished reply's row goes to the next prompt at once, so no row waits
  for its batch's longest reply (``--step-batch`` rows; a CPU step costs about the same at 4 and 8 rows).

Reported per side: output tokens, seconds, tokens/s, pages per minute (the figure a user feels: early stopping
makes fewer tokens, not faster ones), how each reply ended, and whether the parsed pairs (``parse_pairs(reply)[:n]``,
what ``qa.py`` keeps) are identical page by page. ``--threads-check`` also times one batch at 1 and at 2 threads, alone
and next to a second process doing the same (two jobs on two cores). The machine is shared: the JSON notes the load
average before and after; prefer the ratios.

Usage::

    python bench/generate_cpu_bench.py --out bench/results/generate_qa_cpu.json
    python bench/generate_cpu_bench.py --pages 8 --max-tokens 512 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/benchlib.py
from benchlib import emit  # noqa: E402


def demo_conversations(pairs: int, max_tokens: int, pages: int | None) -> tuple[list[str], list[list[dict]]]:
    """(page file, Q&A conversation) for each chunk of the crawled demo site, as ``Generator.run_group`` builds them."""
    from umtcds_core.crawl import CrawlConfig, crawl
    from umtcds_core.demo_site import DemoSite
    from umtcds_core.qa import GENERATE, Generator, GenSettings, _qa_conversation, chunk_text, read_pages

    out = Path(tempfile.mkdtemp(prefix="umtcds-cpu-bench-"))
    with DemoSite() as site:
        crawl(CrawlConfig(start_url=site.url, out_dir=out, depth=5, max_pages=100, concurrency=4, delay=0.0))
    settings = GenSettings.from_settings(
        GENERATE.merge({"backend": "local", "pairs_per_page": pairs, "max_tokens": max_tokens})
    )
    from umtcds_core.llm import LocalBackend

    counter = LocalBackend("smollm2-135m", device="cpu")
    gen = Generator(counter, settings)
    names, convs = [], []
    for page in read_pages(out)[:pages]:
        lang = gen.lang_of(page)
        for chunk in chunk_text(page.text.strip(), gen._chunk_budget(settings.prompts[lang]), gen._count_tokens):
            names.append(page.rel)
            convs.append(_qa_conversation(settings.prompts[lang], chunk, page.title, pairs))
    return names, convs


def run_side(backend, convs, max_tokens: int, done, pairs: int) -> dict:
    from umtcds_core.qa import parse_pairs, settled_pairs

    tok = backend.tokenizer
    backend.tokens_out, backend.stats = 0, {}
    start, cpu0 = time.time(), time.process_time()
    replies = backend.chat_batch(convs, max_tokens=max_tokens, done=done)
    seconds, cpu = time.time() - start, time.process_time() - cpu0
    lengths = [len(tok(r, add_special_tokens=False)["input_ids"]) for r in replies]
    ended = {
        "cap": sum(n >= max_tokens - 1 for n in lengths),
        "pairs_complete": sum(
            n < max_tokens - 1 and settled_pairs(r) >= pairs for n, r in zip(lengths, replies, strict=True)
        ),
    }
    ended["other"] = len(replies) - ended["cap"] - ended["pairs_complete"]
    return {
        "replies": len(replies),
        "output_tokens": backend.tokens_out,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),
        "tokens_per_s": round(backend.tokens_out / max(1e-6, seconds), 2),
        "pages_per_min": round(60 * len(replies) / max(1e-6, seconds), 2),
        "reply_tokens_mean": round(sum(lengths) / max(1, len(lengths)), 1),
        "ended": ended,
        "done_checks": backend.stats.get("checks", 0),
        "early_stops": backend.stats.get("early_stops", 0),
        "_pairs": [parse_pairs(r)[:pairs] for r in replies],
    }


def threads_check(convs, max_tokens: int, batch: int) -> dict:
    """Seconds for one batch at 1 and 2 torch threads, alone and beside a second process running the same batch."""
    here = Path(__file__).resolve()
    payload = json.dumps({"convs": convs[:batch], "max_tokens": max_tokens})
    out = {}
    for threads in (1, 2):
        for pair in (False, True):
            procs = [
                subprocess.Popen(
                    [sys.executable, str(here), "--one-batch", str(threads)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for _ in range(2 if pair else 1)
            ]
            for p in procs:
                p.stdin.write(payload)
                p.stdin.close()
            times = [json.loads(p.stdout.read()) for p in procs]
            for p in procs:
                p.wait()
            out[f"threads_{threads}_{'two_jobs' if pair else 'alone'}"] = times
    return out


def one_batch(threads: int) -> None:
    """Child of ``--threads-check``: one batch from stdin at ``threads`` threads; prints seconds and tokens/s."""
    data = json.loads(sys.stdin.read())
    os.environ["UMTCDS_CPU_THREADS"] = str(threads)
    from umtcds_core.llm import LocalBackend

    backend = LocalBackend("smollm2-135m", batch_size=len(data["convs"]), device="cpu")
    backend.chat_batch(data["convs"][:1], max_tokens=4)  # load and warm up
    backend.tokens_out = 0
    backend.gen_kwargs["min_new_tokens"] = data["max_tokens"]  # a fixed length: the same work at any thread count
    start = time.time()
    backend.chat_batch(data["convs"], max_tokens=data["max_tokens"])
    seconds = time.time() - start
    print(json.dumps({"seconds": round(seconds, 2), "tokens_per_s": round(backend.tokens_out / seconds, 2)}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=2, help="pairs asked per page (the issue's dashboard run: 2)")
    ap.add_argument("--max-tokens", type=int, default=1024, help="reply cap (the issue's dashboard run: 1024)")
    ap.add_argument("--batch", type=int, default=4, help="prompts per generate() call (the issue's run: 4)")
    ap.add_argument("--step-batch", type=int, help="rows of the step side's running batch (default: --batch)")
    ap.add_argument("--also-step-batch", type=int, help="one more step side (``step_wide``) with this many rows")
    ap.add_argument("--pages", type=int, default=None, help="only the first N demo pages (default: all 22)")
    ap.add_argument("--rounds", type=int, default=1, help="measured rounds of each side, in turn")
    ap.add_argument("--threads-check", action="store_true", help="also time 1 vs 2 threads, alone and two jobs")
    ap.add_argument("--threads-tokens", type=int, default=48, help="new tokens per row in the threads check")
    ap.add_argument("--out", help="write the JSON here")
    ap.add_argument("--one-batch", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one_batch:
        one_batch(args.one_batch)
        return 0

    import torch
    import transformers

    from umtcds_core.llm import LocalBackend, cpu_threads
    from umtcds_core.qa import pairs_done

    load0 = os.getloadavg()[0]
    names, convs = demo_conversations(args.pairs, args.max_tokens, args.pages)
    default_threads = torch.get_num_threads()
    today = LocalBackend("smollm2-135m", batch_size=args.batch, device="cpu", engine="generate")
    today.chat_batch(convs[:1], max_tokens=8)  # warm-up: load the model, first-call allocations
    step = LocalBackend.from_loaded(*today._ensure(), batch_size=args.step_batch or args.batch)
    step.engine = "step"
    step.chat_batch(convs[:1], max_tokens=8)
    sides = {"today": [], "early_stop": [], "step": []}
    for _ in range(max(1, args.rounds)):
        os.environ["UMTCDS_CPU_THREADS"] = str(default_threads)
        sides["today"].append(run_side(today, convs, args.max_tokens, None, args.pairs))
        os.environ.pop("UMTCDS_CPU_THREADS")
        sides["early_stop"].append(run_side(today, convs, args.max_tokens, pairs_done(args.pairs), args.pairs))
        sides["step"].append(run_side(step, convs, args.max_tokens, pairs_done(args.pairs), args.pairs))
        if args.also_step_batch:
            step.batch_size = args.also_step_batch
            wide = run_side(step, convs, args.max_tokens, pairs_done(args.pairs), args.pairs)
            sides.setdefault("step_wide", []).append(wide)
            step.batch_size = args.step_batch or args.batch

    def same_pairs(side: str) -> list[bool]:
        return [a == b for a, b in zip(sides["today"][0]["_pairs"], sides[side][0]["_pairs"], strict=True)]

    same, same_step = same_pairs("early_stop"), same_pairs("step")
    same_wide = same_pairs("step_wide") if args.also_step_batch else []
    differing = [names[i] for i, ok in enumerate(same) if not ok]
    differing_step = [names[i] for i, ok in enumerate(same_step) if not ok]
    for runs in sides.values():
        for r in runs:
            r.pop("_pairs")

    def total(side: str, key: str) -> float:
        return sum(r[key] for r in sides[side])

    result = {
        "bench": "generate_qa_cpu_today_vs_early_stop_vs_step",
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "torch_default_threads": default_threads,
            "cpu_threads_chosen": cpu_threads(),
            "load_avg_1m_before": round(load0, 2),
        },
        "settings": {
            "model": "smollm2-135m (embedded GGUF, fp32 on CPU)",
            "pages": len(set(names)),
            "prompts": len(convs),
            "pairs_per_page": args.pairs,
            "max_tokens": args.max_tokens,
            "batch_size": args.batch,
            "step_batch_size": args.step_batch or args.batch,
            "greedy": True,
            "rounds": args.rounds,
        },
        "today": sides["today"],
        "early_stop": sides["early_stop"],
        "step": sides["step"],
        "speedup_pages_per_min": round(total("today", "seconds") / total("early_stop", "seconds"), 2),
        "parsed_pairs_identical": f"{sum(same)}/{len(same)}",
        "pages_with_different_pairs": differing,
        "step_speedup_pages_per_min": round(total("today", "seconds") / total("step", "seconds"), 2),
        "step_vs_early_stop": round(total("early_stop", "seconds") / total("step", "seconds"), 2),
        **(
            {
                "step_wide": sides["step_wide"],
                "step_wide_batch_size": args.also_step_batch,
                "step_wide_speedup_pages_per_min": round(total("today", "seconds") / total("step_wide", "seconds"), 2),
                "step_wide_parsed_pairs_identical": f"{sum(same_wide)}/{len(same_wide)}",
            }
            if args.also_step_batch
            else {}
        ),
        "step_parsed_pairs_identical": f"{sum(same_step)}/{len(same_step)}",
        "step_pages_with_different_pairs": differing_step,
    }
    if args.threads_check:
        result["threads"] = threads_check(convs, args.threads_tokens, args.batch)
    result["machine"]["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
