"""Shared Streamlit pieces for the pages: state, password gate, language, project picker, page header, job panel.

The only core module that imports Streamlit (the CLI never imports it). Pages stay thin: read state, call one core
function or start one job, render.

Two plain session_state keys carry what every page shares: ``lang`` ("zh" | "en", mirrored into the URL's ``?lang=``
so a reload keeps it) and ``workspace`` (the current project's folder). Widgets that show them (the language radio,
every project picker) take their value from those keys on each run and write them back in an ``on_change`` callback,
so two pickers can never disagree with each other or with the project the pages write to.
"""

from __future__ import annotations

import hmac
import os
import re
import time
from datetime import timedelta

import streamlit as st

from . import steps
from .i18n import DEFAULT_LANG, LANGS, current_lang, error_text, progress_word, tr
from .jobs import STOPPED, Job, cli_argv, latest_job, start_job
from .models import DEFAULT_MODEL
from .secrets import get_secret, is_loopback  # noqa: F401 - re-exported for pages
from .workspace import DONE, FAILED, NOT_STARTED, RUNNING, Workspace, WorkspaceError, list_workspaces

WORKSPACE_KEY = "workspace"  # the one session_state key of the current project (a folder path)

STATUS_ICON = {NOT_STARTED: "⚪", RUNNING: "🔵", DONE: "🟢", FAILED: "🔴", STOPPED: "🟠"}


def status_label(status: str) -> str:
    names = {
        NOT_STARTED: tr("未开始", "not started"),
        RUNNING: tr("运行中", "running"),
        DONE: tr("已完成", "done"),
        FAILED: tr("失败", "failed"),
        STOPPED: tr("已停止", "stopped"),
    }
    return f"{STATUS_ICON.get(status, '')} {names.get(status, status)}"


def init_state() -> None:
    """Wizard data lives in plain session_state keys (widget keys reset across pages).

    A new session (a reload) takes its language from the URL's ``?lang=``, which :func:`_lang_to_url` keeps in step
    with the choice; without it a reload would fall back to Chinese.
    """
    if "lang" not in st.session_state:
        wanted = st.query_params.get("lang")
        st.session_state["lang"] = wanted if wanted in LANGS else DEFAULT_LANG
    _lang_to_url()
    st.session_state.setdefault("authenticated", False)
    if WORKSPACE_KEY not in st.session_state:
        existing = list_workspaces()
        st.session_state[WORKSPACE_KEY] = str(existing[0].root) if existing else None


def _lang_to_url() -> None:
    """Mirror the language into the URL (only when it is not the default, to keep the URL clean)."""
    lang = st.session_state.get("lang", DEFAULT_LANG)
    if lang == DEFAULT_LANG:
        if "lang" in st.query_params:
            del st.query_params["lang"]
    elif st.query_params.get("lang") != lang:
        st.query_params["lang"] = lang


def password_gate() -> bool:
    """When ``UMTCDS_PASSWORD`` is set (env or secrets.toml), ask for it before anything else. True when allowed."""
    expected = get_secret("UMTCDS_PASSWORD")
    if not expected or st.session_state.get("authenticated"):
        return True
    st.title("UMTCDS")
    with st.form("login"):
        given = st.text_input(tr("密码", "Password"), type="password", key="login_password")
        ok = st.form_submit_button(tr("进入", "Enter"))
    if ok:
        if hmac.compare_digest(given.encode(), expected.encode()):
            st.session_state["authenticated"] = True
            st.rerun()
        else:
            time.sleep(1.0)  # slow down guessing
            st.error(tr("密码不正确。", "Wrong password."))
    return False


def language_switch() -> None:
    """The sidebar's 中文 / English radio: shows ``lang`` and writes it (and the URL) when the user changes it."""

    def _set():
        st.session_state["lang"] = st.session_state["_lang_choice"]
        _lang_to_url()

    st.session_state["_lang_choice"] = st.session_state.get("lang", DEFAULT_LANG)
    st.sidebar.radio("语言 / Language", list(LANGS), format_func=LANGS.get, key="_lang_choice", on_change=_set,
                     horizontal=True)  # fmt: skip


def current_workspace() -> Workspace | None:
    """The current project: exactly the folder in ``st.session_state['workspace']``, or None."""
    path = st.session_state.get(WORKSPACE_KEY)
    return Workspace.open(path) if path else None


def set_current_workspace(ws: Workspace | None) -> None:
    """Make ``ws`` the current project for every page, picker and job of this session."""
    st.session_state[WORKSPACE_KEY] = str(ws.root) if ws is not None else None


def workspace_picker(location=None, key: str = "sidebar") -> Workspace | None:
    """A project selectbox bound to the one current project (``st.session_state['workspace']``).

    Why not the widget's own state: each picker (sidebar, Home) has its own widget key, and a widget keeps its last
    value even after the current project changes elsewhere (creating a project, the demo card, the other picker).
    So the widget's value is set from the current project on every run, and choosing writes the current project.
    """
    where = location or st.sidebar
    roots = [str(w.root) for w in list_workspaces()]
    current = current_workspace()
    if current is not None and str(current.root) not in roots and current.root.is_dir():
        roots.append(str(current.root))  # a project outside the workspaces folder (umtcds demo --workspace DIR)
    if not roots:
        return current
    if current is None or str(current.root) not in roots:
        set_current_workspace(Workspace.open(roots[0]))
    widget_key = f"_ws_choice_{key}"

    def _pick():
        set_current_workspace(Workspace.open(st.session_state[widget_key]))

    st.session_state[widget_key] = st.session_state[WORKSPACE_KEY]
    where.selectbox(
        tr("项目（工作区）", "Project (workspace)"),
        roots,
        format_func=lambda root: os.path.basename(root),
        key=widget_key,
        on_change=_pick,
    )
    return current_workspace()


def workspace_creator(location=None) -> None:
    """A name box and a Create button; the new workspace becomes the current one."""
    where = location or st
    with where.form("_ws_create_form", clear_on_submit=True):
        new_name = st.text_input(tr("新项目名称", "New project name"), key="_ws_new_name", placeholder="my-campus")
        if st.form_submit_button(tr("创建项目", "Create project")):
            try:
                ws = Workspace.create(new_name.strip())
            except WorkspaceError as exc:
                st.error(error_text(exc))
            else:
                set_current_workspace(ws)
                st.rerun()


def require_workspace() -> Workspace:
    """The current project (the one every picker shows), or stop the page with a sentence saying what to do.

    The state and the password gate are checked here again because Streamlit, seeing a ``pages/`` folder, runs a step
    page without Home.py when a fresh server's first request is that page's URL; through Home.py both are no-ops.
    """
    init_state()
    if not password_gate():
        st.stop()
    ws = current_workspace()
    if ws is None:
        st.info(tr("请先在首页或侧边栏创建或选择一个项目。", "Create or pick a project first (Home page or sidebar)."))
        st.stop()
    return ws


def target_caption(ws: Workspace) -> str:
    """ "→ project <name>": said next to what starts a job, so the user sees where it will write before it starts."""
    return tr(f"→ 项目 {ws.name}", f"→ project {ws.name}")


# ---- step pages -----------------------------------------------------------------------------------------------------
def step_title(step: str, short: bool = False) -> str:
    """ "N · title" of a step in the UI language (``short``: the navigation label)."""
    return steps.title(step, current_lang(), short=short)


def page_header(step: str) -> None:
    """Every step page's first line: "N · title" from the step registry, and the project it works on."""
    st.header(step_title(step))
    ws = current_workspace()
    if ws is not None:
        st.caption(tr("📁 当前项目：", "📁 Current project: ") + f"**{ws.name}**")


def step_link(step: str, label: str | None = None, location=None) -> None:
    """A link to a step's page. Outside Home.py's navigation (a page run on its own, as AppTest does) a page link
    cannot resolve, so the label is written as text: it still says where to go."""
    from streamlit.errors import StreamlitAPIException

    where = location or st
    info = steps.get(step)
    text = label or step_title(step, short=True)
    try:
        where.page_link(info.page, label=text, icon=info.icon or None)
    except StreamlitAPIException:
        where.markdown(f"{info.icon} {text}")


def next_step(step: str) -> None:
    """At the bottom of a step page: a link to the next step, once this step is done (nothing before that)."""
    ws = current_workspace()
    following = steps.next_step(step)
    if ws is None or following is None or ws.status(step) != DONE:
        return
    st.divider()
    step_link(following.name, label=tr("下一步：", "Next step: ") + step_title(following.name, short=True))


def embedded_model_note(model: str | None = None) -> str:
    """The one sentence on what an embedded model is for (Home, Generate and Chat show it); ``model``: which one."""
    name = model or DEFAULT_MODEL
    return tr(
        f"内置的小模型 {name} 只用来试走一遍流程：未经微调时它答不了中文问题；真正的校园助手请在 GPU 上使用 "
        "GLM-4-9B-chat（THUDM/glm-4-9b-chat-hf）或 Qwen2.5-7B-Instruct 这类模型。",
        f"The embedded model {name} is for trying the flow only: untuned it cannot answer Chinese questions; "
        "for a real campus assistant use a model such as GLM-4-9B-chat (THUDM/glm-4-9b-chat-hf) or "
        "Qwen2.5-7B-Instruct on a GPU.",
    )


def start_step(
    ws: Workspace, step: str, args: list[str], env: dict[str, str] | None = None, settings: str | None = None
) -> Job:
    """Start ``umtcds <step> args…`` as a background job (secrets only via ``env``), in the dashboard's language (its
    error messages); ``settings`` (YAML text) is saved in the job folder and given as ``--config``."""
    env = {"UMTCDS_LANG": current_lang(), **(env or {})}
    return start_job(ws, step, cli_argv(step, *args), env=env, settings=settings)


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "—"
    return str(timedelta(seconds=int(s)))


def job_panel(ws: Workspace, step: str, refresh_s: float = 1.0, show_log: bool = True) -> Job | None:
    """Live status of the latest ``step`` job: progress bar, counters, ETA, Stop button, log tail.

    Runs as a fragment that re-runs every ``refresh_s`` seconds while the job is running, so a browser reload or a
    dashboard restart simply re-attaches by reading the job folder. The project the jobs write to is named first.
    """
    st.caption(target_caption(ws))
    # What this full run of the page shows, and what the last full run that got to its end showed (page_run): after
    # the job ends, the fragment below keeps polling and asks for a full run until one has drawn the page, to its
    # end, with the job's final state — a poll already on its way can cut short the full run that draws the results.
    seen = latest_job(ws, step)
    shown = (seen.id, seen.status()) if seen is not None else None
    st.session_state.setdefault(PAGE_SHOWN, {})[step] = shown
    # (a page first opened on a finished job has nothing to catch up with: "never" drawn on this page)
    polling = shown is not None and (shown[1] == RUNNING or _drawn(step) not in ("never", shown))

    @st.fragment(run_every=refresh_s if polling else None)
    def _panel():
        redraw_if_page_unfinished()
        job = latest_job(ws, step)
        if job is None:
            return
        status = job.status()
        prog = job.progress() or {}
        total, done = prog.get("total"), prog.get("done", 0)
        unit = progress_word(prog.get("unit", ""))
        eta = tr("预计剩余", "ETA")
        label = f"{status_label(status)} · {done}/{total or '?'} {unit} · {eta} {_fmt_seconds(prog.get('eta_s'))}"
        st.progress(min(1.0, done / total) if total else 0.0, text=label)
        counters = prog.get("counters") or {}
        simple = {k: v for k, v in counters.items() if isinstance(v, (int, float, str))}
        if simple:
            cols = st.columns(min(len(simple), 6))
            for col, (k, v) in zip(cols, list(simple.items())[:6], strict=False):
                col.metric(progress_word(k), progress_word(v))
        if prog.get("message"):
            st.caption(prog["message"])
        if status == RUNNING:
            if st.button(tr("停止", "Stop"), key=f"stop_{step}_{job.id}"):
                job.stop()
                st.rerun()
        elif status == FAILED:
            reason = re.sub(r"^(错误：|Error: )", "", job.error_summary()) or tr("没有输出", "no output")
            st.error(tr("任务失败：", "The job failed: ") + reason)
        elif status == STOPPED:
            st.warning(tr("任务已停止，已保存的结果保留。", "The job was stopped; what it saved is kept."))
        if show_log:
            with st.expander(tr("日志", "Log")):
                st.code(job.log_tail(6000) or "…", language=None)
        if status != RUNNING and in_fragment_run() and (_drawn(step) != (job.id, status) or polling):
            # the job ended or another one started since the page was last drawn to its end: redraw it with the
            # results (once that is done, one more full run registers this fragment without polling)
            st.rerun()

    _panel()
    return latest_job(ws, step)


PAGE_DONE = "_page_run_complete"
"""Session key: the last full run of the page got to its end (set by the app's entry point, ``Home.py``)."""
PAGE_SHOWN = "_page_jobs_shown"
"""Session key: ``{step: (job id, status)}`` the job panels of the full run in progress drew."""
PAGE_DRAWN = "_page_jobs_drawn"
"""Session key: the same for the last full run that got to its end."""


def page_run(done: bool) -> None:
    """The app's entry point says a full run of the page starts (``False``) or got to its end (``True``)."""
    st.session_state[PAGE_DONE] = done
    if done:
        st.session_state[PAGE_DRAWN] = dict(st.session_state.get(PAGE_SHOWN, {}))
    else:
        st.session_state[PAGE_SHOWN] = {}


def _drawn(step: str):
    """``(job id, status)`` of ``step``'s panel in the last full run that got to its end ("never": none did)."""
    return st.session_state.get(PAGE_DRAWN, {}).get(step, "never")


def in_fragment_run() -> bool:
    """Whether this script run is a fragment's own run (not a full run of the page)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return bool(ctx is not None and ctx.fragment_ids_this_run)


def redraw_if_page_unfinished() -> None:
    """In a polling fragment's own run: ask for a full run when the page's last full run did not get to its end.

    Why: a poll that was already on its way when a job ended can interrupt the full run that draws the job's results
    (the results under the panel were then missing until the user reloaded the page)."""
    if in_fragment_run() and not st.session_state.get(PAGE_DONE, True):
        st.rerun()


def gpu_status() -> dict:
    from .models import gpu_memory

    try:
        import torch

        count = torch.cuda.device_count()
    except ImportError:
        count = 0
    info = gpu_memory()
    info["count"] = count
    info["cpu_cores"] = os.cpu_count()
    return info
