"""Batched local generation vs the original one-prompt-at-a-time loop, on the same Q&A prompts and settings.

The original UMTCDS (BLOCK2.1/2.2) called ``model.generate`` once per file. ``LocalBackend.chat_batch`` pads a batch
on the left and generates for all of it at once. Both sides here run through ``LocalBackend`` (the loop is
``chat()`` per prompt, i.e. batch size 1), greedy, with a fixed number of new tokens (``min_new_tokens`` =
``max_new_tokens``) so that both produce exactly the same amount of output and tokens/s compare like for like.

Usage::

    python bench/generate_bench.py                                   # CPU, embedded smollm2-135m
    python bench/generate_bench.py --out bench/results/generate_cpu.json
    python bench/generate_bench.py --gpu-shape glm4-9b               # GPU: GLM-4-9B shape, random weights, bf16
    python bench/generate_bench.py --gpu-shape glm4-9b --tiny        # the same code path, tiny, on CPU (a smoke test)

Prints one JSON object: machine, settings, loop and batched tokens/s, and their ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/benchlib.py
from benchlib import emit  # noqa: E402

TOPICS = [
    ("Library", "The main library opens at {h}:30 and closes at 22:00. Students borrow up to {n} books for 60 days."),
    ("Admissions", "The Admissions Office is in Room {n}01 of the Main Building, open Monday to Friday from {h}:30."),
    ("Canteen", "Canteen {n} serves breakfast from 6:{h}0 to 9:00 and is next to Dormitory {n}."),
    ("Registrar", "Course registration for the fall term runs from September {n} to September {h}."),
    ("Clinic", "The campus clinic is open 24 hours; the emergency phone is 0571-8888{n}{h}00."),
    ("Sports", "The gym in Building {n} is free for students from {h}:00 to 21:00 with a campus card."),
    ("Scholarships", "Applications for the national scholarship close on October {n}; results come out in {h} weeks."),
    ("Dormitories", "Dormitory {n} has {h} floors; quiet hours start at 23:00 and visitors leave by 22:00."),
]


def make_prompts(count: int, long_pages: bool = False) -> list[list[dict]]:
    """``count`` different Q&A conversations built with the real default templates and few-shot example.

    ``long_pages``: each page also carries 2–23 sentences of the other topics, so whole prompts span about 300–700
    tokens (issue 9's generation setting) instead of ~260.
    """
    from umtcds_core.qa import DEFAULT_PROMPTS, _qa_conversation

    prompts = DEFAULT_PROMPTS["en"]
    convs = []
    for i in range(count):
        title, body = TOPICS[i % len(TOPICS)]
        text = (
            f"{title}\n"
            + body.format(n=i % 9 + 1, h=i % 5 + 7)
            + ("\nMore details are on the office website." * (i % 3))
        )
        if long_pages:
            extra = 2 + (i * 7) % 22
            text += "\n" + " ".join(
                TOPICS[(i + j) % len(TOPICS)][1].format(n=(i + j) % 9 + 1, h=j % 5 + 7) for j in range(1, extra + 1)
            )
        convs.append(_qa_conversation(prompts, text, title, 3))
    return convs


def machine_info(device: str) -> dict:
    import torch
    import transformers

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 1024**3, 1))
    return info


def glm4_model(tiny: bool, device: str):
    """A random-init model of GLM-4-9B's shape (``transformers.GlmConfig()`` defaults), or a tiny one for CPU.

    No download: the tokenizer is the embedded model's (its ids fit in GLM's vocabulary); weights are random, which
    is fine for speed since every step costs the same whatever the token.
    """
    import torch
    from transformers import AutoModelForCausalLM, GlmConfig

    cfg = GlmConfig()  # glm-4-9b: hidden 4096, 40 layers, 32 heads, 2 KV heads, vocab 151552
    if tiny:
        cfg = GlmConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16,
        )  # fmt: skip
    cfg.pad_token_id = 2
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    return model, cfg, n_params


def timed(fn) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of ``fn()``; CPU time shows how much of the wall the machine gave."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu


VARIANTS = {
    "plain": "model.generate on left-padded batches in the prompts' order (the Hugging Face default use)",
    "ours": "LocalBackend.chat_batch as the generate step runs it (engine auto: the step engine where it reproduces "
    "the call, else length-sorted static batches)",
    "loop": "LocalBackend.chat one prompt at a time (the original project's loop)",
    "step": "LocalBackend.chat_batch with engine='step' (umtcds_core.decode): a running batch of batch-size rows, the "
    "prompts' shared head (system prompt, few-shot example) read once, a finished row refilled at once",
}


def plain_generate(tok, model, convs, batch: int, new: int) -> tuple[list[str], int]:
    """The library's plain call on batches in order: what a user of transformers writes without tuning anything."""
    import torch

    texts, n_tokens = [], 0
    for start in range(0, len(convs), batch):
        prompts = [
            tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in convs[start : start + batch]
        ]
        tok.padding_side = "left"
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            gen = model.generate(
                **enc, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=tok.pad_token_id
            )
        rows = gen[:, enc["input_ids"].shape[1] :]
        n_tokens += int((rows != tok.pad_token_id).sum())
        texts += [tok.decode(r, skip_special_tokens=True).strip() for r in rows]
    return texts, n_tokens


def fp32_check(tok, model, sample, new: int, variants: list[str]) -> dict:
    """Greedy texts of ``sample`` in one batch through plain ``generate`` and each of our paths, ``model`` in float32:
    how many are identical to plain's."""
    from umtcds_core.llm import LocalBackend

    plain_texts, _ = plain_generate(tok, model, sample, len(sample), new)
    out = {"prompts": len(sample), "new_tokens": new, "dtype": "float32"}
    for name in [v for v in ("ours", "step") if v in variants]:
        b = LocalBackend.from_loaded(tok, model, batch_size=len(sample), gen_kwargs={"min_new_tokens": new})
        b.engine = "step" if name == "step" else "auto"
        mine = b.chat_batch(sample, max_tokens=new)
        same = sum(x == y for x, y in zip(mine, plain_texts, strict=True))
        out[f"{name}_identical_to_plain"] = f"{same}/{len(sample)}"
    return out


def make_round(name: str, tok, model, convs, batch: int, new: int, loop_n: int):
    """A callable running one round of variant ``name``; returns (texts, output tokens)."""
    from umtcds_core.llm import LocalBackend

    fixed = {"min_new_tokens": new}

    def one_round() -> tuple[list[str], int]:
        if name == "plain":
            return plain_generate(tok, model, convs, batch, new)
        if name == "loop":
            b = LocalBackend.from_loaded(tok, model, batch_size=1, gen_kwargs=fixed)
            return [b.chat(c, max_tokens=new) for c in convs[:loop_n]], b.tokens_out
        b = LocalBackend.from_loaded(tok, model, batch_size=batch, gen_kwargs=fixed)
        if name == "step":
            b.engine = "step"
        return b.chat_batch(convs, max_tokens=new), b.tokens_out

    return one_round


def run_variants(names: list[str], tok, model, convs, batch: int, new: int, loop_n: int, rounds: int):
    """A warm-up round of every variant, then ``rounds`` timed rounds in turn (plain, ours, …, plain, ours, …), so a
    slow first round or a drifting GPU clock does not favour one side. The median round is compared."""
    import statistics

    fns = {name: make_round(name, tok, model, convs, batch, new, loop_n) for name in names}
    for name in names:
        fns[name]()
    per_round: dict[str, list[dict]] = {name: [] for name in names}
    texts: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    box: dict = {}
    for _ in range(max(1, rounds)):
        for name in names:
            wall, cpu = timed(lambda name=name: box.update(out=fns[name]()))
            texts[name], counts[name] = box["out"]
            per_round[name].append(
                {"seconds": round(wall, 3), "cpu_seconds": round(cpu, 3), "tokens_per_s": round(counts[name] / wall, 2)}
            )
    results = {}
    for name in names:
        tps = [r["tokens_per_s"] for r in per_round[name]]
        results[name] = {
            "what": VARIANTS[name],
            "prompts": loop_n if name == "loop" else len(convs),
            "output_tokens": counts[name],
            "tokens_per_s": round(statistics.median(tps), 2),
            "rounds": per_round[name],
        }
    return results, texts


def profile_decode(tok, model, convs, steps: int, out: str | None) -> dict:
    """Where one batch of plain ``generate`` spends its time: wall vs the sum of GPU kernel time (busy share) and the
    top operators, with the prefill included (``steps`` new tokens). Writes the table beside ``out``."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if model.device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        wall, _ = timed(lambda: plain_generate(tok, model, convs, len(convs), steps))
    events = prof.key_averages()
    key = "self_device_time_total" if model.device.type == "cuda" else "self_cpu_time_total"
    # kernels only: an aten op's device time repeats its kernels', and "Command Buffer Full" is the host waiting
    kernels = (
        [e for e in events if not e.key.startswith(("aten::", "Command Buffer"))]
        if key.startswith("self_dev")
        else events
    )
    busy_us = sum(getattr(e, key, 0) for e in kernels)
    table = events.table(sort_by=key, row_limit=25)
    if out:
        Path(out).with_suffix(".profile.txt").write_text(table, encoding="utf-8")
    return {
        "batch": len(convs),
        "new_tokens": steps,
        "wall_s": round(wall, 3),
        "device_busy_s": round(busy_us / 1e6, 3),
        "busy_share": round(busy_us / 1e6 / wall, 3),
        "top": [
            (e.key, round(getattr(e, key, 0) / 1e3, 1), e.count)
            for e in sorted(events, key=lambda e: -getattr(e, key, 0))[:12]
        ],
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="model reference for the default (CPU) run")
    ap.add_argument("--gpu-shape", choices=["glm4-9b"], help="use a random-init model of this shape instead")
    ap.add_argument("--tiny", action="store_true", help="with --gpu-shape: a tiny config (runs on CPU in seconds)")
    ap.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--prompts", type=int, help="prompts for the batched run (default 16 CPU, 64 GPU)")
    ap.add_argument("--loop-prompts", type=int, help="prompts for the one-at-a-time loop (default 8)")
    ap.add_argument("--batch-size", type=int, help="batch size (default 8 CPU, 32 GPU)")
    ap.add_argument("--new-tokens", type=int, help="fixed new tokens per prompt (default 32 CPU, 128 GPU)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--long-pages", action="store_true", help="pages long enough for 300-700-token prompts")
    ap.add_argument(
        "--tokenizer",
        default="smollm2-135m",
        help="tokenizer reference (a saved folder on a machine without the model)",
    )
    ap.add_argument("--variants", default="loop,ours", help=f"comma list of {', '.join(VARIANTS)} (default loop,ours)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per variant after a warm-up; median compared")
    ap.add_argument("--profile-steps", type=int, help="also profile one batch of plain generate with this many tokens")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument(
        "--check-fp32",
        type=int,
        default=0,
        metavar="N",
        help="finally, in float32: N prompts, 32 new tokens, one batch — plain vs ours vs step, texts compared "
        "(random bf16 weights give nearly flat logits, so bf16 noise flips argmaxes; fp32 shows whether paths agree)",
    )
    args = ap.parse_args(argv)

    import torch

    from umtcds_core.models import best_device, load_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or best_device()
    gpu = device == "cuda"
    n_prompts = args.prompts or (64 if gpu else 16)
    loop_n = min(n_prompts, args.loop_prompts or 8)
    batch = args.batch_size or (32 if gpu else 8)
    new = args.new_tokens or (128 if gpu else 32)

    if Path(args.tokenizer).is_dir():  # a saved tokenizer alone (the GPU box has no embedded model package)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.tokenizer, padding_side="left")
    else:
        tok = load_tokenizer(args.tokenizer)
    if args.gpu_shape:
        model, cfg, n_params = glm4_model(args.tiny, device)
        model_desc = f"{args.gpu_shape}{' (tiny)' if args.tiny else ''} random init, {n_params / 1e9:.3f} B params"
    else:
        from umtcds_core.models import load_model

        model = load_model(args.model, device=device)
        model_desc = f"{args.model}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params"
    convs = make_prompts(n_prompts, long_pages=args.long_pages)
    prompt_tokens = [
        len(
            tok(tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False), add_special_tokens=False)[
                "input_ids"
            ]
        )
        for c in convs
    ]

    settings = {
        "model": model_desc,
        "dtype": str(next(model.parameters()).dtype),
        "new_tokens_per_prompt": new,
        "greedy": True,
        "prompt_tokens_mean": round(sum(prompt_tokens) / len(prompt_tokens), 1),
        "prompt_tokens_min": min(prompt_tokens),
        "prompt_tokens_max": max(prompt_tokens),
        "batch_size": batch,
        "rounds": args.rounds,
    }
    result = {"bench": "generate_local", "machine": machine_info(device), "settings": settings}
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    measured, texts = run_variants(variants, tok, model, convs, batch, new, loop_n, args.rounds)
    result.update(measured)
    base = "plain" if "plain" in result else None
    if base:
        for name in variants:
            if name != base:
                result[name]["vs_plain"] = round(result[name]["tokens_per_s"] / result[base]["tokens_per_s"], 3)
                same = [a == b for a, b in zip(texts[name], texts[base], strict=False)]
                result[name]["same_text_as_plain"] = f"{sum(same)}/{len(same)}"
    if "plain" in variants and ({"ours", "step"} & set(variants)):
        # Same prompts in one batch on both paths: the greedy tokens must match ("step" reads the shared head apart,
        # so its padding differs; on random weights, whose logits are nearly flat, bf16 noise can flip an argmax)
        from umtcds_core.llm import LocalBackend

        sample = convs[: min(len(convs), batch, 32)]
        plain_texts, _ = plain_generate(tok, model, sample, len(sample), new)
        for name in [v for v in ("ours", "step") if v in variants]:
            b = LocalBackend.from_loaded(tok, model, batch_size=len(sample), gen_kwargs={"min_new_tokens": new})
            b.engine = "step" if name == "step" else "auto"
            mine = b.chat_batch(sample, max_tokens=new)
            same = sum(x == y for x, y in zip(mine, plain_texts, strict=True))
            key = "greedy_sample_same_batch" if name == "ours" else f"greedy_sample_same_batch_{name}"
            result[key] = f"{same}/{len(sample)} identical texts ({name} vs plain, one batch)"
    if args.check_fp32:
        result["fp32_check"] = fp32_check(tok, model.float(), convs[: args.check_fp32], 32, variants)
    if args.profile_steps:
        result["profile"] = profile_decode(tok, model, convs[:batch], args.profile_steps, args.out)
    if "loop" in result and "ours" in result:  # the original comparison, kept for older result files
        result["speedup_tokens_per_s"] = round(result["ours"]["tokens_per_s"] / result["loop"]["tokens_per_s"], 2)
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
