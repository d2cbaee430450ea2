"""Loss curves of the default training path vs the plain Hugging Face path on the embedded model. Prints JSON.

Usage::

    python bench/loss_curve_bench.py                                   # CPU: smollm2-135m, LoRA + P-tuning v2
    python bench/loss_curve_bench.py --out bench/results/loss_curve_cpu.json
    python bench/loss_curve_bench.py --device cuda --paths ours,plain,control,plain+fp32 \
        --out bench/results/loss_curve_h200.json
    python bench/loss_curve_bench.py --methods lora --threads 1 --out F.json   # methods one by one, merged into F

On a busy 2-core machine give each process one thread (``--threads 1``): two OpenMP threads on two cores shared with
other jobs spin-waited for each other and one step took 5-9x longer. ``--model FILE.gguf`` takes the embedded model's
GGUF file where its package is not installed (the GPU machine).

Why (issue 19, "Rules"): speed must never change results silently. The CPU tests check each optimisation for a step or
two; this bench trains the same data for ``--steps`` (≥ 100) optimizer steps twice from the same seed (plus a
control, below) and compares the whole loss curve:

* ``ours`` — what ``umtcds train`` runs on this device: ``speed.plan(config, machine)`` and the same calls as
  ``umtcds_core.train`` (``train.build_model`` → ``speed.apply``) with the collator the report picks. On a CPU:
  padding-free packing (SDPA with a per-sample block mask), the chunked linear+cross-entropy loss on labelled
  positions only, gradient checkpointing; on one CUDA GPU also FlashAttention varlen for packed rows, Liger's fused
  loss, compiled decoder layers, TF32 and pinned batches. P-tuning v2 is our explicit prefix (``umtcds_core.prefix``:
  the prefix is an argument of each attention, so checkpointing and packing work).
* ``plain`` — the Hugging Face default, built as ``bench/train_bench.py`` builds its ``baseline`` variant
  (``train_bench.variant("baseline", ...)``, its padding collator and its forward/backward): batches right-padded to
  the longest sample, the model's own loss over full logits, SDPA, no fused kernels, no compile. P-tuning v2 is
  peft's ``PrefixTuning`` as peft runs it (the prefix handed to the model as a KV cache, hence no checkpointing and
  no packing) — ``methods.wrap_prefix_peft``, the same parameters and initial values as ours.

Both paths load the same weights, build the adapter after the same ``set_seed``, and see the same batches in the same
order (the 45 hand-written demo pairs of ``data/demo_site/qa_seed.jsonl``, rendered with the model's chat template by
``train.encode_conversation`` exactly as ``umtcds train`` renders the demo dataset; shuffled once per epoch, ``--batch``
samples per step), with the same optimizer (AdamW, the preset's learning rate, warm-up + cosine schedule, clipping).
The configs are the presets a user of the embedded model starts from (``config.preset_for(method,
"smollm2-135m")``), with ``lora_dropout`` 0 by default (see below).

What is comparable and what is not. Packing changes the batch composition (one row of concatenated samples instead of
a padded matrix) but not the loss: both paths report the *per-token* mean cross-entropy over the labelled tokens of
the same samples (sum over labelled tokens / their count; the packing collator puts -100 at every sample boundary, so
no label crosses samples). So per-step losses are directly comparable and should differ only by float rounding
(different kernels, reduction orders, chunking), which training then carries forward. Not comparable: (1) dropout —
LoRA's dropout draws masks of the batch's shape, so packed and padded batches would get different masks; the default
``--lora-dropout 0`` removes that noise (``--lora-dropout 0.05``, the preset, shows how much noise it adds);
(2) tokens/s on a CPU says little about a GPU (no compile, no fused kernels there), and with short samples the
padded path wastes little; (3) memory (use ``bench/train_bench.py``).

Tolerance. Two correct paths agree to ~1e-5 at the first step in fp32, but training amplifies rounding differences
(Adam turns the sign of a near-zero gradient into a full learning-rate step), so after 100 steps the curves drift
apart by an amount that depends on the data, the learning rate and the dtype, not on the speed plan. A third path,
``control``, measures that floor in the same run: the plain path on the same samples with each batch's rows in reverse
order (the same mathematics in another float order). On a GPU that control is computed bit for bit alike (each row's
arithmetic does not depend on its place), so in bf16/fp16 add ``plain+fp32`` (``--paths ours,plain,plain+fp32``): the
plain path in float32 is then the floor too, and at step 1 ours may be no farther from it than plain is. The JSON
also compares each path's first-step gradients with the reference's (``--steps 1`` runs only that step).
The tolerance is the larger of the dtype's default (``--tolerance``; 0.02 nats in fp32, ~1% of the starting loss;
0.1 in bf16/fp16, whose 8-bit mantissa already moves one step's loss by ~1e-2) and 3x the largest per-step difference
of a floor (the control's, and float32 plain's where run). The verdict passes when the largest
per-step difference and the final-loss difference of ``ours`` vs ``plain`` are within it, and when over the leading
steps where the control still agrees with plain within 1e-3 (fp32; 2e-2 in bf16/fp16) ours does too — the sharp
part of the test where training is chaotic (P-tuning v2 at the small preset's lr 5e-3). As a yardstick of what a
real change of meaning looks like, the JSON gives ``reference.per_sample_mean_gap``: how far the plain path's own loss
moves when each sample is weighted equally instead of each token (what a packing or loss bug that normalises per row
would report), on the same batches; the verdict line warns when the tolerance is not below it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

MODEL = "smollm2-135m"
DEFAULT_TOLERANCE = {"fp32": 0.02, "bf16": 0.1, "fp16": 0.1}
EARLY_TOLERANCE = {"fp32": 1e-3, "bf16": 2e-2, "fp16": 2e-2}
"""Per-step agreement required over the steps before the control drifts past this much (rounding not yet amplified)."""


# ---- data ---------------------------------------------------------------------------------------------------------
def demo_samples(tokenizer, model_dir, max_input_length: int, max_output_length: int) -> list[dict]:
    """The hand-written demo pairs as ``umtcds train`` encodes them (loss on the answer and its end-of-turn token)."""
    from umtcds_core import train
    from umtcds_core.demo_site import QA_SEED_FILE
    from umtcds_core.fileio import read_jsonl

    stop_ids = train.stop_token_ids(tokenizer, model_dir)
    out = []
    for rec in read_jsonl(QA_SEED_FILE):
        msgs = [{"role": "user", "content": rec["question"]}, {"role": "assistant", "content": rec["answer"]}]
        out.append(train.encode_conversation(tokenizer, msgs, max_input_length, max_output_length, stop_ids))
    return out


def batch_order(samples: list[dict], steps: int, batch: int, seed: int) -> list[list[dict]]:
    """``steps`` batches of ``batch`` samples: the samples reshuffled every epoch (one fixed order for both paths)."""
    rng = random.Random(seed)
    flat: list[dict] = []
    while len(flat) < steps * batch:
        idx = list(range(len(samples)))
        rng.shuffle(idx)
        flat += [samples[i] for i in idx]
    return [flat[i * batch : (i + 1) * batch] for i in range(steps)]


# ---- the two paths ------------------------------------------------------------------------------------------------
PATH_FLAGS = {
    "sdpa": "ours without the FlashAttention varlen kernel (SDPA with an explicit per-sample mask)",
    "eager": "ours without torch.compile",
    "fp32": "float32 weights and compute, no autocast (ours: the SDPA fallback, as in fp32 the varlen kernel is off)",
}
"""Flags a path name may carry after ``+`` (``ours+sdpa+eager``, ``plain+fp32``): where two paths part, each
flag turns off one piece so a run can show which one moves the loss."""


def path_flags(name: str) -> tuple[str, set[str]]:
    """``("ours", {"sdpa"})`` from ``"ours+sdpa"``; an unknown base or flag ends the run with one sentence."""
    base, *flags = name.split("+")
    unknown = set(flags) - set(PATH_FLAGS)
    if base not in ("ours", "plain", "control") or unknown:
        raise SystemExit(
            f"--paths: unknown path {name!r}; use ours, plain or control, optionally with "
            f"+{', +'.join(PATH_FLAGS)} (e.g. ours+sdpa)."
        )
    return base, set(flags)


def build_ours(cfg, spec, tokenizer, machine, precision, flags=frozenset()):
    """``umtcds train``'s own calls: plan → build_model (load → method) → speed.apply; its collator. ``flags``:
    :data:`PATH_FLAGS`."""
    from umtcds_core import speed, train

    plan = speed.plan(cfg, machine, "fp32" if "fp32" in flags else precision)
    if "sdpa" in flags:
        plan = dataclasses.replace(plan, attention="sdpa", varlen_op=False)
    if "eager" in flags:
        plan = dataclasses.replace(plan, compile=False)
    model, _ = train.build_model(cfg, spec, plan)
    report = speed.apply(model, plan)
    return model, plan, report, report.collator(tokenizer)


def build_plain(cfg, spec, machine, flags=frozenset()):
    """The Hugging Face default of ``bench/train_bench.py``'s ``baseline`` variant on the real embedded model
    (``flags``: only ``fp32`` applies)."""
    import torch
    import train_bench
    import transformers

    from umtcds_core import methods, models, speed

    plan, extras = train_bench.variant("baseline", cfg.method, machine)
    if "fp32" in flags:
        plan = dataclasses.replace(plan, precision="fp32")
    m = methods.get(cfg.method)
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    model = models.load_model(
        spec, device=plan.device, dtype=dtypes[m.load_dtype(plan.precision)], attn_implementation=plan.load_attention
    )
    model.config.use_cache = False
    transformers.set_seed(cfg.seed)  # as train.build_model: the adapter's initial values do not depend on the path
    wrap = methods.wrap_prefix_peft if extras.get("prefix") == "peft" else m.wrap
    model, _ = wrap(model, cfg, kbit=plan.kbit, checkpointing=plan.checkpointing)
    report = speed.apply(model, plan)
    return model, plan, report, None  # None: train_bench.pad_collate, the padded batches


def per_sample_mean(logits, labels) -> float:
    """The loss with every sample weighted equally (mean over rows of each row's per-token mean): the yardstick of
    what a per-row normalisation would change."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        lg, y = logits[:, :-1].float(), labels[:, 1:].to(logits.device)
        ce = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), y.reshape(-1), ignore_index=-100, reduction="none")
        ce = ce.view(y.shape)
        mask = (y != -100).float()
        rows = (ce * mask).sum(1) / mask.sum(1).clamp(min=1)
        return float(rows[mask.sum(1) > 0].mean())


def run_path(
    name: str, cfg, spec, tokenizer, batches, device: str, precision: str, log=print, grads: dict | None = None
) -> dict:
    """Train ``cfg`` on ``batches`` along one path; per-step losses, tokens/s and what the path applied.
    ``grads``: filled with the first step's gradients (float32, on the CPU, by parameter name) before clipping."""
    import gc

    import torch
    import train_bench
    import transformers

    from umtcds_core import speed

    machine = speed.Machine.detect(device)
    base, flags = path_flags(name)
    if base == "control":  # the plain path on the same samples in another row order: the float-noise floor
        batches = [list(reversed(b)) for b in batches]
    t0 = time.perf_counter()
    if base == "ours":
        model, plan, report, collator = build_ours(cfg, spec, tokenizer, machine, precision, flags)
    else:
        model, plan, report, collator = build_plain(cfg, spec, machine, flags)
    build_s = time.perf_counter() - t0
    model.train()
    cuda = plan.cuda
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=cuda)
    steps = len(batches)
    warmup = math.ceil(cfg.warmup_ratio * steps) if cfg.warmup_ratio < 1 else int(cfg.warmup_ratio)
    sched = transformers.get_scheduler(cfg.lr_scheduler, opt, num_warmup_steps=warmup, num_training_steps=steps)
    # the Trainer runs the forward under autocast when bf16/fp16 is on (as umtcds train sets it on a GPU)
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(plan.precision)
    autocast = torch.autocast("cuda", dtype=half) if cuda and half else contextlib.nullcontext()
    tf32_before = torch.backends.cuda.matmul.allow_tf32
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = plan.tf32
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    losses, step_s, gaps, real, processed = [], [], [], [], []
    for i, feats in enumerate(batches):
        t = time.perf_counter()
        out, batch = train_bench.forward_backward(model, feats, collator, pad_id, device, autocast, plan.pinned)
        if grads is not None and i == 0:
            grads.update({_plain_name(n): p.grad.detach().float().cpu() for n, p in model.named_parameters()
                          if p.requires_grad and p.grad is not None})  # fmt: skip
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss = float(out.loss.detach())  # waits for the GPU: the step's time includes all its work
        step_s.append(time.perf_counter() - t)
        losses.append(loss)
        real.append(sum(len(f["input_ids"]) for f in feats))
        processed.append(int(batch["input_ids"].numel()))
        if getattr(out, "logits", None) is not None and batch["input_ids"].shape[0] > 1:
            gaps.append(abs(per_sample_mean(out.logits, batch["labels"]) - loss))  # outside the timed step
        del out, batch
        if i % 20 == 0 or i == steps - 1:
            log(f"[{cfg.method} {name}] step {i + 1}/{steps} loss {loss:.4f} ({step_s[-1]:.2f} s)")
    timed = slice(1, None) if steps > 1 else slice(None)  # the first step (allocations, lazy init) is warm-up
    seconds = sum(step_s[timed])
    res = {
        "path": name,
        "losses": [round(x, 6) for x in losses],
        "tokens_per_s": round(sum(real[timed]) / seconds, 1) if seconds else None,
        "tokens_per_s_note": "real (non-padding) tokens per second over steps 2..N",
        "step_s_mean": round(seconds / max(1, len(step_s[timed])), 4),
        "real_tokens": sum(real),
        "processed_positions": sum(processed),
        "padding_fraction": round(1 - sum(real) / sum(processed), 4),
        "build_s": round(build_s, 1),
        "plan": {k: v for k, v in plan.as_dict().items() if k not in ("reasons", "compile_options")},
        "applied": {**report.as_dict(), "packing": report.packing, "checkpointing": report.checkpointing,
                    "notes": report.notes},
        "prefix": ("umtcds_core.prefix (explicit)" if base == "ours" else "peft PrefixTuning (KV cache)")
        if cfg.method == "ptuning-v2" else None,
    }  # fmt: skip
    if gaps:
        res["per_sample_mean_gap"] = {"mean": round(sum(gaps) / len(gaps), 5), "max": round(max(gaps), 5)}
    torch.backends.cuda.matmul.allow_tf32 = tf32_before
    del model, opt, params
    if plan.compile:
        torch._dynamo.reset()
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return res


def _plain_name(name: str) -> str:
    """A parameter's name without the wrappers compile and checkpointing add, so the paths' names meet."""
    for part in ("_orig_mod.", "_checkpoint_wrapped_module."):
        name = name.replace(part, "")
    return name


def grad_agreement(got: dict, want: dict) -> dict:
    """How close one path's first-step gradients are to a reference's: relative error and cosine over the parameters
    both have (a wrong backward shows here before any training noise)."""
    import torch

    names = sorted(set(got) & set(want))
    if not names:
        return {"parameters": 0}
    a = torch.cat([got[n].flatten() for n in names]).double()
    b = torch.cat([want[n].flatten() for n in names]).double()
    return {
        "parameters": len(names),
        "relative_error": round(float((a - b).norm() / b.norm().clamp(min=1e-30)), 6),
        "cosine": round(float(torch.nn.functional.cosine_similarity(a, b, dim=0)), 6),
    }


def compare(ours: dict, plain: dict, tolerance: float) -> dict:
    """Differences of the two curves, and the verdict against ``tolerance``."""
    a, b = ours["losses"], plain["losses"]
    diffs = [abs(x - y) for x, y in zip(a, b, strict=True)]
    tail = max(1, len(a) // 10)
    out = {
        "max_abs_diff": round(max(diffs), 6),
        "max_abs_diff_step": diffs.index(max(diffs)) + 1,
        "mean_abs_diff": round(sum(diffs) / len(diffs), 6),
        "first_step_diff": round(a[0] - b[0], 6),
        "final_loss": {"ours": a[-1], "plain": b[-1], "diff": round(a[-1] - b[-1], 6)},
        f"last_{tail}_steps_mean_diff": round(sum(a[-tail:]) / tail - sum(b[-tail:]) / tail, 6),
        "loss_drop": {"ours": round(a[0] - a[-1], 4), "plain": round(b[0] - b[-1], 4)},
    }
    if ours.get("tokens_per_s") and plain.get("tokens_per_s"):
        out["speedup"] = round(ours["tokens_per_s"] / plain["tokens_per_s"], 3)
    gap = (plain.get("per_sample_mean_gap") or {}).get("mean")
    ok = out["max_abs_diff"] <= tolerance and abs(out["final_loss"]["diff"]) <= tolerance
    out["pass"] = ok
    out["tolerance_below_yardstick"] = None if gap is None else tolerance < gap
    return out


def verdict_line(method: str, cmp: dict, tolerance: float, steps: int) -> str:
    word = "PASS" if cmp["pass"] else "FAIL"
    line = (
        f"{word} {method}: {steps} steps, max |Δloss| {cmp['max_abs_diff']:.2g} (step {cmp['max_abs_diff_step']}), "
        f"mean {cmp['mean_abs_diff']:.2g}, final Δ {cmp['final_loss']['diff']:+.2g} vs tolerance {tolerance:g}"
    )
    if "speedup" in cmp:
        line += f"; {cmp['speedup']:.2f}x tokens/s"
    if cmp["tolerance_below_yardstick"] is False:
        line += " (warning: the tolerance is not below the per-sample-weighting yardstick)"
    return line


def machine_info(device: str) -> dict:
    import torch

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.cuda.current_device())
    with contextlib.suppress(OSError):
        info["load_avg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument(
        "--model",
        default=MODEL,
        help="the embedded model, or its GGUF file where the package is not installed (a GPU machine)",
    )
    ap.add_argument("--methods", default="lora,ptuning-v2")
    ap.add_argument("--steps", type=int, default=100, help="optimizer steps per path (the rule asks for >= 100)")
    ap.add_argument("--batch", type=int, default=4, help="samples per step")
    ap.add_argument("--max-input-length", type=int, default=128)
    ap.add_argument("--max-output-length", type=int, default=64)
    ap.add_argument("--lora-dropout", type=float, default=0.0, help="0: no dropout noise between the paths")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate instead of the preset's (P-tuning v2's 5e-3 is chaotic in bf16: a lower one shows "
        "differences the noise would hide)",
    )
    ap.add_argument(
        "--paths",
        default="ours,plain,control",
        help="ours, plain, control (plain with each batch reversed: the float-noise floor), each optionally with "
        "+sdpa, +eager, +fp32 (ours+sdpa: no varlen kernel; see PATH_FLAGS); merged per method in --out",
    )
    ap.add_argument("--tolerance", type=float, default=None, help="nats; default 0.02 in fp32, 0.1 in bf16/fp16")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for torch (0: torch's default); on a busy 2-core machine 1 thread ran 5-9x faster than 2",
    )
    ap.add_argument(
        "--out", help="also write the JSON here; methods already in that file from an earlier run are kept (merged)"
    )
    args = ap.parse_args(argv)
    for name in args.paths.split(","):
        if name.strip():
            path_flags(name.strip())  # a typo ends the run before any model loads

    import torch
    import transformers

    from umtcds_core import models, train
    from umtcds_core.config import preset_for

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("--device cuda: no CUDA GPU is visible here; use --device cpu.", file=sys.stderr)
        raise SystemExit(2)
    if device == "cuda":
        device = f"cuda:{torch.cuda.current_device()}"

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    spec = models.resolve(args.model)
    model_dir = models.hf_folder(spec)
    tokenizer = models.load_tokenizer(spec, padding_side="right")
    samples = demo_samples(tokenizer, model_dir, args.max_input_length, args.max_output_length)
    batches = batch_order(samples, args.steps, args.batch, args.seed)
    started = time.time()
    result: dict = {
        "bench": "loss_curve",
        "model": f"{args.model} ({spec.kind}: {spec.gguf_file or spec.path.name}, pretrained weights)",
        "machine": machine_info(device),
        "data": {
            "source": "data/demo_site/qa_seed.jsonl (the demo's hand-written pairs), encoded by "
            "train.encode_conversation with the model's chat template",
            "samples": len(samples),
            "sample_tokens": {
                "min": min(len(s["input_ids"]) for s in samples),
                "mean": round(sum(len(s["input_ids"]) for s in samples) / len(samples), 1),
                "max": max(len(s["input_ids"]) for s in samples),
            },
            "batch": args.batch,
            "steps": args.steps,
            "order": f"reshuffled every epoch, random.Random({args.seed}); the same batches for both paths",
        },
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "methods": {},
    }
    for pkg in ("peft", "liger_kernel", "triton"):
        try:
            result["versions"][pkg] = __import__(pkg).__version__
        except Exception:  # noqa: BLE001 - not installed (CPU machines)
            result["versions"][pkg] = None
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        cfg = preset_for(
            method,
            MODEL,  # the preset of the embedded model also when --model is its GGUF file
            max_input_length=args.max_input_length,
            max_output_length=args.max_output_length,
            per_device_batch_size=args.batch,
            max_steps=args.steps,
            lora_dropout=args.lora_dropout,
            seed=args.seed,
            **({"learning_rate": args.lr} if args.lr else {}),
        )
        precision = train.pick_precision(cfg, "cuda" if device.startswith("cuda") else "cpu")
        tolerance = args.tolerance if args.tolerance is not None else DEFAULT_TOLERANCE[precision]
        t_method = time.time()
        names = [n.strip() for n in args.paths.split(",") if n.strip()]
        step1: dict[str, dict] = {}
        paths = {
            name: run_path(name, cfg, spec, tokenizer, batches, device, precision, log, step1.setdefault(name, {}))
            for name in names
        }
        keys = ("learning_rate", "lr_scheduler", "warmup_ratio", "weight_decay", "max_grad_norm",
                "gradient_checkpointing", "packing", "seed")  # fmt: skip
        settings = {k: getattr(cfg, k) for k in keys}
        settings.update(precision=precision, max_input_length=args.max_input_length,
                        max_output_length=args.max_output_length)  # fmt: skip
        if method == "ptuning-v2":
            settings["num_virtual_tokens"] = cfg.num_virtual_tokens
        else:
            settings.update(lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout)
        ref = "plain+fp32" if "plain+fp32" in step1 else "plain"
        result["methods"][method] = {
            "machine": machine_info(device),
            "settings": settings,
            "default_tolerance": tolerance,
            "seconds": round(time.time() - t_method, 1),
            "paths": paths,
        }
        if ref in step1 and len(step1) > 1:  # the first step's gradients, before any update: each path vs ref
            result["methods"][method][f"step1_gradients_vs_{ref}"] = {
                n: grad_agreement(g, step1[ref]) for n, g in step1.items() if n != ref
            }
        line = summarise(method, result["methods"][method], args.steps)
        print(line, flush=True)
    result["seconds"] = round(time.time() - started, 1)
    result["pass"] = all(m.get("comparison", {}).get("pass") for m in result["methods"].values())
    if args.out:
        from umtcds_core.fileio import write_json_atomic

        result = merged(Path(args.out), result)
        write_json_atomic(Path(args.out), result)
    print(json.dumps(result, indent=1))
    return result


def merged(path: Path, result: dict) -> dict:
    """``result`` plus the methods of an earlier run in ``path`` on the same data (methods run one by one, e.g. in
    parallel single-thread processes on a CPU, or in separate GPU calls); each method keeps its own machine info."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return result
    if old.get("bench") != "loss_curve" or old.get("data") != result["data"]:
        return result
    methods = dict(old.get("methods", {}))
    for name, m in result["methods"].items():
        before = methods.get(name)
        if before and before.get("settings") == m["settings"]:  # the same run's other paths
            m = {
                **m,
                "paths": {**before.get("paths", {}), **m["paths"]},
                "seconds": before.get("seconds", 0) + m["seconds"],
            }
            m["machines"] = [before.get("machine"), m["machine"]]
            summarise(name, m, result["data"]["steps"])
        methods[name] = m
    out = {**result, "methods": methods}
    out["pass"] = all(m.get("comparison", {}).get("pass") for m in out["methods"].values())
    out["seconds"] = round(sum(m.get("seconds", 0) for m in out["methods"].values()), 1)
    return out


def summarise(method: str, m: dict, steps: int) -> str:
    """Fill ``m`` (one method's entry) with the comparisons its paths allow; returns the verdict line.

    The tolerance is the larger of the dtype's default and 3x the largest per-step difference of a noise floor:
    training amplifies rounding differences (Adam turns the sign of a near-zero gradient into a full learning-rate
    step), and a floor measures how far the *same* computation drifts on this data under other rounding. Floors:
    ``control`` (other float order) and, in bf16/fp16, ``plain+fp32`` (the Hugging Face default's own
    half-precision error — on a GPU the control's reversed rows are computed bit for bit alike, so it shows no
    noise there). With ``plain+fp32`` the first step, before any update, is also checked: ours may be no farther from
    float32 than plain is (or than the early tolerance)."""
    paths = m["paths"]
    tolerance = m["default_tolerance"]
    precision = m["settings"].get("precision")
    early_tol = EARLY_TOLERANCE.get(precision, EARLY_TOLERANCE["bf16"])
    floors = {}
    if "plain" in paths and "control" in paths:
        floors["control"] = ("plain vs plain with each batch's samples in reverse order (same math, other float order)",
                             paths["control"])  # fmt: skip
    if "plain" in paths and "plain+fp32" in paths and precision != "fp32":
        floors["half_precision_floor"] = (
            "plain vs the same path in float32: the Hugging Face default's own half-precision error",
            paths["plain+fp32"],
        )
    for key, (what, path) in floors.items():
        ctl = compare(path, paths["plain"], tolerance)
        m[key] = {k: ctl[k] for k in ("max_abs_diff", "max_abs_diff_step", "mean_abs_diff", "final_loss")}
        m[key]["what"] = what
        tolerance = max(tolerance, round(3 * ctl["max_abs_diff"], 4))
    if floors and "ours" in paths:
        # before the drift: the leading steps where every floor still agrees with plain; there ours must agree too
        p = paths["plain"]["losses"]
        k = min(
            next((i for i, (x, y) in enumerate(zip(path["losses"], p, strict=True)) if abs(x - y) > early_tol), len(p))
            for _, path in floors.values()
        )
        if k:
            early = [abs(x - y) for x, y in zip(paths["ours"]["losses"][:k], p[:k], strict=True)]
            m["before_drift"] = {
                "steps": k,
                "tolerance": early_tol,
                "max_abs_diff_ours": round(max(early), 6),
                "max_abs_diff_control": round(
                    max(
                        abs(x - y)
                        for _, path in floors.values()
                        for x, y in zip(path["losses"][:k], p[:k], strict=True)
                    ),
                    6,
                ),
                "pass": max(early) <= early_tol,
            }
    if "half_precision_floor" in floors and "ours" in paths:
        f1 = paths["plain+fp32"]["losses"][0]
        ours1, plain1 = abs(paths["ours"]["losses"][0] - f1), abs(paths["plain"]["losses"][0] - f1)
        m["first_step_vs_fp32"] = {
            "ours": round(ours1, 6),
            "plain": round(plain1, 6),
            "pass": ours1 <= max(plain1, early_tol),
        }
    m["tolerance"] = tolerance
    m["reference"] = {"per_sample_mean_gap": (paths.get("plain") or {}).get("per_sample_mean_gap")}
    others = [p for p in paths if p not in ("ours", "plain", "control")]
    if "plain" in paths and others:  # the flagged paths (PATH_FLAGS), each against plain
        m["against_plain"] = {
            p: {k: v for k, v in compare(paths[p], paths["plain"], tolerance).items() if k != "pass"} for p in others
        }
    if "ours" not in paths or "plain" not in paths:
        return f"{method}: ran {', '.join(paths)}; nothing to compare yet"
    m["comparison"] = cmp = compare(paths["ours"], paths["plain"], tolerance)
    early, first = m.get("before_drift"), m.get("first_step_vs_fp32")
    if early is not None:
        cmp["pass"] = cmp["pass"] and early["pass"]
    if first is not None:
        cmp["pass"] = cmp["pass"] and first["pass"]
    m["verdict"] = verdict_line(method, cmp, tolerance, steps)
    if "control" in m:
        m["verdict"] += f" (control: max {m['control']['max_abs_diff']:.2g})"
    if "half_precision_floor" in m:
        m["verdict"] += f" (plain vs float32: max {m['half_precision_floor']['max_abs_diff']:.2g})"
    if first is not None:
        m["verdict"] += f"; step 1 vs float32: ours {first['ours']:.2g}, plain {first['plain']:.2g}"
    if early is not None:
        m["verdict"] += (
            f"; first {early['steps']} steps (before the control drifts past {early['tolerance']:g}): "
            f"max {early['max_abs_diff_ours']:.2g}"
        )
    return m["verdict"]


if __name__ == "__main__":
    main()
