"""Check ``umtcds_core.config.estimate_memory`` against a real training step on the GPU. Prints JSON.

Usage::

    python bench/memory_estimate_check.py [--method lora|full] [--batch 1] [--seq 1024] [--no-gc] [--tiny]
                                          [--out bench/results/memory_estimate_<gpu>.json]

Builds a random-init model of GLM-4-9B's exact shape (``transformers.GlmConfig()`` defaults; no download) in bf16 on
``cuda:0``, wraps it like ``estimate_glm4_9b_lora`` assumes (peft LoRA r=8, alpha 32, dropout 0.1 on q/k/v, adapters
in fp32 — or every weight trainable for ``--method full``), optional gradient checkpointing, SDPA attention, AdamW,
and runs two optimizer steps on a batch of ``--batch`` × ``--seq`` random tokens with every position labelled (the
estimate's worst case). Reported: ``torch.cuda.max_memory_allocated`` over those steps vs the estimate's
``peak_allocated_gib`` and their relative error, plus ``max_memory_reserved`` vs ``total_gib``.
``--tiny`` runs a small GLM shape (a smoke test; on CPU only the estimate is printed).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/benchlib.py
from benchlib import emit  # noqa: E402

TINY = dict(
    num_hidden_layers=2,
    hidden_size=256,
    intermediate_size=512,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    vocab_size=4096,
    pad_token_id=0,
)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", choices=("lora", "full"), default="lora")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=1024, help="tokens per sample (max_input + max_output)")
    ap.add_argument("--no-gc", action="store_true", help="gradient checkpointing off")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args(argv)

    import torch
    import transformers
    from transformers import GlmConfig, GlmForCausalLM

    from umtcds_core.config import TrainConfig, estimate_memory, shape_from_hf_config

    hf_cfg = GlmConfig(**(TINY if args.tiny else {}))
    shape = shape_from_hf_config(hf_cfg.to_dict())
    cfg = TrainConfig(
        model="glm-4-9b-shape",
        method=args.method,
        lora_r=8,
        lora_alpha=32,
        lora_dropout=0.1,
        lora_target_modules=["q_proj", "k_proj", "v_proj"],
        precision="bf16",
        per_device_batch_size=args.batch,
        max_input_length=args.seq // 2,
        max_output_length=args.seq - args.seq // 2,
        gradient_checkpointing=not args.no_gc,
        learning_rate=5e-4 if args.method == "lora" else 5e-5,
    )
    est = estimate_memory(cfg, shape=shape, tokens=args.batch * args.seq, gpus=[])
    result: dict = {
        "bench": "memory_estimate",
        "shape": "tiny" if args.tiny else "GlmConfig() = GLM-4-9B",
        "method": args.method,
        "batch": args.batch,
        "seq": args.seq,
        "gradient_checkpointing": not args.no_gc,
        "estimate": {k: est[k] for k in est if k.endswith("_gib") or k.startswith("params") or k == "tokens_per_step"},
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
    }
    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        result["measured"] = None
        result["note"] = "no CUDA GPU: estimate only (--tiny also runs the steps on CPU as a smoke test)"
        print(json.dumps(result, indent=2))
        return result
    dev = torch.device("cuda:0" if cuda else "cpu")
    result["gpu"] = torch.cuda.get_device_name(0) if cuda else None
    torch.manual_seed(0)
    t0 = time.time()
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    with dev:
        model = GlmForCausalLM(hf_cfg)
    torch.set_default_dtype(prev)
    model.config.use_cache = False
    if args.method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1, target_modules=["q_proj", "k_proj", "v_proj"]),
        )
    if not args.no_gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if args.method == "lora":
            model.enable_input_require_grads()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    result["trainable_dtype"] = str(params[0].dtype)
    result["measured_trainable_params"] = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate)
    result["build_s"] = round(time.time() - t0, 1)

    ids = torch.randint(0, hf_cfg.vocab_size, (args.batch, args.seq), device=dev)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    step_s = []
    for _ in range(2):  # the first step creates AdamW's state; the peak is over both
        t = time.time()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        step_s.append(round(time.time() - t, 2))
    result["step_s"] = step_s
    result["loss"] = round(float(loss), 3)
    if cuda:
        gib = 1024**3
        measured = torch.cuda.max_memory_allocated() / gib
        reserved = torch.cuda.max_memory_reserved() / gib
        result["measured"] = {"max_allocated_gib": round(measured, 2), "max_reserved_gib": round(reserved, 2)}
        result["error_pct_allocated"] = round(100 * (est["peak_allocated_gib"] - measured) / measured, 1)
        result["error_pct_total_vs_reserved"] = round(100 * (est["total_gib"] - reserved) / reserved, 1)
    else:
        result["measured"] = None
        result["note"] = "CPU smoke run: the steps ran, memory is measured only on CUDA"
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
