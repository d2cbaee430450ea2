"""Training speed and memory: the Hugging Face default path vs the path ``umtcds train`` takes. Prints JSON.

Usage::

    python bench/train_bench.py                              # GPU: GLM-4-9B shape, LoRA, QLoRA, P-tuning v2
    python bench/train_bench.py --methods lora --variants baseline,ours,ours-pack --rounds 2
    python bench/train_bench.py --tiny                       # tiny GLM on CPU: a smoke test of the same code
    python bench/train_bench.py --methods ptuning-v2 --other-variants baseline,ours,ours+pad \
        --memory-cap-gib 22 --out-dir bench/results         # P-tuning v2 on a 24 GB card's budget (issue 19)
    torchrun --nproc_per_node 2 bench/train_bench.py --ddp --methods lora --variants ours \
        --compare-to bench/results/train_h200.json           # 2 GPUs, DDP; ratio to the 1-GPU "ours" figure

What is measured. A random-init model of GLM-4-9B's exact shape (``transformers.GlmConfig()`` defaults, no
download) in bf16 with SDPA attention, trained on a tokenizer-free synthetic set of QA-like samples (prompt 30-250
tokens, answer 20-400, labels -100 on the prompt), 8 samples per optimizer step, fused AdamW (lr 5e-4), gradient
clipping at 1.0 — the settings ``umtcds train`` uses (``--autocast`` adds bf16 autocast around the forward, as
accelerate's mixed precision does under DDP). Every variant sees the same batches in the same order from the same
initial weights, so the first-step losses must agree (within bf16 noise); tokens/s counts real (non-padding)
tokens, prompt tokens included. Variants are built fresh, warmed up, and alternated over ``--rounds``.

* ``baseline`` — the Hugging Face default: batches padded to the longest sample, gradient checkpointing on every
  layer, the model's own loss (full logits upcast to fp32); QLoRA prepared with peft's
  ``prepare_model_for_kbit_training`` (frozen 16-bit weights upcast to fp32); P-tuning v2 as peft's PrefixTuning
  (prefix in the KV cache), hence without checkpointing, which would drop it.
* ``ours`` — ``speed.plan(TrainConfig(method=...), this machine)``, built and applied exactly as ``umtcds train``
  does (load → ``methods`` wrap → ``speed.apply``); on one CUDA GPU: padding-free packing with per-sample
  FlashAttention varlen attention, the fused linear+cross-entropy loss on labelled positions only, the decoder layers
  compiled (``speed.compile_options``), TF32, pinned batches copied without a host wait, QLoRA prepared without the
  fp32 upcast. P-tuning v2 passes its prefix into attention explicitly (``umtcds_core.prefix``): checkpointed,
  packed (SDPA with a widened block mask), compiled one layer per call; under ``--ddp`` nothing is compiled — as
  the plan says for ``umtcds train``.

``--memory-cap-gib 22`` caps this process's CUDA allocator (``torch.cuda.set_per_process_memory_fraction``) as a
24 GB card would: a variant that needs more fails with CUDA out of memory (recorded as its error). Each result
carries ``memory_estimate``: ``memory.estimate_memory`` for the variant's settings and largest step beside the
measured peak (error %), and the log line of every variant prints both.
* Ablations (each a change of the plan, ``VARIANTS``): ``ours-eager`` — without compile (Liger RMSNorm/SwiGLU
  kernels instead); ``ours-noliger`` — eager with the chunked PyTorch loss and no Liger kernels; ``ours-sdpa`` —
  packing through SDPA's dense block-diagonal mask; ``ours-pack`` — packing only; ``ours-skipN`` — the last N layers
  not checkpointed; ``ours-budgetN`` — ``ours`` planned for a memory budget of N GiB instead of the default 20
  (``memory_budget_gib``: the last layers that fit keep their activations, ``speed.keep_layers``). Composable flags (``FLAGS``): ``ours+sg+cpp`` = ``ours`` plus guard-eval skipping
  (:class:`GuardSkipping`) and Inductor's C++ wrapper; ``+g1/g4``, ``+noac``, ``+nore``, ``+ng``, ``+nokl``,
  ``+nosd``, ``+fr``, ``+notf32``, ``+nodrop`` undo or change one compile option or setting each. Earlier named
  variants and what they measured: ``bench/results/NOTES.md``.

Every variant is built fresh, warmed up (``--warmup`` steps, which include the compile) and the variants alternate over
``--rounds``; the JSON gives the mean (``speedup``), the median (``speedup_median``) and the per-round ratios
(``speedup_rounds``) — the baseline's first round in a process has been slow in every H200 run, so read the later
rounds. The headline of ``bench/results/train_h200.json``: ``--methods lora --variants baseline,ours,ours+nosd,ours+fr
--rounds 3 --steps 10 --gpu-warmup 5``.

MFU counts 4·N FLOPs per real token (LoRA/QLoRA/P-tuning: forward 2N + activation gradients 2N, no weight
gradients; N = all parameters of the base model, 9.40 B), over the bf16 dense peak (989 TFLOP/s on H100/H200) and over
the matmul rate measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY = dict(
    num_hidden_layers=2,
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=2048,
)
_OPTIONS: dict = {}  # process-wide bench options (set by main)
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "4090": 165.0}
# Variants are speed plans: "ours" is exactly speed.plan(TrainConfig(method=...), this machine) — what umtcds train
# does here — and every other variant replaces some of its decisions (dataclasses.replace on the frozen plan).
# ``compile_options`` keys in a variant update the plan's compile options.
VARIANTS: dict[str, dict] = {
    # the Hugging Face default: padded batches, full-logit loss, peft's k-bit preparation (fp32 upcast)
    "baseline": dict(attention="sdpa", varlen_op=False, packing=False, loss="standard", kernels=False, compile=False,
                     kbit="peft", tf32=False, pinned=False),
    "ours": {},
    # the eager path (umtcds train with compile: off, or where torch.compile is unavailable)
    "ours-eager": dict(compile=False),
    "ours-noliger": dict(compile=False, loss="chunked", kernels=False),
    "ours-sdpa": dict(compile=False, attention="sdpa", varlen_op=False, loss="chunked", kernels=False),
    "ours-pack": dict(compile=False, attention="sdpa", varlen_op=False, loss="standard", kernels=False),
}  # fmt: skip
# composable flags: "ours+sg+cpp" = ours with those changes (compile options, Inductor settings, diagnostics)
FLAGS = {
    "g1": {"compile_options": {"group": 1}},
    "g2": {"compile_options": {"group": 2}},
    "g4": {"compile_options": {"group": 4}},
    "noac": {"compile_options": {"adapter_autocast": False}},  # fp32 adapter matmuls (TF32) instead of 16-bit
    "nore": {"compile_options": {"reentrant": False}},  # the layer's own non-reentrant checkpointing
    "ng": {"compile_options": {"skip_module_guards": False}},  # module guards evaluated on every call
    "nokl": {"compile_options": {"keep_last": False}},  # the last run of layers checkpointed too
    "nosd": {"compile_options": {"shared_dropout": False}},  # a dropout mask per projection (peft's default)
    "sg": {"compile_options": {"wrap_train": "guard-skipping"}},  # guard evaluation skipped once warm
    "cpp": {"inductor": {"cpp_wrapper": True}},  # Inductor's C++ wrapper launches the kernels
    "fr": {"inductor": {"fallback_random": True}},  # eager random kernels instead of Triton-generated ones
    "notf32": {"tf32": False},
    "nodrop": {"lora_dropout": 0.0},  # diagnostic: what LoRA dropout costs (not the users' default)
    "pad": {"packing": False},  # padded batches instead of packed rows (P-tuning v2: packing is new, measure it)
    "nogc": {"checkpointing": False},  # no gradient checkpointing (the memory it saves, the time it costs)
}


class GuardSkipping:
    """``wrap_train`` of ``speed.compile_layers`` (measured, not shipped: no gain on the H200, see
    ``bench/results/NOTES.md``). Calls a compiled layer function under ``skip_guard_eval_unsafe`` (only the guards that tell its cached graphs
    apart are evaluated) for call kinds it has compiled before: grad mode × layers per call. A first call of a kind
    runs with all guards and compiles; a recompile the stance refuses (PyTorch raises rather than guess) is retried
    the same way, so a new shape class costs one exception, never a wrong graph."""

    def __init__(self, fn):
        self.fn = fn
        self.seen: set = set()

    def __call__(self, inner, layers, *args, **kwargs):
        import torch

        key = (torch.is_grad_enabled(), len(layers))
        if key in self.seen:
            try:
                with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                    return self.fn(inner, layers, *args, **kwargs)
            except RuntimeError as exc:
                if "skip_guard_eval_unsafe" not in str(exc):
                    raise
        out = self.fn(inner, layers, *args, **kwargs)
        self.seen.add(key)
        return out


def _method_row(method: str):
    from umtcds_core import methods

    return methods.get(method)


def variant(name: str, method: str, machine) -> tuple:
    """``(plan, extras)`` of a variant: the speed plan and the bench-only settings (Inductor options, dropout)."""
    import dataclasses

    from umtcds_core import speed
    from umtcds_core.config import TrainConfig

    base, *flags = name.split("+")
    changes: dict = {}
    if base.startswith("ours-skip"):  # the last N layers not checkpointed
        changes["skip_last"] = int(base[len("ours-skip") :])
        base = "ours"
    elif base.startswith("ours-budget"):  # ours under a memory budget of N GiB (see budgeted)
        base = "ours"
    changes = {**VARIANTS[base], **changes}
    extras: dict = {"inductor": {}, "lora_dropout": None, "prefix": None}
    if base == "baseline" and _method_row(method).adapter == "prefix":
        # the Hugging Face default of P-tuning v2: peft's PrefixTuning, whose prefix travels in the KV cache —
        # dropped by checkpointed layers, so it runs without checkpointing (and padded)
        changes.update(checkpointing=False, packing=False)
        extras["prefix"] = "peft"
    options = {}
    for f in flags:
        for key, value in FLAGS[f].items():
            if key == "compile_options":
                options.update(value)
            elif key == "inductor":
                extras["inductor"].update(value)
            elif key == "lora_dropout":
                extras["lora_dropout"] = value
            else:
                changes[key] = value
    plan = speed.plan(TrainConfig(method=method, compile="auto"), machine)
    if _OPTIONS.get("compile_on_cpu") and not machine.cuda and name != "baseline" and "compile" not in changes:
        changes["compile"] = True  # CPU smoke test of the compiled path (umtcds train does not compile on CPU)
    if options.get("wrap_train") == "guard-skipping":
        options["wrap_train"] = GuardSkipping
    plan = dataclasses.replace(plan, **changes, compile_options={**plan.compile_options, **options})
    return plan, extras


def budgeted(plan, name: str, method: str, hf_cfg, batches, machine):
    """The plan's un-checkpointed layers for the largest of ``batches`` under a memory budget, as ``umtcds train``
    plans them (``speed.keep_layers``): ``ours`` with the config's default budget, ``ours-budgetN`` with N GiB."""
    from umtcds_core import memory, speed
    from umtcds_core.config import TrainConfig

    base = name.split("+")[0]
    if not base.startswith("ours") or base.startswith("ours-skip"):
        return plan
    tc = TrainConfig(method=method)
    if base.startswith("ours-budget"):
        tc = tc.replace(memory_budget_gib=float(base[len("ours-budget") :]))
    tokens = max(sum(len(f["input_ids"]) for f in b) for b in batches)
    shape = memory.shape_from_hf_config(hf_cfg.to_dict())
    return speed.keep_layers(plan, tc, shape, tokens, machine)


# ---- data ---------------------------------------------------------------------------------------------------------
def make_samples(n: int, vocab: int, seed: int = 0, prompt=(30, 250), answer=(20, 400)) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        p, a = rng.randint(*prompt), rng.randint(*answer)
        ids = [rng.randrange(10, vocab) for _ in range(p + a)]
        out.append({"input_ids": ids, "labels": [-100] * p + ids[p:]})
    return out


def rank_batches(batches: list[list[dict]], world: int, rank: int, rebalance: bool) -> list[list[dict]]:
    """This rank's micro-batches: round-robin, or (``rebalance``) each global batch of ``world`` micro-batches dealt
    by ``speed.packed_rebalance_sampler`` (what ``umtcds train`` uses on several GPUs) so ranks get equal tokens."""
    if world == 1:
        return batches
    if not rebalance:
        return batches[rank::world]
    from umtcds_core import speed

    out = []
    for g in range(0, len(batches) - world + 1, world):
        flat = [f for b in batches[g : g + world] for f in b]
        sampler = speed.packed_rebalance_sampler(
            [len(f["input_ids"]) for f in flat], len(batches[g]), world, rank, drop_last=True
        )
        sampler.shuffle = False
        out.extend([flat[i] for i in idx] for idx in sampler)
    return out


def pad_collate(features: list[dict], pad_id: int) -> dict:
    """The Hugging Face default: right-pad to the longest sample (DataCollatorForSeq2Seq, padding='longest')."""
    import torch

    longest = max(len(f["input_ids"]) for f in features)
    ids, mask, labels = [], [], []
    for f in features:
        k = longest - len(f["input_ids"])
        ids.append(f["input_ids"] + [pad_id] * k)
        mask.append([1] * len(f["input_ids"]) + [0] * k)
        labels.append(f["labels"] + [-100] * k)
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": torch.tensor(labels)}


# ---- model --------------------------------------------------------------------------------------------------------
def quantize_4bit_(model, compute_dtype):
    """Swap every decoder nn.Linear for a bitsandbytes NF4 Linear4bit (double quant), as a 4-bit load does."""
    import bitsandbytes as bnb
    import torch

    lm = model
    for parent in list(lm.model.layers.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear:
                continue
            q = bnb.nn.Linear4bit(
                child.in_features,
                child.out_features,
                bias=child.bias is not None,
                compute_dtype=compute_dtype,
                compress_statistics=True,
                quant_type="nf4",
                device="meta",
            )
            w = bnb.nn.Params4bit(
                child.weight.data, requires_grad=False, compress_statistics=True, quant_type="nf4", module=q
            )
            q.weight = w.to(child.weight.device)
            if child.bias is not None:
                q.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            setattr(parent, child_name, q)
            del child, w
    model.is_loaded_in_4bit = True
    gc.collect()
    torch.cuda.empty_cache()
    return model


def build(hf_cfg, method: str, plan, extras: dict, dtype, seed: int = 0):
    """A fresh model for one variant (same seed, same weights), wrapped by its method and sped up by ``plan``:
    the same three calls as ``umtcds train`` (load → method → speed.apply); returns (model, report)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    from umtcds_core import methods, speed
    from umtcds_core.config import TrainConfig

    # the defaults users get: r=8, alpha 32, dropout 0.1, 128 virtual tokens
    tc = TrainConfig(method=method)
    if extras.get("lora_dropout") is not None:
        tc = tc.replace(lora_dropout=extras["lora_dropout"])
    transformers.set_seed(seed)
    with torch.device(plan.device):
        model = AutoModelForCausalLM.from_config(hf_cfg, dtype=dtype, attn_implementation=plan.load_attention)
    model.config.use_cache = False
    m = methods.get(method)
    if m.quantised:
        quantize_4bit_(model, dtype)  # a 4-bit load of the random-init model
    transformers.set_seed(seed)
    wrap = methods.wrap_prefix_peft if extras.get("prefix") == "peft" else m.wrap  # same init values either way
    model, targets = wrap(model, tc, kbit=plan.kbit, checkpointing=plan.checkpointing)
    if plan.compile:
        torch._dynamo.reset()  # a variant's compile options must not reuse another variant's compiled code
        torch._inductor.config.cpp_wrapper = bool(extras["inductor"].get("cpp_wrapper", False))
        torch._inductor.config.fallback_random = bool(extras["inductor"].get("fallback_random", False))
    report = speed.apply(model, plan)
    model.train()
    return model, report, targets


def tc_overrides(extras: dict) -> dict:
    """The TrainConfig changes a variant's extras make (what :func:`build` trains and the estimate must describe)."""
    return {"lora_dropout": extras["lora_dropout"]} if extras.get("lora_dropout") is not None else {}


def variant_estimate(method, hf_cfg, plan, packed: bool, positions: int, batch: int, peak, overrides=None) -> dict:
    """``memory.estimate_memory`` for what a variant ran: its method's defaults, its checkpointing/packing/loss, the
    model's shape, and the largest step's positions (the peak's step) — beside the measured peak (error %)."""
    from umtcds_core import memory
    from umtcds_core.config import TrainConfig

    if not positions:
        return {"error": "no timed step"}
    sample = max(16, -(-positions // max(1, batch)))  # padded: the longest sample; packed: the row's share
    tc = TrainConfig(
        method=method,
        precision=plan.precision,
        per_device_batch_size=batch,
        gradient_checkpointing=plan.checkpointing,
        packing=packed,
        max_input_length=sample // 2,
        max_output_length=sample - sample // 2,
        **(overrides or {}),
    )
    shape = memory.shape_from_hf_config(hf_cfg.to_dict())
    est = memory.estimate_memory(
        tc, shape, tokens=positions, gpus=[], verdict=False, fused_loss=plan.loss != "standard",
        kept=plan.skip_last, compiled=plan.compile,
    )  # fmt: skip
    out = {
        "tokens_per_step_used": positions,
        "estimate_peak_allocated_gib": est["peak_allocated_gib"],
        "estimate_total_gib": est["total_gib"],
        "parts_gib": {
            k: est[k] for k in ("weights_gib", "trainable_state_gib", "activations_gib", "logits_gib", "overlap_gib")
        },
        "measured_peak_gib": peak,
    }
    if peak:
        out["error_pct"] = round(100 * (est["peak_allocated_gib"] - peak) / peak, 1)
    return out


# ---- one timed run -------------------------------------------------------------------------------------------------
def forward_backward(model, feats, collator, pad_id, device, autocast, pinned=False):
    """One micro-batch: collate (packed or padded), copy to ``device``, forward, backward; returns (output, batch).

    ``pinned``: page-locked batches copied without blocking the host, as ``umtcds train``'s Trainer does
    (``dataloader_pin_memory`` + ``non_blocking``); otherwise a plain copy, the Hugging Face default's host wait.
    """
    batch = collator(feats) if collator else pad_collate(feats, pad_id)
    if pinned:
        batch = {k: v.pin_memory().to(device, non_blocking=True) if hasattr(v, "to") else v for k, v in batch.items()}
    else:
        batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
    with autocast:
        out = model(**batch)
    out.loss.backward()
    return out, batch


def run_variant(
    name,
    method,
    hf_cfg,
    batches,
    warmup,
    steps,
    device,
    dtype,
    rank=0,
    world=1,
    log=print,
    profile=None,
    rebalance=True,
    use_autocast=False,
) -> dict:
    import torch

    from umtcds_core import speed

    machine = speed.Machine.detect(device, world)
    plan, extras = variant(name, method, machine)
    plan = budgeted(plan, name, method, hf_cfg, batches[: warmup + steps], machine)
    cuda = plan.cuda
    pinned = plan.pinned
    t0 = time.perf_counter()
    model, report, targets = build(hf_cfg, method, plan, extras, dtype)
    build_s = time.perf_counter() - t0
    pad_id = hf_cfg.pad_token_id if hf_cfg.pad_token_id is not None else 0
    packed = report.packing
    collator = speed.make_collator(None, packing=True, attn_implementation=report.attention) if packed else None
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[torch.cuda.current_device()], find_unused_parameters=False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-4, fused=cuda)
    autocast = torch.autocast("cuda", dtype=dtype) if cuda and use_autocast else contextlib.nullcontext()
    tf32_before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = plan.tf32 if cuda else tf32_before
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    mine = rank_batches(batches, world, rank, rebalance and packed)[: warmup + steps]
    losses, real, processed, supervised, max_positions = [], 0, 0, 0, 0
    start = None
    for i, feats in enumerate(mine):
        if i == warmup:
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            warmup_s = start - t0 - build_s
        out, batch = forward_backward(model, feats, collator, pad_id, device, autocast, pinned)
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        if i == 0:
            first_norm = norm.detach()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.detach())
        if i >= warmup:
            real += sum(len(f["input_ids"]) for f in feats)
            processed += batch["input_ids"].numel()
            max_positions = max(max_positions, batch["input_ids"].numel())
            supervised += sum(sum(1 for y in f["labels"][1:] if y != -100) for f in feats)
        del out, batch
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if profile:  # two more steps under the profiler: where the step time goes
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with torch_profile(activities=acts) as prof:
            for feats in mine[:2]:
                forward_backward(model, feats, collator, pad_id, device, autocast, pinned)
                opt.step()
                opt.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
        key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        tables = [prof.key_averages().table(sort_by=key, row_limit=40)]
        if cuda:
            tables.append(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
            res_gaps = gpu_idle_gaps(prof)
            tables.append(json.dumps(res_gaps, indent=1))
        Path(profile).write_text("\n\n".join(tables), encoding="utf-8")
    syncs = sync_sites(model, collator, mine[:1], pad_id, device, autocast, pinned) if cuda else None
    if world > 1:
        t = torch.tensor([real, processed, supervised], device=device, dtype=torch.float64)
        torch.distributed.all_reduce(t)
        real, processed, supervised = (int(x) for x in t.tolist())
        sec = torch.tensor([seconds], device=device)
        torch.distributed.all_reduce(sec, op=torch.distributed.ReduceOp.MAX)
        seconds = float(sec)
    res = {
        "variant": name,
        "settings": {
            **{k: v for k, v in plan.as_dict().items() if k != "compile_options"},
            "compile_options": {k: str(v) if callable(v) else v for k, v in plan.compile_options.items()},
            **extras,
            "applied": {**report.as_dict(), "packing": packed, "notes": report.notes},
            "lora_targets": targets,
        },
        "tokens_per_s": round(real / seconds, 1),
        "real_tokens": real,
        "processed_positions": processed,
        "padding_fraction": round(1 - real / processed, 3) if processed else 0.0,
        "max_step_positions": max_positions,
        "supervised_tokens": supervised,
        "steps_timed": steps,
        "ddp_batches": ("rebalanced" if rebalance and packed else "round-robin") if world > 1 else None,
        "seconds": round(seconds, 3),
        "step_s": round(seconds / steps, 4),
        "first_step_loss": round(float(losses[0]), 5),
        "first_step_grad_norm": round(float(first_norm), 5),
        "last_loss": round(float(losses[-1]), 5),
        "build_s": round(build_s, 1),
        "warmup_s": round(warmup_s, 1),
    }
    if syncs is not None:
        res["host_syncs_per_step"] = syncs
    if cuda:
        gib = 1024**3
        res["peak_gib"] = round(torch.cuda.max_memory_allocated() / gib, 2)
        res["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / gib, 2)
    res["memory_estimate"] = variant_estimate(
        method, hf_cfg, plan, packed, max_positions, len(mine[0]), res.get("peak_gib"), tc_overrides(extras)
    )
    torch.backends.cuda.matmul.allow_tf32 = tf32_before
    del model, opt, params
    if plan.compile:
        torch._dynamo.reset()  # compiled graphs keep the model alive: the next variant's peak would include it
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    est = res["memory_estimate"]
    log(
        f"[{method} {name}] {res['tokens_per_s']} tok/s, peak {res.get('peak_gib')} GiB (estimate "
        f"{est.get('estimate_peak_allocated_gib')} GiB, error {est.get('error_pct')} %), loss0 {res['first_step_loss']}"
    )
    return res


def gpu_idle_gaps(prof, top: int = 12) -> dict:
    """From a profile: GPU busy vs wall time of the profiled steps, and the CPU ops running in the longest idle gaps."""
    kernels = sorted(
        (e for e in prof.events() if getattr(e, "device_type", None) is not None and "CUDA" in str(e.device_type)),
        key=lambda e: e.time_range.start,
    )
    if not kernels:
        return {}
    busy, gaps, end = 0.0, [], kernels[0].time_range.start
    for e in kernels:
        if e.time_range.start > end:
            gaps.append((e.time_range.start - end, end, e.time_range.start))
        busy += max(0, e.time_range.end - max(e.time_range.start, end))
        end = max(end, e.time_range.end)
    wall = end - kernels[0].time_range.start
    cpu_ops = [e for e in prof.events() if "CPU" in str(getattr(e, "device_type", ""))]
    worst = []
    for length, a, b in sorted(gaps, reverse=True)[:top]:
        inside = sorted(
            {
                e.name
                for e in cpu_ops
                if e.time_range.start < b and e.time_range.end > a and e.name.startswith(("aten", "cuda"))
            }
        )
        worst.append({"gap_us": round(length, 1), "cpu_ops": inside[:12]})
    hist = {"<10us": 0, "10-100us": 0, "0.1-1ms": 0, ">1ms": 0}
    total = {"<10us": 0.0, "10-100us": 0.0, "0.1-1ms": 0.0, ">1ms": 0.0}
    for length, _, _ in gaps:
        k = "<10us" if length < 10 else "10-100us" if length < 100 else "0.1-1ms" if length < 1000 else ">1ms"
        hist[k] += 1
        total[k] += length / 1000
    return {
        "gpu_busy_ms": round(busy / 1000, 1),
        "wall_ms": round(wall / 1000, 1),
        "idle_gaps_count": hist,
        "idle_gaps_ms": {k: round(v, 1) for k, v in total.items()},
        "longest_gaps": worst,
    }


def sync_sites(model, collator, feats_list, pad_id, device, autocast, pinned=False) -> dict:
    """One more step under ``torch.cuda.set_sync_debug_mode``: where the host waits for the GPU (call sites, counts)."""
    import traceback
    import warnings

    import torch

    sites: dict = {}

    def record(message, category, filename, lineno, file=None, line=None):
        frames = [f for f in traceback.extract_stack()[:-1] if "warnings" not in f.filename][-6:]
        key = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames))
        sites[key] = sites.get(key, 0) + 1

    old = warnings.showwarning
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            torch.cuda.set_sync_debug_mode("warn")
            for feats in feats_list:
                forward_backward(model, feats, collator, pad_id, device, autocast, pinned)
                model.zero_grad(set_to_none=True)
    finally:
        torch.cuda.set_sync_debug_mode(0)
        warnings.showwarning = old
    return {"total": sum(sites.values()), "sites": dict(sorted(sites.items(), key=lambda kv: -kv[1])[:10])}


def measure_matmul_tflops(warm_s: float = 0.0) -> float | None:
    """bf16 8192² matmul rate; first ``warm_s`` seconds of matmuls so clocks and power settle before any variant
    runs (on the H200 the baseline's first round stayed slow even so: ``bench/results/TRAIN_GPU_RUNS.md``)."""
    import torch

    if not torch.cuda.is_available():
        return None
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    end = time.perf_counter() + warm_s
    while True:
        for _ in range(3):
            a @ b
        torch.cuda.synchronize()
        if time.perf_counter() >= end:
            break
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return round(2 * n**3 * 10 / (time.perf_counter() - t) / 1e12, 1)


def summarize(method, runs: list[dict], n_params: float, peak_tflops, matmul_tflops) -> dict:
    """Per variant: mean tokens/s over rounds, max peak; headline baseline vs ours."""
    by: dict[str, list[dict]] = {}
    for r in runs:
        by.setdefault(r["variant"], []).append(r)
    variants = {}
    for name, rs in by.items():
        tps = [r["tokens_per_s"] for r in rs if "tokens_per_s" in r]
        if not tps:
            variants[name] = {"error": rs[-1].get("error")}
            continue
        mean = sum(tps) / len(tps)
        v = {
            "tokens_per_s": round(mean, 1),
            "tokens_per_s_rounds": tps,
            "tokens_per_s_median": round(statistics.median(tps), 1),
            "peak_gib": max((r.get("peak_gib") or 0) for r in rs) or None,
            "first_step_loss": rs[0]["first_step_loss"],
            "padding_fraction": rs[0]["padding_fraction"],
            "supervised_tokens": rs[0]["supervised_tokens"],
            "settings": rs[0]["settings"],
            "step_s": round(sum(r["step_s"] for r in rs if "step_s" in r) / len(tps), 4),
            # the estimate of the run with the highest peak (the last round's when no GPU measured one)
            "memory_estimate": max((r for r in rs if "memory_estimate" in r), key=lambda r: r.get("peak_gib") or 0)[
                "memory_estimate"
            ],
        }
        if peak_tflops:
            v["mfu_4n_spec"] = round(mean * 4 * n_params / (peak_tflops * 1e12), 4)
        if matmul_tflops:
            v["mfu_4n_measured_matmul"] = round(mean * 4 * n_params / (matmul_tflops * 1e12), 4)
        variants[name] = v
    out: dict = {"method": method}
    base, ours = variants.get("baseline"), variants.get("ours")
    if base is not None:
        out["baseline"] = base
    if ours is not None:
        out["ours"] = ours
    if base and ours and "tokens_per_s" in base and "tokens_per_s" in ours:
        out["speedup"] = round(ours["tokens_per_s"] / base["tokens_per_s"], 3)
        # the same ratio from medians, and round by round (baseline and ours of one round ran back to back)
        out["speedup_median"] = round(ours["tokens_per_s_median"] / base["tokens_per_s_median"], 3)
        out["speedup_rounds"] = [
            round(o / b, 3) for o, b in zip(ours["tokens_per_s_rounds"], base["tokens_per_s_rounds"], strict=False)
        ]
        l0, l1 = base["first_step_loss"], ours["first_step_loss"]
        out["first_step_loss"] = {"baseline": l0, "ours": l1, "abs_diff": round(abs(l0 - l1), 5)}
    out["variants"] = variants
    out["runs"] = runs
    return out


def gpu_slug(name: str | None) -> str:
    if not name:
        return "cpu"
    for key in ("H200", "H100", "A100", "L40S", "4090", "A10"):
        if key in name:
            return key.lower()
    return name.lower().replace(" ", "_")


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny GlmConfig (CPU smoke test)")
    ap.add_argument("--methods", default="lora,qlora,ptuning-v2")
    ap.add_argument(
        "--variants", default="baseline,ours,ours-noliger,ours-sdpa", help="for LoRA; other methods run baseline,ours"
    )
    ap.add_argument("--other-variants", default="baseline,ours", help="variants for QLoRA and P-tuning v2")
    ap.add_argument("--rounds", type=int, default=2, help="LoRA rounds (other methods: --other-rounds)")
    ap.add_argument("--other-rounds", type=int, default=1, help="rounds for QLoRA and P-tuning v2")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per variant run")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8, help="samples per step (per GPU)")
    ap.add_argument("--ddp", action="store_true", help="under torchrun: DDP over the visible GPUs")
    ap.add_argument("--autocast", action="store_true", help="bf16 autocast around the forward")
    ap.add_argument("--no-rebalance", action="store_true", help="DDP: round-robin batches instead of rebalanced")
    ap.add_argument("--compare-to", help="a 1-GPU result JSON: report the DDP/1-GPU ratio of 'ours'")
    ap.add_argument("--time-budget", type=float, default=1e9, help="seconds; skip what would start after it")
    ap.add_argument("--out-dir", help="write train_<method>_<gpu>.json files here")
    ap.add_argument("--profile", help="write torch.profiler tables of two LoRA steps to FILE_<variant>.txt")
    ap.add_argument(
        "--compile-on-cpu", action="store_true", help="CPU: torch.compile the layers anyway (umtcds train does not)"
    )
    ap.add_argument("--profile-variants", default="ours", help="comma-separated variants to profile")
    ap.add_argument("--gpu-warmup", type=float, default=15.0, help="seconds of matmuls before the first variant")
    ap.add_argument(
        "--memory-cap-gib",
        type=float,
        default=0.0,
        help="cap this process's CUDA memory (torch.cuda.set_per_process_memory_fraction), e.g. 22 for a 24 GB card",
    )
    args = ap.parse_args(argv)
    _OPTIONS["compile_on_cpu"] = args.compile_on_cpu

    import torch
    import transformers
    from transformers import GlmConfig

    from umtcds_core.methods import get as method_row

    t_start = time.perf_counter()
    rank, world = 0, 1
    if args.ddp:
        import torch.distributed as dist

        dist.init_process_group("nccl")
        rank, world = dist.get_rank(), dist.get_world_size()
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))

    def log(msg: str) -> None:
        if rank == 0:
            print(msg, file=sys.stderr, flush=True)

    cuda = torch.cuda.is_available() and not args.tiny
    device = f"cuda:{torch.cuda.current_device()}" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    hf_cfg = GlmConfig(**(TINY if args.tiny else {}))
    if args.tiny:
        hf_cfg.pad_token_id = 0
    with torch.device("meta"):
        from transformers import AutoModelForCausalLM

        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(hf_cfg).parameters())
    gpu = torch.cuda.get_device_name(0) if cuda else None
    cap = memory_cap(args.memory_cap_gib, cuda, log)
    peak = next((v for k, v in PEAK_TFLOPS.items() if gpu and k in gpu), None)
    matmul = measure_matmul_tflops(args.gpu_warmup) if cuda and rank == 0 else None
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    lora_variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    n_batches = (args.warmup + args.steps) * world
    lengths = dict(prompt=(5, 25), answer=(3, 40)) if args.tiny else {}  # CPU smoke test: short samples
    samples = make_samples(n_batches * args.batch, hf_cfg.vocab_size, seed=1, **lengths)
    batches = [samples[i * args.batch : (i + 1) * args.batch] for i in range(n_batches)]
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    for pkg in ("peft", "liger_kernel", "bitsandbytes", "triton", "accelerate"):
        try:
            versions[pkg] = __import__(pkg).__version__
        except Exception:  # noqa: BLE001 - not installed (e.g. CPU CI)
            versions[pkg] = None
    results = []
    for method in methods:
        if method_row(method).quantised and (not cuda or versions["bitsandbytes"] is None):
            log("[qlora] skipped: needs CUDA and bitsandbytes")
            continue
        names = lora_variants if method == "lora" else [v for v in args.other_variants.split(",") if v]
        rounds = args.rounds if method == "lora" else args.other_rounds
        runs = []
        for r in range(rounds):
            for name in names:
                if time.perf_counter() - t_start > args.time_budget:
                    log(f"[{method} {name}] skipped: time budget")
                    continue
                try:
                    prof = (
                        args.profile.replace(".txt", f"_{name}.txt")
                        if (
                            args.profile
                            and method == "lora"
                            and name in args.profile_variants.split(",")
                            and r == rounds - 1
                        )
                        else None
                    )
                    res = run_variant(
                        name,
                        method,
                        hf_cfg,
                        batches,
                        args.warmup,
                        args.steps,
                        device,
                        dtype,
                        rank,
                        world,
                        log,
                        prof,
                        not args.no_rebalance,
                        args.autocast,
                    )
                except Exception as exc:  # noqa: BLE001 - record and go on to the next variant
                    torch._dynamo.reset()  # compiled graphs of a failed variant hold its model
                    if cuda:
                        gc.collect()
                        torch.cuda.empty_cache()
                    res = {"variant": name, "error": f"{type(exc).__name__}: {str(exc)[:400]}"}
                    log(f"[{method} {name}] FAILED {res['error']}")
                res["round"] = r
                runs.append(res)
        if not runs:
            continue
        summary = summarize(method, runs, n_params, peak, matmul)
        result = {
            "bench": "train",
            "gpu": gpu or "cpu (tiny smoke test)" if args.tiny else gpu,
            "gpus": world,
            **summary,
            "model": "GlmConfig() defaults = GLM-4-9B shape, random init" if not args.tiny else "tiny GlmConfig",
            "params": n_params,
            "flops_basis": "4 x params per real token",
            "peak_tflops_spec": peak,
            "matmul_tflops_measured": matmul,
            "data": {
                "samples_per_step_per_gpu": args.batch,
                "prompt_tokens": list(lengths.get("prompt", (30, 250))),
                "answer_tokens": list(lengths.get("answer", (20, 400))),
                "labels": "-100 on the prompt",
                "warmup_steps": args.warmup,
                "gpu_warmup_s": args.gpu_warmup if cuda else 0,
                "timed_steps": args.steps,
                "rounds": rounds,
            },
            "train_settings": "bf16 weights, fp32 adapters, fused AdamW lr 5e-4, clip 1.0, LoRA r8/a32/d0.1 q,k,v"
            + (", bf16 autocast" if args.autocast else ", no autocast"),
            "versions": versions,
        }
        if args.memory_cap_gib:
            result["memory_cap"] = cap
        if not args.ddp:
            result["memory_estimate"] = memory_estimate_check(summary, args.tiny)
        if args.compare_to and "ours" in summary.get("variants", {}):
            result["vs_one_gpu"] = compare(args.compare_to, summary)
        results.append(result)
        if rank == 0:
            text = json.dumps(result, indent=2)
            if args.out_dir:
                Path(args.out_dir).mkdir(parents=True, exist_ok=True)
                tag = f"{gpu_slug(gpu)}x{world}" if world > 1 else gpu_slug(gpu)
                fname = f"train_{tag}.json" if method == "lora" else f"train_{method}_{tag}.json"
                Path(args.out_dir, fname).write_text(text + "\n", encoding="utf-8")
            print(text, flush=True)
    if args.ddp:
        torch.distributed.destroy_process_group()
    if rank == 0:
        print(json.dumps([headline(r) for r in results]), flush=True)
    return results


def headline(r: dict) -> dict:
    keep = {"bench": r["bench"], "gpu": r["gpu"], "gpus": r.get("gpus"), "method": r["method"]}
    for side in ("baseline", "ours"):
        if side in r:
            keep[side] = {k: r[side].get(k) for k in ("tokens_per_s", "peak_gib", "mfu_4n_spec", "first_step_loss")}
            est = r[side].get("memory_estimate") or {}
            keep[side]["estimate_gib"] = est.get("estimate_peak_allocated_gib")
            keep[side]["estimate_error_pct"] = est.get("error_pct")
    if "memory_cap" in r:
        keep["memory_cap_gib"] = r["memory_cap"].get("cap_gib")
    for k in ("speedup", "speedup_median", "speedup_rounds", "vs_one_gpu"):
        if k in r:
            keep[k] = r[k]
    return keep


def compare(path: str, summary: dict) -> dict:
    one = json.loads(Path(path).read_text(encoding="utf-8"))
    base = (one.get("ours") or {}).get("tokens_per_s")
    mine = summary["variants"]["ours"].get("tokens_per_s")
    return {
        "one_gpu_file": path,
        "one_gpu_tokens_per_s": base,
        "ddp_tokens_per_s": mine,
        "ratio": round(mine / base, 3) if base and mine else None,
    }


def memory_cap(gib: float, cuda: bool, log=print) -> dict | None:
    """Cap the CUDA caching allocator of this process at ``gib`` GiB (``set_per_process_memory_fraction``), as a
    smaller card would; past it an allocation raises CUDA out of memory. Returns what was set (None: no cap)."""
    if not gib:
        return None
    if not cuda:
        log(f"--memory-cap-gib {gib}: no CUDA GPU, nothing capped")
        return {"cap_gib": gib, "applied": False}
    import torch

    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    fraction = min(1.0, gib * 1024**3 / total)
    torch.cuda.set_per_process_memory_fraction(fraction)
    log(f"CUDA memory capped at {gib} GiB ({fraction:.4f} of {total / 1024**3:.1f} GiB)")
    return {"cap_gib": gib, "fraction": round(fraction, 5), "device_total_gib": round(total / 1024**3, 2),
            "applied": True}  # fmt: skip


def memory_estimate_check(summary: dict, tiny: bool) -> dict:
    """``umtcds_core.memory.estimate_memory`` for each variant's settings and largest step vs its measured peak."""
    out = {
        name: v["memory_estimate"]
        for name, v in summary.get("variants", {}).items()
        if isinstance(v, dict) and v.get("memory_estimate")
    }
    out["note"] = (
        "per variant: the method's defaults with the variant's checkpointing, packing and loss (the baseline: full "
        "fp32 logits), tokens = positions of its largest timed step; estimate_peak_allocated_gib compares with "
        "torch.cuda.max_memory_allocated (measured_peak_gib)"
        + ("; tiny shape on CPU: no measured peak" if tiny else "")
    )
    return out


if __name__ == "__main__":
    main()
