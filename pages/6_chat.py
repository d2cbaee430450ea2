"""Step page: chat with the base model or a tuned checkpoint; compare base vs tuned; unload; merge/export.

A thin view over umtcds_core.chat (the same code as ``umtcds chat``). The loaded model lives in
``st.cache_resource(max_entries=1)`` — one model at a time for the whole dashboard — and Unload frees it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import streamlit as st

from umtcds_core import chat, grounding, publish, runs, serve, ui, ui_fields
from umtcds_core.errors import UserError
from umtcds_core.i18n import error_text, tr
from umtcds_core.index import Index, index_dir_of, index_status, snippet
from umtcds_core.jobs import FAILED, RUNNING, latest_job
from umtcds_core.models import DEFAULT_MODEL, EMBEDDED, gpu_memory
from umtcds_core.serve import SERVE

ws = ui.require_workspace()
ui.page_header("chat")


@st.cache_resource(max_entries=1, show_spinner=False)
def load_model(base: str, adapter: str) -> chat.ChatModel:
    return chat.load_chat_model(base or None, adapter or None)


def _label(p: Path) -> str:
    try:
        return str(p.relative_to(ws.runs_dir))
    except ValueError:
        return str(p)


# ---- what to load -------------------------------------------------------------------------------------------------
NONE, OTHER = "—", "…"
choices = [NONE, *[str(p) for p in runs.loadable(ws.runs())], OTHER]
with st.container(border=True):
    c1, c2 = st.columns(2)
    picked = c1.selectbox(
        tr("微调检查点", "Tuned checkpoint"),
        choices,
        index=1 if len(choices) > 2 else 0,
        format_func=lambda v: (
            tr("无（仅基座模型）", "none (base model only)")
            if v == NONE
            else tr("其他路径…", "other path…")
            if v == OTHER
            else _label(Path(v))
        ),
        key="chat_pick",
    )
    adapter = ""
    if picked == OTHER:
        adapter = c1.text_input(tr("检查点路径", "Checkpoint path"), key="chat_other_path").strip()
    elif picked != NONE:
        adapter = picked
    base = c2.text_input(
        tr("基座模型（留空 = 检查点记录的基座）", "Base model (empty = the one the checkpoint records)"),
        value="" if adapter else DEFAULT_MODEL,
        key="chat_base",
        help=tr("内置名称、模型文件夹或 .gguf 文件", "an embedded name, a model folder or a .gguf file"),
    ).strip()
    b1, b2 = st.columns(2)
    if b1.button(tr("加载模型", "Load model"), type="primary", key="chat_load"):
        if not base and not adapter:
            base = DEFAULT_MODEL
        previous = st.session_state.get("chat_loaded")
        if previous and previous != [base, adapter]:  # one model at a time: free the old one before loading
            load_model(*previous).unload()
            load_model.clear()
        try:
            with st.spinner(tr("正在加载模型…", "Loading the model…")):
                load_model(base, adapter)
            st.session_state["chat_loaded"] = [base, adapter]
            st.session_state["chat_history"] = []
        except UserError as exc:
            st.error(error_text(exc))
    if b2.button(tr("卸载模型", "Unload model"), key="chat_unload", disabled="chat_loaded" not in st.session_state):
        before = gpu_memory()
        loaded = st.session_state.pop("chat_loaded", None)
        if loaded:
            load_model(*loaded).unload()
        load_model.clear()
        st.session_state["chat_unloaded"] = {"before": before, "after": gpu_memory()}

if info := st.session_state.get("chat_unloaded"):
    st.success(
        tr("模型已卸载。", "Model unloaded.")
        + f" GPU {tr('已分配', 'allocated')}: {info['before']['allocated_gib']} → {info['after']['allocated_gib']} GiB"
    )


# ---- publish to students: `umtcds serve` as a background job -------------------------------------------------------
# The server is a process of its own with its own copy of the model, so it serves on when the dashboard closes and it
# needs no model loaded here (on one GPU, unload the page's model first: two copies may not fit). It serves the
# checkpoint picked above; feedback and question logs go to this project's serve/ folder (Dataset → From students).
PUBLISH_FIELDS = ("host", "port", "assistant_name", "welcome", "examples", "log_questions")


def _publish_start_values(job) -> dict:
    """The last serve job's settings (what is running now, or ran last), else the schema's defaults."""
    if job is not None and job.settings_file.exists():
        try:
            return SERVE.merge(SERVE.read_yaml(job.settings_file))
        except UserError:
            pass
    return SERVE.defaults()


def _publish_state(job) -> tuple[str | None, str | None, bool]:
    """(job status, the server's http://host:port from its start line, whether /health answers)."""
    if job is None:
        return None, None, False
    state = job.status()
    base = publish.served_base(job.log_tail(20_000)) if state == RUNNING else None
    return state, base, base is not None and publish.healthy(base)


def publish_section() -> None:
    job = latest_job(ws, "serve")
    state, _, up = _publish_state(job)
    running = state == RUNNING
    values = ui_fields.inputs(SERVE, _publish_start_values(job), "pub_", names=PUBLISH_FIELDS, cols=2, disabled=running)
    index_dir = index_dir_of(ws)
    use_rag = index_status(index_dir).built and st.toggle(
        tr(*SERVE["rag"].label),
        value=True,
        key="pub_rag",
        disabled=running,
        help=tr(
            "用本项目的网站索引回答，并在每个回答下列出来源链接。",
            "Answers from this project's website index, with the source links under each answer.",
        ),
    )
    key_env = values.get("api_key_env") or SERVE["api_key_env"].default
    if serve.exposure_warning(str(values["host"]), os.environ.get(key_env), key_env):
        st.warning(
            tr(
                f"监听 {values['host']} 且没有 API 密钥：能连到这个端口的人都能调用模型接口。请在启动仪表盘前设置环境变量 "
                f"{key_env}（学生页面本身不需要密钥）。",
                f"Listening on {values['host']} without an API key: anyone who can reach this port can use the model's "
                f"API. Set {key_env} before starting the dashboard (the students' page itself needs no key).",
            )
        )
    st.caption(
        tr(
            "如果你是通过 SSH 端口转发（如 AutoDL）访问这台机器，学生要用的是这台机器的公网地址或转发出去的端口，"
            "而不是 127.0.0.1。",
            "If you reach this machine through an SSH port-forward (AutoDL and the like), students use the machine's "
            "public address or the forwarded port, not 127.0.0.1.",
        )
    )
    if not running and st.button(tr("启动服务", "Start serving"), type="primary", key="pub_start"):
        settings = {
            **values,
            "model": base or (None if adapter else DEFAULT_MODEL),
            "adapter": adapter or None,
            "feedback_dir": str(ws.root),
            "rag": str(index_dir) if use_rag else None,
        }
        try:
            checked = SERVE.check(settings, where=tr("发布设置", "The publish settings"))
        except UserError as exc:
            st.error(error_text(exc))
        else:
            ui.start_step(ws, "serve", [], settings=SERVE.to_yaml(checked))
            st.rerun()
    publish_status(2.0 if running and not up else 10.0 if running else None)


def publish_status(every: float | None) -> None:
    @st.fragment(run_every=every)
    def _status():
        ui.redraw_if_page_unfinished()
        job = latest_job(ws, "serve")
        state, found, up = _publish_state(job)
        if state is None:
            return
        if state == RUNNING:
            if up:
                st.success(tr("服务运行中 · /health 正常", "Serving · /health answers"))
            else:
                st.info(tr("正在启动：加载模型并预热…", "Starting: loading and warming up the model…"))
            if st.button(tr("停止服务", "Stop serving"), key="pub_stop"):
                job.stop(grace=10)
                st.rerun()
        elif state == FAILED:
            st.error(tr("服务已退出：", "The server exited: ") + job.error_summary())
        else:
            st.caption(tr("服务已停止。", "The server is stopped."))
        if up:
            url = publish.public_url(found)
            st.markdown(f"**{tr('学生页面', 'Students’ page')}:** [{url}]({url})")
            c1, c2 = st.columns([3, 1])
            c1.caption(tr("把这一行粘贴到学校网站的页面里，页面右下角就会出现聊天按钮：",
                          "Paste this line into a page of the university website to add the chat bubble:"))  # fmt: skip
            c1.code(publish.widget_snippet(url), language="html")
            if "127.0.0.1" in url or "localhost" in url:
                c1.caption(
                    tr(
                        "这个地址只在本机可用；要让手机访问，请停止服务，把监听地址改为 0.0.0.0 后重新启动。",
                        "This address works on this machine only; for phones, stop, set the host to 0.0.0.0 and "
                        "start again.",
                    )
                )
            c2.image(publish.qr_png(url), caption=tr("手机扫码打开", "Scan with a phone"), width=160)
        with st.expander(tr("服务日志", "Server log")):
            st.code(job.log_tail(4000) or "…", language=None)
        seen = (state, up)
        if st.session_state.get("_pub_seen") not in (None, seen):
            st.session_state["_pub_seen"] = seen
            st.rerun()  # started, answering or stopped: redraw the whole section (inputs, polling speed)
        st.session_state["_pub_seen"] = seen

    _status()


with st.expander(tr("发布给学生", "Publish to students"), expanded=latest_job(ws, "serve") is not None):
    publish_section()

loaded = st.session_state.get("chat_loaded")
if not loaded:
    st.info(tr("选择检查点并点击“加载模型”。", "Pick a checkpoint and press Load model."))
    st.stop()
st.session_state.pop("chat_unloaded", None)
try:
    cm = load_model(*loaded)
except UserError as exc:
    st.error(error_text(exc))
    st.stop()
mem = gpu_memory()
st.caption(
    f"{tr('已加载', 'Loaded')}: **{cm.name}** ({cm.adapter_kind or tr('基座模型', 'base model')}) · "
    f"{tr('基座', 'base')}: `{cm.base_ref}` · GPU {mem['allocated_gib']} GiB"
)
if cm.base_ref in EMBEDDED:
    st.info(ui.embedded_model_note(cm.base_ref), icon="ℹ️")

# ---- options ------------------------------------------------------------------------------------------------------
with st.expander(tr("生成设置", "Generation settings"), expanded=False):
    system = st.text_area(tr("系统提示词", "System prompt"), value=cm.system_prompt or "", key="chat_system")
    o1, o2, o3 = st.columns(3)
    temperature = o1.slider(tr("温度", "Temperature"), 0.0, 1.5, 0.7, 0.05, key="chat_temp")
    top_p = o2.slider("Top-p", 0.05, 1.0, 0.9, 0.05, key="chat_top_p")
    max_tokens = o3.number_input(tr("最大生成长度", "Max new tokens"), 1, 4096, 256, key="chat_max_tokens")
c1, c2 = st.columns(2)
compare = c1.toggle(
    tr("对比基座与微调", "Compare base vs tuned"), key="chat_compare", disabled=not cm.has_adapter, value=False
)
if c2.button(tr("清空对话", "Clear conversation"), key="chat_clear"):
    st.session_state["chat_history"] = []


# ---- answers from the website: the project's search index (built on the Crawl page) -------------------------------
@st.cache_resource(max_entries=2, show_spinner=False)
def _loaded_index(path: str, built_at: str) -> Index:  # built_at: a rebuilt index is loaded afresh
    return Index.load(path, check_stale=False)


rag_index: Index | None = None
index_state = index_status(index_dir_of(ws))
if index_state.built and st.toggle(
    tr("根据网站内容回答", "Answer from the website"),
    value=True,
    key="chat_rag",
    help=tr(
        "先在爬取的网页中查找相关段落，让模型只根据它们回答并用 [n] 标出来源；网站没有写的，模型应回答不知道。",
        "Finds the matching passages of the crawled pages first; the model answers from them only, cites them as "
        "[n], and should say the website does not say when it does not.",
    ),
):
    try:
        rag_index = _loaded_index(str(index_dir_of(ws)), index_state.built_at)
    except UserError as exc:
        st.error(error_text(exc))
    if index_state.stale:
        st.warning(
            tr(
                f"建立索引后有 {len(index_state.stale)} 个页面发生了变化；请在“爬取网页”页刷新索引。",
                f"{len(index_state.stale)} pages changed since the index was built; refresh it on the Crawl page.",
            )
        )


def _show_sources(sources: list[dict] | None, answer: str) -> None:
    """The numbered pages an answer was given (title, link, snippet); ✓ marks those the answer cites, ≈ the one an
    answer citing none was matched to (grounding.mark_sources)."""
    if not sources:
        return
    marked = grounding.mark_sources(answer, sources)
    with st.container(border=True):
        st.caption(tr("来源", "Sources"))
        for src in marked:
            name = src.get("title") or src.get("page") or "—"
            link = f"[{name}]({src['url']})" if src.get("url") else name
            st.markdown(f"**[{src['n']}]** {link}{grounding.source_mark(src)}")
            st.caption(snippet(src.get("text", ""), limit=200))
        if any(grounding.source_mark(src) for src in marked):
            st.caption(tr(*grounding.MARKS_LEGEND))


def _answer_slots(where) -> tuple:
    """(status line, answer body) placeholders: the status says whether this answer is waiting, generating or done."""
    return where.empty(), where.empty()


def _finished_note(usage: dict, seconds: float) -> str:
    n = usage.get("completion_tokens", 0)
    done = tr(f"完成 · {n} 个词元 · {seconds:.1f} 秒", f"done · {n} tokens · {seconds:.1f} s")
    reason = usage.get("stop_reason")
    if reason == "repetition":
        return done + tr(" · 模型开始重复，已提前停止", " · stopped early: the model began repeating itself")
    if reason == "length":
        return done + tr(" · 已达最大生成长度", " · reached the max new tokens")
    return done


def _stream_into(slots: tuple, pieces, usage: dict) -> tuple[str, str]:
    """Show ``pieces`` as they come under a "generating…" line; end with the clean answer and a one-line note.

    The clean answer (``usage["text"]``) can be shorter than what streamed: a loop is cut to one copy.
    """
    status, body = slots
    status.caption("⏳ " + tr("生成中…", "generating…"))
    started, text = time.monotonic(), ""
    for piece in pieces:
        text += piece
        body.markdown(text + "▌")
    note = _finished_note(usage, time.monotonic() - started)
    status.caption("✓ " + note)
    body.markdown(usage["text"] or "—")
    return usage["text"], note


history: list[dict] = st.session_state.setdefault("chat_history", [])
for msg in history:
    with st.chat_message(msg["role"]):
        if msg.get("base") is not None:
            left, right = st.columns(2)
            left.caption(tr("基座模型", "Base model"))
            if msg.get("base_note"):
                left.caption("✓ " + msg["base_note"])
            left.markdown(msg["base"] or "—")
            right.caption(tr("微调模型", "Tuned model"))
            if msg.get("note"):
                right.caption("✓ " + msg["note"])
            right.markdown(msg["content"] or "—")
        else:
            if msg.get("note"):
                st.caption("✓ " + msg["note"])
            st.markdown(msg["content"] or "—")
        _show_sources(msg.get("sources"), msg["content"])

session = chat.ChatSession(
    cm,
    system=system or None,
    options=chat.GenOptions(max_new_tokens=int(max_tokens), temperature=float(temperature), top_p=float(top_p)),
)
session.history = [{"role": m["role"], "content": m["content"]} for m in history]
sources: list[dict] = []  # the pages a grounded answer was given (filled by the retrieval)


def _ask(text: str, **kwargs):
    """The answer's pieces: from the website (retrieval + the grounded prompt) when the toggle is on."""
    if rag_index is None:
        return session.stream(text, **kwargs)
    return chat.grounded_stream(session, rag_index, text, sources=sources, **kwargs)


if prompt := st.chat_input(tr("输入问题…", "Ask a question…"), key="chat_input"):
    with st.chat_message("user"):
        st.markdown(prompt)
    with st.chat_message("assistant"):
        usage: dict = {}
        base_answer = base_note = None
        try:
            if compare and cm.has_adapter:
                # One model, one generation at a time (the adapter switch is shared state), so the two answers come
                # one after the other: the tuned one first — it is what the user came for — while the base column
                # says it is queued.
                left, right = st.columns(2)
                left.caption(tr("基座模型", "Base model"))
                right.caption(tr("微调模型", "Tuned model"))
                base_slots, tuned_slots = _answer_slots(left), _answer_slots(right)
                base_slots[0].caption(
                    "⏸ " + tr("排队中：微调模型回答完后开始…", "queued: starts after the tuned answer…")
                )
                answer, note = _stream_into(tuned_slots, _ask(prompt, usage=usage), usage)
                base_usage: dict = {}
                pieces = _ask(prompt, use_adapter=False, remember=False, usage=base_usage)
                base_answer, base_note = _stream_into(base_slots, pieces, base_usage)
            else:
                answer, note = _stream_into(_answer_slots(st), _ask(prompt, usage=usage), usage)
        except UserError as exc:
            st.error(error_text(exc))
        else:
            _show_sources(sources, answer)
            history.append({"role": "user", "content": prompt})
            history.append(
                {"role": "assistant", "content": answer, "note": note, "base": base_answer, "base_note": base_note}
                | ({"sources": list(sources)} if sources else {})
            )

# ---- merge / export -----------------------------------------------------------------------------------------------
# The export runs as a background job (`umtcds export RUN --config settings.yaml`), not inside this page: for a 9B
# model it merges, writes GGUF files of several GB and loads each back to check them — minutes of work that must
# survive a browser reload (the job panel re-attaches) and that end, when they fail, in the CLI's one sentence.
from umtcds_core.export import EXPORT, INFO_FILE, MERGEABLE, check_out  # noqa: E402 - this region's own imports
from umtcds_core.fileio import read_json  # noqa: E402
from umtcds_core.jobs import DONE  # noqa: E402

_EXPORT_NOTES = {
    "hf": (
        "合并后的 Hugging Face 文件夹：transformers、vLLM 等都能直接加载。",
        "The merged Hugging Face folder: transformers, vLLM and others load it as is.",
    ),
    "gguf": (
        "f16 与 q8_0 两个 GGUF 文件（llama.cpp），导出后回读并与合并模型对比 `logits`。",
        "f16 and q8_0 GGUF files (llama.cpp), loaded back and compared with the merged model.",
    ),
    "ollama": (
        "GGUF 加 `Modelfile`（对话模板、系统提示词、参数）；之后运行 `ollama create`。",
        "GGUF plus a Modelfile (chat template, system prompt, parameters); then run `ollama create`.",
    ),
    "vllm": (
        "合并后的模型（或基座 + LoRA）和现成的 `vllm serve` 命令（serve.sh）。",
        "The merged model (or base + LoRA) and a ready `vllm serve` command (serve.sh).",
    ),
}


def _export_result(job) -> None:
    """What the finished export job wrote: the folder, the commands to run next, the GGUF check figures."""
    if job is None or job.status() != DONE or not job.settings_file.exists():
        return
    try:
        out = EXPORT.read_yaml(job.settings_file).get("out") or ""
    except UserError:
        return
    record = read_json(Path(out) / INFO_FILE)
    if not isinstance(record, dict):
        return
    st.success(tr("已导出到 ", "Exported to ") + f"`{out}`")
    for c in record.get("gguf_check") or []:
        st.caption(
            f"{c['file']}: {tr('最大对数几率差', 'max logit diff')} {c['max_abs_diff']} ({c['max_rel_diff']:.2%}) · "
            f"top-1 {tr('一致率', 'agreement')} {c['top1_agreement']:.0%}"
        )
    for key in ("ollama_command", "vllm_command"):
        if record.get(key):
            st.code(f"cd {out} && {record[key]}", language="bash")


if cm.has_adapter and cm.adapter_kind in MERGEABLE | {""}:
    with st.expander(
        tr("导出（Hugging Face / GGUF / Ollama / vLLM）", "Export (Hugging Face / GGUF / Ollama / vLLM)"),
        expanded=latest_job(ws, "export") is not None,
    ):
        fmt_field = EXPORT["format"]
        fmt = st.radio(
            tr(*fmt_field.label),
            fmt_field.choices,
            format_func=lambda v: tr(*fmt_field.choice_labels[v]),
            horizontal=True,
            key="chat_export_format",
        )
        st.caption(tr(*_EXPORT_NOTES[fmt]))
        default_out = runs.run_dir_of(cm.adapter_dir) / ("merged" if fmt == "hf" else f"export-{fmt}")
        out_dir = st.text_input(tr(*EXPORT["out"].label), value=str(default_out), key=f"chat_merge_out_{fmt}")
        force = st.checkbox(tr(*EXPORT["force"].label), key="chat_export_force")
        st.caption(
            tr(
                "导出任务会另外加载一份模型；显存较小时请先卸载这里的模型。",
                "The export job loads its own copy of the model; on a small GPU unload the model here first.",
            )
        )
        job = latest_job(ws, "export")
        if st.button(
            tr("开始导出", "Export"),
            key="chat_merge",
            type="primary",
            disabled=job is not None and job.status() == RUNNING,
        ):
            try:
                target = ws.inside(out_dir)
                check_out(target, force)
                values = EXPORT.merge(
                    {
                        "adapter": str(cm.adapter_dir),
                        "model": cm.base_ref,
                        "format": fmt,
                        "out": str(target),
                        "force": force,
                    }
                )
                ui.start_step(ws, "export", [str(cm.adapter_dir), "--format", fmt], settings=EXPORT.to_yaml(values))
                st.rerun()
            except UserError as exc:
                st.error(error_text(exc))
        ui.job_panel(ws, "export")
        _export_result(latest_job(ws, "export"))
ui.next_step("chat")  # a link to the next step once this one is done
