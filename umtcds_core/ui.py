"""Shared Streamlit pieces for the pages: state, password gate, workspace picker, job panel.

The only core module that imports Streamlit (the CLI never imports it). Pages stay thin: read state, call one core
function or start one job, render.
"""

from __future__ import annotations

import hmac
import os
import time
from datetime import timedelta

import streamlit as st

from .i18n import LANGS, current_lang, error_text, tr
from .jobs import STOPPED, Job, cli_argv, latest_job, start_job
from .secrets import get_secret, is_loopback  # noqa: F401 - re-exported for pages
from .workspace import DONE, FAILED, NOT_STARTED, RUNNING, Workspace, WorkspaceError, list_workspaces

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
    """Wizard data lives in plain session_state keys (widget keys reset across pages)."""
    st.session_state.setdefault("lang", "zh")
    st.session_state.setdefault("authenticated", False)
    if "workspace" not in st.session_state:
        existing = list_workspaces()
        st.session_state["workspace"] = str(existing[0].root) if existing else None


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
    def _set():
        st.session_state["lang"] = st.session_state["_lang_choice"]

    keys = list(LANGS)
    st.sidebar.radio(
        "语言 / Language",
        keys,
        format_func=LANGS.get,
        index=keys.index(st.session_state.get("lang", "zh")),
        key="_lang_choice",
        on_change=_set,
        horizontal=True,
    )


def current_workspace() -> Workspace | None:
    path = st.session_state.get("workspace")
    return Workspace.open(path) if path else None


def workspace_picker(location=None, key: str = "sidebar") -> Workspace | None:
    """Pick an existing workspace; the choice is kept in ``st.session_state['workspace']`` (a plain key)."""
    where = location or st.sidebar
    existing = list_workspaces()
    names = [w.name for w in existing]
    current = current_workspace()
    if names:
        idx = names.index(current.name) if current is not None and current.name in names else 0
        widget_key = f"_ws_choice_{key}"

        def _pick():
            st.session_state["workspace"] = str(existing[names.index(st.session_state[widget_key])].root)

        where.selectbox(tr("项目（工作区）", "Project (workspace)"), names, index=idx, key=widget_key, on_change=_pick)
        if current is None or current.name not in names:
            st.session_state["workspace"] = str(existing[idx].root)
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
                st.session_state["workspace"] = str(ws.root)
                st.rerun()


def require_workspace() -> Workspace:
    ws = current_workspace()
    if ws is None:
        st.info(tr("请先在首页或侧边栏创建或选择一个项目。", "Create or pick a project first (Home page or sidebar)."))
        st.stop()
    return ws


def start_step(ws: Workspace, step: str, args: list[str], env: dict[str, str] | None = None) -> Job:
    """Start ``umtcds <step> args…`` as a background job (secrets only via ``env``), in the dashboard's language (its
    error messages)."""
    return start_job(ws, step, cli_argv(step, *args), env={"UMTCDS_LANG": current_lang(), **(env or {})})


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "—"
    return str(timedelta(seconds=int(s)))


def job_panel(ws: Workspace, step: str, refresh_s: float = 1.0, show_log: bool = True) -> Job | None:
    """Live status of the latest ``step`` job: progress bar, counters, ETA, Stop button, log tail.

    Runs as a fragment that re-runs every ``refresh_s`` seconds while the job is running, so a browser reload or a
    dashboard restart simply re-attaches by reading the job folder.
    """

    @st.fragment(run_every=refresh_s if (j := latest_job(ws, step)) is not None and j.status() == RUNNING else None)
    def _panel():
        job = latest_job(ws, step)
        if job is None:
            return
        status = job.status()
        prog = job.progress() or {}
        total, done = prog.get("total"), prog.get("done", 0)
        label = f"{status_label(status)} · {done}/{total or '?'} {prog.get('unit', '')} · ETA {_fmt_seconds(prog.get('eta_s'))}"
        st.progress(min(1.0, done / total) if total else 0.0, text=label)
        counters = prog.get("counters") or {}
        simple = {k: v for k, v in counters.items() if isinstance(v, (int, float, str))}
        if simple:
            cols = st.columns(min(len(simple), 6))
            for col, (k, v) in zip(cols, list(simple.items())[:6], strict=False):
                col.metric(k, v)
        if prog.get("message"):
            st.caption(prog["message"])
        if status == RUNNING:
            if st.button(tr("停止", "Stop"), key=f"stop_{step}_{job.id}"):
                job.stop()
                st.rerun()
        elif status == FAILED:
            st.error(tr("任务失败：", "The job failed: ") + (job.error_summary() or tr("没有输出", "no output")))
        elif status == STOPPED:
            st.warning(tr("任务已停止，已保存的结果保留。", "The job was stopped; what it saved is kept."))
        if show_log:
            with st.expander(tr("日志", "Log")):
                st.code(job.log_tail(6000) or "…", language=None)
        if status != RUNNING and st.session_state.get(f"_was_running_{step}"):
            st.session_state[f"_was_running_{step}"] = False
            st.rerun()  # refresh the whole page once so results appear
        if status == RUNNING:
            st.session_state[f"_was_running_{step}"] = True

    _panel()
    return latest_job(ws, step)


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
