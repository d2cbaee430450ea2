"""The settings every step that loads a model shares — which model, which adapter, which device — declared once.

Why a module of its own: ``umtcds chat``, ``umtcds evaluate`` and ``umtcds serve`` take the same ``--model``,
``--adapter`` and ``--device`` with the same meaning; written into each step's settings class they had already begun
to say it three slightly different ways. Each function returns a fresh :func:`~umtcds_core.schema.setting` (a
dataclass field can belong to one class only), so a step writes ``model: str | None = model_setting()``.

Streamlit-free and torch-free, like ``schema.py``.
"""

from __future__ import annotations

from .schema import setting


def model_setting(**changes):
    """``--model``: the base model; optional when an adapter names its own base."""
    declared = dict(
        label=("基座模型", "Base model"),
        comment="base model: embedded name, model folder or .gguf (null: the adapter's base)",
        help=(
            "内置模型名、模型文件夹或 .gguf 文件；留空则用适配器训练时的基座。",
            "An embedded name, a model folder or a .gguf file; empty: the base the adapter was trained on.",
        ),
        kind=str,
        nullable=True,
        widget="text",
        example="smollm2-135m",
    )
    declared.update(changes)
    return setting(None, **declared)


def adapter_setting(**changes):
    """``--adapter``: a run folder or one of its ``checkpoint-N`` folders (LoRA or P-tuning v2)."""
    declared = dict(
        label=("适配器（训练输出）", "Adapter (a training run)"),
        comment="a run folder or one of its checkpoint-N folders (LoRA or P-tuning v2); null: the base model alone",
        help=(
            "训练输出文件夹或其中的 checkpoint-N；留空则只用基座模型。",
            "A run folder or one of its checkpoint-N folders; empty: the base model alone.",
        ),
        kind=str,
        nullable=True,
        widget="text",
        example="runs/run-1",
    )
    declared.update(changes)
    return setting(None, **declared)


def device_setting(**changes):
    """``--device``: where the model runs (free text: ``cuda:1`` is as valid as ``cuda``)."""
    declared = dict(
        label=("设备", "Device"),
        comment="cpu | cuda | cuda:N | mps (null: the best available)",
        kind=str,
        nullable=True,
        widget="hidden",
        example="cuda",
    )
    declared.update(changes)
    return setting(None, **declared)


def need_model(values: dict, error: type, command: str) -> None:
    """Raise ``error`` (a :class:`~umtcds_core.errors.UserError`) when neither a model nor an adapter is given."""
    if not values.get("model") and not values.get("adapter"):
        raise error(
            "Give --model (an embedded name, a model folder or a .gguf file) and optionally --adapter"
            f" (or model:/adapter: in the `umtcds {command} --config` file).",
            zh="请指定 --model（内置模型名、模型文件夹或 .gguf 文件），可选再加上 --adapter"
            f"（或在 `umtcds {command} --config` 的设置文件里写 model:/adapter:）。",
        )
