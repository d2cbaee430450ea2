"""Step page: Train — start, stop and resume fine-tuning as a background job, and watch it live.

The job is ``umtcds train <config.yaml> --resume … --output-dir runs/<id>`` started through ``ui.start_step``, so it
survives a browser reload or a dashboard restart; this page only reads files: the job folder (progress, log) and the
run folder's ``metrics.jsonl``, redrawn by a fragment every few seconds while the job runs.
"""

from __future__ import annotations

import math
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from umtcds_core import ui
from umtcds_core.config import advice, estimate_memory, load_config
from umtcds_core.errors import UserError
from umtcds_core.fileio import count_records
from umtcds_core.i18n import current_lang, error_text, tr
from umtcds_core.jobs import latest_job
from umtcds_core.runs import has_training, metrics_path, output_dir_of, read_metrics, run_summary
from umtcds_core.workspace import RUNNING

ws = ui.require_workspace()
ui.page_header("train")
st.caption(
    tr(
        "训练在后台运行：关闭浏览器不会停止它，重新打开本页即可继续查看。",
        "Training runs in the background: closing the browser does not stop it; reopen this page to watch again.",
    )
)

# ---- config summary -----------------------------------------------------------------------------------------------
if not ws.config_file.exists():
    st.warning(
        tr("还没有训练配置，请先在“训练配置”页保存一个。", "No training config yet; save one on the Config page.")
    )
    st.stop()
try:
    cfg = load_config(ws.config_file)
except UserError as exc:
    st.error(error_text(exc))
    st.stop()

steps_text = str(cfg.max_steps) if cfg.max_steps and cfg.max_steps > 0 else f"{cfg.num_epochs:g} " + tr("轮", "epochs")
summary = {
    tr("模型", "Model"): cfg.model,
    tr("方法", "Method"): cfg.method,
    tr("数据", "Data"): f"{cfg.data_dir}/{cfg.train_file}",
    tr("长度（输入/输出）", "Length (in/out)"): f"{cfg.max_input_length} / {cfg.max_output_length}",
    tr("步数", "Steps"): steps_text,
    tr("批大小 × 累积", "Batch × accumulation"): f"{cfg.per_device_batch_size} × {cfg.gradient_accumulation_steps}",
    tr("学习率", "Learning rate"): f"{cfg.learning_rate:g} ({cfg.lr_scheduler})",
    tr("打包 / 检查点重算 / 精度", "Packing / grad. checkpointing / precision"): (
        f"{'on' if cfg.packing else 'off'} / {'on' if cfg.gradient_checkpointing else 'off'} / {cfg.precision}"
    ),
}
with st.expander(tr("配置摘要", "Config summary") + f" — `{ws.config_file.name}`", expanded=False):
    st.table({tr("项", "Setting"): list(summary), tr("值", "Value"): [str(v) for v in summary.values()]})


# Legal but doubtful values (the Config page showed them before Save) are repeated where the run is started.
try:
    _est = estimate_memory(cfg)
except UserError:
    _est = None
for _note in advice(cfg, current_lang(), _est, count_records(ws.root / cfg.data_dir / cfg.train_file)):
    st.warning(_note)


# ---- which run ----------------------------------------------------------------------------------------------------
def job_run_dir(job) -> Path | None:
    out = output_dir_of(job.meta.get("argv", [])) if job is not None else None
    return Path(out) if out else None


job = latest_job(ws, "train")
running = job is not None and job.status() == RUNNING
runs = [r for r in ws.runs() if has_training(r)]
current = job_run_dir(job) or (runs[0] if runs else None)


def refresh_seconds(run: Path | None) -> float:
    """How often the live parts redraw: about twice per logged step, between 3 and 15 s.

    Why not a fixed 2–3 s: each redraw rebuilds and sends the chart, and on a CPU, where a step of the embedded model
    takes ~25 s, redrawing every few seconds showed nothing new while taking CPU from the training it displays
    (bench/dashboard_cpu_bench.py)."""
    if run is None:
        return 3.0
    times = [r["time"] for r in read_metrics(run)[-6:] if r.get("kind") == "train" and "time" in r]
    if len(times) < 2:
        return 3.0
    per_log = (times[-1] - times[0]) / (len(times) - 1)
    return float(min(15.0, max(3.0, per_log / 2)))


REFRESH_S = refresh_seconds(current) if running else None


# ---- start / resume / stop ----------------------------------------------------------------------------------------
gpus = ui.gpu_status().get("count", 0)
c1, c2, c3 = st.columns([1, 2, 1])
n_gpus = 1
if gpus > 1:
    n_gpus = c3.number_input(tr("GPU 数量", "GPUs"), min_value=1, max_value=gpus, value=1, key="train_gpus")


def _start(resume: str, run_dir: Path) -> None:
    args = [str(ws.config_file), "--resume", resume, "--output-dir", str(run_dir)]
    if n_gpus > 1:
        args += ["--gpus", str(int(n_gpus))]
    ui.start_step(ws, "train", args)
    st.rerun()


resumable = [r for r in runs if run_summary(r)["state"] == "resumable"]
if running:
    c1.info(tr("训练进行中…", "Training…"))
else:
    if c1.button(tr("开始新的训练", "Start a new run"), type="primary", key="train_start"):
        _start("no", ws.new_run_dir())
    if resumable:
        pick = c2.selectbox(
            tr("从检查点继续", "Resume from its newest checkpoint"),
            [r.name for r in resumable],
            key="train_resume_pick",
        )
        if c2.button(tr("继续训练", "Resume"), key="train_resume"):
            _start("auto", ws.runs_dir / pick)

ui.job_panel(
    ws, "train", refresh_s=REFRESH_S or 2.0
)  # progress bar with ETA, loss/tokens-per-s counters, Stop button, log tail


# ---- chart ----------------------------------------------------------------------------------------------------------
def ema(values: list[float], alpha: float) -> list[float]:
    """Exponential moving average with bias correction (as TensorBoard's smoothing)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = alpha * avg + (1 - alpha) * v
        out.append(avg / (1 - alpha**i))
    return out


STATE_LABELS = {
    "finished": tr("已完成", "finished"),
    "resumable": tr("可继续", "resumable"),
    "no-checkpoint": tr("无检查点", "no checkpoint"),
    "empty": tr("空", "empty"),
}
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]


def loss_figure(main: Path, others: list[Path], smoothing: float, log_y: bool) -> go.Figure:
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for i, run in enumerate([main, *others]):
        recs = read_metrics(run)
        train = [r for r in recs if r.get("kind") == "train" and "loss" in r]
        evals = [r for r in recs if r.get("kind") == "eval" and "eval_loss" in r]
        color = COLORS[i % len(COLORS)]
        name = run.name
        steps = [r["step"] for r in train]
        losses = [r["loss"] for r in train]
        if i == 0 and train:
            fig.add_trace(
                go.Scatter(
                    x=steps, y=losses, name=tr("训练损失", "train loss"), mode="lines",
                    line={"color": color, "width": 1}, opacity=0.35,
                )
            )  # fmt: skip
        if train:
            fig.add_trace(
                go.Scatter(
                    x=steps, y=ema(losses, smoothing), mode="lines", line={"color": color, "width": 2.5},
                    name=(tr("平滑训练损失", "train loss (smoothed)") if i == 0 else f"{name} · " + tr("训练", "train")),
                )
            )  # fmt: skip
        if evals:
            fig.add_trace(
                go.Scatter(
                    x=[r["step"] for r in evals], y=[r["eval_loss"] for r in evals], mode="lines+markers",
                    line={"color": color, "dash": "dot"}, marker={"symbol": "diamond", "size": 8},
                    name=(tr("验证损失", "eval loss") if i == 0 else f"{name} · " + tr("验证", "eval")),
                )
            )  # fmt: skip
        if i == 0 and train and any("learning_rate" in r for r in train):
            fig.add_trace(
                go.Scatter(
                    x=steps, y=[r.get("learning_rate") for r in train], name=tr("学习率", "learning rate"),
                    mode="lines", line={"color": "#7f7f7f", "dash": "dash", "width": 1},
                ),
                secondary_y=True,
            )  # fmt: skip
    fig.update_xaxes(title_text=tr("步数", "step"))
    fig.update_yaxes(title_text=tr("损失", "loss"), type="log" if log_y else "linear", secondary_y=False)
    fig.update_yaxes(title_text=tr("学习率", "learning rate"), secondary_y=True, showgrid=False, exponentformat="e")
    fig.update_layout(
        height=430, margin={"l": 10, "r": 10, "t": 30, "b": 10}, legend={"orientation": "h", "y": -0.2},
        title=f"{main.name}",
    )  # fmt: skip
    return fig


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


st.subheader(tr("训练曲线", "Training curves"))
if current is None:
    st.info(tr("还没有训练记录。点击“开始新的训练”。", "No training runs yet. Press “Start a new run”."))
    st.stop()

names = [r.name for r in runs]
o1, o2, o3 = st.columns([2, 1, 1])
others = o1.multiselect(
    tr("叠加历史训练", "Overlay past runs"), [n for n in names if n != current.name], key="train_overlay"
)
smoothing = o2.slider(tr("平滑", "Smoothing"), 0.0, 0.99, 0.8, 0.01, key="train_smoothing")
log_y = o3.toggle(tr("对数坐标", "Log scale"), key="train_log")


@st.fragment(run_every=REFRESH_S)
def live_chart() -> None:
    ui.redraw_if_page_unfinished()
    if not metrics_path(current).exists():
        st.info(
            tr(
                "正在加载模型和数据，第一个训练步完成后显示曲线…",
                "Loading the model and data; the curves appear after the first step…",
            )
        )
        return
    info = run_summary(current)
    recs = read_metrics(current)
    train = [r for r in recs if r.get("kind") == "train"]
    starts = [r for r in recs if r.get("kind") in {"start", "resume"}]
    max_steps = info.get("max_steps") or 0
    step = info["step"]
    if max_steps and job_run_dir(job) != current:  # the job panel above already shows the live job's progress
        # ETA from the rate since the last (re)start, so a resume does not distort it
        since = [r for r in train if starts and r["time"] >= starts[-1]["time"]]
        eta = None
        if len(since) >= 2 and since[-1]["step"] > since[0]["step"]:
            rate = (since[-1]["time"] - since[0]["time"]) / (since[-1]["step"] - since[0]["step"])
            eta = rate * (max_steps - step)
        st.progress(
            min(1.0, step / max_steps),
            text=f"{current.name}: {step}/{max_steps} "
            + tr("步", "steps")
            + " · "
            + tr("预计剩余", "ETA")
            + f" {_fmt_eta(eta)}",
        )
    m = st.columns(5)
    m[0].metric(tr("训练损失", "Train loss"), f"{info['loss']:.4f}" if info["loss"] is not None else "—")
    m[1].metric(tr("验证损失", "Eval loss"), f"{info['eval_loss']:.4f}" if info["eval_loss"] is not None else "—")
    tps = next((r["tokens_per_s"] for r in reversed(train) if "tokens_per_s" in r), None)
    m[2].metric(tr("词元/秒", "Tokens/s"), f"{tps:,.0f}" if tps is not None else "—")
    mem = next((r for r in reversed(recs) if "gpu_peak_gib" in r), None)
    m[3].metric(
        tr("GPU 显存（峰值）", "GPU memory (peak)"),
        f"{mem['gpu_mem_gib']:.1f} ({mem['gpu_peak_gib']:.1f}) GiB" if mem else tr("无 GPU", "no GPU"),
    )
    m[4].metric(
        tr("状态", "State"), tr("运行中", "running") if running else STATE_LABELS.get(info["state"], info["state"])
    )
    fig = loss_figure(current, [ws.runs_dir / n for n in others], smoothing, log_y)
    st.plotly_chart(
        fig,
        key="train_chart",
        config={"toImageButtonOptions": {"format": "png", "filename": f"loss-{current.name}", "scale": 2}},
    )
    d1, d2 = st.columns(2)
    d1.download_button(  # data as callables: built only when clicked, not on every redraw (~50 ms of CPU each)
        tr("下载图表（HTML，可交互）", "Download chart (HTML, interactive)"),
        lambda: fig.to_html(include_plotlyjs="cdn", full_html=True),
        file_name=f"loss-{current.name}.html",
        mime="text/html",
        key="train_dl_html",
    )
    d2.download_button(
        tr("下载指标（metrics.jsonl）", "Download metrics (metrics.jsonl)"),
        lambda: metrics_path(current).read_bytes(),
        file_name=f"metrics-{current.name}.jsonl",
        mime="application/json",
        key="train_dl_metrics",
    )
    st.caption(
        tr(
            "PNG：点击图表右上角的相机图标。",
            "PNG: use the camera icon at the top right of the chart.",
        )
    )


live_chart()

# ---- run history ----------------------------------------------------------------------------------------------------
st.subheader(tr("历史训练", "Run history"))
rows = [run_summary(r) for r in runs]
if rows:
    st.dataframe(
        [
            {
                tr("运行", "Run"): r["name"],
                tr("方法", "Method"): r["method"] or "—",
                tr("状态", "State"): STATE_LABELS.get(r["state"], r["state"]),
                tr("步数", "Step"): f"{r['step']}/{r['max_steps'] or '?'}",
                tr("训练损失", "Train loss"): None if r["loss"] is None else round(r["loss"], 4),
                tr("验证损失", "Eval loss"): None if r["eval_loss"] is None else round(r["eval_loss"], 4),
                tr("检查点", "Checkpoints"): ", ".join(r["checkpoints"]),
            }
            for r in rows
        ],
        hide_index=True,
    )
ui.next_step("train")  # a link to the next step once this one is done
