"""Step 4 — the training config: each field declared once (type, default, bounds, labels, help, YAML comment, flag).

Usage::

    umtcds config --method {lora,qlora,ptuning-v2,full} --model NAME|PATH --data DATA_DIR --out config.yaml
                  [--max-steps N] [--save-steps N] [--lr X] [--output-dir DIR] [--epochs E] [--batch-size B]
                  [--grad-accum G] [--max-input-length L] [--max-output-length L] [--lora-r R] [--lora-alpha A]
                  [--virtual-tokens T] [--precision auto|bf16|fp16|fp32] [--system-prompt TEXT] [--preset NAME]
                  [any other field as --field-name]

Field names of :class:`TrainConfig` are the contract with ``train.py``. Each is declared with :func:`setting`, which
carries what the validator, the YAML comments, the CLI flags and the Config page's widgets are generated from
(``schema.py`` says why). Constructing a ``TrainConfig`` validates it and raises one :class:`ConfigError` listing
*every* problem, each with the key and a fix; an unknown key in a YAML is an error, not silently ignored.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from . import schema as S
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


class ConfigError(S.SettingsError):
    """A config problem; the message names the key and the fix."""


def _adapters(values: dict) -> bool:
    return values.get("method") in ("lora", "qlora")


setting = S.setting


@dataclass
class TrainConfig:
    # ---- model and data
    model: str = setting(
        "smollm2-135m",
        ("模型", "Model"),
        "embedded name (smollm2-135m), a local HF folder (e.g. glm-4-9b-chat-hf) or a .gguf file",
        help=(
            "内置模型名、本地 Hugging Face 模型文件夹（如 glm-4-9b-chat-hf）或 .gguf 文件。",
            "An embedded name, a local Hugging Face folder (e.g. glm-4-9b-chat-hf) or a .gguf file.",
        ),
        section=("模型与数据", "Model and data", "Model and data"),
    )
    data_dir: str = setting(
        "dataset",
        ("数据集文件夹", "Dataset folder"),
        "folder with the split files; relative to this YAML's folder",
        flag="",
        widget="hidden",
    )
    train_file: str = setting("train.jsonl", ("训练集文件", "Training file"), "training split", widget="hidden")
    dev_file: str = setting(
        "dev.jsonl", ("验证集文件", "Dev file"), "evaluated every eval_steps (loss)", widget="hidden"
    )
    test_file: str = setting(
        "test.jsonl",
        ("测试集文件", "Test file"),
        "held out; scored after training by `umtcds evaluate`",
        widget="hidden",
    )
    system_prompt: str | None = setting(
        None,
        ("系统提示（对话时放在最前面；留空=不用）", "System prompt (first in every chat; empty = none)"),
        "put first in every chat; null = the data's own (or none)",
        kind=str,
        nullable=True,
        widget="textarea",
    )
    # ---- method
    method: str = setting(
        "lora",
        ("方法", "Method"),
        "lora: small adapters, cheap; qlora: LoRA on a 4-bit base, least memory; "
        "ptuning-v2: learned prefix per layer; full: every weight, most memory",
        choices=METHODS,
        widget="radio",
        section=("方法", "Method", "Method (lora | qlora | ptuning-v2 | full) and its parameters"),
    )
    lora_r: int = setting(
        8,
        ("秩 r", "Rank r"),
        "higher: more capacity, more memory and a larger adapter",
        help=(
            "越大：容量越大，显存和适配器文件越大；8–16 通常够用。",
            "Higher: more capacity, more memory and a bigger adapter; 8–16 is usually enough.",
        ),
        min=1,
        max=1024,
        typical=(4, 64),
        show=_adapters,
        range_msg=(
            "{value} is out of range; use 4–64 (8 is the GLM-4 demo's)",
            "{value} 超出范围；请用 4–64（GLM-4 官方示例用 8）",
        ),
    )
    lora_alpha: int = setting(
        32,
        ("alpha", "alpha"),
        "scale of the update (alpha/r); 2-4x lora_r is usual",
        help=("更新的缩放（alpha/r）；通常取 r 的 2–4 倍。", "Scale of the update (alpha/r); 2–4× r is usual."),
        min=0,
        min_open=True,
        typical=(1, 256),
        show=_adapters,
        range_msg=(
            "must be > 0; 2–4× lora_r is usual (the GLM-4 demo uses 32)",
            "必须 > 0；通常取 lora_r 的 2–4 倍（GLM-4 官方示例用 32）",
        ),
    )
    lora_dropout: float = setting(
        0.1,
        ("dropout", "dropout"),
        "higher: less overfitting on small datasets, slower learning",
        help=("数据少时调高可减少过拟合。", "Raise it on small datasets to overfit less."),
        min=0,
        max=1,
        max_open=True,
        typical=(0, 0.5),
        step=0.05,
        show=_adapters,
        range_msg=("must be in [0, 1); 0.05–0.1 is usual", "必须在 [0, 1) 范围内；常用 0.05–0.1"),
    )
    lora_target_modules: list[str] | None = setting(
        None,
        ("目标模块（逗号分隔，留空=按架构自动）", "Target modules (comma-separated, empty = per architecture)"),
        "null: chosen per architecture (q/k/v for GLM-4); more modules: more capacity",
        help=(
            "例如 q_proj, k_proj, v_proj；模块越多容量越大。",
            "E.g. q_proj, k_proj, v_proj; more modules: more capacity.",
        ),
        kind=list,
        nullable=True,
        widget="list",
        flag="--lora-targets",
        example="[q_proj, v_proj]",
        show=_adapters,
    )
    qlora_bits: int = setting(
        4,
        ("位数", "Bits"),
        "4: least memory (QLoRA); 8: closer to 16-bit quality, more memory",
        help=("4 位最省显存。", "4 bits use the least memory."),
        choices=(4, 8),
        range_msg=("use 4 (QLoRA) or 8", "请用 4（QLoRA）或 8"),
        show=lambda v: v.get("method") == "qlora",
    )
    qlora_quant_type: str = setting(
        "nf4",
        ("量化类型", "Quant type"),
        "nf4 suits normally distributed weights (recommended); fp4 is the alternative",
        help=("nf4 适合正态分布的权重（推荐）。", "nf4 suits normally distributed weights (recommended)."),
        choices=QUANT_TYPES,
        range_msg=("use nf4 (recommended) or fp4", "请用 nf4（推荐）或 fp4"),
        show=lambda v: v.get("method") == "qlora",
    )
    qlora_double_quant: bool = setting(
        True,
        ("双重量化", "Double quantisation"),
        "true: also quantise the scales, saves ~0.4 bit/weight",
        help=("连缩放系数也量化，每个权重再省约 0.4 位。", "Also quantise the scales: ~0.4 bit/weight less."),
        show=lambda v: v.get("method") == "qlora",
    )
    num_virtual_tokens: int = setting(
        128,
        ("虚拟 token 数（前缀长度）", "Virtual tokens (prefix length)"),
        "P-tuning v2 prefix length per layer; higher: more capacity, more memory",
        help=(
            "越多：容量越大，显存越多；原版 UMTCDS 用 128。",
            "More: more capacity and memory; the original used 128.",
        ),
        min=1,
        max=2048,
        typical=(16, 512),
        flag="--virtual-tokens",
        show=lambda v: v.get("method") == "ptuning-v2",
        range_msg=("use 16–512 (the original used 128)", "请用 16–512（原版 P-tuning v2 用 128）"),
    )
    # ---- lengths and schedule
    max_input_length: int = setting(
        512,
        ("最大输入长度（token）", "Max input length (tokens)"),
        "longer: fits longer questions/context, memory grows with it",
        help=("越长越能容纳长问题，显存随之增加。", "Longer fits longer questions; memory grows with it."),
        min=8,
        typical=(64, 8192),
        step=64,
        section=("长度与训练计划", "Lengths and schedule", "Lengths and schedule"),
        range_msg=(
            "{value} tokens is too short; use at least 64 (the GLM-4 demo uses 512)",
            "{value} 个 token 太短；请至少用 64（GLM-4 官方示例用 512）",
        ),
    )
    max_output_length: int = setting(
        512,
        ("最大输出长度（token）", "Max output length (tokens)"),
        "longer: fits longer answers, memory grows with it",
        help=("越长越能容纳长答案，显存随之增加。", "Longer fits longer answers; memory grows with it."),
        min=8,
        typical=(64, 8192),
        step=64,
        range_msg=(
            "{value} tokens is too short; use at least 64 (the GLM-4 demo uses 512)",
            "{value} 个 token 太短；请至少用 64（GLM-4 官方示例用 512）",
        ),
    )
    num_epochs: float = setting(
        3.0,
        ("训练轮数", "Epochs"),
        "passes over the training split; more: better fit, risk of overfitting",
        help=("遍历训练集的次数；太多会过拟合。", "Passes over the data; too many overfit."),
        min=0,
        typical=(0.5, 20),
        step=0.5,
        flag="--epochs",
    )
    max_steps: int = setting(
        -1,
        ("最大步数（-1 = 按轮数）", "Max steps (-1 = use epochs)"),
        "-1 = use num_epochs; > 0 stops after this many optimizer steps",
        valid=lambda v: v == -1 or v > 0,
        step=10,
        range_msg=("use -1 (train num_epochs) or a positive number", "请用 -1（按 num_epochs 训练）或一个正数"),
    )
    per_device_batch_size: int = setting(
        4,
        ("批大小", "Batch size"),
        "higher: faster per sample, more memory",
        help=("越大越快，显存越多。", "Higher: faster, more memory."),
        min=1,
        typical=(1, 64),
        flag="--batch-size",
    )
    gradient_accumulation_steps: int = setting(
        1,
        ("梯度累积", "Gradient accumulation"),
        "effective batch = batch x this; more: smoother updates, no extra memory",
        help=("等效批大小 = 批大小 × 累积；不增加显存。", "Effective batch = batch × this; no extra memory."),
        min=1,
        typical=(1, 128),
        flag="--grad-accum",
    )
    learning_rate: float = setting(
        5e-4,
        ("学习率", "Learning rate"),
        "higher: learns faster, can diverge (LoRA ~5e-4, full ~5e-5)",
        help=("LoRA 约 5e-4，全参数约 5e-5；太大会发散。", "LoRA ~5e-4, full ~5e-5; too high diverges."),
        min=0,
        max=1,
        min_open=True,
        max_open=True,
        typical=(1e-6, 1e-2),
        step=1e-5,
        fmt="%.2e",
        flag="--lr",
        range_msg=(
            "must be between 0 and 1; try 5e-4 (LoRA) or 5e-5 (full)",
            "必须在 0 和 1 之间；可以试试 5e-4（LoRA）或 5e-5（全量微调）",
        ),
    )
    lr_scheduler: str = setting(
        "cosine",
        ("学习率调度", "Schedule"),
        "cosine decays smoothly; constant keeps the rate",
        choices=SCHEDULERS,
    )
    warmup_ratio: float = setting(
        0.03,
        ("预热比例", "Warmup ratio"),
        "fraction of steps ramping the rate up; avoids an early blow-up",
        min=0,
        max=1,
        max_open=True,
        typical=(0, 0.3),
        step=0.01,
        range_msg=("must be in [0, 1); 0.03 is usual", "必须在 [0, 1) 范围内；常用 0.03"),
    )
    weight_decay: float = setting(
        0.0,
        ("权重衰减", "Weight decay"),
        "higher: stronger regularisation",
        min=0,
        typical=(0, 0.3),
        step=0.01,
        range_msg=("must be >= 0", "必须 >= 0"),
    )
    max_grad_norm: float = setting(
        1.0,
        ("梯度裁剪", "Max grad norm"),
        "clips exploding gradients; 0 turns clipping off",
        min=0,
        step=0.1,
        range_msg=("must be >= 0 (0 turns clipping off); 1.0 is usual", "必须 >= 0（0 表示不做梯度裁剪）；常用 1.0"),
    )
    # ---- eval, save, log
    eval_steps: int = setting(
        50,
        ("评估间隔（步）", "Eval every (steps)"),
        "lower: a denser eval-loss curve, slower training",
        min=1,
        section=("评估、保存与日志", "Evaluation, checkpoints, logging", "Evaluation, checkpoints, logging"),
    )
    save_steps: int = setting(
        50, ("保存间隔（步）", "Save every (steps)"), "lower: less lost on a crash, more disk", min=1
    )
    logging_steps: int = setting(5, ("日志间隔（步）", "Log every (steps)"), "lower: a denser loss chart", min=1)
    save_total_limit: int = setting(
        3,
        ("最多保留检查点", "Checkpoints kept"),
        "older checkpoints beyond this are deleted; more: more disk",
        min=1,
        range_msg=("keep at least 1 checkpoint (resume needs it)", "至少保留 1 个检查点（断点续训需要它）"),
    )
    # ---- speed and memory
    gradient_checkpointing: bool = setting(
        True,
        ("梯度检查点", "Gradient checkpointing"),
        "true: far less activation memory, ~30% slower",
        help=("大幅减少激活显存，约慢 30%。", "Far less activation memory, ~30% slower."),
        section=("速度与显存", "Speed and memory", "Speed and memory"),
    )
    packing: bool = setting(
        True,
        ("样本拼接", "Packing"),
        "true: several samples per sequence, faster; samples never attend to each other",
        help=(
            "多个样本拼成一条序列，更快；样本之间互不可见。",
            "Several samples per sequence, faster; they never see each other.",
        ),
    )
    precision: str = setting(
        "auto",
        ("精度", "Precision"),
        "auto picks bf16 on Ampere+ GPUs, fp16 on older ones, fp32 on CPU",
        help=(
            "auto：新显卡用 bf16，旧显卡 fp16，CPU 用 fp32。",
            "auto: bf16 on recent GPUs, fp16 on older ones, fp32 on CPU.",
        ),
        choices=PRECISIONS,
    )
    compile: str = setting(
        "auto",
        ("编译加速 (torch.compile)", "Compile (torch.compile)"),
        "auto: torch.compile on one CUDA GPU for LoRA/QLoRA (1-2 min at start, then faster); off: eager",
        help=(
            "auto：单块 NVIDIA GPU 上的 LoRA/QLoRA 会编译模型层，开头多花 1–2 分钟，之后更快；off：不编译。",
            "auto: LoRA/QLoRA on one NVIDIA GPU compiles the layers, 1-2 min extra at the start, faster after; off: no compile.",
        ),
        choices=COMPILE_MODES,
    )
    seed: int = setting(42, ("随机种子", "Seed"), "same seed + same data = same run", min=0)
    output_dir: str = setting(
        "output",
        ("输出文件夹（相对于项目）", "Output folder (relative to the project)"),
        "checkpoints, metrics.jsonl and the final adapter; relative to this YAML's folder",
        widget="text",
        section=("数据与输出", "Data and output", "Output"),
    )
    extra: dict = setting({}, ("备注", "Notes"), "free-form notes; ignored by training", flag="", widget="hidden")

    def __post_init__(self) -> None:
        _raise_problems("The config", _problems(self))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "The config") -> TrainConfig:
        """Build from a plain dict (e.g. a loaded YAML): unknown keys and every invalid value are reported at once."""
        if not isinstance(data, dict):
            TRAIN.check(data, where)  # raises the "not a mapping" sentence
        values = TRAIN.merge(data)
        cfg = cls.__new__(cls)  # fill without __post_init__ so all problems are collected together
        cfg.__dict__.update(values)
        _raise_problems(where, TRAIN.unknown_keys(data) + _problems(cfg))
        return cfg

    def replace(self, **changes) -> TrainConfig:
        """A validated copy with ``changes`` applied."""
        data = self.to_dict()
        data.update(changes)
        return TrainConfig.from_dict(data)


def _cross_field(values: dict) -> list[S.Pair]:
    """Problems that involve two fields (each field's own checks come from its declaration)."""
    out: list[S.Pair] = []
    if values["max_steps"] <= 0 and not values["num_epochs"] > 0:
        out.append(
            (
                "num_epochs: must be > 0 when max_steps is -1; set num_epochs: 3",
                "num_epochs：max_steps 为 -1 时必须 > 0；请设 num_epochs: 3",
            )
        )
    if values["method"] == "qlora" and values["precision"] == "fp32":
        out.append(
            (
                "precision: QLoRA computes in 16-bit; set precision: auto (or bf16)",
                "precision：QLoRA 以 16 位精度计算；请设 precision: auto（或 bf16）",
            )
        )
    return out


TRAIN = S.from_dataclass(
    TrainConfig,
    "config",
    rules=(_cross_field,),
    command="train",
    title="UMTCDS training config — written by `umtcds config` / the Config page.",
)
"""The training config's schema: the page, the CLI, the validator and the YAML all read this."""


def _raise_problems(where: str, pairs: list[S.Pair]) -> None:
    S.raise_problems(where, pairs, ConfigError)


def validate(cfg: TrainConfig) -> list[str]:
    """Every problem of ``cfg`` as ``"key: what is wrong; fix"`` (empty list when it is usable)."""
    return [en for en, _ in _problems(cfg)]


def validate_zh(cfg: TrainConfig) -> list[str]:
    """The same problems as :func:`validate`, in Chinese (same order)."""
    return [zh for _, zh in _problems(cfg)]


def _problems(cfg: TrainConfig) -> list[S.Pair]:
    return TRAIN.problems(cfg.__dict__)


def advice(cfg: TrainConfig, lang: str = "en") -> list[str]:
    """Legal but doubtful choices, as short sentences (shown, never blocking); ``lang`` "zh" gives them in Chinese.

    Values outside a field's declared ``typical`` range come first (e.g. ``learning_rate 0.5``), then combinations."""
    out: list[tuple[str, str]] = list(TRAIN.warnings(cfg.__dict__))
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


# ---- YAML with reasons --------------------------------------------------------------------------------------------
def to_yaml(cfg: TrainConfig) -> str:
    """The config as YAML with a section header per group and an inline comment on each trade-off."""
    return TRAIN.to_yaml(cfg.to_dict())


def parse_yaml(text: str, where: str = "The config") -> TrainConfig:
    return TrainConfig.from_dict(S.parse_yaml_text(text, where, ConfigError) or {}, where=where)


def load_config(path: str | Path) -> TrainConfig:
    path = Path(path)
    if not path.exists():
        raise ConfigError(
            f"Config file {path} does not exist; write one with `umtcds config` or the Config page.",
            zh=f"配置文件 {path} 不存在；请在“配置”页面（或用 `umtcds config`）生成一个。",
        )
    return parse_yaml(path.read_text(encoding="utf-8"), where=str(path))


def save_config(cfg: TrainConfig, path: str | Path) -> Path:
    """Write ``to_yaml(cfg)`` atomically — exactly the text the Config page previews."""
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
    """``--method``, ``--model``, ``--data`` and ``--out`` are required; every other field's flag comes from TRAIN."""
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--model", required=True, metavar="NAME|PATH", help="embedded name, HF folder or .gguf")
    parser.add_argument("--data", required=True, metavar="DATA_DIR", help="folder with train/dev/test.jsonl")
    parser.add_argument("--out", required=True, metavar="config.yaml")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="start values (default: chosen by method + model)")
    parser.add_argument("--no-estimate", action="store_true", help="skip the memory estimate")
    TRAIN.add_arguments(parser, skip=("method", "model"), config=False)


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
    overrides = {k: v for k, v in TRAIN.overrides(args).items() if k not in ("method", "model")}
    overrides["data_dir"] = _relative(str(data), out.parent)
    overrides.setdefault("output_dir", "output")
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
