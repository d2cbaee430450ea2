"""Step page: Config — build the training config with explanations, a live memory estimate and a YAML preview.

The values live in the plain session key ``cfg_values`` (widget keys reset across pages), are validated by
``TrainConfig`` on every change, and are saved to the workspace's ``config.yaml`` with ``save_config``.
"""

from __future__ import annotations

import os

import plotly.graph_objects as go
import streamlit as st

from umtcds_core import config as C
from umtcds_core import methods, ui
from umtcds_core.errors import UserError
from umtcds_core.i18n import current_lang, error_text, tr
from umtcds_core.models import DEFAULT_MODEL, EMBEDDED

ws = ui.require_workspace()
st.header(tr("4 · 训练配置", "4 · Training config"))
st.caption(
    tr(
        "选择微调方法和参数。右侧实时显示显存估算和将要保存的 config.yaml。",
        "Pick a fine-tuning method and its settings. The memory estimate and the config.yaml to be saved update live.",
    )
)

W = "cfg_w_"  # widget key prefix
METHOD_HELP = methods.METHOD_HELP  # (zh, en) per method, from the methods table


FIX_NAMES = {
    "gradient_checkpointing": ("打开梯度检查点", "gradient checkpointing"),
    "qlora": ("改用 QLoRA", "QLoRA"),
    "batch_size_1": ("批大小设为 1（增大梯度累积）", "batch size 1 (with more gradient accumulation)"),
}


def verdict_text(est: dict) -> str:
    """The estimate's verdict in the UI language (the core's ``verdict`` is the CLI's English sentence)."""
    fit = est["fit"]
    parts = []
    gpu = fit["gpu"]
    if gpu is not None:
        size = f"{gpu['name']} ({gpu['total_gib']:.0f} GiB)"
        parts.append(
            tr(f"可以放进你的 {size}", f"fits your {size}")
            if gpu["fits"]
            else tr(f"放不进你的 {size}", f"does not fit your {size}")
        )
    if fit["card_gib"] is not None:
        parts.append(tr(f"{fit['card_gib']} GB 显卡可以运行", f"fits a {fit['card_gib']} GB card"))
    if fit["target_gib"] is not None:
        target = f"{fit['target_gib']:.0f} GB"
        if fit["fixes"]:
            zh = " 或 ".join(FIX_NAMES[f][0] for f in fit["fixes"])
            en = " or ".join(FIX_NAMES[f][1] for f in fit["fixes"])
            parts.append(tr(f"要放进 {target}：{zh}", f"needs {en} to fit {target}"))
        else:
            parts.append(
                tr(
                    "单卡放不下：请用 QLoRA 并缩短长度，或用多卡（ZeRO-3）",
                    "needs QLoRA plus shorter lengths, or several GPUs (ZeRO-3)",
                )
            )
    return f"~{est['total_gib']:.1f} GiB · " + tr("；", "; ").join(parts)


def _relative_run_dir() -> str:
    return str(ws.new_run_dir().relative_to(ws.root))


def _dataset_system_prompt() -> str | None:
    return (ws.meta().get("dataset") or {}).get("system_prompt")


def _clear_widgets(keep: tuple[str, ...] = ()) -> None:
    for key in [k for k in st.session_state if isinstance(k, str) and k.startswith(W)]:
        if key[len(W) :] not in keep:
            del st.session_state[key]


def _set_values(values: dict, keep: tuple[str, ...] = ()) -> None:
    st.session_state["cfg_values"] = values
    st.session_state["cfg_ws"] = str(ws.root)
    _clear_widgets(keep)


def _preset_values(method: str, model: str, current: dict | None = None) -> dict:
    values = C.preset_for(method, model).to_dict()
    values["data_dir"] = "dataset"
    values["output_dir"] = (current or {}).get("output_dir") or _relative_run_dir()
    values["system_prompt"] = (current or {}).get("system_prompt", _dataset_system_prompt())
    return values


def _apply_preset() -> None:
    """Callback: method/model changed or "preset" clicked — start from that preset, keep paths and prompt."""
    method = st.session_state.get(W + "method", "lora")
    model = (st.session_state.get(W + "model") or DEFAULT_MODEL).strip()
    try:
        values = _preset_values(method, model, st.session_state.get("cfg_values"))
    except UserError as exc:
        st.session_state["cfg_load_error"] = error_text(exc)
        return
    _set_values(values, keep=("method", "model"))


def _initial_values() -> dict:
    if ws.config_file.exists():
        try:
            return C.load_config(ws.config_file).to_dict()
        except UserError as exc:
            st.session_state["cfg_load_error"] = error_text(exc)
    return _preset_values("lora", DEFAULT_MODEL)


if st.session_state.get("cfg_ws") != str(ws.root) or "cfg_values" not in st.session_state:
    _set_values(_initial_values())
values: dict = dict(st.session_state["cfg_values"])

# ---- load ----------------------------------------------------------------------------------------------------------
with st.expander(tr("载入已有配置", "Load an existing config")):
    c1, c2 = st.columns(2)
    if c1.button(tr("重新载入本项目的 config.yaml", "Reload this project's config.yaml"), key="cfg_reload"):
        try:
            _set_values(C.load_config(ws.config_file).to_dict())
            st.session_state.pop("cfg_load_error", None)
            st.rerun()
        except UserError as exc:
            st.session_state["cfg_load_error"] = error_text(exc)
    uploaded = c2.file_uploader(tr("或上传一个 YAML", "or upload a YAML"), type=["yaml", "yml"], key="cfg_upload")
    if uploaded is not None and c2.button(tr("使用上传的配置", "Use the uploaded config"), key="cfg_use_upload"):
        try:
            _set_values(C.parse_yaml(uploaded.getvalue().decode("utf-8"), where=uploaded.name).to_dict())
            st.session_state.pop("cfg_load_error", None)
            st.rerun()
        except (UserError, UnicodeDecodeError) as exc:
            st.session_state["cfg_load_error"] = error_text(exc)
if st.session_state.get("cfg_load_error"):
    st.error(st.session_state["cfg_load_error"])

form, side = st.columns([3, 2], gap="large")

# ---- the form ------------------------------------------------------------------------------------------------------
with form:
    st.subheader(tr("模型与方法", "Model and method"))
    model = st.text_input(
        tr("模型", "Model"),
        value=values["model"],
        key=W + "model",
        on_change=_apply_preset,
        help=tr(
            f"内置模型名（{', '.join(EMBEDDED)}）、本地 Hugging Face 模型文件夹（如 glm-4-9b-chat-hf）或 .gguf 文件。",
            f"An embedded name ({', '.join(EMBEDDED)}), a local Hugging Face folder (e.g. glm-4-9b-chat-hf) or a .gguf file.",
        ),
    ).strip()
    method = st.radio(
        tr("方法", "Method"),
        C.METHODS,
        index=C.METHODS.index(values["method"]) if values["method"] in C.METHODS else 0,
        key=W + "method",
        horizontal=True,
        on_change=_apply_preset,
    )
    st.markdown(tr(*METHOD_HELP[method]))
    st.caption(tr("切换方法或模型会载入它的预设值。", "Changing the method or the model loads its preset values."))
    preset = C.preset_name(method, model) if model else f"small-{method}"
    if st.button(tr(f"恢复预设值（{preset}）", f"Reset to the preset ({preset})"), key="cfg_preset"):
        _apply_preset()
        st.rerun()

    new: dict = {"model": model, "method": method}

    def number(col, key: str, label: str, help: str | None = None, **bounds) -> None:
        """A number input for config ``key``; its value is typed like its lower bound (int or float)."""
        new[key] = col.number_input(
            label, value=type(bounds["min_value"])(values[key]), key=W + key, help=help, **bounds
        )

    def choice(col, key: str, label: str, options, help: str | None = None) -> None:
        """A select box for config ``key``; an unknown current value falls back to the first option."""
        opts = list(options)
        index = opts.index(values[key]) if values[key] in opts else 0
        new[key] = col.selectbox(label, opts, index=index, key=W + key, help=help)

    if method in ("lora", "qlora"):
        st.markdown(tr("**LoRA 参数**", "**LoRA settings**"))
        c1, c2, c3 = st.columns(3)
        new["lora_r"] = c1.select_slider(
            tr("秩 r", "Rank r"),
            [2, 4, 8, 16, 32, 64, 128],
            value=values["lora_r"] if values["lora_r"] in (2, 4, 8, 16, 32, 64, 128) else 8,
            key=W + "lora_r",
            help=tr(
                "越大：容量越大，显存和适配器文件越大；8–16 通常够用。",
                "Higher: more capacity, more memory and a bigger adapter; 8–16 is usually enough.",
            ),
        )
        number(
            c2,
            "lora_alpha",
            "alpha",
            tr("更新的缩放（alpha/r）；通常取 r 的 2–4 倍。", "Scale of the update (alpha/r); 2–4× r is usual."),
            min_value=1,
        )
        number(
            c3,
            "lora_dropout",
            "dropout",
            tr("数据少时调高可减少过拟合。", "Raise it on small datasets to overfit less."),
            min_value=0.0,
            max_value=0.9,
            step=0.05,
        )
        targets = st.text_input(
            tr("目标模块（逗号分隔，留空=按架构自动）", "Target modules (comma-separated, empty = per architecture)"),
            value=", ".join(values["lora_target_modules"] or []),
            key=W + "lora_target_modules",
            help=tr(
                "例如 q_proj, k_proj, v_proj；模块越多容量越大。",
                "E.g. q_proj, k_proj, v_proj; more modules: more capacity.",
            ),
        )
        new["lora_target_modules"] = [t.strip() for t in targets.split(",") if t.strip()] or None
    if method == "qlora":
        st.markdown(tr("**量化**", "**Quantisation**"))
        c1, c2, c3 = st.columns(3)
        choice(c1, "qlora_bits", tr("位数", "Bits"), [4, 8], tr("4 位最省显存。", "4 bits use the least memory."))
        choice(
            c2,
            "qlora_quant_type",
            tr("量化类型", "Quant type"),
            C.QUANT_TYPES,
            tr("nf4 适合正态分布的权重（推荐）。", "nf4 suits normally distributed weights (recommended)."),
        )
        new["qlora_double_quant"] = c3.checkbox(
            tr("双重量化", "Double quantisation"),
            value=bool(values["qlora_double_quant"]),
            key=W + "qlora_double_quant",
            help=tr("连缩放系数也量化，每个权重再省约 0.4 位。", "Also quantise the scales: ~0.4 bit/weight less."),
        )
    if method == "ptuning-v2":
        number(
            st,
            "num_virtual_tokens",
            tr("虚拟 token 数（前缀长度）", "Virtual tokens (prefix length)"),
            tr(
                "越多：容量越大，显存越多；原版 UMTCDS 用 128。",
                "More: more capacity and memory; the original used 128.",
            ),
            min_value=1,
            max_value=2048,
        )
    if method == "full":
        st.info(
            tr(
                "全参数微调没有额外参数；请注意学习率应小（约 5e-5）。",
                "Full fine-tuning has no extra settings; keep the learning rate small (about 5e-5).",
            )
        )

    st.subheader(tr("长度与训练计划", "Lengths and schedule"))
    c1, c2 = st.columns(2)
    number(
        c1,
        "max_input_length",
        tr("最大输入长度（token）", "Max input length (tokens)"),
        tr("越长越能容纳长问题，显存随之增加。", "Longer fits longer questions; memory grows with it."),
        min_value=16,
        max_value=32768,
        step=64,
    )
    number(
        c2,
        "max_output_length",
        tr("最大输出长度（token）", "Max output length (tokens)"),
        tr("越长越能容纳长答案，显存随之增加。", "Longer fits longer answers; memory grows with it."),
        min_value=16,
        max_value=32768,
        step=64,
    )
    c1, c2 = st.columns(2)
    number(
        c1,
        "num_epochs",
        tr("训练轮数", "Epochs"),
        tr("遍历训练集的次数；太多会过拟合。", "Passes over the data; too many overfit."),
        min_value=0.1,
        max_value=100.0,
        step=0.5,
    )
    number(c2, "max_steps", tr("最大步数（-1 = 按轮数）", "Max steps (-1 = use epochs)"), min_value=-1, step=10)
    c1, c2, c3 = st.columns(3)
    number(
        c1,
        "per_device_batch_size",
        tr("批大小", "Batch size"),
        tr("越大越快，显存越多。", "Higher: faster, more memory."),
        min_value=1,
        max_value=512,
    )
    number(
        c2,
        "gradient_accumulation_steps",
        tr("梯度累积", "Gradient accumulation"),
        tr("等效批大小 = 批大小 × 累积；不增加显存。", "Effective batch = batch × this; no extra memory."),
        min_value=1,
        max_value=512,
    )
    number(
        c3,
        "learning_rate",
        tr("学习率", "Learning rate"),
        tr("LoRA 约 5e-4，全参数约 5e-5；太大会发散。", "LoRA ~5e-4, full ~5e-5; too high diverges."),
        min_value=1e-7,
        max_value=0.5,
        step=1e-5,
        format="%.1e",
    )
    c1, c2, c3 = st.columns(3)
    choice(c1, "lr_scheduler", tr("学习率调度", "Schedule"), C.SCHEDULERS)
    number(c2, "warmup_ratio", tr("预热比例", "Warmup ratio"), min_value=0.0, max_value=0.5, step=0.01)
    number(c3, "weight_decay", tr("权重衰减", "Weight decay"), min_value=0.0, max_value=1.0, step=0.01)

    st.subheader(tr("评估、保存与日志", "Evaluation, checkpoints, logging"))
    c1, c2, c3, c4 = st.columns(4)
    for col, key, zh, en in (
        (c1, "eval_steps", "评估间隔（步）", "Eval every (steps)"),
        (c2, "save_steps", "保存间隔（步）", "Save every (steps)"),
        (c3, "logging_steps", "日志间隔（步）", "Log every (steps)"),
        (c4, "save_total_limit", "最多保留检查点", "Checkpoints kept"),
    ):
        number(col, key, tr(zh, en), min_value=1)

    st.subheader(tr("速度与显存", "Speed and memory"))
    c1, c2, c3, c4 = st.columns(4)
    new["gradient_checkpointing"] = c1.checkbox(
        tr("梯度检查点", "Gradient checkpointing"),
        value=bool(values["gradient_checkpointing"]),
        key=W + "gradient_checkpointing",
        help=tr("大幅减少激活显存，约慢 30%。", "Far less activation memory, ~30% slower."),
    )
    new["packing"] = c2.checkbox(
        tr("样本拼接", "Packing"),
        value=bool(values["packing"]),
        key=W + "packing",
        help=tr(
            "多个样本拼成一条序列，更快；样本之间互不可见。",
            "Several samples per sequence, faster; they never see each other.",
        ),
    )
    choice(
        c3,
        "precision",
        tr("精度", "Precision"),
        C.PRECISIONS,
        tr(
            "auto：新显卡用 bf16，旧显卡 fp16，CPU 用 fp32。",
            "auto: bf16 on recent GPUs, fp16 on older ones, fp32 on CPU.",
        ),
    )
    number(c4, "seed", tr("随机种子", "Seed"), min_value=0)
    choice(
        c3,
        "compile",
        tr("编译加速 (torch.compile)", "Compile (torch.compile)"),
        C.COMPILE_MODES,
        tr(
            "auto：单块 NVIDIA GPU 上的 LoRA/QLoRA 会编译模型层，开头多花 1–2 分钟，之后更快；off：不编译。",
            "auto: LoRA/QLoRA on one NVIDIA GPU compiles the layers, 1-2 min extra at the start, faster after; "
            "off: no compile.",
        ),
    )

    st.subheader(tr("数据与输出", "Data and output"))
    st.caption(
        tr("数据集文件夹（相对于项目）：", "Dataset folder (relative to the project): ") + f"`{values['data_dir']}`"
    )
    system = st.text_area(
        tr("系统提示（对话时放在最前面；留空=不用）", "System prompt (first in every chat; empty = none)"),
        value=values.get("system_prompt") or "",
        key=W + "system_prompt",
        height=70,
    )
    new["system_prompt"] = system.strip() or None
    c1, c2 = st.columns([3, 1])
    new["output_dir"] = c1.text_input(
        tr("输出文件夹（相对于项目）", "Output folder (relative to the project)"),
        value=values["output_dir"],
        key=W + "output_dir",
    ).strip()
    if c2.button(tr("新的运行文件夹", "New run folder"), key="cfg_new_run"):
        values["output_dir"] = _relative_run_dir()
        st.session_state["cfg_values"] = values
        st.session_state.pop(W + "output_dir", None)
        st.rerun()

values.update(new)
st.session_state["cfg_values"] = values

cfg = None
try:
    cfg = C.TrainConfig.from_dict(values)
except C.ConfigError as exc:
    with form:
        st.error(error_text(exc))

# ---- estimate, preview, save ---------------------------------------------------------------------------------------
with side:
    st.subheader(tr("显存估算", "Memory estimate"))
    if cfg is not None:
        try:
            est = C.estimate_memory(cfg)
        except UserError as exc:
            est = None
            st.warning(error_text(exc))
        if est is not None:
            st.metric(tr("预计峰值显存", "Expected peak GPU memory"), f"{est['total_gib']:.1f} GiB")
            st.markdown(f"**{verdict_text(est)}**")
            parts = [
                (tr("权重", "Weights"), est["weights_gib"]),
                (tr("可训练参数状态", "Trainable state"), est["trainable_state_gib"]),
                (tr("激活值", "Activations"), est["activations_gib"]),
                (tr("logits", "Logits"), est["logits_gib"]),
                (tr("其他开销", "Overhead"), est["overhead_gib"]),
            ]
            fig = go.Figure([go.Bar(name=n, x=[v], y=[""], orientation="h") for n, v in parts])
            fig.update_layout(barmode="stack", height=170, margin=dict(l=0, r=0, t=10, b=0), xaxis_title="GiB")
            st.plotly_chart(fig, key="cfg_mem_chart")
            st.caption(
                tr(
                    f"{est['params_total'] / 1e9:.2f}B 参数，其中可训练 {est['params_trainable'] / 1e6:.2f}M；"
                    f"每步 {est['tokens_per_step']} 个 token（批大小 × 最大长度，最坏情况）。",
                    f"{est['params_total'] / 1e9:.2f}B parameters, {est['params_trainable'] / 1e6:.2f}M trainable; "
                    f"{est['tokens_per_step']} tokens per step (batch × max length, the worst case).",
                )
            )
        for note in C.advice(cfg, current_lang()):
            st.caption(f"💡 {note}")

    st.subheader(tr("config.yaml 预览", "config.yaml preview"))
    if cfg is not None:
        text = C.to_yaml(cfg)
        st.code(text, language="yaml")
        if not (ws.dataset_dir / cfg.train_file).exists():
            st.warning(tr("还没有数据集：请先在第 3 步导出。", "No dataset yet: export it in step 3 first."))
        out_dir = ws.root / cfg.output_dir
        if out_dir.exists() and any(out_dir.iterdir()):
            st.warning(
                tr(
                    "输出文件夹已有文件：训练会在其中续训或覆盖；要重新开始请点“新的运行文件夹”。",
                    "The output folder already has files: training resumes or overwrites there; click "
                    "“New run folder” for a fresh run.",
                )
            )
        c1, c2 = st.columns(2)
        if c1.button(tr("保存到项目", "Save to the project"), type="primary", key="cfg_save"):
            try:
                C.save_config(cfg, ws.config_file)
            except UserError as exc:
                st.error(error_text(exc))
            else:
                st.session_state.pop("cfg_load_error", None)
                st.success(tr("已保存 ", "Saved ") + f"`{os.path.relpath(ws.config_file, ws.root)}`")
        c2.download_button(
            tr("下载 YAML", "Download YAML"), text, file_name="config.yaml", mime="text/yaml", key="cfg_download"
        )
