"""Step page: Config — build the training config with explanations, a live memory estimate and a YAML preview.

The values live in the plain session key ``cfg_values`` (widget keys reset across pages), are validated by
``TrainConfig`` on every change, and are saved to the workspace's ``config.yaml`` with ``save_config``.
"""

from __future__ import annotations

import os

import plotly.graph_objects as go
import streamlit as st

from umtcds_core import config as C
from umtcds_core import methods, ui, ui_fields
from umtcds_core.errors import UserError
from umtcds_core.fileio import count_records
from umtcds_core.i18n import current_lang, error_text, tr
from umtcds_core.models import DEFAULT_MODEL

ws = ui.require_workspace()
ui.page_header("config")
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


def _load(values: dict) -> None:
    """Make ``values`` what the page holds AND shows: the plain key and every widget key (see ui_fields)."""
    st.session_state["cfg_values"] = dict(values)
    st.session_state["cfg_ws"] = str(ws.root)
    ui_fields.seed(C.TRAIN, values, W, force=True)


def _preset_values(method: str, model: str, current: dict | None = None) -> dict:
    values = C.preset_for(method, model).to_dict()
    values["data_dir"] = "dataset"
    values["output_dir"] = (current or {}).get("output_dir") or _relative_run_dir()
    values["system_prompt"] = (current or {}).get("system_prompt", _dataset_system_prompt())
    return values


def _apply_preset() -> None:
    """Callback (method/model changed, or "reset" clicked): that preset's values, keeping paths and the prompt."""
    method = st.session_state.get(W + "method", "lora")
    model = (st.session_state.get(W + "model") or DEFAULT_MODEL).strip()
    try:
        values = _preset_values(method, model, st.session_state.get("cfg_values"))
    except UserError as exc:
        st.session_state["cfg_load_error"] = error_text(exc)
        return
    st.session_state.pop("cfg_load_error", None)
    st.session_state.pop("cfg_saved", None)
    _load(values)


def _reload() -> None:
    try:
        _load(C.load_config(ws.config_file).to_dict())
        st.session_state.pop("cfg_load_error", None)
    except UserError as exc:
        st.session_state["cfg_load_error"] = error_text(exc)


def _use_upload() -> None:
    uploaded = st.session_state.get("cfg_upload")
    if uploaded is None:
        return
    try:
        _load(C.parse_yaml(uploaded.getvalue().decode("utf-8"), where=uploaded.name).to_dict())
        st.session_state.pop("cfg_load_error", None)
    except (UserError, UnicodeDecodeError) as exc:
        st.session_state["cfg_load_error"] = error_text(exc)


def _new_run_folder() -> None:
    st.session_state[W + "output_dir"] = _relative_run_dir()


def _initial_values() -> dict:
    if ws.config_file.exists():
        try:
            return C.load_config(ws.config_file).to_dict()
        except UserError as exc:
            st.session_state["cfg_load_error"] = error_text(exc)
    return _preset_values("lora", DEFAULT_MODEL)


if st.session_state.get("cfg_ws") != str(ws.root) or "cfg_values" not in st.session_state:
    _load(_initial_values())
values: dict = dict(st.session_state["cfg_values"])

# ---- load ----------------------------------------------------------------------------------------------------------
with st.expander(tr("载入已有配置", "Load an existing config")):
    c1, c2 = st.columns(2)
    c1.button(
        tr("重新载入本项目的 config.yaml", "Reload this project's config.yaml"), key="cfg_reload", on_click=_reload
    )
    uploaded = c2.file_uploader(tr("或上传一个 YAML", "or upload a YAML"), type=["yaml", "yml"], key="cfg_upload")
    if uploaded is not None:
        c2.button(tr("使用上传的配置", "Use the uploaded config"), key="cfg_use_upload", on_click=_use_upload)
if st.session_state.get("cfg_load_error"):
    st.error(st.session_state["cfg_load_error"])

form, side = st.columns([3, 2], gap="large")

# ---- the form: every widget generated from config.TRAIN ------------------------------------------------------------
with form:
    new = ui_fields.inputs(
        C.TRAIN, values, W, names=("model", "method"), on_change={"model": _apply_preset, "method": _apply_preset}
    )
    method = new["method"]
    st.markdown(tr(*METHOD_HELP[method]))
    preset = C.preset_name(method, new["model"]) if new["model"] else f"small-{method}"
    st.caption(tr("切换方法或模型会载入它的预设值。", "Changing the method or the model loads its preset values."))
    st.button(
        tr(f"恢复预设值（{preset}）", f"Reset to the preset ({preset})"), key="cfg_preset", on_click=_apply_preset
    )
    if not methods.get(method).adapter:  # every weight trains: no method-specific fields
        st.info(
            tr(
                "全参数微调没有额外参数；请注意学习率应小（约 5e-5）。",
                "Full fine-tuning has no extra settings; keep the learning rate small (about 5e-5).",
            )
        )
    rest = [n for n in C.TRAIN.names() if n not in ("model", "method", "system_prompt", "output_dir")]
    new.update(ui_fields.inputs(C.TRAIN, {**values, **new}, W, names=rest))
    new.update(ui_fields.inputs(C.TRAIN, values, W, names=("output_dir", "system_prompt")))
    st.caption(
        tr("数据集文件夹（相对于项目）：", "Dataset folder (relative to the project): ") + f"`{values['data_dir']}`"
    )
    st.button(tr("新的运行文件夹", "New run folder"), key="cfg_new_run", on_click=_new_run_folder)

values.update(new)
st.session_state["cfg_values"] = values

cfg = None
problems: C.ConfigError | None = None
try:
    cfg = C.TrainConfig.from_dict(values)
except C.ConfigError as exc:
    problems = exc
    with form:
        st.error(error_text(exc))

# ---- estimate, preview, save ---------------------------------------------------------------------------------------
with side:
    st.subheader(tr("显存估算", "Memory estimate"))
    est = None
    if cfg is not None:
        try:
            est = C.estimate_memory(cfg)
        except UserError as exc:
            st.warning(error_text(exc))
        # what the memory budget adds on one GPU: the last layers keep their activations (speed.keep_layers)
        use = C.budget_of_estimate(cfg, est) if est is not None else None
        if use is not None and use["kept"]:
            est = C.estimate_memory(cfg, gpus=est["gpus"], kept=use["kept"], compiled=methods.get(cfg.method).compile)
        if est is not None:
            st.metric(tr("预计峰值显存", "Expected peak GPU memory"), f"{est['total_gib']:.1f} GiB")
            st.markdown(f"**{verdict_text(est)}**")
            fit = C.methods_fit(cfg, gpus=est["gpus"])  # the GPUs the estimate above already detected
            card = fit["card"]
            where = (
                tr(
                    f"你的 {card['name']}（{card['total_gib']:.0f} GiB）",
                    f"your {card['name']} ({card['total_gib']:.0f} GiB)",
                )
                if card["detected"]
                else tr("24 GB 显卡（原项目所用）", "a 24 GB card (the original project's)")
            )
            st.caption(
                tr(f"能否放进{where}：", f"Which methods fit {where}: ")
                + " · ".join(
                    f"{tr(*r['label'])} {r['total_gib']:.1f} GiB {'✅' if r['fits'] else '❌'}" for r in fit["rows"]
                ),
                help=tr(
                    "按当前模型、长度和批大小估算每种方法；在 H200 上限制为 22 GiB 实测，LoRA、QLoRA、P-tuning v2 的估算与实测峰值相差在 10% 以内。",
                    "Each method estimated with this model, lengths and batch size; measured under a 22 GiB cap on an "
                    "H200, the estimates of LoRA, QLoRA and P-tuning v2 were within 10 % of the real peak.",
                ),
            )
            if use is not None and use["kept"]:
                st.caption(
                    tr(
                        f"显存预算 {use['budget_gib']:.0f} GiB：单卡训练时最后 {use['kept']}/{use['layers']} 层不做梯度检查点"
                        f"（省去重算，更快），上面的估算已包含。开训时按数据集最长的一步重新规划。",
                        f"Memory budget {use['budget_gib']:.0f} GiB: on one GPU the last {use['kept']} of "
                        f"{use['layers']} layers skip gradient checkpointing (no recompute, faster); the estimate above "
                        "includes them. Training plans this again from the dataset's longest step.",
                    )
                )
            elif use is not None and use["budget_gib"]:
                st.caption(
                    tr(
                        f"显存预算 {use['budget_gib']:.0f} GiB：每层都做梯度检查点；调高预算（如 40）可在大显存卡上换取速度。",
                        f"Memory budget {use['budget_gib']:.0f} GiB: every layer is checkpointed; a larger budget "
                        "(e.g. 40) trades memory for speed on a big card.",
                    )
                )
            if not est["gpus"]:
                st.caption(
                    tr(
                        "这台机器没有 GPU：训练会在 CPU 上运行（很慢，只适合内置小模型）。上面的估算用于挑选要租的显卡。",
                        "This machine has no GPU: training runs on the CPU (slow; fine for the embedded model only). "
                        "The estimate above is for choosing a GPU to rent.",
                    )
                )
            parts = [
                (tr("权重", "Weights"), est["weights_gib"]),
                (tr("可训练参数状态", "Trainable state"), est["trainable_state_gib"]),
                (tr("激活值", "Activations"), est["activations_gib"]),
                # with checkpointing the logits and the recomputed layer are not alive together (memory.py)
                (
                    tr("输出层 logits（超出重算层的部分）", "Logits (beyond the recomputed layer)"),
                    round(est["logits_gib"] - est.get("overlap_gib", 0.0), 2),
                ),
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

    st.subheader(tr("config.yaml 预览", "config.yaml preview"))
    if cfg is None:
        st.error(
            tr(
                "上面的设置有问题，无法保存；改正标出的项后预览会出现。",
                "The settings above have problems and cannot be saved; fix the listed fields and the preview appears.",
            )
        )
        st.button(tr("保存到项目", "Save to the project"), type="primary", key="cfg_save", disabled=True)
    else:
        text = C.to_yaml(cfg)  # exactly what Save writes (save_config writes to_yaml(cfg))
        warnings = C.advice(cfg, current_lang(), est, count_records(ws.root / cfg.data_dir / cfg.train_file))
        for note in warnings:
            st.warning(note)
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
                st.session_state["cfg_saved"] = text
        if st.session_state.get("cfg_saved") == text:
            st.success(tr("已保存 ", "Saved ") + f"`{os.path.relpath(ws.config_file, ws.root)}`")
        elif st.session_state.get("cfg_saved"):
            st.info(tr("有未保存的修改。", "There are unsaved changes."))
        c2.download_button(
            tr("下载 YAML", "Download YAML"), text, file_name="config.yaml", mime="text/yaml", key="cfg_download"
        )
ui.next_step("config")  # a link to the next step once this one is done
