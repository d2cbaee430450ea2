"""Step page: Dataset — review and edit the Q&A pairs, look at their statistics, split and export.

Edits are written to ``dataset/qa_edited.jsonl`` as soon as they are made (step 2's ``qa.jsonl`` is never changed), so a
rerun, a reload or another page never loses them. The split settings' widgets, defaults and checks come from the
dataset schema (``umtcds_core.dataset.DATASET``, the same the CLI's flags and ``--config`` use), and the export runs
``umtcds_core.dataset.build_from_settings`` on the validated settings — what ``umtcds dataset`` runs.
"""

from __future__ import annotations

import json

import pandas as pd
import plotly.express as px
import streamlit as st

from umtcds_core import dataset as ds
from umtcds_core import feedback as student_feedback
from umtcds_core import ui, ui_fields
from umtcds_core.errors import UserError
from umtcds_core.fileio import write_jsonl_atomic
from umtcds_core.i18n import current_lang, error_text, tr
from umtcds_core.index import index_dir_of
from umtcds_core.qa import sent_text

ws = ui.require_workspace()
ui.page_header("dataset")
st.caption(
    tr(
        "检查并修改问答对，然后按比例划分为训练/验证/测试集。相似问题会被分到同一个集合，避免测试集“泄题”。",
        "Review and fix the pairs, then split them into train/dev/test. Similar questions always land in the same "
        "split, so the test set never contains a paraphrase of a training question.",
    )
)

EDITED = ws.dataset_dir / ds.EDITED_NAME  # the workspace layout's place for the reviewed copy
VIEW = "ds_view"  # plain session key: {"ws", "ver", "search", "base"}


def load_records() -> tuple[list[dict], list[ds.Problem], str]:
    """The pairs shown: the edited copy when there is one, else step 2's qa.jsonl."""
    path = EDITED if EDITED.exists() else ws.qa_file
    if not path.exists():
        return [], [], ""
    res = ds.load_pairs([path])
    return [p.to_qa_record() for p in res.pairs], res.problems, str(path)


def save_records(records: list[dict]) -> None:
    write_jsonl_atomic(EDITED, records)


def rebase() -> None:
    """Next run shows the table fresh from disk (after an action outside the table)."""
    view = st.session_state.get(VIEW) or {}
    view["ver"] = view.get("ver", 0) + 1
    view["base"] = None
    st.session_state[VIEW] = view


# ---- tabs: the pairs (review, stats, split) · what students said on the published assistant --------------------------
# A segmented control, not st.tabs: only the chosen view runs, so the students' view stays quick on a big table.
TABS = {"review": ("问答对", "Pairs"), "students": ("来自学生", "From students")}
tab = st.segmented_control(
    tr("视图", "View"),
    list(TABS),
    format_func=lambda t: tr(*TABS[t]),
    default="review",
    required=True,
    key="ds_tab",
    label_visibility="collapsed",
)


def from_students() -> None:
    """👎 answers, refused questions and corrections from `umtcds serve` (umtcds_core.feedback) → new pairs."""
    st.caption(
        tr(
            "学生在发布的助手页面上点了 👎、助手拒答的问题，以及学生填写的正确答案。勾选几行、检查答案，一键加入 "
            "qa.jsonl；之后重新划分数据集并训练，助手就学会了。拒答的问题只有在“对话”页发布时打开“记录学生的问题”才会出现。",
            "Answers students rated 👎, questions the assistant refused, and the right answers students typed. Tick "
            "rows, check the answers and add them to qa.jsonl in one click; split and train again and the assistant "
            "learns them. Refused questions appear only when “Log questions” is on when publishing (Chat page).",
        )
    )
    if added := st.session_state.pop("ds_st_added", None):
        st.success(tr(f"已加入 {added} 条问答对到 qa.jsonl。", f"Added {added} pairs to qa.jsonl."))
    errors: list = []
    items = student_feedback.workspace_items(ws, errors)
    for bad in errors[:3]:
        st.warning(tr("无法读取的行：", "Unreadable line: ") + str(bad))
    show_done = st.toggle(tr("也显示已加入的", "Also show the ones already added"), key="ds_st_done")
    shown = [it for it in items if show_done or not it.done]
    if not shown:
        st.info(
            tr(
                "还没有需要处理的学生反馈。在“对话”页发布助手后，学生的 👎、更正和被拒答的问题会出现在这里。",
                "No student feedback to handle yet. Publish the assistant on the Chat page; students' 👎, "
                "corrections and refused questions appear here.",
            )
        )
        return
    why = {"down": "👎", "refused": tr("拒答", "refused"), "correction": tr("有更正", "corrected")}
    table = pd.DataFrame(
        [
            {
                "add": False,
                "question": it.question,
                "said": it.answer,
                "why": " · ".join(why[r] for r in it.reasons()) + (" ✓" if it.done else ""),
                "answer": it.correction or "",
                "sources": [s.get("url") or s.get("title") or "" for s in it.sources],
            }
            for it in shown
        ]
    )
    version = st.session_state.get("ds_st_ver", 0)
    edited = st.data_editor(
        table,
        key=f"ds_st_editor_{version}",
        hide_index=True,
        width="stretch",
        disabled=["question", "said", "why", "sources"],
        column_config={
            "add": st.column_config.CheckboxColumn(tr("加入", "Add"), width="small"),
            "question": st.column_config.TextColumn(tr("学生的问题", "Student's question"), width="medium"),
            "said": st.column_config.TextColumn(tr("助手的回答", "The assistant said"), width="medium"),
            "why": st.column_config.TextColumn(tr("原因", "Why"), width="small"),
            "answer": st.column_config.TextColumn(
                tr("正确答案（成为训练答案）", "Right answer (becomes the pair's answer)"),
                width="large",
                help=tr(
                    "学生的更正会预先填好；拒答且没有更正的问题请自己填写答案。",
                    "A student's correction is filled in; for a refused question without one, type the answer.",
                ),
            ),
            "sources": st.column_config.ListColumn(tr("检索到的来源", "Sources it retrieved"), width="medium"),
        },
    )
    picked = [i for i, on in enumerate(edited["add"]) if on]
    label = tr(f"把勾选的 {len(picked)} 条加入问答对", f"Add the {len(picked)} ticked as Q&A pairs")
    if st.button(label, type="primary", disabled=not picked, key="ds_st_add"):
        chosen = [shown[i] for i in picked]
        answers = {shown[i].id: "" if pd.isna(edited["answer"][i]) else str(edited["answer"][i]) for i in picked}
        try:
            added = student_feedback.add_pairs(ws, student_feedback.to_pairs(chosen, answers))
        except UserError as exc:
            st.error(error_text(exc))
        else:
            st.session_state["ds_st_ver"] = version + 1  # a fresh table without the added rows
            st.session_state["ds_st_added"] = added
            rebase()
            st.rerun()


if tab == "students":
    from_students()
    st.stop()

records, problems, shown_path = load_records()

# ---- import or nothing yet -----------------------------------------------------------------------------------------
with st.expander(tr("导入自己的问答对（JSONL / JSON / CSV）", "Import your own pairs (JSONL / JSON / CSV)")):
    st.caption(
        tr(
            "支持字段：`question/answer`、`instruction/output`、`prompt/response` 或 `messages`。导入的问答对会追加到当前表格。",
            "Fields: question/answer, instruction/output, prompt/response or messages. Imported pairs are added to the table.",
        )
    )
    upload = st.file_uploader(tr("选择文件", "Choose a file"), type=["jsonl", "json", "csv"], key="ds_upload")
    if upload is not None and st.button(tr("导入", "Import"), key="ds_import"):
        target = ws.qa_dir / "imported" / upload.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(upload.getvalue())
        res = ds.load_pairs([target])
        for p in res.problems:
            st.warning(str(p))
        if res.pairs:
            save_records(records + [p.to_qa_record() for p in res.pairs])
            rebase()
            st.success(tr(f"已导入 {len(res.pairs)} 条问答对。", f"Imported {len(res.pairs)} pairs."))
            st.rerun()
        else:
            st.error(tr("文件中没有可用的问答对。", "The file holds no usable pairs."))

if not records and not EDITED.exists():
    st.info(
        tr(
            "还没有问答对：请先完成第 2 步（生成问答），或在上方导入文件。",
            "No pairs yet: finish step 2 (Generate Q&A) first, or import a file above.",
        )
    )
    st.stop()

if EDITED.exists() and ws.qa_file.exists() and ws.qa_file.stat().st_mtime > EDITED.stat().st_mtime:
    st.warning(
        tr(
            "第 2 步在你修改之后又生成了新的 qa.jsonl。表格仍显示你修改过的版本。",
            "Step 2 wrote a newer qa.jsonl after your edits. The table still shows your edited copy.",
        )
    )
    c1, c2 = st.columns(2)
    if c1.button(tr("放弃修改，载入新的 qa.jsonl", "Discard my edits and load the new qa.jsonl"), key="ds_discard"):
        ws.remove(EDITED)
        rebase()
        st.rerun()
    if c2.button(tr("保留我的修改", "Keep my edits"), key="ds_keep"):
        EDITED.touch()
        st.rerun()

if problems:
    with st.expander(tr(f"{len(problems)} 条记录有问题", f"{len(problems)} record(s) with problems"), expanded=False):
        for p in problems:
            st.write(f"`{p}`")

# ---- the editable table ------------------------------------------------------------------------------------------
st.subheader(tr("问答对", "Pairs"))
search = st.text_input(tr("搜索（问题、答案或来源）", "Search (question, answer or source)"), key="ds_search")
view = st.session_state.get(VIEW) or {}
editor_key = f"ds_editor_{view.get('ver', 0)}"
if (
    view.get("ws") != str(ws.root)
    or view.get("search") != search
    or view.get("base") is None
    or editor_key not in st.session_state  # a fresh widget (first visit, or back from another page)
):
    view = {"ws": str(ws.root), "ver": view.get("ver", 0) + 1, "search": search, "base": records}
    st.session_state[VIEW] = view
    editor_key = f"ds_editor_{view['ver']}"
base: list[dict] = view["base"]
visible = ds.search_rows(base, search)
has_score = any(r.get("score") is not None for r in base)
has_kind = any(r.get("kind") for r in base)  # step 2 marks its pairs answerable / unanswerable (refusal answer)
has_paraphrase = has_kind or any(r.get("paraphrase") for r in base)
columns = (
    ["question", "answer"]
    + (["kind"] if has_kind else [])
    + (["paraphrase"] if has_paraphrase else [])
    + ["source"]
    + (["score"] if has_score else [])
)
KIND_LABELS = {
    "answerable": tr("可回答", "answerable"),
    "unanswerable": tr("无法回答（拒答）", "unanswerable (refusal)"),
}


def _cell(record: dict, column: str):
    if column == "kind":  # shown in the dashboard's language; the column is read-only, so the label is never saved
        kind = str(record.get("kind") or "answerable")
        return KIND_LABELS.get(kind, kind)
    return record.get(column)


table = pd.DataFrame([{c: _cell(base[i], c) for c in columns} for i in visible], columns=columns)
is_url = table["source"].astype(str).str.startswith(("http://", "https://")).any() if len(table) else False
column_config = {
    "question": st.column_config.TextColumn(tr("问题", "Question"), width="large", required=True),
    "answer": st.column_config.TextColumn(tr("答案", "Answer"), width="large", required=True),
    "source": (st.column_config.LinkColumn if is_url else st.column_config.TextColumn)(
        tr("来源", "Source"), width="medium"
    ),
}
if has_kind:
    column_config["kind"] = st.column_config.TextColumn(
        tr("类型", "Kind"),
        disabled=True,
        help=tr(
            "无法回答：网页没有给出答案的问题，答案是拒答句，用来教模型说“网站上没有提到”。",
            "Unanswerable: a question the page does not answer; its answer is the refusal, which teaches the model "
            "to say the website does not say.",
        ),
    )
if has_paraphrase:
    column_config["paraphrase"] = st.column_config.TextColumn(
        tr("改写（仅用于评估）", "Paraphrase (evaluation only)"),
        width="medium",
        help=tr(
            "同一问题换一种说法，只在评估时提问，检验模型是否真正理解；从不作为训练样本。清空即删除。",
            "The question reworded, asked only in evaluation to test understanding; never a training example. "
            "Clear it to remove it.",
        ),
    )
if has_score:
    column_config["score"] = st.column_config.NumberColumn(tr("评分", "Judge score"), disabled=True, format="%.1f")
st.data_editor(
    table,
    key=editor_key,
    num_rows="dynamic",
    hide_index=True,
    column_config=column_config,
    width="stretch",
)
delta = st.session_state.get(editor_key)
current, notes = ds.apply_table_edits(base, visible, delta)
for note in notes:
    st.caption(f"⚠️ {note}")
if current != records:
    save_records(current)
    records = current
    st.toast(tr("已保存修改", "Edits saved"))
st.caption(
    tr(
        f"显示 {len(visible)} / {len(base)} 条。修改会立即保存到 {EDITED.name}（原始 qa.jsonl 不变）。",
        f"Showing {len(visible)} of {len(base)}. Edits are saved at once to {EDITED.name} (qa.jsonl stays untouched).",
    )
)

# ---- a pair's masked text: what the LLM was sent for its page, personal data replaced (qa/masked/, step 2) ---------
masked_rows = [i for i in visible if i < len(base) and base[i].get("pii")]
if masked_rows:
    PII_WORDS = {
        "id_card": tr("身份证号", "ID numbers"),
        "mobile": tr("手机号", "mobile numbers"),
        "email": tr("个人邮箱", "personal e-mails"),
        "name": tr("人名", "names"),
    }
    with st.expander(
        tr(
            f"发送给大模型的文本：{len(masked_rows)} 条问答对的网页遮盖了个人信息",
            f"Text sent to the LLM: {len(masked_rows)} pairs come from pages with personal data masked",
        )
    ):
        pick = st.selectbox(
            tr("问答对", "Pair"), masked_rows, format_func=lambda i: str(base[i]["question"])[:80], key="ds_masked_pick"
        )
        counts = base[pick]["pii"] if isinstance(base[pick]["pii"], dict) else {}
        st.caption(
            tr("已遮盖：", "Masked: ")
            + tr("、", ", ").join(f"{PII_WORDS.get(k, k)} × {n}" for k, n in counts.items() if n)
            + tr(f"（共 {sum(counts.values())} 处）", f" ({sum(counts.values())} in all)")
        )
        sent = sent_text(ws.qa_dir, base[pick])
        if sent is None:
            st.info(
                tr(
                    "这条问答对发送的文本没有保存（在保存此文本之前生成）；重新生成该网页的问答后即可查看。",
                    "The text sent for this pair was not kept (generated before it was saved); generate its page "
                    "again to see it.",
                )
            )
        else:
            st.code(sent, language=None, wrap_lines=True)

with st.form("ds_add_form", clear_on_submit=True):
    st.markdown(tr("**添加一条问答对**", "**Add a pair**"))
    new_q = st.text_input(tr("问题", "Question"), key="ds_new_q")
    new_a = st.text_area(tr("答案", "Answer"), key="ds_new_a", height=80)
    if st.form_submit_button(tr("添加", "Add")):
        if new_q.strip() and new_a.strip():
            save_records(records + [{"question": new_q.strip(), "answer": new_a.strip(), "source": "manual"}])
            rebase()
            st.rerun()
        else:
            st.error(tr("问题和答案都不能为空。", "Both the question and the answer are needed."))

# ---- statistics ----------------------------------------------------------------------------------------------------
st.subheader(tr("统计", "Statistics"))
stats = pd.DataFrame(
    {
        "q_len": [len(r["question"]) for r in records],
        "a_len": [len(r["answer"]) for r in records],
        "source": [r.get("source") or "—" for r in records],
    }
)
m1, m2, m3, m4 = st.columns(4)
m1.metric(tr("问答对", "Pairs"), len(records))
m2.metric(tr("来源页面", "Source pages"), stats["source"].nunique() if len(stats) else 0)
m3.metric(tr("问题平均长度", "Avg question length"), f"{stats['q_len'].mean():.0f}" if len(stats) else "—")
m4.metric(tr("答案平均长度", "Avg answer length"), f"{stats['a_len'].mean():.0f}" if len(stats) else "—")
AXIS = {"q_len": tr("字符数", "characters"), "a_len": tr("字符数", "characters"), "count": tr("数量", "count")}
if len(stats):
    c1, c2 = st.columns(2)
    c1.plotly_chart(
        px.histogram(
            stats, x="q_len", nbins=30, labels=AXIS, title=tr("问题长度（字符）", "Question length (characters)")
        ),
        key="ds_hist_q",
    )
    c2.plotly_chart(
        px.histogram(
            stats, x="a_len", nbins=30, labels=AXIS, title=tr("答案长度（字符）", "Answer length (characters)")
        ),
        key="ds_hist_a",
    )
    per_source = stats["source"].value_counts().head(30).rename_axis("source").reset_index(name="pairs")
    st.plotly_chart(
        px.bar(
            per_source,
            x="pairs",
            y="source",
            orientation="h",
            labels={"pairs": tr("问答对数", "pairs"), "source": tr("来源", "source")},
            title=tr("每个来源页面的问答对数（前 30）", "Pairs per source page (top 30)"),
        ).update_yaxes(autorange="reversed"),
        key="ds_per_source",
    )

# ---- split and export: labels, help, defaults and checks from the dataset schema (umtcds_core.dataset.DATASET) ----
st.subheader(tr("划分与导出", "Split and export"))
_FIELDS = ("seed", "format", "dedup_threshold", "system_prompt", "context", "index", "context_k", "oracle_share",
           "context_copies")  # fmt: skip
_KEPT = ("split", "seed", "format", "dedup_threshold", "system_prompt")  # remembered of the last export (no paths)
# Start values: the last export's settings, else the schema's defaults with the campus system prompt filled in (the
# page has always offered it; the CLI adds none unless asked).
_index = index_dir_of(ws)  # the project's search index (Crawl page / `umtcds index`), offered for context training
start = ds.DATASET.merge(
    {
        "system_prompt": ds.DEFAULT_SYSTEM_PROMPT,
        **({"index": str(_index)} if _index.is_dir() else {}),
        **(ws.meta().get("dataset") or {}),
    }
)
ratios_start = ds.split_ratios(start["split"]) or ds.parse_split(ds.DEFAULT_SPLIT)
st.caption(tr(*ds.DATASET["split"].label))
c1, c2, c3 = st.columns(3)
ratios = []
for col, part, label in zip(
    (c1, c2, c3), ratios_start, (("训练", "Train"), ("验证", "Dev"), ("测试", "Test")), strict=True
):
    key = f"ds_r_{label[1].lower()}"
    st.session_state.setdefault(key, float(part))  # seeded once, then what the user typed (no browser-side bounds)
    ratios.append(col.number_input(tr(*label), step=1.0, key=key))
values = ui_fields.inputs(ds.DATASET, start, "ds_", names=_FIELDS, cols=3)
values.update(split=":".join(f"{r:g}" for r in ratios), input=shown_path or str(EDITED), out=str(ws.dataset_dir))
settings = ds.DATASET.merge(values)
problems = ds.DATASET.problems(settings)
for en, zh in problems:  # the CLI's own sentences; nothing is written until they are fixed
    st.error(tr(zh, en))
for en, zh in ds.DATASET.warnings(settings):
    st.warning(tr(zh, en))
if not problems and records:
    n_train, n_dev, n_test = ds.split_counts(len(records), ds.parse_split(settings["split"]))
    st.write(
        tr(
            f"按当前比例：训练 **{n_train}** / 验证 **{n_dev}** / 测试 **{n_test}**（去重分组后数量保持精确）。",
            f"With these ratios: train **{n_train}** / dev **{n_dev}** / test **{n_test}** (exact, after grouping duplicates).",
        )
    )
    targets = {"train": n_train, "dev": n_dev, "test": n_test}
    for en, zh in ds.size_warnings(len(records), targets):  # the same sentences the split report records
        st.warning(tr(zh, en))

if st.button(tr("划分并导出", "Split and export"), type="primary", key="ds_export", disabled=bool(problems)):
    try:
        pairs = [ds.parse_record(r, f"{EDITED}:{i + 1}")[0] for i, r in enumerate(records)]
        report = ds.build_from_settings(settings, pairs=[p for p in pairs if p is not None])
    except UserError as exc:
        st.error(error_text(exc))
    else:
        ws.update_meta(dataset={k: settings[k] for k in _KEPT})
        st.session_state["dataset_report"] = report
        st.success(tr("数据集已写入 ", "Dataset written to ") + f"`{ws.dataset_dir}`")

report = st.session_state.get("dataset_report")
if report is None and (ws.dataset_dir / "split_report.json").exists():
    try:
        report = json.loads((ws.dataset_dir / "split_report.json").read_text(encoding="utf-8"))
    except ValueError:
        report = None
if report:
    counts = report["counts"]
    k1, k2, k3, k4 = st.columns(4)
    k1.metric(tr("训练", "Train"), counts["train"])
    k2.metric(tr("验证", "Dev"), counts["dev"])
    k3.metric(tr("测试", "Test"), counts["test"])
    k4.metric(tr("近似重复组", "Duplicate groups"), report["groups"]["count"])
    refused = report.get("unanswerable") or {}
    if any(refused.values()):
        r_train, r_dev, r_test = (refused.get(s, 0) for s in ds.SPLITS)
        st.caption(
            tr(
                f"其中无法回答的问题（答案为拒答句）：训练 {r_train} / 验证 {r_dev} / 测试 {r_test}。",
                f"Of these, unanswerable questions (refusal answer): train {r_train} / dev {r_dev} / test {r_test}.",
            )
        )
    shown = report.get("warnings_zh") if current_lang() == "zh" and report.get("warnings_zh") else report["warnings"]
    for w in shown:
        st.warning(w)
    if report["groups"]["list"]:
        with st.expander(tr("近似重复的问题组（每组在同一集合）", "Near-duplicate groups (each kept in one split)")):
            for g in report["groups"]["list"][:100]:
                st.write(f"**{g['split']}** — " + " · ".join(g["questions"]))
    cols = st.columns(5)
    names = ["train.jsonl", "dev.jsonl", "test.jsonl", "split_report.json", "dataset_info.json"]
    for col, name in zip(cols, names, strict=True):
        path = ws.dataset_dir / name
        if path.exists():
            col.download_button(
                tr("下载 ", "Download ") + name,
                path.read_bytes(),
                file_name=name,
                mime="application/json",
                key=f"ds_dl_{name}",
            )
ui.next_step("dataset")  # a link to the next step once this one is done
