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

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from . import methods
from . import schema as S
from .errors import UserError

# presets, model shape and the memory estimate live in methods.py / memory.py; re-exported because pages, tests and
# the CLI below use them as config.X
from .memory import (  # noqa: F401
    CARDS_GIB,
    GIB,
    budget_of_estimate,
    budget_use,
    count_params,
    describe_estimate,
    detect_gpus,
    estimate_memory,
    glm4_9b_shape,
    methods_fit,
    model_shape,
    shape_from_hf_config,
)
from .methods import METHODS, PRESETS, SMALL_MODEL_PARAMS  # noqa: F401

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


ConfigError = S.ConfigError


def _row(values: dict) -> methods.Method | None:
    """The methods-table row of the chosen method (None while the method is not a known one)."""
    return methods.REGISTRY.get(values.get("method"))


def _adapters(values: dict) -> bool:
    """LoRA's fields are shown for the methods that train LoRA adapters (LoRA, QLoRA)."""
    return getattr(_row(values), "adapter", "") == "lora"


def _quantised(values: dict) -> bool:
    return getattr(_row(values), "quantised", False)


def _prefix(values: dict) -> bool:
    return getattr(_row(values), "adapter", "") == "prefix"


setting = S.setting
optional_text = S.optional_text


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
    system_prompt: str | None = optional_text(
        ("系统提示（对话时放在最前面；留空=不用）", "System prompt (first in every chat; empty = none)"),
        "put first in every chat; null = the data's own (or none)",
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
        show=_quantised,
    )
    qlora_quant_type: str = setting(
        "nf4",
        ("量化类型", "Quant type"),
        "nf4 suits normally distributed weights (recommended); fp4 is the alternative",
        help=("nf4 适合正态分布的权重（推荐）。", "nf4 suits normally distributed weights (recommended)."),
        choices=QUANT_TYPES,
        range_msg=("use nf4 (recommended) or fp4", "请用 nf4（推荐）或 fp4"),
        show=_quantised,
    )
    qlora_double_quant: bool = setting(
        True,
        ("双重量化", "Double quantisation"),
        "true: also quantise the scales, saves ~0.4 bit/weight",
        help=("连缩放系数也量化，每个权重再省约 0.4 位。", "Also quantise the scales: ~0.4 bit/weight less."),
        show=_quantised,
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
        show=_prefix,
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
    logging_steps: int = setting(
        5,
        ("日志间隔（步）", "Log every (steps)"),
        "lower: a denser loss chart; on a GPU each logged step waits for the card (every step: ~6 % slower on an H200)",
        min=1,
    )
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
    memory_budget_gib: float = setting(
        20.0,
        ("显存预算 (GiB)", "Memory budget (GiB)"),
        "GPU memory training may use; room left over keeps the last layers un-checkpointed (faster). "
        "20 fits a 24 GB card; 0 = the whole card",
        help=(
            "训练最多使用的显存；有余量时，最后几层不做梯度检查点（更快）。20 适合 24 GB 显卡；0 = 用满整张卡。",
            "GPU memory training may use; room left over skips checkpointing on the last layers (faster). "
            "20 fits a 24 GB card; 0 = the whole card.",
        ),
        min=0,
        max=4096,
        step=1.0,
        range_msg=(
            "use 0 (the whole card) or the GiB to use, e.g. 20 or 40",
            "填 0（整张卡）或要用的 GiB 数，如 20 或 40",
        ),
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
    if methods.get(values["method"]).quantised and values["precision"] == "fp32":
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


def max_optimizer_steps(cfg: TrainConfig, n_train: int) -> int:
    """An upper bound of the run's optimizer steps for ``n_train`` training examples (packing only lowers it)."""
    if cfg.max_steps > 0:
        return cfg.max_steps
    per_epoch = math.ceil(n_train / (cfg.per_device_batch_size * cfg.gradient_accumulation_steps))
    return max(1, math.ceil(per_epoch * cfg.num_epochs))


def advice(cfg: TrainConfig, lang: str = "en", est: dict | None = None, n_train: int | None = None) -> list[str]:
    """Legal but doubtful choices, as short sentences (shown, never blocking); ``lang`` "zh" gives them in Chinese.

    Values outside a field's declared ``typical`` range come first (e.g. ``learning_rate 0.5``), then combinations,
    then — given a memory estimate ``est`` — a config no single card or not the GPU present can hold. The Config
    page shows these before Save and the Train page repeats them before Start."""
    out: list[tuple[str, str]] = list(TRAIN.warnings(cfg.__dict__))
    if est is not None:
        total = est["total_gib"]
        gpu = (est.get("fit") or {}).get("gpu")
        if est.get("smallest_card_gib") is None:
            out.append(
                (
                    f"This config needs ~{total:.0f} GiB of GPU memory, more than any single card "
                    f"({CARDS_GIB[-1]} GB); lower the batch size or the lengths, or use QLoRA.",
                    f"这个配置需要约 {total:.0f} GiB 显存，超过任何一张显卡（{CARDS_GIB[-1]} GB）；"
                    "请减小批大小或长度，或改用 QLoRA。",
                )
            )
        elif gpu is not None and not gpu["fits"]:
            out.append(
                (
                    f"This config needs ~{total:.0f} GiB, more than your {gpu['name']} ({gpu['total_gib']:.0f} GiB); "
                    "training would run out of memory.",
                    f"这个配置需要约 {total:.0f} GiB，超过你的 {gpu['name']}（{gpu['total_gib']:.0f} GiB）；训练会显存不足。",
                )
            )
    if n_train is not None:
        if n_train < 50:
            out.append(
                (
                    f"Only {n_train} training pair{'' if n_train == 1 else 's'}: the model will memorise them rather than learn the site; "
                    "generate more pairs (a few hundred) for a real assistant.",
                    f"训练集只有 {n_train} 对问答：模型只会死记这些问题，学不到网站的内容；真正的助手需要几百对，请多生成一些。",
                )
            )
        steps = max_optimizer_steps(cfg, n_train)
        for key, zh_name in (("eval_steps", "评估"), ("logging_steps", "日志")):
            every = getattr(cfg, key)
            if every > steps:
                out.append(
                    (
                        f"{key} is {every} but the run has at most {steps} steps: "
                        f"{'no eval loss' if key == 'eval_steps' else 'no loss point'} will be drawn; lower {key}.",
                        f"{key} 为 {every}，但这次训练最多只有 {steps} 步：{zh_name}一次也不会发生；请调小 {key}。",
                    )
                )
    row = methods.get(cfg.method)
    if not row.adapter and cfg.learning_rate > 1e-4:
        out.append(
            (
                f"learning_rate {cfg.learning_rate:g} is high for full fine-tuning; the GLM-4 demo uses 5e-5.",
                f"全量微调用 learning_rate {cfg.learning_rate:g} 偏高；GLM-4 官方示例用 5e-5。",
            )
        )
    if row.adapter == "lora" and cfg.learning_rate < 1e-5:
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
    if row.no_packing and cfg.packing:
        out.append(
            (
                f"packing is on, but {row.label[1]} cannot pack ({row.no_packing}); training runs without it — "
                "set packing: false to say so.",
                f"已打开 packing，但 {row.label[0]} 不能拼接样本；训练时会自动关闭——请把 packing 设为 false。",
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


# ---- presets: a method's start values (its row in methods.py) as a validated TrainConfig --------------------------
def preset_name(method: str, model: str | None = None) -> str:
    """``small-<method>`` for the embedded model or any model under 1B parameters, else ``glm4-<method>``."""
    methods.get(method)  # an unknown method: the table's sentence naming the choices
    small = True
    if model:
        from .models import EMBEDDED

        if model not in EMBEDDED:
            try:
                small = count_params(model_shape(model))["total"] < SMALL_MODEL_PARAMS
            except UserError:
                small = False
    return f"{'small' if small else 'glm4'}-{method}"


def preset_for(method: str, model: str | None = None, **overrides):
    """A validated config for ``method`` on ``model`` from the matching preset, with ``overrides`` applied."""
    values = dict(PRESETS[preset_name(method, model)])
    if model:
        values["model"] = model
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(values)


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
        est = estimate_memory(cfg)
        print(describe_estimate(est))
        use = budget_of_estimate(cfg, est)
        if use is not None and use["kept"]:
            print(
                f"Memory budget {use['budget_gib']:.0f} GiB (memory_budget_gib): on one GPU the last {use['kept']} "
                f"of {use['layers']} layers skip gradient checkpointing, ~{use['total_gib']:.1f} GiB in all."
            )
    return 0
