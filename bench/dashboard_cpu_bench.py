"""Does an open dashboard tab slow training? Training tokens/s with the Train page open vs closed, in the same run.

Usage::

    python bench/dashboard_cpu_bench.py [--phase-s 90] [--rounds 2] [--out FILE]
    python bench/dashboard_cpu_bench.py --file-watcher auto     # Streamlit's default watcher, for comparison

Why: with Streamlit's default file watcher the dashboard watched the whole checkout (``.venv/`` and the projects that
jobs write into) and, with a tab open, used most of a core; on a 2-core machine training ran 4.6x slower.
``.streamlit/config.toml`` now turns the watcher off; this measures what a user gets. The dashboard is started
exactly as ``make run`` starts it (the browser tests' launcher), with its projects folder inside the checkout (as the
default ``data/workspaces/`` is). One real ``umtcds train`` job of the embedded model runs in the background (a
metrics line every step); after a warm-up the run alternates phases with no tab and with the Train page open in
headless Chromium (its live chart redrawing), ``--rounds`` times each, so slow drifts of the machine's load hit both
sides alike. Per phase: training tokens/s from the run's own ``metrics.jsonl`` (tokens seen / time between the
phase's first and last step), and the CPU % of one core used by the dashboard's processes (its session: ``make`` and
Streamlit), by the browser, and by the job. Prints one JSON object; the goal is ``ratio_open_closed`` >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "browser"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/benchlib.py
import browser_helpers as bh  # noqa: E402 - the browser tests' launcher, login and CPU accounting
from benchlib import emit  # noqa: E402

GOAL = 0.95


def machine() -> dict:
    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import streamlit
    import torch

    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "streamlit": streamlit.__version__,
        "cuda": torch.cuda.is_available(),
    }


def descendants(pid: int, table: dict[int, tuple[int, int, float]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for p, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(p)
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def cpu_snapshot(dash_sid: int, job_sid: int) -> dict[str, dict[int, float]]:
    """CPU seconds so far, per process, of the dashboard's session, the job's session, and the browser (this
    process's other descendants: the Playwright driver and Chromium)."""
    table = bh.proc_table()
    browser = descendants(os.getpid(), table)
    return {
        "dashboard": {p: cpu for p, (_, s, cpu) in table.items() if s == dash_sid},
        "job": {p: cpu for p, (_, s, cpu) in table.items() if s == job_sid},
        "browser": {p: table[p][2] for p in browser if table[p][1] not in (dash_sid, job_sid)},
    }


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two snapshots by the processes alive at the second (a process that ended in between,
    e.g. a closed tab's renderer, is left out rather than subtracted)."""
    return sum(max(0.0, cpu - before.get(pid, 0.0)) for pid, cpu in after.items())


def steps_inside(records: list[dict], t0: float, t1: float) -> tuple[int, float, int]:
    """Tokens trained and seconds spent by the steps that started and ended inside [t0, t1] (wall clock): from the
    first to the last step logged in the window; and how many steps that is."""
    inside = [r for r in records if t0 <= r["time"] <= t1]
    if len(inside) < 2:
        return 0, 0.0, 0
    return inside[-1]["tokens_seen"] - inside[0]["tokens_seen"], inside[-1]["time"] - inside[0]["time"], len(inside) - 1


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--phase-s", type=float, default=90.0, help="seconds per phase (tab open or closed)")
    ap.add_argument("--rounds", type=int, default=2, help="closed/open pairs of phases")
    ap.add_argument("--warmup-steps", type=int, default=3, help="training steps logged before the first phase")
    ap.add_argument("--file-watcher", choices=("auto", "watchdog", "poll", "none"), help="override config.toml's")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra training config values")
    ap.add_argument("--keep", action="store_true", help="keep the projects folder (default: removed)")
    ap.add_argument("--out")
    args = ap.parse_args(argv)

    import yaml
    from playwright.sync_api import sync_playwright

    overrides = {k: yaml.safe_load(v) for k, _, v in (kv.partition("=") for kv in args.set)}
    root = ROOT / "data" / "workspaces" / f".dashboard-cpu-bench-{os.getpid()}"
    env_extra = {"STREAMLIT_SERVER_FILE_WATCHER_TYPE": args.file_watcher} if args.file_watcher else None
    load_start = os.getloadavg()
    ws = bh.training_workspace(root, "bench", **overrides)
    dash = bh.start_dashboard(root, env_extra=env_extra, workspaces=root)
    job = None
    phases: list[dict] = []
    try:
        job, run_dir = bh.start_training(ws)
        job_sid = job.meta["pgid"]
        bh.wait_until(
            lambda: len(bh.train_records(run_dir)) >= args.warmup_steps or job.status() != "running",
            "the warm-up steps",
            1800,
        )
        if job.status() != "running":
            raise RuntimeError(f"training ended during the warm-up: {job.error_summary()}")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=bh.CHROMIUM, args=bh.CHROMIUM_ARGS)
            for _ in range(args.rounds):
                for tab in ("closed", "open"):
                    context = None
                    if tab == "open":  # the user opens the Train page while the job runs
                        context = browser.new_context(viewport={"width": 1366, "height": 900}, locale="zh-CN")
                        page = context.new_page()
                        bh.open_dashboard(page, dash)
                        bh.open_step_page(page, "train")
                        page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=bh.WAIT_MS)
                    c0, t0, w0 = cpu_snapshot(dash.proc.pid, job_sid), time.monotonic(), time.time()
                    if context is not None:
                        page.wait_for_timeout(args.phase_s * 1000)  # keeps the page live (its own refreshes)
                    else:
                        time.sleep(args.phase_s)
                    c1, t1, w1 = cpu_snapshot(dash.proc.pid, job_sid), time.monotonic(), time.time()
                    if context is not None:
                        context.close()
                    tokens, train_s, steps = steps_inside(bh.train_records(run_dir), w0, w1)
                    secs = t1 - t0
                    phases.append(
                        {
                            "tab": tab,
                            "seconds": round(secs, 1),
                            "steps": steps,
                            "tokens": tokens,
                            "train_seconds": round(train_s, 2),
                            "tokens_per_s": round(tokens / train_s, 2) if train_s > 0 else None,
                            **{f"{k}_cpu_percent": round(100 * cpu_used(c0[k], c1[k]) / secs, 1) for k in c0},
                        }
                    )
                    print(json.dumps(phases[-1]), file=sys.stderr)
                    if job.status() != "running":
                        raise RuntimeError(f"training ended during the phases: {job.error_summary()}")
            browser.close()
    finally:
        if job is not None:
            job.stop()
        bh.stop_dashboard(dash)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    def side(tab: str, key: str) -> float | None:
        vals = [p[key] for p in phases if p["tab"] == tab and p[key] is not None]
        return round(sum(vals) / len(vals), 1) if vals else None

    def rate(tab: str) -> float | None:
        """All of a side's phases together: tokens over the time their steps took (not a mean of phase rates)."""
        tokens = sum(p["tokens"] for p in phases if p["tab"] == tab)
        secs = sum(p["train_seconds"] for p in phases if p["tab"] == tab)
        return round(tokens / secs, 2) if secs > 0 else None

    open_rate, closed_rate = rate("open"), rate("closed")
    ratio = round(open_rate / closed_rate, 3) if open_rate and closed_rate else None
    result = {
        "bench": "dashboard_cpu",
        "machine": machine(),
        "load_average_start_end": [round(x, 2) for x in (load_start[0], os.getloadavg()[0])],
        "started_as": " ".join(bh.make_run_cmd(0)).replace("PORT=0", "PORT=<free port>"),
        "file_watcher": args.file_watcher or "as .streamlit/config.toml sets it",
        "train_config": {**bh.EMBEDDED_TRAIN_CONFIG, **overrides},
        "phase_s": args.phase_s,
        "rounds": args.rounds,
        "steps_closed_open": [sum(p["steps"] for p in phases if p["tab"] == t) for t in ("closed", "open")],
        "tokens_per_s_closed": closed_rate,
        "tokens_per_s_open": open_rate,
        "ratio_open_closed": ratio,
        "goal_ratio": GOAL,
        "meets_goal": ratio is not None and ratio >= GOAL,
        "dashboard_cpu_percent_closed": side("closed", "dashboard_cpu_percent"),
        "dashboard_cpu_percent_open": side("open", "dashboard_cpu_percent"),
        "browser_cpu_percent_open": side("open", "browser_cpu_percent"),
        "job_cpu_percent_closed": side("closed", "job_cpu_percent"),
        "job_cpu_percent_open": side("open", "job_cpu_percent"),
        "phases": phases,
        "notes": "CPU % is of one core; the browser runs on the same machine (headless Chromium).",
    }
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
