"""Step page: score base vs tuned on the test split (a background job running ``umtcds evaluate``), then show results.

Results live in ``<run>/eval/`` (metrics.json, examples.jsonl/.csv), so they survive restarts and match the CLI.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import streamlit as st

from umtcds_core import runs, ui, ui_fields
from umtcds_core.errors import UserError
from umtcds_core.evaluate import EVALUATE, METRICS
from umtcds_core.fileio import read_json, read_jsonl
from umtcds_core.i18n import tr
from umtcds_core.jobs import latest_job, running_job

# Fewer test questions than this and a base-vs-tuned difference is noise: shown neutrally, with a warning.
FEW_TO_COMPARE = 5

ws = ui.require_workspace()
ui.page_header("evaluate")
st.caption(
    tr(
        "在测试集上生成回答，计算 BLEU-4、ROUGE-1/2/L（jieba 分词）与关键事实命中率，对比微调前后。",
        "Answers the test split and scores BLEU-4, ROUGE-1/2/L (jieba tokens) and key-fact recall, base vs tuned.",
    )
)

candidates = runs.loadable(ws.runs())
if not candidates:
    st.info(tr("还没有训练好的模型：请先完成第 5 步训练。", "No trained model yet: finish step 5 (Train) first."))
    st.stop()


def _label(p: Path) -> str:
    try:
        return str(p.relative_to(ws.runs_dir))
    except ValueError:
        return str(p)


# ---- settings: labels, help, defaults and checks from the evaluate schema (umtcds_core.evaluate.EVALUATE) ----------
_FIELDS = ("data", "max_new_tokens", "batch_size", "limit")


def _job_settings(job) -> dict | None:
    """The settings a job was started with (its settings.yaml), or None (started with flags, or unreadable)."""
    if job is None or not job.settings_file.exists():
        return None
    try:
        return EVALUATE.load_yaml(job.settings_file)
    except UserError:
        return None


active = running_job(ws, "evaluate")
shown = _job_settings(active)
if shown:  # an evaluation runs: its own settings (from its settings.yaml) are shown, not this page's defaults
    ui_fields.seed(EVALUATE, shown, "ev_", _FIELDS, force=True)
    running_target = shown.get("adapter") or shown.get("model")
    if running_target in [str(p) for p in candidates]:
        st.session_state["ev_ckpt"] = running_target
locked = active is not None
with st.container(border=True):
    target = st.selectbox(
        tr("检查点", "Checkpoint"),
        [str(p) for p in candidates],
        format_func=lambda v: _label(Path(v)),
        key="ev_ckpt",
        disabled=locked,
    )
    # the project's own test split is this page's starting value (the CLI has none: --data is always given)
    values = ui_fields.inputs(
        EVALUATE, {"data": str(ws.dataset_dir / "test.jsonl")}, "ev_", names=_FIELDS, cols=3, disabled=locked
    )
    run_dir = runs.run_dir_of(Path(target))
    out_file = runs.eval_metrics_path(run_dir)
    model_key = "model" if runs.is_full_model(target) else "adapter"
    values.update({model_key: target, "out": str(out_file)})
    settings = EVALUATE.merge(values)
    problems = EVALUATE.problems(settings)
    for en, zh in problems:  # the CLI's own sentences, before anything starts
        st.error(tr(zh, en))
    for en, zh in EVALUATE.warnings(settings):
        st.warning(tr(zh, en))
    if st.button(tr("开始评测", "Run evaluation"), type="primary", disabled=locked or bool(problems), key="ev_start"):
        test_file = settings["data"] or ""
        if not Path(test_file).is_file():
            st.error(
                tr("测试集文件不存在：", "The test file does not exist: ")
                + test_file
                + tr("（请先在第 3 步生成数据集）", " (build the dataset in step 3 first).")
            )
        else:
            # The settings file is the whole run (`umtcds evaluate --config` alone repeats it); the model flag is
            # given too so the job's command line says at a glance which checkpoint it scores.
            ui.start_step(ws, "evaluate", [f"--{model_key}", target], settings=EVALUATE.to_yaml(settings))
            st.rerun()
latest = latest_job(ws, "evaluate")
if latest is not None and latest.settings_file.exists():
    st.caption(tr("等价的命令行：", "Same as running: ") + f"`umtcds evaluate --config {latest.settings_file}`")

ui.job_panel(ws, "evaluate")

# ---- results --------------------------------------------------------------------------------------------------------
metrics = read_json(out_file)
if not metrics:
    st.info(tr("该运行还没有评测结果。", "No evaluation results for this run yet."))
    st.stop()


def _cell(value):
    """A table cell as shown: numbers to 4 significant digits, a missing value as "—" (never "None" or "nan")."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.4g}" if isinstance(value, float) else str(value)  # one type per column for the table


st.subheader(tr("得分", "Scores") + f" — {run_dir.name}")
m = metrics["metrics"]
n = int(metrics.get("n") or 0)
too_few = n < FEW_TO_COMPARE  # a difference on 1–4 questions is noise: show it, but neither red nor green
if too_few and "delta" in metrics:
    st.warning(
        tr(
            f"只有 {n} 道测试题，太少，无法据此比较微调前后：下面的差值不代表模型变好或变差；"
            f"请在第 3 步把测试集扩大到至少 {FEW_TO_COMPARE} 道题后再评测。",
            f"Only {n} test question{'s' if n != 1 else ''}: too few to compare base and tuned — the differences "
            f"below say nothing about better or worse; give the test split at least {FEW_TO_COMPARE} questions "
            "in step 3 and evaluate again.",
        )
    )
cols = st.columns(len(METRICS))
for col, name in zip(cols, METRICS, strict=True):
    tuned = m.get("tuned", m.get("base", {})).get(name)
    delta = (metrics.get("delta") or {}).get(name)
    col.metric(
        name,
        _cell(tuned),
        None if delta is None else f"{delta:+.4g}",
        delta_color="off" if too_few else "normal",
    )
table = pd.DataFrame({v: {k: m[v].get(k) for k in METRICS} for v in m})
if "delta" in metrics:
    table["delta"] = pd.Series(metrics["delta"])
st.dataframe(table.astype(object).map(_cell), width="stretch")
st.caption(
    f"n = {metrics.get('n')} · {tr('基座', 'base')}: `{metrics.get('model')}` · "
    + tr("BLEU-4 为 0–1，ROUGE 与关键事实为 0–100。", "BLEU-4 is 0–1; ROUGE and key-fact are 0–100.")
)

examples = read_jsonl(out_file.parent / "examples.jsonl", errors=[])
if examples:
    st.subheader(tr("逐条结果", "Per example"))
    df = pd.DataFrame(examples)
    keep = [c for c in ("question", "reference", "base_answer", "tuned_answer", "base_rouge-l", "tuned_rouge-l",
                        "base_key-fact", "tuned_key-fact") if c in df.columns]  # fmt: skip
    st.dataframe(df[keep].astype(object).map(_cell), width="stretch", hide_index=True)
    csv_file = out_file.parent / "examples.csv"
    if csv_file.exists():
        st.download_button(
            tr("下载 CSV", "Download CSV"), csv_file.read_bytes(), file_name="examples.csv", key="ev_download"
        )
ui.next_step("evaluate")  # a link to the next step once this one is done
