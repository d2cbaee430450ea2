"""Step 4 — one typed training config ↔ commented YAML, presets per method, and a GPU memory estimate.

Usage::

    umtcds config --method {lora,qlora,ptuning-v2,full} --model NAME|PATH --data DATA_DIR --out config.yaml
                  [--max-steps N] [--save-steps N] [--lr X] [--output-dir DIR] [--epochs E] [--batch-size B]
                  [--grad-accum G] [--max-input-length L] [--max-output-length L] [--lora-r R] [--lora-alpha A]
                  [--virtual-tokens T] [--precision auto|bf16|fp16|fp32] [--system-prompt TEXT] [--preset NAME]

Field names of :class:`TrainConfig` are the contract with ``train.py``; each is documented where it is declared.
Constructing a ``TrainConfig`` validates it and raises one :class:`ConfigError` listing *every* problem, each with the
key and a fix; an unknown key in a YAML is an error, not silently ignored. ``save_config`` writes YAML with an inline
comment on each trade-off that ``yaml.safe_load`` still reads. Presets start from the GLM-4 fine-tuning demo's values
(LoRA r=8, alpha=32, dropout 0.1, lr 5e-4, 512/512 tokens; P-tuning v2 with virtual tokens; full SFT at lr 5e-5) and a
small-model preset for the embedded model. :func:`estimate_memory` predicts peak GPU memory from the model's own
config.json (its docstring says how).
"""

from __future__ import annotations

import difflib
import json
import math
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path

import yaml

from .errors import UserError

METHODS = ("lora", "qlora", "ptuning-v2", "full")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
COMPILE_MODES = ("auto", "on", "off")
SCHEDULERS = (
    "cosine",
    "linear",
    "constant",
    "constant_with_warmup",
    "cosine_with_restarts",
    "polynomial",
    "cosine_with_min_lr",
    "inverse_sqrt",
)
QUANT_TYPES = ("nf4", "fp4")


class ConfigError(UserError, ValueError):
    """A config problem; the message names the key and the fix."""

    def __init__(self, message: str, problems: list[str] | None = None, zh: str | None = None):
        super().__init__(message, zh=zh)
        self.problems = problems or [message]


@dataclass
class TrainConfig:
    # ---- model and data
    model: str = "smollm2-135m"
    """Model reference: embedded name, local HF folder or .gguf (see models.py)."""
    data_dir: str = "dataset"
    """Folder with the split files (relative paths are resolved against the YAML's folder)."""
    train_file: str = "train.jsonl"
    dev_file: str = "dev.jsonl"
    test_file: str = "test.jsonl"
    system_prompt: str | None = None
    # ---- method
    method: str = "lora"
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_target_modules: list[str] | None = None
    """None = chosen per architecture."""
    qlora_bits: int = 4
    qlora_quant_type: str = "nf4"
    qlora_double_quant: bool = True
    num_virtual_tokens: int = 128
    """P-tuning v2 (peft prefix tuning) virtual tokens per layer."""
    # ---- lengths and schedule
    max_input_length: int = 512
    max_output_length: int = 512
    num_epochs: float = 3.0
    max_steps: int = -1
    """> 0 overrides num_epochs."""
    per_device_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # ---- eval, save, log
    eval_steps: int = 50
    save_steps: int = 50
    logging_steps: int = 5
    save_total_limit: int = 3
    # ---- speed and memory
    gradient_checkpointing: bool = True
    packing: bool = True
    precision: str = "auto"
    """auto | bf16 | fp16 | fp32 (auto: bf16 on Ampere+, fp16 on older GPUs, fp32 on CPU)."""
    compile: str = "auto"
    """auto | on | off: torch.compile of the decoder layers (auto: on for LoRA/QLoRA on one CUDA GPU)."""
    seed: int = 42
    output_dir: str = "output"
    extra: dict = field(default_factory=dict)
    """Free-form, ignored by training (UI notes)."""

    def __post_init__(self) -> None:
        _raise_problems("The config", _problems(self))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "The config") -> TrainConfig:
        """Build from a plain dict (e.g. a loaded YAML): unknown keys and every invalid value are reported at once."""
        if not isinstance(data, dict):
            raise ConfigError(
                f"{where} is not a mapping of keys to values; write `key: value` lines.",
                zh=f"{_where_zh(where)}不是“键: 值”的映射；请按 `key: value` 的格式逐行书写。",
            )
        known = {f.name for f in fields(cls)}
        pairs: list[tuple[str, str]] = []
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                if close:
                    pairs.append(
                        (
                            f"{key}: unknown key; did you mean '{close[0]}'?",
                            f"{key}：未知的键；是不是想写“{close[0]}”？",
                        )
                    )
                else:
                    pairs.append(
                        (
                            f"{key}: unknown key; remove it (see `umtcds config --help` for the keys)",
                            f"{key}：未知的键；请删除它（可用的键见 `umtcds config --help`）",
                        )
                    )
        values = {k: _coerce(k, v) for k, v in data.items() if k in known}
        cfg = cls.__new__(cls)  # fill without __post_init__ so all problems are collected together
        for f in fields(cls):
            if f.name in values:
                setattr(cfg, f.name, values[f.name])
            elif f.default is not MISSING:
                setattr(cfg, f.name, f.default)
            else:
                setattr(cfg, f.name, f.default_factory())  # type: ignore[misc]
        _raise_problems(where, pairs + _problems(cfg))
        return cfg

    def replace(self, **changes) -> TrainConfig:
        """A validated copy with ``changes`` applied."""
        data = self.to_dict()
        data.update(changes)
        return TrainConfig.from_dict(data)


def _where_zh(where: str) -> str:
    """``where`` ("The config" or a file name) as the subject of a Chinese sentence, spaced to run into the verb."""
    return "配置" if where == "The config" else f"配置文件 {where} "


def _raise_problems(where: str, pairs: list[tuple[str, str]]) -> None:
    """Raise one :class:`ConfigError` listing every ``(English, Chinese)`` problem; nothing when there are none."""
    if pairs:
        en, zh = [e for e, _ in pairs], [z for _, z in pairs]
        raise ConfigError(_problems_message(where, en), en, zh=_problems_message(where, zh, "zh"))


def _problems_message(where: str, problems: list[str], lang: str = "en") -> str:
    """One message listing ``problems`` (already in ``lang``) under a heading naming ``where``; ``lang`` "zh": Chinese."""
    if lang == "zh":
        if len(problems) == 1:
            return f"{_where_zh(where)}有一个问题——{problems[0]}"
        return f"{_where_zh(where)}有 {len(problems)} 个问题：\n" + "\n".join(f"- {x}" for x in problems)
    if len(problems) == 1:
        return f"{where} has a problem — {problems[0]}"
    return f"{where} has {len(problems)} problems:\n" + "\n".join(f"- {x}" for x in problems)


# ---- validation ---------------------------------------------------------------------------------------------------
_INT = {
    "lora_r",
    "lora_alpha",
    "qlora_bits",
    "num_virtual_tokens",
    "max_input_length",
    "max_output_length",
    "max_steps",
    "per_device_batch_size",
    "gradient_accumulation_steps",
    "eval_steps",
    "save_steps",
    "logging_steps",
    "save_total_limit",
    "seed",
}
_FLOAT = {"lora_dropout", "num_epochs", "learning_rate", "warmup_ratio", "weight_decay", "max_grad_norm"}
_BOOL = {"qlora_double_quant", "gradient_checkpointing", "packing"}
_STR = {"model", "data_dir", "train_file", "dev_file", "test_file", "method", "qlora_quant_type", "lr_scheduler"}
_STR |= {"precision", "output_dir", "compile"}


def _coerce(key: str, value):
    """Forgive YAML spellings that are clearly meant as numbers: ``5e-4`` (a string to YAML 1.1), ``3000.0``."""
    if key in _FLOAT and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if key in _INT and isinstance(value, float) and value.is_integer():
        return int(value)
    if key in _INT and isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


def validate(cfg: TrainConfig) -> list[str]:
    """Every problem of ``cfg`` as ``"key: what is wrong; fix"`` (empty list when it is usable)."""
    return [en for en, _ in _problems(cfg)]


def validate_zh(cfg: TrainConfig) -> list[str]:
    """The same problems as :func:`validate`, in Chinese (same order)."""
    return [zh for _, zh in _problems(cfg)]


def _problems(cfg: TrainConfig) -> list[tuple[str, str]]:
    """Every problem of ``cfg`` as an ``(English, Chinese)`` pair of ``"key: what is wrong; fix"`` sentences."""
    p: list[tuple[str, str]] = []
    d = cfg.__dict__

    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_num(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    for k in sorted(_INT):
        if not is_int(d.get(k)):
            p.append(
                (
                    f"{k}: must be a whole number (got {d.get(k)!r}); e.g. {k}: {_default(k)}",
                    f"{k}：必须是整数（当前是 {d.get(k)!r}）；例如 {k}: {_default(k)}",
                )
            )
    for k in sorted(_FLOAT):
        if not is_num(d.get(k)):
            p.append(
                (
                    f"{k}: must be a number (got {d.get(k)!r}); e.g. {k}: {_default(k)}",
                    f"{k}：必须是数字（当前是 {d.get(k)!r}）；例如 {k}: {_default(k)}",
                )
            )
    for k in sorted(_BOOL):
        if not isinstance(d.get(k), bool):
            p.append(
                (
                    f"{k}: must be true or false (got {d.get(k)!r})",
                    f"{k}：必须是 true 或 false（当前是 {d.get(k)!r}）",
                )
            )
    for k in sorted(_STR):
        if not isinstance(d.get(k), str) or not d.get(k).strip():
            p.append(
                (
                    f"{k}: must be non-empty text (got {d.get(k)!r}); e.g. {k}: {_default(k)}",
                    f"{k}：必须是非空文本（当前是 {d.get(k)!r}）；例如 {k}: {_default(k)}",
                )
            )
    if d.get("system_prompt") is not None and not isinstance(d.get("system_prompt"), str):
        p.append(("system_prompt: must be text or null", "system_prompt：必须是文本或 null"))
    tm = d.get("lora_target_modules")
    if tm is not None and (not isinstance(tm, list) or not tm or not all(isinstance(x, str) and x for x in tm)):
        p.append(
            (
                "lora_target_modules: must be a list of module names like [q_proj, v_proj], or null (auto)",
                "lora_target_modules：必须是模块名列表（如 [q_proj, v_proj]），或 null（自动选择）",
            )
        )
    if not isinstance(d.get("extra"), dict):
        p.append(("extra: must be a mapping (or leave it out)", "extra：必须是“键: 值”的映射（或者删掉这一项）"))

    def check(cond: bool, en: str, zh: str) -> None:
        if not cond:
            p.append((en, zh))

    def one_of(key: str, choices: tuple[str, ...], fix: tuple[str, str] = ("", "")) -> None:
        value = d.get(key)
        if isinstance(value, str) and value.strip():
            listed = ", ".join(choices)
            check(
                value in choices,
                f"{key}: '{value}' is not one of {listed}{fix[0]}",
                f"{key}：“{value}”不是 {listed} 之一{fix[1]}",
            )

    ok = lambda k: is_int(d.get(k)) or (k in _FLOAT and is_num(d.get(k)))  # noqa: E731 - tiny local helper
    one_of("method", METHODS, ("; pick one", "；请从中选择一个"))
    one_of("precision", PRECISIONS)
    one_of("compile", COMPILE_MODES)
    one_of("lr_scheduler", SCHEDULERS)
    if isinstance(d.get("qlora_quant_type"), str) and d["qlora_quant_type"].strip():
        check(
            d["qlora_quant_type"] in QUANT_TYPES,
            "qlora_quant_type: use nf4 (recommended) or fp4",
            "qlora_quant_type：请用 nf4（推荐）或 fp4",
        )
    if ok("lora_r"):
        check(
            1 <= d["lora_r"] <= 1024,
            f"lora_r: {d['lora_r']} is out of range; use 4–64 (8 is the GLM-4 demo's)",
            f"lora_r：{d['lora_r']} 超出范围；请用 4–64（GLM-4 官方示例用 8）",
        )
    if ok("lora_alpha"):
        check(
            d["lora_alpha"] > 0,
            "lora_alpha: must be > 0; 2–4× lora_r is usual (the GLM-4 demo uses 32)",
            "lora_alpha：必须 > 0；通常取 lora_r 的 2–4 倍（GLM-4 官方示例用 32）",
        )
    if ok("lora_dropout"):
        check(
            0 <= d["lora_dropout"] < 1,
            "lora_dropout: must be in [0, 1); 0.05–0.1 is usual",
            "lora_dropout：必须在 [0, 1) 范围内；常用 0.05–0.1",
        )
    if ok("qlora_bits"):
        check(d["qlora_bits"] in (4, 8), "qlora_bits: use 4 (QLoRA) or 8", "qlora_bits：请用 4（QLoRA）或 8")
    if ok("num_virtual_tokens"):
        check(
            1 <= d["num_virtual_tokens"] <= 2048,
            "num_virtual_tokens: use 16–512 (the original used 128)",
            "num_virtual_tokens：请用 16–512（原版 P-tuning v2 用 128）",
        )
    for k in ("max_input_length", "max_output_length"):
        if ok(k):
            check(
                d[k] >= 8,
                f"{k}: {d[k]} tokens is too short; use at least 64 (the GLM-4 demo uses 512)",
                f"{k}：{d[k]} 个 token 太短；请至少用 64（GLM-4 官方示例用 512）",
            )
    if ok("max_steps"):
        check(
            d["max_steps"] == -1 or d["max_steps"] > 0,
            "max_steps: use -1 (train num_epochs) or a positive number",
            "max_steps：请用 -1（按 num_epochs 训练）或一个正数",
        )
        if ok("num_epochs") and d["max_steps"] <= 0:
            check(
                d["num_epochs"] > 0,
                "num_epochs: must be > 0 when max_steps is -1; set num_epochs: 3",
                "num_epochs：max_steps 为 -1 时必须 > 0；请设 num_epochs: 3",
            )
    for k in ("per_device_batch_size", "gradient_accumulation_steps", "eval_steps", "save_steps", "logging_steps"):
        if ok(k):
            check(d[k] >= 1, f"{k}: must be at least 1", f"{k}：必须至少为 1")
    if ok("save_total_limit"):
        check(
            d["save_total_limit"] >= 1,
            "save_total_limit: keep at least 1 checkpoint (resume needs it)",
            "save_total_limit：至少保留 1 个检查点（断点续训需要它）",
        )
    if ok("learning_rate"):
        check(
            0 < d["learning_rate"] < 1,
            "learning_rate: must be between 0 and 1; try 5e-4 (LoRA) or 5e-5 (full)",
            "learning_rate：必须在 0 和 1 之间；可以试试 5e-4（LoRA）或 5e-5（全量微调）",
        )
    if ok("warmup_ratio"):
        check(
            0 <= d["warmup_ratio"] < 1,
            "warmup_ratio: must be in [0, 1); 0.03 is usual",
            "warmup_ratio：必须在 [0, 1) 范围内；常用 0.03",
        )
    if ok("weight_decay"):
        check(d["weight_decay"] >= 0, "weight_decay: must be >= 0", "weight_decay：必须 >= 0")
    if ok("max_grad_norm"):
        check(
            d["max_grad_norm"] >= 0,
            "max_grad_norm: must be >= 0 (0 turns clipping off); 1.0 is usual",
            "max_grad_norm：必须 >= 0（0 表示不做梯度裁剪）；常用 1.0",
        )
    if d.get("method") == "qlora" and d.get("precision") == "fp32":
        p.append(
            (
                "precision: QLoRA computes in 16-bit; set precision: auto (or bf16)",
                "precision：QLoRA 以 16 位精度计算；请设 precision: auto（或 bf16）",
            )
        )
    return p


def advice(cfg: TrainConfig, lang: str = "en") -> list[str]:
    """Legal but doubtful choices, as short sentences (shown, never blocking); ``lang`` "zh" gives them in Chinese."""
    out: list[tuple[str, str]] = []
    if cfg.method == "full" and cfg.learning_rate > 1e-4:
        out.append(
            (
                f"learning_rate {cfg.learning_rate:g} is high for full fine-tuning; the GLM-4 demo uses 5e-5.",
                f"全量微调用 learning_rate {cfg.learning_rate:g} 偏高；GLM-4 官方示例用 5e-5。",
            )
        )
    if cfg.method in ("lora", "qlora") and cfg.learning_rate < 1e-5:
        out.append(
            (
                f"learning_rate {cfg.learning_rate:g} is very low for LoRA; 1e-4 to 5e-4 is usual.",
                f"LoRA 用 learning_rate {cfg.learning_rate:g} 太低；常用 1e-4 到 5e-4。",
            )
        )
    if cfg.precision == "fp16":
        out.append(
            (
                "fp16 can give NaN losses (GLM-4 needs bf16); prefer auto or bf16 on a GPU that supports it.",
                "fp16 可能让损失变成 NaN（GLM-4 需要 bf16）；GPU 支持时请选 auto 或 bf16。",
            )
        )
    if cfg.save_steps % cfg.eval_steps and cfg.eval_steps <= cfg.save_steps:
        out.append(
            (
                "save_steps is not a multiple of eval_steps; the best checkpoint may miss its eval score.",
                "save_steps 不是 eval_steps 的整数倍；最好的检查点可能没有对应的验证分数。",
            )
        )
    if cfg.method == "ptuning-v2" and cfg.packing:
        out.append(
            (
                "P-tuning v2 prefixes attend across packed samples' boundaries only through position ids; "
                "turn packing off if the loss looks odd.",
                "P-tuning v2 的前缀只靠位置编号区分拼接在一起的样本；如果损失看起来不正常，请关闭 packing。",
            )
        )
    return [zh if lang == "zh" else en for en, zh in out]


def _default(key: str):
    for f in fields(TrainConfig):
        if f.name == key:
            return f.default if f.default is not MISSING else None
    return None


# ---- YAML with reasons --------------------------------------------------------------------------------------------
SECTIONS = {
    "model": "Model and data",
    "method": "Method (lora | qlora | ptuning-v2 | full) and its parameters",
    "max_input_length": "Lengths and schedule",
    "eval_steps": "Evaluation, checkpoints, logging",
    "gradient_checkpointing": "Speed and memory",
}

COMMENTS = {
    "model": "embedded name (smollm2-135m), a local HF folder (e.g. glm-4-9b-chat-hf) or a .gguf file",
    "data_dir": "folder with the split files; relative to this YAML's folder",
    "train_file": "training split",
    "dev_file": "evaluated every eval_steps (loss)",
    "test_file": "held out; scored after training by `umtcds evaluate`",
    "system_prompt": "put first in every chat; null = the data's own (or none)",
    "method": "lora: small adapters, cheap; qlora: LoRA on a 4-bit base, least memory; "
    "ptuning-v2: learned prefix per layer; full: every weight, most memory",
    "lora_r": "higher: more capacity, more memory and a larger adapter",
    "lora_alpha": "scale of the update (alpha/r); 2-4x lora_r is usual",
    "lora_dropout": "higher: less overfitting on small datasets, slower learning",
    "lora_target_modules": "null: chosen per architecture (q/k/v for GLM-4); more modules: more capacity",
    "qlora_bits": "4: least memory (QLoRA); 8: closer to 16-bit quality, more memory",
    "qlora_quant_type": "nf4 suits normally distributed weights (recommended); fp4 is the alternative",
    "qlora_double_quant": "true: also quantise the scales, saves ~0.4 bit/weight",
    "num_virtual_tokens": "P-tuning v2 prefix length per layer; higher: more capacity, more memory",
    "max_input_length": "longer: fits longer questions/context, memory grows with it",
    "max_output_length": "longer: fits longer answers, memory grows with it",
    "num_epochs": "passes over the training split; more: better fit, risk of overfitting",
    "max_steps": "-1 = use num_epochs; > 0 stops after this many optimizer steps",
    "per_device_batch_size": "higher: faster per sample, more memory",
    "gradient_accumulation_steps": "effective batch = batch x this; more: smoother updates, no extra memory",
    "learning_rate": "higher: learns faster, can diverge (LoRA ~5e-4, full ~5e-5)",
    "lr_scheduler": "cosine decays smoothly; constant keeps the rate",
    "warmup_ratio": "fraction of steps ramping the rate up; avoids an early blow-up",
    "weight_decay": "higher: stronger regularisation",
    "max_grad_norm": "clips exploding gradients; 0 turns clipping off",
    "eval_steps": "lower: a denser eval-loss curve, slower training",
    "save_steps": "lower: less lost on a crash, more disk",
    "logging_steps": "lower: a denser loss chart",
    "save_total_limit": "older checkpoints beyond this are deleted; more: more disk",
    "gradient_checkpointing": "true: far less activation memory, ~30% slower",
    "packing": "true: several samples per sequence, faster; samples never attend to each other",
    "precision": "auto picks bf16 on Ampere+ GPUs, fp16 on older ones, fp32 on CPU",
    "compile": "auto: torch.compile on one CUDA GPU for LoRA/QLoRA (1-2 min at start, then faster); off: eager",
    "seed": "same seed + same data = same run",
    "output_dir": "checkpoints, metrics.jsonl and the final adapter; relative to this YAML's folder",
    "extra": "free-form notes; ignored by training",
}


def _yaml_scalar(value) -> str:
    """One value as YAML that ``yaml.safe_load`` reads back to the same Python value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        if "e" in text or "E" in text:  # YAML 1.1 (PyYAML) needs "5.0e-04", not "5e-04"
            mant, _, exp = text.lower().partition("e")
            if "." not in mant:
                mant += ".0"
            if exp[0] not in "+-":
                exp = "+" + exp
            text = f"{mant}e{exp}"
        elif text in ("inf", "-inf", "nan"):
            text = {"inf": ".inf", "-inf": "-.inf", "nan": ".nan"}[text]
        return text
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a YAML double-quoted scalar
    return json.dumps(value, ensure_ascii=False)  # lists / dicts: JSON is YAML flow style


def to_yaml(cfg: TrainConfig) -> str:
    """The config as YAML with a section header per group and an inline comment on each trade-off."""
    lines = [
        "# UMTCDS training config — written by `umtcds config` / the Config page.",
        "# Edit freely; `umtcds train` validates it and names any wrong key with a fix.",
    ]
    for f in fields(TrainConfig):
        if f.name in SECTIONS:
            lines += ["", f"# ---- {SECTIONS[f.name]}"]
        value = getattr(cfg, f.name)
        if f.name == "extra" and not value:
            value = {}
        line = f"{f.name}: {_yaml_scalar(value)}"
        comment = COMMENTS.get(f.name)
        lines.append(f"{line}  # {comment}" if comment else line)
    return "\n".join(lines) + "\n"


def parse_yaml(text: str, where: str = "The config") -> TrainConfig:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        at_zh = f"第 {mark.line + 1} 行" if mark is not None else ""
        raise ConfigError(
            f"{where} is not valid YAML{at} ({getattr(exc, 'problem', exc)}); fix that line.",
            zh=f"{_where_zh(where)}{at_zh}不是有效的 YAML（{getattr(exc, 'problem', exc)}）；请修正那一行。",
        ) from exc
    return TrainConfig.from_dict(data or {}, where=where)


def load_config(path: str | Path) -> TrainConfig:
    path = Path(path)
    if not path.exists():
        raise ConfigError(
            f"Config file {path} does not exist; write one with `umtcds config` or the Config page.",
            zh=f"配置文件 {path} 不存在；请在“配置”页面（或用 `umtcds config`）生成一个。",
        )
    return parse_yaml(path.read_text(encoding="utf-8"), where=str(path))


def save_config(cfg: TrainConfig, path: str | Path) -> Path:
    from .fileio import write_text_atomic

    _raise_problems("The config", _problems(cfg))
    return write_text_atomic(path, to_yaml(cfg))


# ---- presets ------------------------------------------------------------------------------------------------------
PRESETS: dict[str, dict] = {
    # GLM-4 fine-tuning demo (finetune_demo/configs/*.yaml, 2024): 512/512 tokens, 3000 steps, save/eval every 500.
    "glm4-lora": dict(
        method="lora", lora_r=8, lora_alpha=32, lora_dropout=0.1, learning_rate=5e-4, per_device_batch_size=1,
        max_input_length=512, max_output_length=512, max_steps=3000, save_steps=500, eval_steps=500,
        logging_steps=10, precision="bf16",
    ),
    # No QLoRA in the demo: its LoRA values on a 4-bit NF4 base; lr 2e-4 as in the QLoRA paper for 7–13B models.
    "glm4-qlora": dict(
        method="qlora", lora_r=8, lora_alpha=32, lora_dropout=0.1, learning_rate=2e-4, qlora_bits=4,
        qlora_quant_type="nf4", qlora_double_quant=True, per_device_batch_size=1, max_input_length=512,
        max_output_length=512, max_steps=3000, save_steps=500, eval_steps=500, logging_steps=10, precision="bf16",
    ),
    # The original UMTCDS's only method (pre_seq_len 128); demo lr 5e-4, batch 4.
    "glm4-ptuning-v2": dict(
        method="ptuning-v2", num_virtual_tokens=128, learning_rate=5e-4, per_device_batch_size=4,
        max_input_length=512, max_output_length=512, max_steps=3000, save_steps=500, eval_steps=500,
        logging_steps=10, precision="bf16", packing=False,
    ),
    # The demo's sft.yaml: lr 5e-5, batch 1 (it needs 8x80 GB with ZeRO-3 for 9B).
    "glm4-full": dict(
        method="full", learning_rate=5e-5, per_device_batch_size=1, max_input_length=512, max_output_length=512,
        max_steps=3000, save_steps=500, eval_steps=500, logging_steps=10, precision="bf16",
    ),
    # Small models (the embedded smollm2-135m, < 1B): short sequences, epochs instead of steps, higher rates.
    "small-lora": dict(
        method="lora", lora_r=16, lora_alpha=32, lora_dropout=0.05, learning_rate=1e-3, per_device_batch_size=8,
        max_input_length=256, max_output_length=256, num_epochs=3.0, max_steps=-1, save_steps=50, eval_steps=50,
        logging_steps=5, precision="auto",
    ),
    "small-qlora": dict(
        method="qlora", lora_r=16, lora_alpha=32, lora_dropout=0.05, learning_rate=1e-3, per_device_batch_size=8,
        max_input_length=256, max_output_length=256, num_epochs=3.0, max_steps=-1, save_steps=50, eval_steps=50,
        logging_steps=5, precision="auto",
    ),
    "small-ptuning-v2": dict(
        method="ptuning-v2", num_virtual_tokens=32, learning_rate=5e-3, per_device_batch_size=8,
        max_input_length=256, max_output_length=256, num_epochs=3.0, max_steps=-1, save_steps=50, eval_steps=50,
        logging_steps=5, precision="auto", packing=False,
    ),
    "small-full": dict(
        method="full", learning_rate=5e-5, per_device_batch_size=8, max_input_length=256, max_output_length=256,
        num_epochs=3.0, max_steps=-1, save_steps=50, eval_steps=50, logging_steps=5, precision="auto",
    ),
}  # fmt: skip

SMALL_MODEL_PARAMS = 1.0e9


def preset_name(method: str, model: str | None = None) -> str:
    """``small-<method>`` for the embedded model or any model under 1B parameters, else ``glm4-<method>``."""
    if method not in METHODS:
        raise ConfigError(
            f"method: '{method}' is not one of {', '.join(METHODS)}; pick one.",
            zh=f"method：“{method}”不是 {', '.join(METHODS)} 之一；请从中选择一个。",
        )
    small = True
    if model:
        from .models import EMBEDDED

        if model not in EMBEDDED:
            try:
                small = count_params(model_shape(model))["total"] < SMALL_MODEL_PARAMS
            except UserError:
                small = False
    return f"{'small' if small else 'glm4'}-{method}"


def preset_for(method: str, model: str | None = None, **overrides) -> TrainConfig:
    """A validated config for ``method`` on ``model`` from the matching preset, with ``overrides`` applied."""
    values = dict(PRESETS[preset_name(method, model)])
    if model:
        values["model"] = model
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(values)


# ---- model shape --------------------------------------------------------------------------------------------------
def _pick(cfg: dict, *keys, default=None):
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return default


def shape_from_hf_config(cfg: dict) -> dict:
    """The numbers the estimate needs, from a transformers ``config.json`` dict (GLM, Llama, Qwen, …)."""
    if isinstance(cfg.get("text_config"), dict):  # multimodal wrappers keep the LM in text_config
        cfg = {**cfg["text_config"], "model_type": cfg.get("model_type")}
    h = _pick(cfg, "hidden_size", "n_embd", "d_model")
    layers = _pick(cfg, "num_hidden_layers", "num_layers", "n_layer")
    heads = _pick(cfg, "num_attention_heads", "n_head")
    vocab = _pick(cfg, "vocab_size", "padded_vocab_size")
    if not all(isinstance(x, int) and x > 0 for x in (h, layers, heads, vocab)):
        raise ConfigError(
            "The model's config.json lacks hidden_size/num_hidden_layers/vocab_size; is it a causal LM?",
            zh="模型的 config.json 缺少 hidden_size/num_hidden_layers/vocab_size；请确认它是因果语言模型（causal LM）。",
        )
    model_type = str(cfg.get("model_type") or "")
    return {
        "model_type": model_type,
        "hidden_size": h,
        "num_layers": layers,
        "num_heads": heads,
        "num_kv_heads": _pick(cfg, "num_key_value_heads", "multi_query_group_num", "num_kv_heads", default=heads),
        "head_dim": _pick(cfg, "head_dim", "kv_channels", default=h // heads),
        "intermediate_size": _pick(cfg, "intermediate_size", "ffn_hidden_size", "n_inner", default=4 * h),
        "vocab_size": vocab,
        "tie_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        "attention_bias": bool(_pick(cfg, "attention_bias", "add_qkv_bias", default=False)),
        "gated_mlp": model_type not in {"gpt2", "gpt_neox", "opt", "gptj", "bloom", "falcon", "phi"},
    }


def _shape_from_gguf(path: Path) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def get(key, default=None):
        f = reader.fields.get(key)
        if f is None:
            return default
        try:
            return f.contents()
        except Exception:  # noqa: BLE001 - odd field types: treat as missing
            return default

    arch = get("general.architecture", "llama")
    h = int(get(f"{arch}.embedding_length"))
    heads = int(get(f"{arch}.attention.head_count"))
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = get(f"{arch}.vocab_size") or (len(tokens.data) if tokens is not None else 0)
    names = {t.name for t in reader.tensors}
    return {
        "model_type": arch,
        "hidden_size": h,
        "num_layers": int(get(f"{arch}.block_count")),
        "num_heads": heads,
        "num_kv_heads": int(get(f"{arch}.attention.head_count_kv", heads)),
        "head_dim": int(get(f"{arch}.attention.key_length", h // heads)),
        "intermediate_size": int(get(f"{arch}.feed_forward_length", 4 * h)),
        "vocab_size": int(vocab),
        "tie_embeddings": "output.weight" not in names,
        "attention_bias": "blk.0.attn_q.bias" in names,
        "gated_mlp": "blk.0.ffn_gate.weight" in names,
    }


@lru_cache(maxsize=16)
def model_shape(ref: str) -> dict:
    """Shape of the model ``ref`` from its config.json (an embedded/GGUF model: its converted copy or the GGUF header)."""
    from .models import cache_dir, resolve

    spec = resolve(ref)
    if spec.kind == "hf":
        return shape_from_hf_config(json.loads((spec.path / "config.json").read_text(encoding="utf-8")))
    gguf = spec.path / (spec.gguf_file or "")
    converted = cache_dir() / "models" / f"{gguf.stem}-{gguf.stat().st_size}" / "config.json"
    if converted.exists():
        return shape_from_hf_config(json.loads(converted.read_text(encoding="utf-8")))
    return _shape_from_gguf(gguf)


def glm4_9b_shape() -> dict:
    """GLM-4-9B-chat's shape: ``transformers.GlmConfig()`` defaults (no download)."""
    from transformers import GlmConfig

    return shape_from_hf_config(GlmConfig().to_dict())


def count_params(shape: dict) -> dict:
    """Parameter counts from a shape: per layer (attention, MLP, norms), embeddings, head, linear-layer total."""
    h, hd = shape["hidden_size"], shape["head_dim"]
    q, kv = shape["num_heads"] * hd, shape["num_kv_heads"] * hd
    inter, L, V = shape["intermediate_size"], shape["num_layers"], shape["vocab_size"]
    attn = h * q + 2 * h * kv + q * h + ((q + 2 * kv) if shape["attention_bias"] else 0)
    mlp = (3 if shape["gated_mlp"] else 2) * h * inter
    norms = 2 * h
    layer = attn + mlp + norms
    embed = V * h
    head = 0 if shape["tie_embeddings"] else V * h
    total = L * layer + embed + head + h
    return {"layer": layer, "linear": L * (attn + mlp), "embed": embed, "head": head, "total": total}


def _lora_dims(shape: dict, targets: list[str] | None) -> list[tuple[int, int]]:
    """(in, out) of each LoRA-wrapped linear in one layer; ``None`` = q/k/v (GLM-4 demo's choice)."""
    h, hd = shape["hidden_size"], shape["head_dim"]
    q, kv, inter = shape["num_heads"] * hd, shape["num_kv_heads"] * hd, shape["intermediate_size"]
    dims = {
        "q_proj": (h, q),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (q, h),
        "query_key_value": (h, q + 2 * kv),
        "qkv_proj": (h, q + 2 * kv),
        "dense": (q, h),
        "gate_proj": (h, inter),
        "up_proj": (h, inter),
        "down_proj": (inter, h),
        "gate_up_proj": (h, 2 * inter),
        "dense_h_to_4h": (h, 2 * inter),
        "dense_4h_to_h": (inter, h),
    }
    names = targets or ["q_proj", "k_proj", "v_proj"]
    if names in (["all-linear"], ["all_linear"]):
        names = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return [dims.get(n.split(".")[-1], (h, h)) for n in names]


# ---- memory estimate ----------------------------------------------------------------------------------------------
GIB = 1024**3
CARDS_GIB = (8, 12, 16, 24, 32, 40, 48, 80, 96, 141)


def _bytes(precision: str) -> int:
    return 4 if precision == "fp32" else 2


def estimate_memory(
    cfg: TrainConfig,
    shape: dict | None = None,
    tokens: int | None = None,
    gpus: list[dict] | None = None,
    verdict: bool = True,
    fused_loss: bool = True,
) -> dict:
    """Expected peak GPU memory of one training step of ``cfg`` on one GPU, in GiB, with a verdict.

    How it is computed (``N`` = tokens per micro-batch = batch × (max_input + max_output), the worst case — packing
    fills sequences to that length and padding never exceeds it; ``tokens`` overrides it to compare with a run whose
    batch geometry is known; ``a`` = 2 bytes in bf16/fp16, 4 in fp32; ``auto`` is taken as bf16, the GPU case):

    * **parameters** from the model's config.json (:func:`count_params`): per layer q/k/v/o (GQA-aware, with bias
      when ``attention_bias``), gated MLP ``3·h·I``, two norms; embeddings; the LM head unless tied.
    * **weights**: ``a·P`` — QLoRA: linear layers at ``bits/8`` bytes plus ~0.5 bit/param of quantisation scales, and
      embeddings/head/norms in fp32 because peft's ``prepare_model_for_kbit_training`` upcasts them.
    * **trainable state** (weights of the trainable part, its gradients, AdamW's two moments): LoRA/QLoRA/P-tuning
      adapters are fp32 (peft's default), 16 bytes per parameter; full fine-tuning in bf16 keeps everything in bf16
      (8 bytes/param, as the GLM-4 demo trains), in fp16 or fp32 it needs fp32 master weights (16 bytes/param).
      LoRA params = ``r·(in+out)`` per wrapped linear (default q/k/v); P-tuning v2 = ``T·L·2·kv_heads·head_dim``.
    * **activations** saved for backward, per token and layer: two RMSNorm inputs upcast to fp32 (``8h``); attention
      inputs, q/k/v after RoPE with K/V repeated to all heads, SDPA output (``a·(2h + 4q + 2kv)``, SDPA/flash, no
      score matrix); MLP ``a·(h + 4I)``; each LoRA-wrapped linear its fp32 input copy plus a dropout mask
      (``(4 + 1)·in``). Without gradient checkpointing all ``L`` layers are kept; with it, each layer's input
      (``a·h·L``) plus one layer recomputed during backward.
    * **logits**: a standard loss upcasts ``N × vocab`` logits to fp32 and keeps log-softmax and its gradient:
      ``12·V`` bytes per token (``16·V`` in fp32). ``umtcds train`` computes the loss in chunks of ``2**26 / V``
      tokens (``fused_loss=True``, the default), so only one chunk counts — unless ``lm_head`` is a LoRA target.
      ``fused_loss=False`` describes the Hugging Face default path (e.g. the benchmark's baseline).
    * QLoRA's non-quantised parts (embeddings, head, norms) stay 16-bit (``speed.prepare_kbit_lean``).
    * **overhead**: 5% allocator fragmentation + 0.5 GiB CUDA context; ``peak_allocated_gib`` leaves it out (compare
      it with ``torch.cuda.max_memory_allocated``), ``total_gib`` includes it (compare with nvidia-smi).

    The verdict compares ``total_gib`` with the GPUs present (``gpus``: ``[{"name", "total_gib"}]``, detected when
    None) and with common card sizes: "fits a 24 GB card", and when it does not fit the GPU present (or needs more
    than 24 GB) which change would ("switch to QLoRA", …); ``fit`` holds the same as data for the dashboard.
    """
    shape = shape or model_shape(cfg.model)
    pc = count_params(shape)
    P = pc["total"]
    L, h, V = shape["num_layers"], shape["hidden_size"], shape["vocab_size"]
    hd, inter = shape["head_dim"], shape["intermediate_size"]
    qd, kvd = shape["num_heads"] * hd, shape["num_kv_heads"] * hd
    precision = "bf16" if cfg.precision == "auto" else cfg.precision
    a = _bytes(precision)
    N = int(tokens) if tokens else cfg.per_device_batch_size * (cfg.max_input_length + cfg.max_output_length)
    method = cfg.method

    # weights
    if method == "qlora":
        rest = P - pc["linear"]
        # embeddings, head and norms stay 16-bit: speed.prepare_kbit_lean skips peft's fp32 upcast
        weights = pc["linear"] * (cfg.qlora_bits / 8 + (0.127 if cfg.qlora_double_quant else 0.5) / 8) + rest * a
    else:
        weights = P * a

    # trainable parameters and their state
    lora_dims = _lora_dims(shape, cfg.lora_target_modules)
    if method in ("lora", "qlora"):
        trainable = L * sum(cfg.lora_r * (i + o) for i, o in lora_dims)
        state = trainable * 16
    elif method == "ptuning-v2":
        trainable = cfg.num_virtual_tokens * L * 2 * kvd
        state = trainable * 16
    else:
        trainable = P
        state = P * (6 if precision == "bf16" else 12)  # weights counted above: + grads + two AdamW moments

    # activations
    per_layer = 8 * h + a * (2 * h + 4 * qd + 2 * kvd) + a * (h + 4 * inter)
    if method in ("lora", "qlora"):
        per_layer += sum((4 + (1 if cfg.lora_dropout > 0 else 0)) * i for i, _ in lora_dims)
    if method == "qlora":
        per_layer_transient = pc["layer"] * 2 / N if N else 0  # one layer's weights dequantised to bf16
    else:
        per_layer_transient = 0
    if cfg.gradient_checkpointing:
        act_per_token = a * h * L + per_layer + per_layer_transient
    else:
        act_per_token = per_layer * L + per_layer_transient
    activations = act_per_token * N
    if method == "ptuning-v2":
        activations += cfg.per_device_batch_size * cfg.num_virtual_tokens * L * 2 * kvd * a
    fp32_head = precision == "fp32"
    # umtcds train computes the loss chunk by chunk (speed.chunked_linear_cross_entropy / Liger's fused kernel on
    # CUDA): only one chunk of logits is alive at a time. A LoRA on lm_head falls back to full logits.
    head_targeted = "lm_head" in (cfg.lora_target_modules or [])
    logit_tokens = N if (head_targeted or not fused_loss) else min(N, max(64, (1 << 26) // V))
    logits = logit_tokens * V * (16 if fp32_head else 12)

    peak = weights + state + activations + logits
    overhead = 0.05 * peak + 0.5 * GIB
    total = peak + overhead
    result = {
        "model": cfg.model,
        "method": method,
        "precision": precision,
        "params_total": P,
        "params_trainable": trainable,
        "tokens_per_step": N,
        "weights_gib": round(weights / GIB, 2),
        "trainable_state_gib": round(state / GIB, 2),
        "activations_gib": round(activations / GIB, 2),
        "logits_gib": round(logits / GIB, 2),
        "overhead_gib": round(overhead / GIB, 2),
        "peak_allocated_gib": round(peak / GIB, 2),
        "total_gib": round(total / GIB, 2),
        "smallest_card_gib": next((c for c in CARDS_GIB if total / GIB <= c * 0.97), None),
        "shape": shape,
    }
    result["gpus"] = detect_gpus() if gpus is None else gpus
    if verdict:
        result["fit"] = _fit(cfg, result, shape, tokens)
        result["verdict"] = _verdict(result)
    return result


FIXES = {
    "gradient_checkpointing": "gradient checkpointing",
    "qlora": "QLoRA",
    "batch_size_1": "batch size 1 (with more gradient accumulation)",
}


def _fit(cfg: TrainConfig, est: dict, shape: dict, tokens: int | None) -> dict:
    """Where the estimate fits: the first GPU present, the smallest common card, and changes that would make it fit
    the target (the GPU present when it is too small, else a 24 GB card when more is needed)."""
    total, card, gpus = est["total_gib"], est["smallest_card_gib"], est["gpus"]
    gpu = None
    if gpus:
        g = gpus[0]
        gpu = {"name": g["name"], "total_gib": g["total_gib"], "count": len(gpus)}
        gpu["fits"] = total <= g["total_gib"] * 0.97
    target = None
    if gpu is not None and not gpu["fits"]:
        target = gpu["total_gib"]
    elif gpu is None and (card is None or card > 24):
        target = 24
    fixes: list[str] = []
    if target is not None:
        limit = target * 0.97
        alts = []
        if not cfg.gradient_checkpointing:
            alts.append(("gradient_checkpointing", cfg.replace(gradient_checkpointing=True), tokens))
        if cfg.method != "qlora":
            alts.append(("qlora", cfg.replace(method="qlora", precision="bf16"), tokens))
        if cfg.per_device_batch_size > 1 and not tokens:
            alts.append(("batch_size_1", cfg.replace(per_device_batch_size=1), None))
        for code, alt_cfg, alt_tokens in alts:
            if estimate_memory(alt_cfg, shape, alt_tokens, gpus=[], verdict=False)["total_gib"] <= limit:
                fixes.append(code)
    return {"gpu": gpu, "card_gib": card, "target_gib": target, "fixes": fixes}


def _verdict(est: dict) -> str:
    fit = est["fit"]
    parts = []
    gpu = fit["gpu"]
    if gpu is not None:
        count = f" × {gpu['count']}" if gpu["count"] > 1 else ""
        parts.append(
            f"{'fits' if gpu['fits'] else 'does not fit'} your {gpu['name']}{count} ({gpu['total_gib']:.0f} GiB)"
        )
    if fit["card_gib"] is not None:
        parts.append(f"fits a {fit['card_gib']} GB card")
    if fit["target_gib"] is not None:
        if fit["fixes"]:
            parts.append(f"needs {' or '.join(FIXES[f] for f in fit['fixes'])} to fit {fit['target_gib']:.0f} GB")
        else:
            parts.append("needs QLoRA plus shorter lengths, or several GPUs (ZeRO-3)")
    return f"~{est['total_gib']:.1f} GiB: " + "; ".join(parts)


def detect_gpus() -> list[dict]:
    """``[{"name", "total_gib"}]`` of the CUDA GPUs present (empty without torch/CUDA)."""
    if os.environ.get("UMTCDS_NO_GPU_DETECT"):
        return []
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        out = []
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            out.append({"name": props.name, "total_gib": round(props.total_memory / GIB, 1)})
        return out
    except Exception:  # noqa: BLE001 - no usable CUDA: no GPUs
        return []


def estimate_glm4_9b_lora(
    batch_size: int = 1,
    max_input_length: int = 512,
    max_output_length: int = 512,
    tokens: int | None = None,
    gradient_checkpointing: bool = True,
    fused_loss: bool = True,
) -> dict:
    """The estimate for GLM-4-9B's shape (``GlmConfig()`` defaults), LoRA r=8 on q/k/v, bf16 — for comparing with a
    measured ``torch.cuda.max_memory_allocated`` (use ``peak_allocated_gib``; pass ``tokens`` = batch × padded length
    of the measured step)."""
    cfg = TrainConfig(
        model="glm-4-9b-shape",
        method="lora",
        lora_r=8,
        lora_alpha=32,
        lora_dropout=0.1,
        lora_target_modules=["q_proj", "k_proj", "v_proj"],
        precision="bf16",
        per_device_batch_size=batch_size,
        max_input_length=max_input_length,
        max_output_length=max_output_length,
        gradient_checkpointing=gradient_checkpointing,
    )
    return estimate_memory(cfg, shape=glm4_9b_shape(), tokens=tokens, gpus=[], fused_loss=fused_loss)


def describe_estimate(est: dict) -> str:
    return (
        f"Memory estimate ({est['method']}, {est['precision']}, {est['tokens_per_step']} tokens/step, "
        f"{est['params_total'] / 1e9:.2f}B params, {est['params_trainable'] / 1e6:.2f}M trainable): "
        f"weights {est['weights_gib']} + trainable state {est['trainable_state_gib']} + activations "
        f"{est['activations_gib']} + logits {est['logits_gib']} + overhead {est['overhead_gib']} GiB. {est['verdict']}"
    )


# ---- CLI ----------------------------------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--model", required=True, metavar="NAME|PATH", help="embedded name, HF folder or .gguf")
    parser.add_argument("--data", required=True, metavar="DATA_DIR", help="folder with train/dev/test.jsonl")
    parser.add_argument("--out", required=True, metavar="config.yaml")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="start values (default: chosen by method + model)")
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--save-steps", type=int)
    parser.add_argument("--eval-steps", type=int)
    parser.add_argument("--lr", type=float, dest="learning_rate")
    parser.add_argument("--output-dir", metavar="DIR", help="run folder (relative to the YAML's folder)")
    parser.add_argument("--epochs", type=float, dest="num_epochs")
    parser.add_argument("--batch-size", type=int, dest="per_device_batch_size")
    parser.add_argument("--grad-accum", type=int, dest="gradient_accumulation_steps")
    parser.add_argument("--max-input-length", type=int)
    parser.add_argument("--max-output-length", type=int)
    parser.add_argument("--lora-r", type=int)
    parser.add_argument("--lora-alpha", type=int)
    parser.add_argument("--lora-dropout", type=float)
    parser.add_argument("--lora-targets", help="comma-separated module names (default: per architecture)")
    parser.add_argument("--virtual-tokens", type=int, dest="num_virtual_tokens")
    parser.add_argument("--precision", choices=PRECISIONS)
    parser.add_argument("--compile", choices=COMPILE_MODES, help="torch.compile of the layers (default auto)")
    parser.add_argument("--no-gradient-checkpointing", action="store_true")
    parser.add_argument("--no-packing", action="store_true")
    parser.add_argument("--system-prompt")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--no-estimate", action="store_true", help="skip the memory estimate")


def _relative(target: str, base: Path) -> str:
    """``target`` relative to the YAML's folder when it lies below it (configs stay portable), else absolute."""
    t = Path(target).expanduser().resolve()
    try:
        return str(t.relative_to(base.resolve()))
    except ValueError:
        return str(t)


def run(args) -> int:
    out = Path(args.out)
    data = Path(args.data)
    if not data.is_dir():
        raise ConfigError(
            f"--data {data} is not a folder; run `umtcds dataset … --out {data}` first.",
            zh=f"--data {data} 不是文件夹；请先运行 `umtcds dataset … --out {data}`。",
        )
    if not (data / "train.jsonl").exists():
        raise ConfigError(
            f"--data {data} has no train.jsonl; run `umtcds dataset … --out {data}` first.",
            zh=f"--data {data} 里没有 train.jsonl；请先运行 `umtcds dataset … --out {data}`。",
        )
    overrides = {
        k: getattr(args, k)
        for k in (
            "max_steps",
            "save_steps",
            "eval_steps",
            "learning_rate",
            "num_epochs",
            "per_device_batch_size",
            "gradient_accumulation_steps",
            "max_input_length",
            "max_output_length",
            "lora_r",
            "lora_alpha",
            "lora_dropout",
            "num_virtual_tokens",
            "precision",
            "compile",
            "system_prompt",
            "seed",
        )
        if getattr(args, k) is not None
    }
    if args.lora_targets:
        overrides["lora_target_modules"] = [t.strip() for t in args.lora_targets.split(",") if t.strip()]
    if args.no_gradient_checkpointing:
        overrides["gradient_checkpointing"] = False
    if args.no_packing:
        overrides["packing"] = False
    overrides["data_dir"] = _relative(str(data), out.parent)
    overrides["output_dir"] = args.output_dir or "output"
    if args.preset:
        values = {**PRESETS[args.preset], "method": args.method, "model": args.model, **overrides}
        cfg = TrainConfig.from_dict(values)
    else:
        cfg = preset_for(args.method, args.model, **overrides)
    save_config(cfg, out)
    print(f"Wrote {out} ({cfg.method}, preset {args.preset or preset_name(args.method, args.model)}).")
    from .i18n import current_lang

    for line in advice(cfg):
        print(f"Note: {line}")
    if current_lang() == "zh":  # as errors: the English lines stay (tools read them), the Chinese follow
        for line in advice(cfg, "zh"):
            print(f"提示：{line}")
    if not args.no_estimate:
        print(describe_estimate(estimate_memory(cfg)))
    return 0
