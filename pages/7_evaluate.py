"""Step page: score base vs tuned on the test split (a background job running ``umtcds evaluate``), then show results.

Results live in ``<run>/eval/`` (metrics.json, examples.jsonl/.csv), so they survive restarts and match the CLI.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from umtcds_core import runs, ui
from umtcds_core.evaluate import METRICS
from umtcds_core.fileio import read_json, read_jsonl
from umtcds_core.i18n import tr
from umtcds_core.jobs import running_job

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


with st.container(border=True):
    c1, c2 = st.columns(2)
    target = c1.selectbox(
        tr("检查点", "Checkpoint"), [str(p) for p in candidates], format_func=lambda v: _label(Path(v)), key="ev_ckpt"
    )
    test_file = c2.text_input(
        tr("测试集文件", "Test file"), value=str(ws.dataset_dir / "test.jsonl"), key="ev_test"
    ).strip()
    o1, o2, o3 = st.columns(3)
    max_new = o1.number_input(tr("最大生成长度", "Max new tokens"), 1, 2048, 128, key="ev_max_new")
    batch = o2.number_input(tr("批大小", "Batch size"), 1, 256, 8, key="ev_batch")
    limit = o3.number_input(tr("最多样本数（0 = 全部）", "Max examples (0 = all)"), 0, 100000, 0, key="ev_limit")
    run_dir = runs.run_dir_of(Path(target))
    out_file = runs.eval_metrics_path(run_dir)
    busy = running_job(ws, "evaluate") is not None
    if st.button(tr("开始评测", "Run evaluation"), type="primary", disabled=busy, key="ev_start"):
        if not Path(test_file).is_file():
            st.error(
                tr("测试集文件不存在：", "The test file does not exist: ")
                + test_file
                + tr("（请先在第 3 步生成数据集）", " (build the dataset in step 3 first).")
            )
        else:
            flag = "--model" if runs.is_full_model(target) else "--adapter"
            args = [flag, target, "--data", test_file, "--out", str(out_file)]
            args += ["--max-new-tokens", str(int(max_new)), "--batch-size", str(int(batch))]
            if limit:
                args += ["--limit", str(int(limit))]
            ui.start_step(ws, "evaluate", args)
            st.rerun()

ui.job_panel(ws, "evaluate")

# ---- results --------------------------------------------------------------------------------------------------------
metrics = read_json(out_file)
if not metrics:
    st.info(tr("该运行还没有评测结果。", "No evaluation results for this run yet."))
    st.stop()

st.subheader(tr("得分", "Scores") + f" — {run_dir.name}")
m = metrics["metrics"]
cols = st.columns(len(METRICS))
for col, name in zip(cols, METRICS, strict=True):
    tuned = m.get("tuned", m.get("base", {})).get(name)
    delta = (metrics.get("delta") or {}).get(name)
    col.metric(name, "—" if tuned is None else f"{tuned:.4g}", None if delta is None else f"{delta:+.4g}")
table = pd.DataFrame({v: {k: m[v].get(k) for k in METRICS} for v in m})
if "delta" in metrics:
    table["delta"] = pd.Series(metrics["delta"])
st.dataframe(table, width="stretch")
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
    st.dataframe(df[keep], width="stretch", hide_index=True)
    csv_file = out_file.parent / "examples.csv"
    if csv_file.exists():
        st.download_button(
            tr("下载 CSV", "Download CSV"), csv_file.read_bytes(), file_name="examples.csv", key="ev_download"
        )
ui.next_step("evaluate")  # a link to the next step once this one is done
