"""``umtcds train`` itself (the CLI, the Trainer, its callbacks) on a GLM-4-9B-shaped model: tokens/s and peak memory.

Usage::

    python bench/train_cli_bench.py [--method lora] [--steps 16] [--gpus 1] [--tokenizer DIR] [--out FILE]
    python bench/train_cli_bench.py --tiny          # tiny GLM on CPU: a smoke test of the same code

``bench/train_bench.py`` compares the Hugging Face default with the speed pieces in a loop of its own; this one runs
what a user runs, end to end: a random-init model of GLM-4-9B's shape (``transformers.GlmConfig()``) is saved as a
plain HF folder with a chat tokenizer (the embedded SmolLM2's, or ``--tokenizer``), a QA dataset in the GLM-4
messages format is written whose rendered prompts/answers are roughly 30–250 / 20–400 tokens, a config.yaml with 8
samples per step, and ``python -m umtcds_core.cli train config.yaml`` runs as a subprocess. The figures come from the
run's own ``metrics.jsonl`` (per-step ``tokens_per_s`` of real tokens, ``gpu_peak_gib``), skipping the first steps
(warm-up). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/benchlib.py
from benchlib import emit  # noqa: E402

WORDS = (
    "library campus student course credit exam office building canteen dormitory scholarship semester "
    "registration admission tuition laboratory lecture professor department graduate undergraduate schedule "
    "certificate application deadline transcript clinic sports gym card portal password printer"
).split()


def text_of(rng: random.Random, tokens: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(max(1, tokens)))  # ~1 token per common word


def write_data(data_dir: Path, n: int, seed: int = 0) -> None:
    from umtcds_core.fileio import write_jsonl_atomic

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        q = text_of(rng, rng.randint(30, 250) - 12)  # ~12 tokens of chat template around the question
        a = text_of(rng, rng.randint(20, 400) - 2)
        rows.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    data_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(data_dir / "train.jsonl", rows)


def write_model(folder: Path, tiny: bool, tokenizer_dir: str | None) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GlmConfig

    if (folder / "config.json").exists():
        return
    if tokenizer_dir:
        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    else:
        from umtcds_core import models

        tok = models.load_tokenizer("smollm2-135m")
    small = dict(
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=len(tok),
    )
    cfg = GlmConfig(**(small if tiny else {}))
    cfg.eos_token_id = tok.eos_token_id
    cfg.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() and not tiny else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    model.generation_config.eos_token_id = tok.eos_token_id
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(folder)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--method", default="lora", choices=("lora", "qlora", "ptuning-v2"))
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--skip", type=int, default=4, help="first steps left out of the figures (warm-up)")
    ap.add_argument("--gpus", type=int, default=1)
    ap.add_argument("--work", default=None, help="working folder (default: a temp folder)")
    ap.add_argument("--tokenizer", help="HF tokenizer folder with a chat template (default: the embedded SmolLM2's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config values")
    ap.add_argument("--out")
    args = ap.parse_args(argv)

    import tempfile

    import yaml

    work = Path(args.work or tempfile.mkdtemp(prefix="umtcds-train-cli-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / ("glm-tiny" if args.tiny else "glm4-9b-shape")
    t0 = time.perf_counter()
    write_model(model_dir, args.tiny, args.tokenizer)
    build_s = time.perf_counter() - t0
    write_data(work / "data", 8 * args.steps * max(1, args.gpus) + 8)
    run_dir = work / f"run-{args.method}-{args.gpus}gpu-{int(time.time())}"
    cfg = {
        "model": str(model_dir),
        "data_dir": str(work / "data"),
        "method": args.method,
        "per_device_batch_size": 8,
        "max_steps": args.steps,
        "logging_steps": 1,
        "save_steps": 100000,
        "eval_steps": 100000,
        "max_input_length": 512,
        "max_output_length": 512,
        "output_dir": str(run_dir),
        "precision": "auto",
    }
    for kv in args.set:
        key, _, value = kv.partition("=")
        cfg[key] = yaml.safe_load(value)
    config_file = work / f"config-{args.method}.yaml"
    config_file.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    cmd = [sys.executable, "-m", "umtcds_core.cli", "train", str(config_file), "--resume", "no"]
    if args.gpus > 1:
        cmd += ["--gpus", str(args.gpus)]
    t1 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ))
    wall = time.perf_counter() - t1
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()] if run_dir.exists() else []
    steps = [m for m in metrics if m.get("kind") == "train" and "tokens_per_s" in m]
    timed = steps[args.skip :] or steps
    info = json.loads((run_dir / "train_info.json").read_text()) if (run_dir / "train_info.json").exists() else {}
    import torch

    result = {
        "bench": "train_cli",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.tiny else None,
        "gpus": args.gpus,
        "method": args.method,
        "model": "tiny GlmConfig" if args.tiny else "GlmConfig() defaults = GLM-4-9B shape, random init",
        "returncode": proc.returncode,
        "tokens_per_s_median": round(statistics.median(m["tokens_per_s"] for m in timed), 1) if timed else None,
        "tokens_per_s_mean": round(statistics.mean(m["tokens_per_s"] for m in timed), 1) if timed else None,
        "steps_logged": len(steps),
        "steps_used": len(timed),
        "peak_gib": max((m.get("gpu_peak_gib") or 0) for m in metrics) if metrics else None,
        "first_loss": steps[0].get("loss") if steps else None,
        "model_build_s": round(build_s, 1),
        "train_wall_s": round(wall, 1),
        "setup": {
            k: info.get(k)
            for k in (
                "attn_implementation",
                "packing",
                "packing_note",
                "gradient_checkpointing",
                "liger_kernel",
                "speed",
                "precision",
                "world_size",
                "versions",
            )
            if k in info
        },
        "config_overrides": args.set,
    }
    if proc.returncode != 0:
        result["stderr_tail"] = proc.stderr[-3000:]
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
