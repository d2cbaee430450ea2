"""Fine-tune a chat model on the workspace's Q&A split — ``umtcds train config.yaml [--resume auto|no|DIR] [--gpus N]``.

Also runnable as ``python -m umtcds_core.train config.yaml`` (what ``--gpus N`` launches under torchrun).

What one run does (every feature, its flag, and its trade-off):

* **Methods** (``method``): ``lora`` (adapters on the attention projections chosen per architecture, or
  ``lora_target_modules``), ``qlora`` (the same on a 4-bit NF4 base through bitsandbytes; CUDA only: ~4× less weight
  memory, somewhat slower), ``ptuning-v2`` (peft prefix tuning with ``num_virtual_tokens`` per layer, the original
  UMTCDS method; the prefix reaches attention explicitly, ``umtcds_core.prefix``, and saves in peft's format) and ``full`` (every weight; needs the most memory).
* **Data**: ``data_dir/train_file`` (and ``dev_file`` for eval) in the GLM-4 ``messages`` format, ShareGPT
  (``conversations``) or Alpaca (``instruction``/``input``/``output``). Each sample is rendered with the model's OWN
  chat template: the prompt ids are exactly ``apply_chat_template(history, add_generation_prompt=True)`` — what chat
  inference feeds the model — and only the final assistant answer (plus its end-of-turn token) carries loss; all
  other labels are -100. Prompts longer than ``max_input_length`` lose their middle (the template's head and the
  generation prompt stay); answers are cut to ``max_output_length``.
* **Padding-free packing** (``packing``, default on): a batch is one row of concatenated samples with
  ``position_ids`` restarting per sample (transformers' ``DataCollatorWithFlattening``); transformers turns those
  into a block-diagonal causal mask (or FlashAttention varlen kwargs), so samples never attend to each other and no
  compute is spent on padding. Checked at start-up on the real model; when the check fails, batches are padded instead
  and the log says why (P-tuning v2 packs too: every packed sample sees the whole prefix).
* **Speed/memory** (``umtcds_core.speed``: one plan from the config and the machine, applied once; figures in
  ``bench/results/NOTES.md``): gradient checkpointing
  (``gradient_checkpointing``; P-tuning v2 included, its prefix being an explicit input of each attention),
  bf16/fp16/fp32 chosen by hardware (``precision: auto``); packed rows attend per sample through PyTorch's
  FlashAttention varlen kernel on CUDA (FlashAttention-2 when ``flash-attn`` is installed, SDPA's block-diagonal
  mask elsewhere); the loss never materialises the ``tokens × vocab`` logits (Liger's fused linear+cross-entropy on
  CUDA with ``liger-kernel``, a chunked PyTorch version elsewhere) and only labelled positions reach the LM head;
  on one CUDA GPU, LoRA/QLoRA compile the decoder layers with ``torch.compile`` (``compile: auto``; two layers per
  compiled call and checkpoint, the last pair not checkpointed, LoRA adapters under 16-bit autocast with one dropout
  mask per attention; checked by a probe step, eager on failure),
  else Liger's RMSNorm/SwiGLU kernels on CUDA; QLoRA keeps the frozen 16-bit
  weights in 16 bits (peft's k-bit preparation copies them to fp32); on several GPUs each step's samples are dealt
  so every rank gets about the same number of tokens.
* **Schedule**: AdamW, warmup (``warmup_ratio``) then ``lr_scheduler`` (cosine), gradient accumulation, clipping.
* **Eval / save**: dev loss every ``eval_steps``; a checkpoint every ``save_steps`` keeping ``save_total_limit``.
* **Metrics**: ``output_dir/metrics.jsonl`` gets one JSON per log event (append-only, flushed), and the job's
  progress file is updated every step, so the dashboard can draw the run live.
* **Resume**: ``--resume auto`` continues from the newest complete checkpoint (half-written ones are skipped);
  the Trainer restores step, optimizer, scheduler, RNG and data order. ``--resume no`` refuses to overwrite a run.
* **Stop**: SIGTERM (the dashboard's Stop button) finishes the current step, saves a checkpoint and exits 0.
* **Several GPUs**: ``--gpus N`` re-launches this module under ``torchrun`` (DDP for LoRA/P-tuning v2, FSDP for full).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import methods
from .config import ConfigError, TrainConfig, load_config
from .dataset import record_to_messages
from .errors import UserError
from .fileio import DiskFullError, append_jsonl, iter_jsonl, read_json, write_json_atomic
from .runs import (
    INFO_FILE,
    METRICS_FILE,
    STOPPED_FILE,
    has_final_model,
    is_complete_checkpoint,
    latest_complete_checkpoint,
    list_checkpoints,
)


class TrainError(UserError):
    """A training problem the user can fix; one sentence."""


# ---- data -------------------------------------------------------------------------------------------------------
def load_conversations(path: Path, system_prompt: str | None = None) -> tuple[list[list[dict]], list[str]]:
    """Conversations of a split file plus a list of problems for what was skipped: broken lines as ``file:line: why``,
    readable records that are no conversation as ``file: record N: why`` (N counts readable records only)."""
    from .fileio import BadLine

    bad: list[BadLine] = []
    convs, problems = [], []
    for n, rec in enumerate(iter_jsonl(path, errors=bad), 1):
        try:
            msgs = record_to_messages(rec)
        except (ValueError, TypeError, AttributeError) as exc:
            problems.append(f"{path}: record {n}: {exc}")
            continue
        msgs = [m for m in msgs if m["role"] != "system" or m["content"].strip()]
        if system_prompt and not any(m["role"] == "system" for m in msgs):
            msgs.insert(0, {"role": "system", "content": system_prompt})
        if not msgs or msgs[-1]["role"] != "assistant" or not str(msgs[-1]["content"]).strip():
            problems.append(f"{path}: record {n}: the last message is not a non-empty assistant answer")
            continue
        convs.append(msgs)
    problems = [str(b) for b in bad] + problems
    return convs, problems


def _ids(encoded: Any) -> list[int]:
    """``apply_chat_template(tokenize=True)`` returns a list or a BatchEncoding depending on the version."""
    if hasattr(encoded, "keys") and "input_ids" in encoded:
        encoded = encoded["input_ids"]
    return [int(t) for t in encoded]


def stop_token_ids(tokenizer, model_dir: Path | None = None) -> list[int]:
    """Ids that end an assistant turn at inference: the tokenizer's EOS plus the generation config's eos ids."""
    ids = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    gen = read_json(model_dir / "generation_config.json", {}) if model_dir else {}
    eos = (gen or {}).get("eos_token_id")
    for t in eos if isinstance(eos, list) else [eos] if eos is not None else []:
        if int(t) not in ids:
            ids.append(int(t))
    return ids


def end_of_turn_id(tokenizer, stop_ids: list[int]) -> int:
    """The token appended after an answer when the template adds none (GLM-4: ``<|user|>``, as its demo does)."""
    user_id = tokenizer.convert_tokens_to_ids("<|user|>")
    if isinstance(user_id, int) and user_id in stop_ids and user_id != tokenizer.unk_token_id:
        return user_id
    return stop_ids[0]


@dataclass
class EncodeStats:
    samples: int = 0
    prompt_truncated: int = 0
    answer_truncated: int = 0
    template_fallback: int = 0
    problems: list[str] = field(default_factory=list)


def encode_conversation(
    tokenizer, messages: list[dict], max_input_length: int, max_output_length: int, stop_ids: list[int], stats=None
) -> dict:
    """``{"input_ids", "labels"}`` for one conversation: loss only on the final assistant answer.

    The prompt ids are exactly what chat inference feeds (``add_generation_prompt=True``); the answer ids are the rest
    of the fully rendered conversation up to and including its first end-of-turn token (one is appended when the
    template ends an answer with none, like GLM-4's).
    """
    stats = stats or EncodeStats()
    history, answer = messages[:-1], messages[-1]
    prompt_ids = _ids(tokenizer.apply_chat_template(history, add_generation_prompt=True, tokenize=True))
    full_ids = _ids(tokenizer.apply_chat_template(messages, tokenize=True))
    if full_ids[: len(prompt_ids)] == prompt_ids:
        answer_ids = full_ids[len(prompt_ids) :]
    else:  # some templates render the last turn differently; fall back to the text difference
        stats.template_fallback += 1
        p_text = tokenizer.apply_chat_template(history, add_generation_prompt=True, tokenize=False)
        f_text = tokenizer.apply_chat_template(messages, tokenize=False)
        rest = f_text[len(p_text) :] if f_text.startswith(p_text) else str(answer["content"])
        answer_ids = _ids(tokenizer(rest, add_special_tokens=False)["input_ids"])
    stops = [i for i, t in enumerate(answer_ids) if t in stop_ids]
    if stops:
        answer_ids = answer_ids[: stops[0] + 1]  # nothing after the end-of-turn token is ever generated
    else:
        answer_ids = answer_ids + [end_of_turn_id(tokenizer, stop_ids)]
    if len(prompt_ids) > max_input_length:
        stats.prompt_truncated += 1
        head = max_input_length // 2
        prompt_ids = prompt_ids[:head] + prompt_ids[len(prompt_ids) - (max_input_length - head) :]
    if len(answer_ids) > max_output_length:
        stats.answer_truncated += 1
        answer_ids = answer_ids[:max_output_length]
    stats.samples += 1
    return {"input_ids": prompt_ids + answer_ids, "labels": [-100] * len(prompt_ids) + answer_ids}


# ---- model set-up ---------------------------------------------------------------------------------------------------
def pick_precision(cfg: TrainConfig, device: str) -> str:
    want = (cfg.precision or "auto").lower()
    if want not in {"auto", "bf16", "fp16", "fp32"}:
        raise ConfigError(
            f"precision: {cfg.precision!r} is not one of auto, bf16, fp16, fp32.",
            zh=f"precision：{cfg.precision!r} 不是 auto、bf16、fp16、fp32 之一。",
        )
    if want == "auto":
        if device == "cuda":
            import torch

            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if device != "cuda" and want == "fp16":
        raise ConfigError(
            "precision: fp16 needs a CUDA GPU; use precision: auto (fp32 on CPU).",
            zh="precision：fp16 需要 CUDA GPU；请使用 precision: auto（在 CPU 上为 fp32）。",
        )
    if device == "cuda" and want == "bf16":
        import torch

        if not torch.cuda.is_bf16_supported():
            raise ConfigError(
                "precision: bf16 is not supported by this GPU; use precision: fp16 or auto.",
                zh="precision：这块 GPU 不支持 bf16；请使用 precision: fp16 或 auto。",
            )
    return want


# ---- the run --------------------------------------------------------------------------------------------------------
@dataclass
class RunPaths:
    config_file: Path | None
    data_dir: Path
    output_dir: Path


def resolve_paths(cfg: TrainConfig, config_file: Path | None, output_dir: str | None = None) -> RunPaths:
    base = config_file.resolve().parent if config_file else Path.cwd()

    def rel(p: str) -> Path:
        path = Path(p).expanduser()
        return path if path.is_absolute() else (base / path).resolve()

    return RunPaths(config_file, rel(cfg.data_dir), Path(output_dir).resolve() if output_dir else rel(cfg.output_dir))


def _world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _is_main() -> bool:
    return _world()[0] == 0


def _log(msg: str) -> None:
    if _is_main():
        print(msg, file=sys.stderr, flush=True)


def _check_method(cfg: TrainConfig) -> None:
    from .config import METHODS

    if cfg.method not in METHODS:
        raise ConfigError(
            f"method: {cfg.method!r} is not one of {', '.join(METHODS)}.",
            zh=f"method：{cfg.method!r} 不是 {', '.join(METHODS)} 之一。",
        )


def prepare_data(cfg: TrainConfig, paths: RunPaths, tokenizer, stop_ids: list[int]) -> tuple[list, list, EncodeStats]:
    train_path = paths.data_dir / cfg.train_file
    if not train_path.exists():
        raise TrainError(
            f"The training file {train_path} does not exist; build the dataset first (`umtcds dataset` or the Dataset page) or fix data_dir.",
            zh=f"训练文件 {train_path} 不存在；请先在“数据集”页面（或用 `umtcds dataset`）生成数据集，或修改 data_dir。",
        )
    stats = EncodeStats()
    train_convs, problems = load_conversations(train_path, cfg.system_prompt)
    stats.problems += problems
    if not train_convs:
        raise TrainError(
            f"{train_path} holds no usable samples (each needs a user question and a non-empty assistant answer); rebuild the dataset.",
            zh=f"{train_path} 里没有可用的样本（每条都需要用户问题和非空的回答）；请重新生成数据集。",
        )
    dev_path = paths.data_dir / cfg.dev_file if cfg.dev_file else None
    dev_convs: list = []
    if dev_path is not None and dev_path.exists():
        dev_convs, problems = load_conversations(dev_path, cfg.system_prompt)
        stats.problems += problems

    def enc(convs):
        return [
            encode_conversation(tokenizer, c, cfg.max_input_length, cfg.max_output_length, stop_ids, stats)
            for c in convs
        ]

    return enc(train_convs), enc(dev_convs), stats


class ListDataset:
    """A plain list as a map-style dataset (the Trainer needs ``__len__``/``__getitem__``)."""

    def __init__(self, items: list[dict]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def _callbacks(cfg: TrainConfig, paths: RunPaths, stop_flag: dict, trainer_ref: dict):
    """The metrics/progress callback and the SIGTERM stopper (built here so transformers is imported lazily)."""
    from transformers import TrainerCallback

    from .progress import Progress

    metrics_path = paths.output_dir / METRICS_FILE

    class MetricsCallback(TrainerCallback):
        """Appends one JSON per log event to metrics.jsonl and keeps the job's progress file current."""

        def __init__(self):
            self.progress: Progress | None = None
            self.last_time = None
            self.last_tokens = 0
            self.start_step = 0

        def on_train_begin(self, args, state, control, **kw):
            if not state.is_world_process_zero:
                return
            self.progress = Progress(state.max_steps, unit="steps", desc="train", min_interval=0.5)
            self.progress.done = state.global_step
            self.progress.__enter__()
            self.start_step = state.global_step
            self.last_time = time.time()
            self.last_tokens = trainer_ref["trainer"].tokens_seen if trainer_ref.get("trainer") else 0
            kind = "resume" if state.global_step > 0 else "start"
            append_jsonl(
                metrics_path,
                {"kind": kind, "step": state.global_step, "time": time.time(), "max_steps": state.max_steps},
            )

        def on_step_end(self, args, state, control, **kw):
            if _world()[1] > 1:  # every rank must stop at the same step, or the next collective hangs
                stop_flag["stop"] = _any_rank(stop_flag["stop"])
            if stop_flag["stop"]:
                control.should_save = True
                control.should_training_stop = True
                stop_flag["saved_at"] = state.global_step
            if self.progress is not None:
                self.progress.update(state.global_step - self.progress.done)

        def on_log(self, args, state, control, logs=None, **kw):
            if not state.is_world_process_zero or not logs:
                return
            now = time.time()
            rec: dict[str, Any] = {"step": state.global_step, "time": now, "epoch": state.epoch}
            if "eval_loss" in logs:
                rec["kind"] = "eval"
            elif "loss" in logs:
                rec["kind"] = "train"
            else:
                rec["kind"] = "summary"
            for k, v in logs.items():
                if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
                    rec[k] = v
            if rec["kind"] == "train":
                trainer = trainer_ref.get("trainer")
                tokens = trainer.tokens_seen if trainer else 0
                dt = now - (self.last_time or now)
                if dt > 0 and tokens >= self.last_tokens:
                    rec["tokens_per_s"] = round((tokens - self.last_tokens) / dt, 1)
                rec["tokens_seen"] = tokens
                self.last_time, self.last_tokens = now, tokens
            rec.update(_gpu_mem())
            append_jsonl(metrics_path, rec)
            if self.progress is not None and rec["kind"] == "train":
                counters = {"loss": round(rec.get("loss", float("nan")), 4)}
                if "tokens_per_s" in rec:
                    counters["tokens/s"] = rec["tokens_per_s"]
                self.progress.update(0, **counters)
            elif self.progress is not None and rec["kind"] == "eval":
                self.progress.update(0, eval_loss=round(rec["eval_loss"], 4))

        def on_train_end(self, args, state, control, **kw):
            if self.progress is not None:
                self.progress.update(state.global_step - self.progress.done)
                self.progress.close()

    return MetricsCallback()


def _any_rank(flag: bool) -> bool:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _gpu_mem() -> dict:
    try:
        import torch

        if torch.cuda.is_available():
            gib = 1024**3
            return {
                "gpu_mem_gib": round(torch.cuda.memory_allocated() / gib, 3),
                "gpu_peak_gib": round(torch.cuda.max_memory_allocated() / gib, 3),
            }
    except Exception:  # noqa: BLE001 - memory figures are best effort
        pass
    return {}


def _make_trainer_class():
    from transformers import Trainer

    class CountingTrainer(Trainer):
        """Trainer that counts the real (non-padding) tokens it trains on, for tokens/s."""

        tokens_seen = 0
        umtcds_packing = False

        def _get_train_sampler(self, train_dataset=None):
            """On several GPUs with packing: every rank gets about the same number of tokens per step."""
            ds = train_dataset if train_dataset is not None else self.train_dataset
            if self.args.world_size > 1 and self.umtcds_packing and ds is not None and hasattr(ds, "__len__"):
                from . import speed

                return speed.packed_rebalance_sampler(
                    [len(ds[i]["input_ids"]) for i in range(len(ds))],
                    self.args.per_device_train_batch_size,
                    self.args.world_size,
                    self.args.process_index,
                    self.args.gradient_accumulation_steps,
                    seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
                    drop_last=self.args.dataloader_drop_last,
                )
            return super()._get_train_sampler(train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:
                mask = inputs.get("attention_mask")
                self.tokens_seen += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )

    return CountingTrainer


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "CUDA out of memory" in str(exc)


def _is_disk_full(exc: BaseException) -> bool:
    return (
        isinstance(exc, DiskFullError)
        or getattr(exc, "errno", None) == 28
        or "No space left on device" in str(exc)
        or "disk full" in str(exc).lower()
    )


def train(
    cfg: TrainConfig,
    config_file: str | os.PathLike | None = None,
    resume: str = "auto",
    output_dir: str | None = None,
) -> dict:
    """Run one fine-tuning job; returns the ``train_info.json`` dict (also written to ``output_dir``)."""
    try:
        return _train(cfg, Path(config_file) if config_file else None, resume, output_dir)
    except UserError:
        raise
    except Exception as exc:
        if _is_oom(exc):
            raise TrainError(
                "The GPU ran out of memory; use method qlora, a smaller per_device_batch_size (raise "
                "gradient_accumulation_steps to compensate) or shorter max_input_length/max_output_length.",
                zh="GPU 显存不足；请改用 qlora 方法、减小 per_device_batch_size（同时加大 gradient_accumulation_steps），"
                "或缩短 max_input_length/max_output_length。",
            ) from exc
        if _is_disk_full(exc):
            raise TrainError(
                "The disk is full while saving the run; free some space (or lower save_total_limit) and resume with --resume auto.",
                zh="保存训练结果时磁盘已满；请清理空间（或减小 save_total_limit），然后从检查点继续训练。",
            ) from exc
        raise


def resume_point(out: Path, resume: str) -> Path | None:
    """The checkpoint to continue from (``auto`` | ``no`` | a folder), or None; refuses to overwrite a run."""
    resume = (resume or "auto").strip()
    if resume == "auto":
        found = latest_complete_checkpoint(out)
        if found is None and has_final_model(out):
            raise TrainError(
                f"{out} already holds a finished model; set output_dir to a new folder (or delete that one) to train again.",
                zh=f"{out} 里已经有训练完成的模型；要重新训练，请把 output_dir 设为新的文件夹（或删除那个文件夹）。",
            )
        return found
    if resume == "no":
        if list_checkpoints(out) or has_final_model(out):
            raise TrainError(
                f"{out} already holds a run; continue it with --resume auto, or set output_dir to a new folder.",
                zh=f"{out} 里已经有一次训练；请选择从检查点继续，或把 output_dir 设为新的文件夹。",
            )
        return None
    path = Path(resume).expanduser().resolve()
    if not path.is_dir():
        raise TrainError(
            f"The checkpoint {path} does not exist; pass --resume auto or an existing checkpoint-N folder.",
            zh=f"检查点 {path} 不存在；请使用 --resume auto，或指定一个已有的 checkpoint-N 文件夹。",
        )
    if not is_complete_checkpoint(path):
        raise TrainError(
            f"{path} is not a complete checkpoint (missing weights or trainer_state.json); pass --resume auto to pick the newest complete one.",
            zh=f"{path} 不是完整的检查点（缺少权重或 trainer_state.json）；请使用 --resume auto 自动选择最新的完整检查点。",
        )
    return path


def machine_setup(cfg: TrainConfig):
    """This process's machine (device, GPU, world size) and the run's precision; refuses what it cannot run."""
    from . import models, speed

    _, world = _world()
    device = models.best_device()
    if device == "mps":
        device = "cpu"  # the Trainer's mps path is not tested here
    if device == "cpu":
        import torch

        from .llm import cpu_threads

        # this job's share of the cores: a LoRA run and a Q&A generation on 2 cores, each with torch's 2 threads,
        # ran 3.8 tok/s each against 15-16 with one thread each (bench/results/generate_qa_cpu.json)
        torch.set_num_threads(min(torch.get_num_threads(), cpu_threads()))
    if methods.get(cfg.method).quantised:
        if device != "cuda":
            raise TrainError(
                "QLoRA (4-bit) needs an NVIDIA GPU with CUDA; on this machine use method lora (or full for small models).",
                zh="QLoRA（4 比特）需要支持 CUDA 的 NVIDIA GPU；这台机器请使用 lora 方法（小模型也可用 full）。",
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise TrainError(
                "QLoRA needs the bitsandbytes package; run `pip install bitsandbytes` or use method lora.",
                zh="QLoRA 需要 bitsandbytes 包；请运行 `pip install bitsandbytes`，或改用 lora 方法。",
            )
        if world > 1:
            raise TrainError(
                "QLoRA on several GPUs is not supported here; use --gpus 1, or method lora.",
                zh="这里不支持在多块 GPU 上运行 QLoRA；请使用 --gpus 1，或改用 lora 方法。",
            )
    precision = pick_precision(cfg, device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return speed.Machine.detect(f"cuda:{local_rank}" if device == "cuda" else device, world), precision


def largest_step_tokens(items: list[dict], batch: int, packed: bool) -> int:
    """Positions of the largest step a run of ``items`` can meet: the ``batch`` longest samples, packed end to end,
    or padded to the longest of them."""
    lengths = sorted((len(it["input_ids"]) for it in items), reverse=True)[: max(1, batch)]
    if not lengths:
        return 0
    return sum(lengths) if packed else lengths[0] * len(lengths)


def budget_plan(cfg: TrainConfig, plan, machine, items: list[dict]):
    """The speed plan with as many un-checkpointed layers as ``cfg.memory_budget_gib`` allows for this dataset's
    largest step (:func:`speed.keep_layers`); the plan unchanged where that does not apply or the model's shape is
    unknown."""
    from . import memory, speed

    if not (plan.cuda and plan.checkpointing):
        return plan
    try:
        shape = memory.model_shape(cfg.model)
    except Exception:  # noqa: BLE001 - an unknown shape: stay with full checkpointing
        return plan
    tokens = largest_step_tokens(items, cfg.per_device_batch_size, plan.packing)
    return speed.keep_layers(plan, cfg, shape, tokens, machine) if tokens else plan


def build_model(cfg: TrainConfig, spec, plan):
    """Load the base as the method needs it (dtype, 4-bit for QLoRA, attention) and wrap it with the method's
    adapter; returns ``(model, lora targets or None)``."""
    import torch
    import transformers

    from . import models

    method = methods.get(cfg.method)
    precision = plan.precision
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    model = models.load_model(
        spec,
        device=plan.device,
        dtype=dtypes[method.load_dtype(precision)],
        quantization_config=method.quantization(cfg, precision),
        attn_implementation=plan.load_attention,
    )
    model.config.use_cache = False  # training: no KV cache (and packed masks need cache=None)
    transformers.set_seed(cfg.seed)  # adapter init must not depend on what ran before in this process
    return method.wrap(model, cfg, kbit=plan.kbit, checkpointing=plan.checkpointing)


def training_arguments(cfg: TrainConfig, out: Path, plan, world: int, has_dev: bool):
    """The TrainingArguments of a run: every value comes from the config or from the speed plan."""
    from transformers import TrainingArguments

    cuda = plan.cuda
    return TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=cfg.per_device_batch_size,
        per_device_eval_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        num_train_epochs=cfg.num_epochs,
        max_steps=cfg.max_steps if cfg.max_steps and cfg.max_steps > 0 else -1,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=float(cfg.warmup_ratio) if 0 <= cfg.warmup_ratio < 1 else int(cfg.warmup_ratio),
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        optim="adamw_torch_fused" if cuda else "adamw_torch",
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        # the NaN/inf filter tests every step's loss on the host: one GPU sync per step (~6% of a 9B LoRA step on
        # an H200). Off on CUDA: a non-finite loss then shows in the logged average instead of being hidden.
        logging_nan_inf_filter=not cuda,
        eval_strategy="steps" if has_dev else "no",
        eval_steps=cfg.eval_steps if has_dev else None,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        prediction_loss_only=True,
        # with layers left un-checkpointed (speed.keep_layers) speed.apply has set checkpointing layer by layer, and
        # the Trainer's own switch would turn it on for every layer again
        activation_checkpointing=plan.checkpointing and not plan.skip_last,
        activation_checkpointing_kwargs={"use_reentrant": False} if plan.checkpointing and not plan.skip_last else None,
        bf16=plan.precision == "bf16",
        # TF32 for the fp32 adapter matmuls (LoRA A/B): Ampere+ only
        tf32=True if plan.tf32 else None,
        fp16=plan.precision == "fp16",
        use_cpu=not cuda,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        disable_tqdm=True,  # umtcds_core.progress draws the bar (and feeds the dashboard)
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=plan.pinned,
        # pinned batches copied without blocking the host (the copy no longer waits for the previous step's kernels)
        accelerator_config={"non_blocking": plan.pinned},
        use_liger_kernel=False,  # applied per model instance by umtcds_core.speed.apply
        ddp_find_unused_parameters=False if world > 1 else None,
        fsdp="full_shard auto_wrap" if methods.get(cfg.method).sharded and world > 1 else "",
    )


class _StopOnSigterm:
    """SIGTERM (the dashboard's Stop) sets a flag; the callback then saves a checkpoint and ends training."""

    def __init__(self):
        self.flag = {"stop": False, "saved_at": None}
        self.previous = None

    def _handler(self, signum, frame):
        if not self.flag["stop"]:
            _log("Stop requested: finishing this step and saving a checkpoint…")
        self.flag["stop"] = True

    def __enter__(self) -> dict:
        if _is_in_main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handler)
        return self.flag

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _train(cfg: TrainConfig, config_file: Path | None, resume: str, output_dir: str | None) -> dict:
    _check_method(cfg)
    paths = resolve_paths(cfg, config_file, output_dir)
    out = paths.output_dir
    resume_from = resume_point(out, resume)  # decided before loading anything heavy
    if resume_from is not None:
        _log(f"Resuming from {resume_from}.")

    import torch
    import transformers

    from . import models, speed

    with _StopOnSigterm() as stop_flag:
        machine, precision = machine_setup(cfg)
        plan = speed.plan(cfg, machine, precision)
        spec = models.resolve(cfg.model)
        model_dir = models.hf_folder(spec)
        tokenizer = models.load_tokenizer(spec, padding_side="right")
        if not models.has_chat_template(tokenizer):
            raise TrainError(
                f"{spec.ref} has no chat template (a base model, not a chat/instruct one); use its -chat/-instruct variant.",
                zh=f"{spec.ref} 没有对话模板（是基座模型，不是对话模型）；请改用它的 -chat/-instruct 版本。",
            )
        stop_ids = stop_token_ids(tokenizer, model_dir)
        train_items, dev_items, stats = prepare_data(cfg, paths, tokenizer, stop_ids)
        for p in stats.problems[:20]:
            _log(f"Skipped: {p}")
        if not dev_items:
            _log(f"No dev split at {paths.data_dir / (cfg.dev_file or '')}: training without evaluation.")
        if stats.prompt_truncated or stats.answer_truncated:
            _log(
                f"Truncated {stats.prompt_truncated} prompt(s) to max_input_length={cfg.max_input_length} and "
                f"{stats.answer_truncated} answer(s) to max_output_length={cfg.max_output_length}."
            )

        plan = budget_plan(cfg, plan, machine, train_items)
        if plan.skip_last:
            _log(f"Memory: {plan.reasons['skip_last']}.")
        model, targets = build_model(cfg, spec, plan)  # load → method
        report = speed.apply(model, plan)  # → speed
        _log(f"Packing: {'on' if report.packing else 'off'} ({report.packing_note}).")
        for n in report.notes:
            _log(f"Note: {n}.")
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        _log(
            f"Method {cfg.method}: {trainable:,} trainable of {total:,} parameters; precision {precision}; "
            f"attention {report.attention}; loss {report.loss}; kernels {', '.join(report.kernels) or 'none'}; "
            f"compiled layers {report.compiled or 'none'}."
        )
        collator = report.collator(tokenizer)
        trainer_ref: dict = {}
        trainer = _make_trainer_class()(
            model=model,
            args=training_arguments(cfg, out, plan, machine.count, has_dev=bool(dev_items)),
            train_dataset=ListDataset(train_items),
            eval_dataset=ListDataset(dev_items) if dev_items else None,
            data_collator=collator,
            processing_class=tokenizer,
            callbacks=[_callbacks(cfg, paths, stop_flag, trainer_ref)],
        )
        trainer_ref["trainer"] = trainer
        trainer.umtcds_packing = report.packing
        if stop_flag["stop"]:
            _log("Stopped before training started; nothing to save.")
            return {"stopped": True, "output_dir": str(out)}
        started = time.time()
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        stopped = stop_flag["stop"]

        info = {
            "base_model": cfg.model,
            "base_model_path": str(model_dir),
            "method": cfg.method,
            "lora_target_modules": targets,
            "config": cfg.to_dict(),
            "config_file": str(config_file) if config_file else None,
            "data_dir": str(paths.data_dir),
            "output_dir": str(out),
            "system_prompt": cfg.system_prompt,
            "precision": precision,
            "attn_implementation": report.attention,
            "packing": report.packing,
            "packing_note": report.packing_note,
            "gradient_checkpointing": report.checkpointing,
            "liger_kernel": machine.cuda and importlib.util.find_spec("liger_kernel") is not None,
            "speed": report.as_dict(),
            "notes": report.notes,
            "device": "cuda" if machine.cuda else machine.device,
            "world_size": machine.count,
            "num_train_samples": len(train_items),
            "num_dev_samples": len(dev_items),
            "truncated": {"prompts": stats.prompt_truncated, "answers": stats.answer_truncated},
            "skipped_records": len(stats.problems),
            "resumed_from": str(resume_from) if resume_from else None,
            "started": started,
            "ended": time.time(),
            "stopped": stopped,
            "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
            "final_metrics": _final_metrics(trainer, result),
        }
        if stopped:
            _log(
                f"Stopped at step {trainer.state.global_step}; checkpoint saved in {out}. Continue with --resume auto."
            )
            if trainer.is_world_process_zero():
                write_json_atomic(out / STOPPED_FILE, info)
            return info
        # ---- final adapter/model + tokenizer, ready for chat (KV cache back on)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.config.use_cache = True
        if report.attention == speed.VARLEN_ATTN:
            base.set_attn_implementation("sdpa")
        trainer.save_model(str(out))
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(str(out))  # chat loads it from here (padding side is the loader's choice)
            write_json_atomic(out / INFO_FILE, info)
            (out / STOPPED_FILE).unlink(missing_ok=True)
        _log(f"Done: {cfg.method} model saved in {out}.")
        return info


def _is_in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _final_metrics(trainer, result) -> dict:
    metrics: dict[str, Any] = {"global_step": trainer.state.global_step}
    for k, v in (getattr(result, "metrics", None) or {}).items():
        if isinstance(v, (int, float)):
            metrics[k] = v
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    if evals:
        metrics["eval_loss"] = evals[-1]["eval_loss"]
    losses = [h for h in trainer.state.log_history if "loss" in h]
    if losses:
        metrics["last_loss"] = losses[-1]["loss"]
    metrics["tokens_seen"] = trainer.tokens_seen
    return metrics


# ---- CLI ------------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="training config YAML (write one with `umtcds config`)")
    parser.add_argument(
        "--resume",
        default="auto",
        help="auto: continue from the newest complete checkpoint if any (default); no: start fresh (refuses to "
        "overwrite a run); or a checkpoint-N folder",
    )
    parser.add_argument("--gpus", type=int, default=1, help="number of GPUs; >1 re-launches under torchrun (DDP/FSDP)")
    parser.add_argument(
        "--output-dir", default=None, help="override the config's output_dir (the dashboard gives each run a folder)"
    )


def _relaunch(args: argparse.Namespace) -> int:
    import torch

    available = torch.cuda.device_count()
    if available < args.gpus:
        raise TrainError(
            f"--gpus {args.gpus} asks for more GPUs than this machine has ({available}); lower --gpus.",
            zh=f"--gpus {args.gpus} 超过了这台机器的 GPU 数量（{available}）；请调小 --gpus。",
        )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={args.gpus}",
        "-m",
        "umtcds_core.train",
        args.config,
        "--resume",
        args.resume,
    ]
    if args.output_dir:
        cmd += ["--output-dir", args.output_dir]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.Popen(cmd, env=env)

    def forward(signum, frame):
        proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    return proc.wait()


def run(args: argparse.Namespace) -> int:
    if args.gpus > 1 and "LOCAL_RANK" not in os.environ:
        return _relaunch(args)
    cfg = load_config(args.config)
    info = train(cfg, config_file=args.config, resume=args.resume, output_dir=args.output_dir)
    if _is_main() and not info.get("stopped"):
        fm = info.get("final_metrics", {})
        print(
            json.dumps(
                {
                    "output_dir": info["output_dir"],
                    "global_step": fm.get("global_step"),
                    "eval_loss": fm.get("eval_loss"),
                }
            )
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m umtcds_core.train", description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UserError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
