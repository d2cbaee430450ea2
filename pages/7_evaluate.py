"""Step page: score base vs tuned (and each with retrieval) on the test split — a background job running
``umtcds evaluate`` — then show which system answered best, a grouped bar chart of the systems and every answer.

Results live in ``<run>/eval/`` (metrics.json, examples.jsonl/.csv), so they survive restarts and match the CLI.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from umtcds_core import runs, ui, ui_fields
from umtcds_core.errors import UserError
from umtcds_core.evaluate import ALL_METRICS, EVALUATE, METRICS, SYSTEM_LABELS
from umtcds_core.fileio import read_json, read_jsonl
from umtcds_core.i18n import tr
from umtcds_core.index import has_index, index_dir_of
from umtcds_core.jobs import latest_job, running_job
from umtcds_core.llm import BACKENDS

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
_RAG_FIELDS = ("rag", "rag_k")
_JUDGE_FIELDS = ("judge_model", "judge_base_url", "judge_api_key_env", "judge_prompt")


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
    ui_fields.seed(EVALUATE, shown, "ev_", _FIELDS + _RAG_FIELDS + _JUDGE_FIELDS, force=True)
    st.session_state["ev_judge"] = shown.get("judge")
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
    # the project's index (when built) is the starting value: the +retrieval systems are then scored too
    project_index = index_dir_of(ws)
    values.update(
        ui_fields.inputs(
            EVALUATE,
            {"rag": str(project_index) if has_index(project_index) else None},
            "ev_",
            names=_RAG_FIELDS,
            cols=2,
            disabled=locked,
        )
    )
    with st.expander(tr("LLM 评分（可选）", "LLM judge (optional)"), expanded=bool(st.session_state.get("ev_judge"))):
        judge = st.selectbox(
            tr(*EVALUATE["judge"].label),
            [None, *BACKENDS],
            format_func=lambda v: tr("不评分", "no judge") if v is None else v,
            help=tr(*EVALUATE["judge"].help),
            key="ev_judge",
            disabled=locked,
        )
        values["judge"] = judge
        if judge:
            values.update(ui_fields.inputs(EVALUATE, {}, "ev_", names=_JUDGE_FIELDS, cols=3, disabled=locked))
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


def _system(name: str) -> str:
    return tr(*SYSTEM_LABELS.get(name, (name, name)))


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
best = metrics.get("best")
if best and len(m) > 1:
    (st.info if too_few else st.success)(tr(best.get("zh", best["en"]), best["en"]))
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
shown_metrics = [k for k in ALL_METRICS if k in METRICS or any(m[v].get(k) is not None for v in m)]
if len(m) > 1:  # the systems side by side on every 0-100 metric (BLEU-4 is 0-1 and the judge 1-5: table only)
    chart = go.Figure()
    bars = [k for k in shown_metrics if k not in ("bleu-4", "judge")]
    for v in m:
        chart.add_trace(go.Bar(name=_system(v), x=bars, y=[m[v].get(k) for k in bars]))
    chart.update_layout(barmode="group", height=340, margin=dict(l=10, r=10, t=30, b=10), yaxis_title="%")
    st.plotly_chart(chart, key="ev_chart")
table = pd.DataFrame({v: {k: m[v].get(k) for k in shown_metrics} for v in m})
if "delta" in metrics:
    table["delta"] = pd.Series(metrics["delta"])
st.dataframe(table.astype(object).map(_cell), width="stretch")
st.caption(
    f"n = {metrics.get('n')}"
    + (f" (+{metrics['n_paraphrase']} {tr('个改写问题', 'paraphrases')})" if metrics.get("n_paraphrase") else "")
    + f" · {tr('基座', 'base')}: `{metrics.get('model')}` · "
    + tr(
        "BLEU-4 为 0–1，LLM 评分为 1–5，其余为 0–100（拒答准确率：无法回答的问题被拒答的比例；误拒率：可回答的问题被拒答的"
        "比例；引用准确率：回答引用了来源网页的比例；归属准确率：回答引用了来源网页、或未引用但内容与之匹配（≈）的比例；"
        "recall@k：来源网页在检索结果中的比例）。",
        "BLEU-4 is 0–1, the judge 1–5, the rest 0–100 (refusal-acc: unanswerable questions refused; false-refusal: "
        "answerable ones refused; citation-acc: answers citing their source page; attribution-acc: citing it, or citing "
        "none but matched to it by their words (≈); recall@k: source page retrieved).",
    )
)

examples = read_jsonl(out_file.parent / "examples.jsonl", errors=[])
if examples:
    st.subheader(tr("逐条结果", "Per example"))
    df = pd.DataFrame(examples)
    systems = list(m)
    f1, f2 = st.columns([1, 2])
    system = f1.selectbox(tr("系统", "System"), systems, index=len(systems) - 1, format_func=_system, key="ev_system")
    filters = {
        "all": tr("全部", "all"),
        "wrong": tr("答错的", "wrong answers"),
        "refusals": tr("拒答的", "refusals"),
        "citations": tr("引错来源的", "wrong citations"),
    }
    show = f2.radio(tr("显示", "Show"), list(filters), format_func=filters.get, horizontal=True, key="ev_filter")
    col = lambda name: df.get(f"{system}_{name}", pd.Series([None] * len(df)))  # noqa: E731
    refused = col("refused").fillna(False).astype(bool)
    should = col("should_refuse").fillna(False).astype(bool)
    if show == "wrong":  # a refusal where an answer was due, an answer where a refusal was, or missed key facts
        facts = pd.to_numeric(col("key-fact"), errors="coerce")
        mask = (refused != should) | (~should & ~refused & facts.notna() & (facts < 100))
    elif show == "refusals":
        mask = refused
    elif show == "citations":
        mask = col("cites_source").map(lambda v: v is not None and not pd.isna(v) and not bool(v))
    else:
        mask = pd.Series([True] * len(df))
    keep = [c for c in ("variant", "question", "reference", "base_answer", "tuned_answer", "base_rouge-l",
                        "tuned_rouge-l", "base_key-fact", "tuned_key-fact") if c in df.columns]  # fmt: skip
    keep += [
        c
        for c in (
            f"{system}_answer",
            f"{system}_key-fact",
            f"{system}_refused",
            f"{system}_cites_source",
            f"{system}_matches_source",
            f"{system}_judge",
            f"{system}_judge_reply",
        )  # fmt: skip
        if c in df.columns and c not in keep
    ]
    st.dataframe(df[mask.to_numpy()][keep].astype(object).map(_cell), width="stretch", hide_index=True)
    st.caption(tr(f"显示 {int(mask.sum())} / {len(df)} 条", f"{int(mask.sum())} of {len(df)} shown"))
    csv_file = out_file.parent / "examples.csv"
    if csv_file.exists():
        st.download_button(
            tr("下载 CSV", "Download CSV"), csv_file.read_bytes(), file_name="examples.csv", key="ev_download"
        )
ui.next_step("evaluate")  # a link to the next step once this one is done
