"""``umtcds serve`` under 1, 16 and 64 concurrent clients: aggregate output tokens/s, latency, time to first token.

The server is the real command (``python -m umtcds_core.cli serve``, a subprocess on a free port) and every client is
the real ``openai`` client in its own thread, streaming. Each client asks ``--rounds`` questions one after another
(greedy, ``--max-tokens`` each); all clients of a level start together. The baseline is the same server with one
client: what the old one-request-at-a-time server gave at best. The server's ``/v1/stats`` shows how the requests
were batched.

Usage::

    python bench/serve_bench.py                                         # CPU, embedded smollm2-135m
    python bench/serve_bench.py --out bench/results/serve_cpu.json
    python bench/serve_bench.py --model /models/glm-4-9b-chat-hf --device cuda --max-tokens 128

Prints one JSON object: machine, settings, per level (clients) the tokens/s, p50/p95 latency and time to first token,
the batch sizes the server ran, and the 16-vs-1 throughput ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

QUESTIONS = [
    "When does the library close?",
    "How do I apply for a scholarship?",
    "Where is the Admissions Office?",
    "Is the gym free for students?",
    "图书馆几点关门？",
    "怎么申请奖学金？",
    "校医院在哪里？",
    "宿舍几点熄灯？",
]


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return round(s[lo] + (s[hi] - s[lo]) * (k - lo), 4)


def start_server(args) -> tuple[subprocess.Popen, str]:
    argv = [sys.executable, "-m", "umtcds_core.cli", "serve", "--model", args.model, "--port", "0",
            "--max-batch", str(args.max_batch), "--queue-size", str(max(256, 4 * max(args.clients))),
            "--max-tokens", str(max(512, args.max_tokens)), "--request-timeout", "1800",
            "--batch-wait-ms", str(args.batch_wait_ms), "--api-key-env", "UMTCDS_BENCH_NO_KEY"]  # fmt: skip
    if args.device:
        argv += ["--device", args.device]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    env.pop("UMTCDS_BENCH_NO_KEY", None)
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "127.0.0.1:" not in line:
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    port = int(line.split("127.0.0.1:")[1].split("/")[0])
    return proc, f"http://127.0.0.1:{port}"


def stats(base: str) -> dict:
    with urllib.request.urlopen(base + "/v1/stats", timeout=30) as r:
        return json.load(r)


def one_request(client, model: str, question: str, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    first = None
    tokens = 0
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=max_tokens,
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter() - t0
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return {"latency": time.perf_counter() - t0, "ttft": first, "tokens": tokens}


def run_level(base: str, model: str, clients: int, rounds: int, max_tokens: int) -> dict:
    from openai import OpenAI

    client = OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=1800)
    results: list[dict] = []
    errors: list[str] = []
    lock = threading.Lock()
    go = threading.Barrier(clients + 1)

    def worker(i: int) -> None:
        go.wait()
        for r in range(rounds):
            try:
                res = one_request(client, model, QUESTIONS[(i + r) % len(QUESTIONS)], max_tokens)
            except Exception as exc:  # noqa: BLE001 - counted and reported, the level goes on
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            with lock:
                results.append(res)

    before = stats(base)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    go.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = stats(base)
    sizes = {int(k): v - before["batch_sizes"].get(k, 0) for k, v in after["batch_sizes"].items()}
    tokens = sum(r["tokens"] for r in results)
    lat = [r["latency"] for r in results]
    ttft = [r["ttft"] for r in results if r["ttft"] is not None]
    return {
        "clients": clients,
        "requests": clients * rounds,
        "answered": len(results),
        "errors": errors[:5],
        "wall_s": round(wall, 3),
        "output_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 2) if wall else None,
        "latency_p50_s": pct(lat, 0.5),
        "latency_p95_s": pct(lat, 0.95),
        "ttft_p50_s": pct(ttft, 0.5),
        "ttft_p95_s": pct(ttft, 0.95),
        "batches": after["batches"] - before["batches"],
        "batch_sizes": {k: v for k, v in sorted(sizes.items()) if v},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64])
    ap.add_argument("--rounds", type=int, default=1, help="questions each client asks, one after another")
    ap.add_argument("--max-tokens", type=int, default=32, help="longest answer (short answers keep CPU runs short)")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--batch-wait-ms", type=int, default=50)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)

    proc, base = start_server(args)
    try:
        model = json.load(urllib.request.urlopen(base + "/v1/models", timeout=30))["data"][0]["id"]
        run_level(base, model, 1, 1, args.max_tokens)  # warm-up: first-call costs are not the baseline's fault
        levels = []
        for c in args.clients:
            levels.append(run_level(base, model, c, args.rounds, args.max_tokens))
            print(json.dumps(levels[-1]), file=sys.stderr, flush=True)  # progress: a level can take minutes on a CPU
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    by = {lv["clients"]: lv for lv in levels}
    ratio = None
    if 1 in by and 16 in by and by[1]["tokens_per_s"]:
        ratio = round(by[16]["tokens_per_s"] / by[1]["tokens_per_s"], 2)
    import torch

    out = {
        "bench": "serve",
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else None,
        },
        "settings": {
            "model": args.model,
            "device": args.device,
            "rounds": args.rounds,
            "max_tokens": args.max_tokens,
            "max_batch": args.max_batch,
            "batch_wait_ms": args.batch_wait_ms,
            "greedy": True,
            "streaming": True,
        },  # fmt: skip
        "baseline": "the same server with 1 client (one answer at a time, as the old server ran every request)",
        "levels": levels,
        "throughput_16_vs_1": ratio,
    }
    text = json.dumps(out, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
