"""The training methods — LoRA, QLoRA, P-tuning v2, full fine-tuning — as one table.

Every fact that differs between methods lives in its :class:`Method` row: its bilingual label and help (the config
page), how it wraps a loaded model (peft adapter, 4-bit base), which speed features it can use (packing, gradient
checkpointing, compiled layers), how it counts trainable parameters and extra activations (the memory estimate) and
its preset start values. ``config``, ``train``, ``speed``, ``memory`` and the config page read the row instead of
asking ``if method == …``; adding a method means adding one row here.

Torch, transformers and peft are imported only inside the wrapping functions, so the table is cheap to import (the
dashboard reads it on every page).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import UserError
from .schema import ConfigError

# LoRA targets per model_type: the attention projections (GLM-4: q/k/v as in the official demo's -hf config).
LORA_TARGETS: dict[str, list[str]] = {
    "glm": ["q_proj", "k_proj", "v_proj"],
    "glm4": ["q_proj", "k_proj", "v_proj"],
    "chatglm": ["query_key_value"],
    "gpt2": ["c_attn", "c_proj"],
    "gpt_neox": ["query_key_value", "dense"],
    "falcon": ["query_key_value", "dense"],
    "phi3": ["qkv_proj", "o_proj"],
}
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]  # llama, qwen2/3, mistral, gemma, phi, ...
SMALL_MODEL_PARAMS = 1.0e9
"""Models under this many parameters (and the embedded one) start from the ``small-*`` presets (config.preset_name)."""


class MethodError(UserError):
    """A method cannot be applied to this model as configured (e.g. LoRA targets it does not have)."""


# ---- wrapping a loaded model ----------------------------------------------------------------------------------------
def linear_module_names(model) -> set[str]:
    import torch

    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ in {"Linear4bit", "Linear8bitLt", "Conv1D"}:
            names.add(name.rsplit(".", 1)[-1])
    return names  # lm_head included: a valid (if costly) explicit target; the per-architecture defaults never pick it


def lora_targets(model, requested: list[str] | None) -> list[str] | str:
    """LoRA target module names for this model: the user's list (checked) or the per-architecture default."""
    present = linear_module_names(model)
    model_type = getattr(model.config, "model_type", "")
    if requested:
        if requested in (["all-linear"], "all-linear"):
            return "all-linear"
        missing = [t for t in requested if t not in present]
        if missing:
            raise MethodError(
                f"lora_target_modules {missing} are not layers of this {model_type or 'model'} (it has: "
                f"{', '.join(sorted(present))}); the config was probably written for another model — remove "
                "lora_target_modules to choose them automatically.",
                zh=f"lora_target_modules {missing} 不是这个 {model_type or '模型'} 的层（它有："
                f"{', '.join(sorted(present))}）；这份配置可能是为别的模型写的——删除 "
                "lora_target_modules 即可自动选择。",
            )
        return list(requested)
    default = LORA_TARGETS.get(model_type, DEFAULT_LORA_TARGETS)
    chosen = [t for t in default if t in present]
    return chosen or "all-linear"


def _wrap_lora(model, cfg, kbit: str = "lean", checkpointing: bool = True):
    """peft LoRA on ``model`` (a k-bit base is frozen first); returns ``(model, targets)``."""
    from peft import LoraConfig, TaskType, get_peft_model

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        if kbit == "peft":  # peft's own preparation: frozen 16-bit weights upcast to fp32 (the benchmark's baseline)
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model,
                use_gradient_checkpointing=checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
        else:
            from .speed.model import prepare_kbit_lean

            # frozen base without peft's fp32 copy of the 16-bit weights (+4.6 GiB on GLM-4-9B); the Trainer turns
            # checkpointing on from the training arguments
            prepare_kbit_lean(model)
    targets = lora_targets(model, cfg.lora_target_modules)
    lora = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
    )
    return get_peft_model(model, lora), targets


def wrap_prefix_peft(model, cfg, kbit: str = "lean", checkpointing: bool = True):
    """peft prefix tuning (P-tuning v2) as peft runs it: ``num_virtual_tokens`` learned key/value prefixes per layer
    handed to the model as a KV cache (no checkpointing, no packing). The benchmark's Hugging Face baseline."""
    from peft import PrefixTuningConfig, TaskType, get_peft_model

    # peft's defaults: no reparametrisation MLP (prefix_projection=False), N(0, 1) init of the prefix embedding
    prefix = PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=cfg.num_virtual_tokens)
    return get_peft_model(model, prefix), None


def _wrap_prefix(model, cfg, kbit: str = "lean", checkpointing: bool = True):
    """P-tuning v2 with the prefix passed into attention explicitly (:mod:`umtcds_core.prefix`): the same peft
    parameters, initial values and saved format as :func:`wrap_prefix_peft`, but checkpointing, packing and compile
    work. A model the explicit path cannot serve is refused (it would silently lose the prefix when checkpointed)."""
    from .prefix import enable_explicit_prefix

    model, _ = wrap_prefix_peft(model, cfg, kbit, checkpointing)
    why = enable_explicit_prefix(model)
    if why:
        raise MethodError(
            f"P-tuning v2 cannot run on this model: {why}; use method lora instead.",
            zh=f"这个模型不能使用 P-tuning v2：{why}；请改用 lora 方法。",
        )
    return model, None


def _wrap_none(model, cfg, kbit: str = "lean", checkpointing: bool = True):
    """Full fine-tuning: the model itself, every weight trainable."""
    return model, None


def _quantization(cfg, precision: str):
    """bitsandbytes' 4/8-bit load settings of QLoRA; compute in the run's 16-bit type."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=cfg.qlora_bits == 4,
        load_in_8bit=cfg.qlora_bits == 8,
        bnb_4bit_quant_type=cfg.qlora_quant_type,
        bnb_4bit_use_double_quant=cfg.qlora_double_quant,
        bnb_4bit_compute_dtype=torch.bfloat16 if precision == "bf16" else torch.float16,
    )


# ---- the memory estimate's per-method parts ----------------------------------------------------------------------
def lora_dims(shape: dict, targets: list[str] | None) -> list[tuple[int, int]]:
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


def _kv_width(shape: dict) -> int:
    return shape["num_kv_heads"] * shape["head_dim"]


def _lora_trainable(cfg, shape: dict, total: int) -> int:
    """``r·(in+out)`` per wrapped linear and layer."""
    return shape["num_layers"] * sum(cfg.lora_r * (i + o) for i, o in lora_dims(shape, cfg.lora_target_modules))


def _lora_layer_extra(cfg, shape: dict, a: int) -> float:
    """Each LoRA-wrapped linear keeps its fp32 input copy plus a dropout mask: ``(4 + 1)·in`` bytes per token."""
    drop = 1 if cfg.lora_dropout > 0 else 0
    return sum((4 + drop) * i for i, _ in lora_dims(shape, cfg.lora_target_modules))


def _prefix_trainable(cfg, shape: dict, total: int) -> int:
    """``T·L·2·kv_heads·head_dim``: a key and a value per virtual token and layer."""
    return cfg.num_virtual_tokens * shape["num_layers"] * 2 * _kv_width(shape)


def _prefix_rows(cfg) -> tuple[int, int]:
    """``(rows, row length)`` of a worst-case micro-batch: one packed row of every sample, or padded samples."""
    length = cfg.max_input_length + cfg.max_output_length
    if getattr(cfg, "packing", False) and REGISTRY["ptuning-v2"].packing:
        return 1, cfg.per_device_batch_size * length
    return cfg.per_device_batch_size, length


def _prefix_layer_extra(cfg, shape: dict, a: int) -> float:
    """The widened mask of :mod:`umtcds_core.prefix`: each query row holds ``row + T`` booleans, and SDPA keeps an
    additive copy in the compute dtype for backward: ``(1 + a)·(row + T)`` bytes per token and layer."""
    _, length = _prefix_rows(cfg)
    return (1 + a) * (length + cfg.num_virtual_tokens)


def _prefix_step_extra(cfg, shape: dict, a: int) -> float:
    """Each layer that keeps its activations holds its prefix keys/values expanded to every row of the micro-batch,
    once concatenated (``kv_heads``) and once repeated to all query heads for SDPA with a mask: ``rows·T·2·(kv_heads +
    heads)·head_dim·a``. Checkpointed, two layers hold them at the peak (the one recomputed and the last, kept);
    otherwise all ``L``. Plus every layer's own copy of its slice in the compute dtype, ``L·T·2·kv_heads·head_dim·a``."""
    rows, _ = _prefix_rows(cfg)
    layers = 2 if cfg.gradient_checkpointing else shape["num_layers"]
    width = 2 * (shape["num_kv_heads"] + shape["num_heads"]) * shape["head_dim"]
    slices = shape["num_layers"] * cfg.num_virtual_tokens * 2 * _kv_width(shape) * a
    return layers * rows * cfg.num_virtual_tokens * width * a + slices


def _all_trainable(cfg, shape: dict, total: int) -> int:
    return total


def _adapter_state(precision: str) -> int:
    """fp32 adapters (peft's default): weights + gradients + two AdamW moments, 16 bytes per parameter."""
    return 16


def _full_state(precision: str) -> int:
    """Beyond the weights counted as weights: bf16 keeps grads and moments in bf16 (as the GLM-4 demo trains);
    fp16/fp32 need fp32 master weights."""
    return 6 if precision == "bf16" else 12


def _nothing(cfg, shape: dict, a: int) -> float:
    return 0


# ---- the table ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """One training method: what it is (label, help), how it wraps a model, what it supports, how it costs memory."""

    name: str
    label: tuple[str, str]
    """(zh, en) short name."""
    help: tuple[str, str]
    """(zh, en) markdown paragraph for the config page."""
    wrap: Callable[..., tuple[Any, Any]]
    """``wrap(model, cfg, kbit="lean"|"peft", checkpointing=bool) -> (model, lora targets or None)``."""
    adapter: str = ""
    """"lora" | "prefix" | "" (every weight trains)."""
    quantised: bool = False
    """Loads the base in 4/8 bits through bitsandbytes: CUDA only, one GPU, 16-bit compute."""
    fp32_weights: bool = False
    """Loads the trainable base in fp32 (master weights; the Trainer's autocast computes in 16 bits)."""
    sharded: bool = False
    """On several GPUs: FSDP ``full_shard`` (the LM head is sharded, so the fused loss stays off), else DDP."""
    no_packing: str = ""
    """Why padding-free packing cannot be used (empty: it can)."""
    no_checkpointing: str = ""
    """Why gradient checkpointing is turned off (empty: it is honoured)."""
    compile: bool = False
    """``compile: auto`` compiles its decoder layers on one CUDA GPU (measured to pay for adapters)."""
    compile_group: int = 2
    """Decoder layers per compiled call and checkpoint."""
    trainable: Callable[[Any, dict, int], int] = _all_trainable
    """``trainable(cfg, shape, total_params)``: trainable parameters."""
    state_bytes: Callable[[str], int] = _adapter_state
    """``state_bytes(precision)``: bytes per trainable parameter for its state (weights of adapters, grads, AdamW)."""
    layer_extra: Callable[[Any, dict, int], float] = _nothing
    """``layer_extra(cfg, shape, a)``: extra activation bytes per token and layer."""
    step_extra: Callable[[Any, dict, int], float] = _nothing
    """``step_extra(cfg, shape, a)``: extra activation bytes per micro-batch."""
    presets: dict[str, dict] = field(default_factory=dict)
    """Start values: ``glm4`` (GLM-4-9B-sized models) and ``small`` (under 1B parameters)."""

    @property
    def packing(self) -> bool:
        return not self.no_packing

    @property
    def checkpointing(self) -> bool:
        return not self.no_checkpointing

    def quantization(self, cfg, precision: str):
        """The ``quantization_config`` for loading the base (None unless :attr:`quantised`)."""
        return _quantization(cfg, precision) if self.quantised else None

    def load_dtype(self, precision: str) -> str:
        """The dtype the base is loaded in: adapters train in fp32 on a half-precision base; full fine-tuning keeps
        fp32 master weights (+ autocast)."""
        return "fp32" if self.fp32_weights else precision


_SHORT = dict(max_input_length=256, max_output_length=256, num_epochs=3.0, max_steps=-1, save_steps=50, eval_steps=50,
              logging_steps=5, precision="auto")  # fmt: skip
_DEMO = dict(max_input_length=512, max_output_length=512, max_steps=3000, save_steps=500, eval_steps=500,
             logging_steps=10, precision="bf16")  # fmt: skip

_TABLE = (
    Method(
        "lora",
        label=("LoRA", "LoRA"),
        help=(
            "**LoRA**：冻结原模型，只训练插在注意力层旁边的小矩阵（秩 r）。显存少、速度快，适配器只有几 MB 到几十 MB。推荐首选。",
            "**LoRA**: the base model stays frozen; only small matrices (rank r) next to the attention layers are "
            "trained. Little memory, fast, an adapter of a few MB. The recommended start.",
        ),
        wrap=_wrap_lora,
        adapter="lora",
        compile=True,
        trainable=_lora_trainable,
        layer_extra=_lora_layer_extra,
        presets={
            # GLM-4 fine-tuning demo (finetune_demo/configs/*.yaml, 2024): 512/512 tokens, 3000 steps, save/eval
            # every 500.
            "glm4": dict(
                method="lora",
                lora_r=8,
                lora_alpha=32,
                lora_dropout=0.1,
                learning_rate=5e-4,
                per_device_batch_size=1,
                **_DEMO,
            ),
            # Small models (the embedded smollm2-135m, < 1B): short sequences, epochs instead of steps, higher rates.
            "small": dict(
                method="lora",
                lora_r=16,
                lora_alpha=32,
                lora_dropout=0.05,
                learning_rate=1e-3,
                per_device_batch_size=8,
                **_SHORT,
            ),
        },  # fmt: skip
    ),
    Method(
        "qlora",
        label=("QLoRA", "QLoRA"),
        help=(
            "**QLoRA**：先把原模型压缩成 4 位，再做 LoRA。显存最省（9B 模型约 10–13 GB），速度稍慢，需要 NVIDIA GPU。显卡装不下 LoRA 时用它。",
            "**QLoRA**: LoRA on a base model compressed to 4 bits. The least memory (a 9B model in about 10–13 GB), "
            "a bit slower, needs an NVIDIA GPU. Use it when LoRA does not fit your card.",
        ),
        wrap=_wrap_lora,
        adapter="lora",
        quantised=True,
        compile=True,
        # one layer per compiled call: its compiled path was measured that way (runs of two for LoRA only), and
        # autocast is skipped for k-bit models anyway
        compile_group=1,
        trainable=_lora_trainable,
        layer_extra=_lora_layer_extra,
        presets={
            # No QLoRA in the demo: its LoRA values on a 4-bit NF4 base; lr 2e-4 as in the QLoRA paper for 7–13B.
            "glm4": dict(
                method="qlora",
                lora_r=8,
                lora_alpha=32,
                lora_dropout=0.1,
                learning_rate=2e-4,
                qlora_bits=4,
                qlora_quant_type="nf4",
                qlora_double_quant=True,
                per_device_batch_size=1,
                **_DEMO,
            ),
            "small": dict(
                method="qlora",
                lora_r=16,
                lora_alpha=32,
                lora_dropout=0.05,
                learning_rate=1e-3,
                per_device_batch_size=8,
                **_SHORT,
            ),
        },  # fmt: skip
    ),
    Method(
        "ptuning-v2",
        label=("P-tuning v2", "P-tuning v2"),
        help=(
            "**P-tuning v2**：在每一层前加一段可学习的“虚拟 token”（前缀），原权重不变。原版 UMTCDS 唯一支持的方法。",
            "**P-tuning v2**: a learned prefix of virtual tokens in front of every layer; the weights stay "
            "unchanged. The original UMTCDS's only method.",
        ),
        wrap=_wrap_prefix,
        adapter="prefix",
        # the prefix reaches attention explicitly (umtcds_core.prefix), not through the KV cache: checkpointing
        # recomputes it, every packed sample sees it (tests/umtcds_core/test_prefix.py), compiled layers see static
        # shapes. One layer per compiled call: each layer's prefix slice is its own call's argument.
        compile=True,
        compile_group=1,
        trainable=_prefix_trainable,
        layer_extra=_prefix_layer_extra,
        step_extra=_prefix_step_extra,
        presets={
            # The original UMTCDS's only method (pre_seq_len 128); demo lr 5e-4, batch 4. Packing is on (every packed
            # sample sees the whole prefix: umtcds_core.prefix).
            "glm4": dict(
                method="ptuning-v2",
                num_virtual_tokens=128,
                learning_rate=5e-4,
                per_device_batch_size=4,
                **_DEMO,
            ),
            "small": dict(
                method="ptuning-v2",
                num_virtual_tokens=32,
                learning_rate=5e-3,
                per_device_batch_size=8,
                **_SHORT,
            ),
        },  # fmt: skip
    ),
    Method(
        "full",
        label=("全参数微调", "Full fine-tuning"),
        help=(
            "**全参数微调**：更新全部权重，上限最高，但显存需求最大（9B 模型需要多张 80 GB 显卡）。适合小模型。",
            "**Full fine-tuning**: every weight is updated. The highest ceiling but by far the most memory (a 9B "
            "model needs several 80 GB GPUs). Good for small models.",
        ),
        wrap=_wrap_none,
        fp32_weights=True,
        sharded=True,
        state_bytes=_full_state,
        presets={
            # The demo's sft.yaml: lr 5e-5, batch 1 (it needs 8x80 GB with ZeRO-3 for 9B).
            "glm4": dict(method="full", learning_rate=5e-5, per_device_batch_size=1, **_DEMO),
            "small": dict(method="full", learning_rate=5e-5, per_device_batch_size=8, **_SHORT),
        },
    ),
)

REGISTRY: dict[str, Method] = {m.name: m for m in _TABLE}
METHODS: tuple[str, ...] = tuple(REGISTRY)
METHOD_HELP: dict[str, tuple[str, str]] = {m.name: m.help for m in _TABLE}
PRESETS: dict[str, dict] = {f"{size}-{m.name}": dict(m.presets[size]) for size in ("glm4", "small") for m in _TABLE}


def _unknown(method: str):
    return ConfigError(
        f"method: '{method}' is not one of {', '.join(METHODS)}; pick one.",
        zh=f"method：“{method}”不是 {', '.join(METHODS)} 之一；请从中选择一个。",
    )


def get(method: str) -> Method:
    """The row of ``method``; an unknown name is a :class:`~umtcds_core.schema.ConfigError` naming the choices."""
    try:
        return REGISTRY[method]
    except (KeyError, TypeError):
        raise _unknown(method) from None


# ---- presets ------------------------------------------------------------------------------------------------------
