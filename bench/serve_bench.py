"""``umtcds serve`` under 1, 16 and 64 concurrent clients: aggregate output tokens/s, latency, time to first token.

The server is the real app — :func:`umtcds_core.serve.make_server`: FastAPI on uvicorn at 127.0.0.1 (a free port),
its batching engine and its start-up warm-up — run in this process, which holds the model. The clients are the real
``openai`` client, streaming, one thread each, in a second process, so that 64 client threads parsing server-sent
events do not take this process's GIL from the model's worker thread (real students are on other machines). Each
client asks ``--rounds`` questions one after another (greedy); all clients of a level start together, after a
warm-up level. The baseline is the same server with one client: what the old one-request-at-a-time server gave at
best. The server's stats show how the requests were batched.

Fixed-length answers, so tokens/s compare across levels (and with bench/generate_bench.py's ``min_new_tokens``):
every answer is exactly ``--max-tokens`` tokens. One logits processor masks the model's end-of-sequence ids (what
``min_new_tokens`` does), the tokenizer's special tokens and the ids it does not have (a random GLM-4 has a
151,552-token vocabulary, the tokenizer fewer), with one precomputed mask — transformers' ``min_new_tokens``
processor runs an ``isin`` over the whole vocabulary each step, a per-step cost on a CPU that would flatter the
batched levels. The server's loop check still runs on every step (its cost is measured) but does not end a row.

Usage::

    python bench/serve_bench.py                                           # CPU, embedded smollm2-135m
    python bench/serve_bench.py --out bench/results/serve_cpu.json
    python bench/serve_bench.py --engine step,batch --out bench/results/serve_cpu_step.json   # both engines, in turn
    python bench/serve_bench.py --gpu-shape glm4-9b --tokenizer /models/smollm2-tok --out bench/results/serve_h200.json
    python bench/serve_bench.py --gpu-shape glm4-9b --tiny                # the same code path, tiny, on CPU (smoke)
    python bench/serve_bench.py --model /models/glm-4-9b-chat-hf --device cuda --max-tokens 128

``--engine step,batch``: the server's engine (``umtcds serve --engine``): ``step`` admits new requests between
decoding steps, ``batch`` runs one ``generate`` per batch; with several, one server per engine in turn on the same
loaded model, the first engine's levels at the top level and every engine's under ``engines`` with a ``compare``
table (tokens/s, p95 time to first token and latency per level).

``--gpu-shape glm4-9b``: a random-init model of GLM-4-9B's shape (``transformers.GlmConfig()``, bf16 on cuda; see
bench/generate_bench.py), no download; ``--tokenizer DIR`` a saved tokenizer folder (the GPU box has no embedded
model package). Prints one JSON object: machine, settings, the server's warm-up time, per level (clients) the
tokens/s, p50/p95 latency and time to first token and the batch sizes the server ran, the 16-vs-1 throughput ratio,
and the issue's targets (≥ 8× at 16 clients, p95 time to first token ≤ 2 s) met or not. Exit status 1 when a request
failed or an answer was not exactly ``--max-tokens`` long.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

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
TARGET_RATIO = 8.0
TARGET_TTFT_P95_S = 2.0


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return round(s[lo] + (s[hi] - s[lo]) * (k - lo), 4)


# ---- the clients (run in the second process) ----------------------------------------------------------------------
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


def run_clients(base: str, model: str, clients: int, rounds: int, max_tokens: int) -> dict:
    """``clients`` threads start together, each asks ``rounds`` questions in turn; wall time from the common start."""
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

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    go.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return {"wall": time.perf_counter() - t0, "results": results, "errors": errors}


# ---- the model: fixed-length answers ------------------------------------------------------------------------------
def fixed_length_chat_model(tok, model, name: str):
    """A :class:`~umtcds_core.chat.ChatModel` whose every answer is exactly as long as asked (see the module doc).

    Why a subclass of the real class: the server must run its own prompt encoding, batching and streaming; only the
    ``generate`` arguments change — one logits processor that keeps text tokens only."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    from umtcds_core.chat import ChatModel

    class TextTokensOnly(LogitsProcessor):
        def __init__(self):
            self.mask = None

        def __call__(self, input_ids, scores):
            if self.mask is None or self.mask.device != scores.device:
                mask = torch.ones(scores.shape[-1], dtype=torch.bool)
                mask[: min(len(tok), scores.shape[-1])] = False
                eos = model.generation_config.eos_token_id
                ends = {*tok.all_special_ids, *(eos if isinstance(eos, list) else [eos] if eos is not None else [])}
                mask[[i for i in ends if i < scores.shape[-1]]] = True
                self.mask = mask.to(scores.device)
            return scores.masked_fill(self.mask, float("-inf"))

    only_text = LogitsProcessorList([TextTokensOnly()])

    class FixedLengthChatModel(ChatModel):
        def _gen_kwargs(self, options):
            kw = super()._gen_kwargs(options)
            return {**kw, "logits_processor": only_text}

    return FixedLengthChatModel(tokenizer=tok, model=model, base_ref=name)


def keep_loop_check_running_without_stopping() -> None:
    """The server's per-step loop check runs as always (its cost is part of what serving costs) but ends no row:
    greedy text, above all from random weights, loops soon, and a row cut short would make tokens/s meaningless."""
    import torch

    from umtcds_core import chat

    class CheckOnly(chat._StopOnRepetition):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.zeros_like(super().__call__(input_ids, scores, **kwargs))

    chat._StopOnRepetition = CheckOnly  # serve's engine imports it from chat at each batch


def load_tokenizer(ref: str):
    if Path(ref).is_dir():  # a saved tokenizer alone (the GPU box has no embedded model package)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(ref, padding_side="left")
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return tok
    from umtcds_core.models import load_tokenizer as load

    return load(ref)


def load_model(args, device: str):
    """``(chat model, description)``: the GLM-4-9B shape (random init) or a real model reference."""
    if args.gpu_shape:
        from generate_bench import glm4_model

        tok = load_tokenizer(args.tokenizer)
        model, _, n_params = glm4_model(args.tiny, device)
        desc = f"{args.gpu_shape}{' (tiny)' if args.tiny else ''} random init, {n_params / 1e9:.3f} B params"
        return fixed_length_chat_model(tok, model, f"{args.gpu_shape}-random"), desc
    from umtcds_core.models import load

    tok, model = load(args.model, device=device)
    desc = f"{args.model}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params"
    return fixed_length_chat_model(tok, model, args.model), desc


# ---- one level ----------------------------------------------------------------------------------------------------
def run_level(pool, server, model_id: str, clients: int, rounds: int, max_tokens: int) -> dict:
    base = f"http://127.0.0.1:{server.server_port}"
    before = server.api.engine.snapshot()
    got = pool.submit(run_clients, base, model_id, clients, rounds, max_tokens).result()
    after = server.api.engine.snapshot()
    results, wall = got["results"], got["wall"]
    sizes = {k: v - before["batch_sizes"].get(k, 0) for k, v in after["batch_sizes"].items()}
    tokens = sum(r["tokens"] for r in results)
    lat = [r["latency"] for r in results]
    ttft = [r["ttft"] for r in results if r["ttft"] is not None]
    per_answer = [r["tokens"] for r in results]
    return {
        "clients": clients,
        "requests": clients * rounds,
        "answered": len(results),
        "errors": got["errors"][:5],
        "wall_s": round(wall, 3),
        "output_tokens": tokens,
        "tokens_per_answer": [min(per_answer), max(per_answer)] if per_answer else None,
        "tokens_per_s": round(tokens / wall, 2) if wall else None,
        "latency_p50_s": pct(lat, 0.5),
        "latency_p95_s": pct(lat, 0.95),
        "ttft_p50_s": pct(ttft, 0.5),
        "ttft_p95_s": pct(ttft, 0.95),
        "batches": after["batches"] - before["batches"],
        "batch_sizes": {k: v for k, v in sorted(sizes.items()) if v},
        "joined": after.get("joined", 0) - before.get("joined", 0),
    }


def targets(levels: list[dict]) -> dict:
    by = {lv["clients"]: lv for lv in levels}
    ratio = None
    if 1 in by and 16 in by and by[1]["tokens_per_s"]:
        ratio = round(by[16]["tokens_per_s"] / by[1]["tokens_per_s"], 2)
    ttft = {lv["clients"]: lv["ttft_p95_s"] for lv in levels}
    return {
        "throughput_16_vs_1": {"want": f">= {TARGET_RATIO:g}", "got": ratio,
                               "met": ratio is not None and ratio >= TARGET_RATIO},
        "ttft_p95_s": {"want": f"<= {TARGET_TTFT_P95_S:g} at every level", "got": ttft,
                       "met": all(v is not None and v <= TARGET_TTFT_P95_S for v in ttft.values())},
    }  # fmt: skip


def serve_levels(cm, settings: dict, args, rounds: int, max_tokens: int, warmup_clients: int) -> dict:
    """One server (``settings``, its engine included) through the bench's warm-up level and then every level."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from umtcds_core.serve import make_server

    server = make_server(cm, "127.0.0.1", 0, **settings)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    levels = []
    try:
        if not server.api.ready.wait(timeout=1800):
            raise SystemExit("the server's warm-up did not finish in 30 min")
        model_id = server.api.model_ids()[0]
        # The bench's own warm-up: the client process, and the batch shapes the levels will use (first-call costs
        # are not the baseline's fault).
        warm = run_level(pool, server, model_id, warmup_clients, 1, max_tokens)
        print(json.dumps({"engine": settings["engine"], "warm_up": warm}), file=sys.stderr, flush=True)
        for c in args.clients:
            levels.append(run_level(pool, server, model_id, c, rounds, max_tokens))
            print(json.dumps(levels[-1]), file=sys.stderr, flush=True)  # progress: a level can take minutes on a CPU
    finally:
        pool.shutdown()
        server.shutdown()
        server.server_close()
    snap = server.api.engine.snapshot()
    return {
        "engine": snap["engine"],
        "engine_note": snap["engine_note"],
        "server_warmup_s": round(server.api.warmup_s, 3) if server.api.warmup_s is not None else None,
        "levels": levels,
        "targets": targets(levels),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="model reference when not --gpu-shape")
    ap.add_argument("--gpu-shape", choices=["glm4-9b"], help="serve a random-init model of this shape instead")
    ap.add_argument("--tiny", action="store_true", help="with --gpu-shape: a tiny config (runs on CPU in seconds)")
    ap.add_argument("--tokenizer", default="smollm2-135m", help="with --gpu-shape: a saved tokenizer folder")
    ap.add_argument("--device", help="cpu or cuda (default: cuda for --gpu-shape without --tiny when there, else cpu)")
    ap.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64])
    ap.add_argument("--rounds", type=int, help="questions each client asks, one after another (default 1 CPU, 3 GPU)")
    ap.add_argument("--max-tokens", type=int, help="tokens in every answer (default 32 CPU, 128 GPU)")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--batch-wait-ms", type=int, default=50)
    ap.add_argument("--engine", type=lambda s: [e.strip() for e in s.split(",") if e.strip()], default=["step"],
                    help="the server's engine(s), comma-separated (step, batch); several: one server each, in turn, "
                    "the first one's levels at the top level")  # fmt: skip
    ap.add_argument("--warmup-clients", type=int, help="clients of the warm-up level (default 1 CPU, the most GPU)")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)

    import torch
    from generate_bench import machine_info

    from umtcds_core.models import best_device

    device = args.device or (best_device() if args.gpu_shape and not args.tiny else "cpu")
    gpu = device == "cuda"
    rounds = args.rounds or (3 if gpu else 1)
    max_tokens = args.max_tokens or (128 if gpu else 32)
    warmup_clients = args.warmup_clients or (max(args.clients) if gpu else 1)

    keep_loop_check_running_without_stopping()
    cm, desc = load_model(args, device)
    settings = {"max_batch": args.max_batch, "batch_wait_ms": args.batch_wait_ms,
                "queue_size": max(256, 4 * max(args.clients)), "max_tokens": max(512, max_tokens),
                "request_timeout": 1800.0, "student_page": False}  # fmt: skip
    runs = {}
    for engine in args.engine:
        runs[engine] = serve_levels(cm, {**settings, "engine": engine}, args, rounds, max_tokens, warmup_clients)
    first = runs[args.engine[0]]
    levels = [lv for r in runs.values() for lv in r["levels"]]
    machine = {**machine_info(device), "load_avg_1m_at_end": round(os.getloadavg()[0], 2)}
    if gpu:
        machine["gpu_peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 1024**3, 2)
    out = {
        "bench": "serve",
        "machine": machine,
        "settings": {
            "model": desc,
            "dtype": str(next(cm.model.parameters()).dtype),
            "device": device,
            "clients": args.clients,
            "rounds": rounds,
            "tokens_per_answer": max_tokens,
            "max_batch": args.max_batch,
            "batch_wait_ms": args.batch_wait_ms,
            "engines": args.engine,
            "greedy": True,
            "streaming": True,
            "fixed_length": "end ids and special tokens masked (min_new_tokens' effect), text tokens only, "
            "loop check runs but ends no row",
            "server": "umtcds_core.serve.make_server in this process (uvicorn, 127.0.0.1); clients: openai, "
            "one thread each, in a second process",
            "warmup_clients": warmup_clients,
        },
        "engine": first["engine"],
        "server_warmup_s": first["server_warmup_s"],
        "baseline": "the same server with 1 client (one answer at a time, as the old server ran every request)",
        "levels": first["levels"],
        "throughput_16_vs_1": first["targets"]["throughput_16_vs_1"]["got"],
        "targets": first["targets"],
    }
    if len(runs) > 1:  # every engine's run, and the numbers side by side
        out["engines"] = runs
        out["compare"] = {
            str(lv["clients"]): {e: {"tokens_per_s": r["levels"][i]["tokens_per_s"],
                                     "ttft_p95_s": r["levels"][i]["ttft_p95_s"],
                                     "latency_p95_s": r["levels"][i]["latency_p95_s"]} for e, r in runs.items()}
            for i, lv in enumerate(first["levels"])
        }  # fmt: skip
    text = json.dumps(out, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    bad = [lv for lv in levels if lv["errors"] or lv["answered"] < lv["requests"]]
    bad += [lv for lv in levels if lv["tokens_per_answer"] and set(lv["tokens_per_answer"]) != {max_tokens}]
    if bad:
        print(f"Some requests failed or were not {max_tokens} tokens long: see the levels above.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
