"""Everything about a run folder, read from its files alone — no torch, so the dashboard can read a run while it trains.

A run folder is a training's ``output_dir`` (the dashboard makes one per run under ``runs/``)::

    runs/<run-id>/
      metrics.jsonl          one JSON per log event: start/resume, train, eval, summary (append-only)
      checkpoint-N/          every save_steps: weights + optimizer state + trainer_state.json (written last)
      adapter_config.json …  the final adapter (LoRA/QLoRA/P-tuning v2) with the tokenizer, written when training
                             ends — or config.json + model*.safetensors for a full fine-tune
      train_info.json        what was decided about the run: method, base model, speed, system prompt, final metrics
      stopped.json           the same record for a run stopped before its end (removed once it finishes)
      eval/metrics.json      scores from ``umtcds evaluate`` (next to examples.jsonl/.csv)

Why one module: training writes these files; chat, evaluate, serve and export load from them; the dashboard shows
them. When each of those had its own idea of "a complete checkpoint" or "the final adapter", they drifted apart and
imported each other in circles. Here each fact is written once, and every reader asks this module.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

from .errors import UserError
from .fileio import iter_jsonl, read_json

METRICS_FILE = "metrics.jsonl"
INFO_FILE = "train_info.json"
STOPPED_FILE = "stopped.json"
ADAPTER_CONFIG = "adapter_config.json"
MODEL_CONFIG = "config.json"
EVAL_DIR = "eval"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# Any one of these makes a checkpoint's weights present (adapter, single-file or sharded model, legacy .bin);
# FSDP checkpoints hold ``pytorch_model_fsdp*`` instead.
WEIGHT_FILES = (
    "adapter_model.safetensors",
    "adapter_model.bin",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
)


class RunError(UserError, ValueError):
    """A run, checkpoint or adapter folder that cannot be used; one sentence saying what to pick instead."""


# ---- the runs of a workspace -------------------------------------------------------------------------------------
def list_runs(runs_dir: str | os.PathLike) -> list[Path]:
    """Run folders under ``runs_dir``, newest first (by modification time: a resumed run moves up)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.exists():
        return []
    return sorted((p for p in runs_dir.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)


def new_run_dir(runs_dir: str | os.PathLike, prefix: str = "run") -> Path:
    """A fresh, not yet existing ``<prefix>-<date>-<time>[-i]`` folder path under ``runs_dir`` (not created)."""
    runs_dir = Path(runs_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = runs_dir / f"{prefix}-{stamp}"
    i = 1
    while path.exists():
        i += 1
        path = runs_dir / f"{prefix}-{stamp}-{i}"
    return path


def has_training(run_dir: str | os.PathLike) -> bool:
    """A training has written into this folder (metrics or a checkpoint), so it has curves or can be resumed."""
    run_dir = Path(run_dir)
    return (run_dir / METRICS_FILE).exists() or any(run_dir.glob("checkpoint-*"))


def output_dir_of(argv: list[str]) -> str | None:
    """The ``--output-dir`` (the run folder) a train job was started with; the dashboard gives each run its own."""
    for i, a in enumerate(argv):
        if a == "--output-dir" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--output-dir="):
            return a.split("=", 1)[1]
    return None


# ---- checkpoints ----------------------------------------------------------------------------------------------------
def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """All ``checkpoint-N`` folders of a run, oldest first (by step), complete or not."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if CHECKPOINT_RE.match(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(CHECKPOINT_RE.match(p.name).group(1)))


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """Usable for resume: its weights exist and its trainer_state.json (the Trainer writes it last) names its step.

    A process killed mid-save leaves a folder without that file, or with weights missing; resuming from it would fail
    or silently restart, so such a folder is skipped.
    """
    path = Path(path)
    m = CHECKPOINT_RE.match(path.name)
    if not m or not path.is_dir():
        return False
    state = read_json(path / "trainer_state.json")
    if not isinstance(state, dict) or state.get("global_step") != int(m.group(1)):
        return False
    return any((path / f).exists() for f in WEIGHT_FILES) or any(path.glob("pytorch_model_fsdp*"))


def latest_complete_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint (what ``--resume auto`` continues from); says on stderr which ones it skipped."""
    for ckpt in reversed(list_checkpoints(run_dir)):
        if is_complete_checkpoint(ckpt):
            return ckpt
        print(f"Skipping half-written checkpoint {ckpt.name}.", file=sys.stderr)
    return None


def run_dir_of(path: str | os.PathLike) -> Path:
    """The run folder a model or adapter folder belongs to (the parent of a ``checkpoint-N`` folder, else itself)."""
    p = Path(path)
    return p.parent if CHECKPOINT_RE.match(p.name) else p


# ---- the final model and loadable folders -------------------------------------------------------------------------
def has_final_model(run_dir: str | os.PathLike) -> bool:
    """A run is finished when its folder holds the final adapter or full model's weights (not just checkpoints)."""
    run_dir = Path(run_dir)
    return (
        (run_dir / ADAPTER_CONFIG).exists()
        or (run_dir / "model.safetensors").exists()
        or any(run_dir.glob("model-*.safetensors"))
    )


def holds_model(folder: str | os.PathLike) -> bool:
    """The folder holds something chat can load: an adapter (adapter_config.json) or a model (config.json)."""
    folder = Path(folder)
    return (folder / ADAPTER_CONFIG).exists() or (folder / MODEL_CONFIG).exists()


def is_full_model(path: str | os.PathLike) -> bool:
    """A full model folder (config.json, no adapter): loaded as the model itself, not attached to a base."""
    p = Path(path)
    return (p / MODEL_CONFIG).exists() and not (p / ADAPTER_CONFIG).exists()


def model_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """``checkpoint-N`` folders of a run holding an adapter or a model, oldest first."""
    return [p for p in list_checkpoints(run_dir) if holds_model(p)]


def adapter_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """``checkpoint-N`` folders of a run holding an adapter, oldest first."""
    return [p for p in list_checkpoints(run_dir) if (p / ADAPTER_CONFIG).exists()]


def is_full_model_run(path: str | os.PathLike) -> bool:
    """A full fine-tune given where an adapter is expected: a model folder none of whose checkpoints is an adapter."""
    p = Path(path)
    return p.exists() and is_full_model(p) and not adapter_checkpoints(p)


def loadable(runs: list[Path]) -> list[Path]:
    """Run folders with a final adapter/model, and every checkpoint-N of each run (newest last), for pickers."""
    out: list[Path] = []
    for run in runs:
        if holds_model(run):
            out.append(run)
        out.extend(reversed(model_checkpoints(run)))
    return out


def find_adapter(path: str | os.PathLike) -> Path:
    """The folder holding ``adapter_config.json`` for a run dir (final adapter, else newest checkpoint) or checkpoint."""
    p = Path(path).expanduser()
    if not p.exists():
        raise RunError(
            f"The adapter folder {p} does not exist; pick a run folder or one of its checkpoint-N folders.",
            zh=f"适配器文件夹 {p} 不存在；请选择一个训练输出文件夹或其中的 checkpoint-N 文件夹。",
        )
    if (p / ADAPTER_CONFIG).exists():
        return p
    ckpts = adapter_checkpoints(p)
    if ckpts:
        return ckpts[-1]
    raise RunError(
        f"{p} holds no adapter (adapter_config.json) and no checkpoint-N folder with one; "
        "pick a finished run or one of its checkpoints.",
        zh=f"{p} 里既没有适配器（adapter_config.json），也没有包含适配器的 checkpoint-N 文件夹；"
        "请选择一个已完成的训练输出文件夹或其中的检查点。",
    )


def adapter_config(adapter_dir: str | os.PathLike) -> dict:
    """The adapter's ``adapter_config.json`` ({} when absent or unreadable)."""
    cfg = read_json(Path(adapter_dir) / ADAPTER_CONFIG)
    return cfg if isinstance(cfg, dict) else {}


def adapter_type(adapter_dir: str | os.PathLike) -> str:
    """peft type of an adapter folder: ``LORA``, ``PREFIX_TUNING``, … (``""`` when unknown)."""
    return str(adapter_config(adapter_dir).get("peft_type", ""))


def train_info(adapter_dir: str | os.PathLike) -> dict:
    """``train_info.json`` of the adapter's folder or its run folder ({} when absent)."""
    p = Path(adapter_dir)
    for folder in (p, run_dir_of(p)):
        info = read_json(folder / INFO_FILE)
        if isinstance(info, dict):
            return info
    return {}


def adapter_base_ref(adapter_dir: str | os.PathLike) -> str:
    """The base model reference an adapter was trained on: train_info.json first, then adapter_config.json."""
    info = train_info(adapter_dir)
    for key in ("model", "base_model", "model_ref"):
        value = info.get(key)
        if isinstance(value, dict):
            value = value.get("ref") or value.get("model")
        if isinstance(value, str) and value.strip():
            return value
    ref = adapter_config(adapter_dir).get("base_model_name_or_path")
    if not ref:
        raise RunError(
            f"Cannot tell which base model {adapter_dir} was trained on; pass it with --model.",
            zh=f"无法判断 {adapter_dir} 是在哪个基础模型上训练的；请用 --model 指定。",
        )
    return ref


# ---- evaluation results ---------------------------------------------------------------------------------------------
def eval_run_dir(model_path: str | os.PathLike) -> Path:
    """The folder whose ``eval/`` receives the scores of a model path: a full model folder itself, else its run."""
    p = Path(model_path)
    return p if is_full_model(p) else run_dir_of(find_adapter(p))


def eval_metrics_path(run_dir: str | os.PathLike) -> Path:
    """Where ``umtcds evaluate`` writes a run's scores (examples.jsonl/.csv go next to it)."""
    return Path(run_dir) / EVAL_DIR / "metrics.json"


# ---- metrics and the summary ----------------------------------------------------------------------------------------
def metrics_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / METRICS_FILE


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a run's metrics.jsonl (``path``: the file or its run folder) as the run now stands.

    After a resume, the records the killed process wrote beyond the checkpoint it resumed from are dropped (the
    resumed run writes those steps again), so a chart never shows a step twice.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    records: list[dict] = []
    for rec in iter_jsonl(path, errors=[]):
        if rec.get("kind") in {"resume", "start"}:  # a fresh start after a kill before any checkpoint: step 0
            step = rec.get("step", 0)
            records = [r for r in records if r.get("step", 0) <= step]
        records.append(rec)
    return records


def run_summary(run_dir: str | os.PathLike) -> dict:
    """What the dashboard shows about one run folder: state, method, last step/loss/eval loss, checkpoints.

    ``state`` is ``finished`` (final model saved), ``resumable`` (a complete checkpoint), ``no-checkpoint`` (metrics
    but nothing to resume from) or ``empty``.
    """
    run_dir = Path(run_dir)
    info = read_json(run_dir / INFO_FILE) or read_json(run_dir / STOPPED_FILE) or {}
    recs = read_metrics(run_dir / METRICS_FILE)
    train_recs = [r for r in recs if r.get("kind") == "train"]
    evals = [r for r in recs if r.get("kind") == "eval"]
    starts = [r for r in recs if r.get("kind") in {"start", "resume"}]
    ckpts = [c for c in list_checkpoints(run_dir) if is_complete_checkpoint(c)]
    if has_final_model(run_dir):
        state = "finished"
    elif ckpts:
        state = "resumable"
    else:
        state = "empty" if not recs else "no-checkpoint"
    return {
        "name": run_dir.name,
        "path": str(run_dir),
        "state": state,
        "method": (info.get("method") or (info.get("config") or {}).get("method")),
        "step": train_recs[-1]["step"] if train_recs else 0,
        "max_steps": starts[-1].get("max_steps") if starts else None,
        "loss": train_recs[-1].get("loss") if train_recs else None,
        "eval_loss": evals[-1].get("eval_loss") if evals else None,
        "checkpoints": [c.name for c in ckpts],
        "started": starts[0].get("time") if starts else None,
    }
