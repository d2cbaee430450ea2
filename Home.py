"""UMTCDS dashboard entry point: ``streamlit run Home.py`` (or ``make run``).

The picture frame: shared state, the password gate, the sidebar (language, project), and ``st.navigation`` over the
step pages in ``pages/``. The Home view shows every step's status (read from the workspace's files) and the machine.
The steps, their pages, icons and titles come from the one step registry, ``umtcds_core/steps.py``.
"""

from __future__ import annotations

import os

import streamlit as st
from streamlit.runtime.scriptrunner_utils.exceptions import StopException

from umtcds_core import steps, ui
from umtcds_core.i18n import tr
from umtcds_core.jobs import latest_job, running_job

st.set_page_config(page_title="UMTCDS", page_icon="🎓", layout="wide")
ui.init_state()

_address = st.get_option("server.address") or "0.0.0.0"  # unset means every interface
if not ui.is_loopback(_address) and not ui.get_secret("UMTCDS_PASSWORD"):
    st.warning(
        tr(
            "仪表盘可从外部访问但未设置 UMTCDS_PASSWORD。",
            "The dashboard is reachable from outside and UMTCDS_PASSWORD is not set.",
        )
    )

if not ui.password_gate():
    st.stop()

HERE = os.path.dirname(os.path.abspath(__file__))


def home() -> None:
    st.title(tr("UMTCDS · 校园问答助手微调工具", "UMTCDS · campus Q&A assistant builder"))
    st.caption(
        tr(
            "把学校网站变成一个校园问答助手：爬取 → 生成问答 → 数据集 → 配置 → 训练 → 对话与评测。",
            "Turn your university's website into a campus Q&A assistant: crawl → Q&A → dataset → config → train → chat & evaluate.",
        )
    )
    from umtcds_core.demo import render_demo_card

    render_demo_card()
    st.info(ui.embedded_model_note(), icon="ℹ️")
    box = st.container(border=True)
    ws = ui.workspace_picker(location=box, key="home")
    ui.workspace_creator(location=box)
    if ws is None:
        st.info(
            tr("先创建一个项目，所有步骤的文件都保存在其中。", "Create a project first; every step's files live in it.")
        )
        return
    st.subheader(tr("步骤状态", "Steps") + f" — {ws.name}")
    statuses = ws.statuses()
    for step in steps.PAGE_STEPS:
        c1, c2 = st.columns([3, 2])
        ui.step_link(step.name, location=c1)
        c2.write(ui.status_label(statuses[step.name]))
    if (changed := ws.site_changes()) is not None:
        n, m, k = changed["new"], changed["changed"], changed["removed"]
        st.info(
            tr(
                f"网站有变化：新增 {n} 个、修改 {m} 个、删除 {k} 个网页。",
                f"The site changed: {n} new, {m} changed, {k} removed.",
            )
            if n or m or k
            else tr("网站自上次检查以来没有变化。", "The site has not changed since the last check.")
        )
    site_refresh(ws)
    st.caption(tr("项目文件夹：", "Project folder: ") + f"`{ws.root}`")

    st.subheader(tr("计算资源", "Machine"))
    info = ui.gpu_status()
    if info["count"]:
        st.write(
            f"GPU × {info['count']}: **{info['name']}** — {info['total_gib']} GiB; "
            + tr("已分配", "allocated")
            + f" {info['allocated_gib']} GiB"
        )
    else:
        st.write(
            tr("未检测到 GPU：使用 CPU（", "No GPU found: running on CPU (")
            + f"{info['cpu_cores']} "
            + tr(
                "核）。内置小模型可以在 CPU 上完成全部流程。",
                "cores). The embedded small model runs the whole journey on CPU.",
            )
        )


def site_refresh(ws) -> None:
    # One button for the refresh chain (`umtcds refresh`): crawl --refresh → index → generate, as one background job
    # whose panel re-attaches like any step's. Shown once the project has crawled pages.
    if not any(ws.pages_dir.glob("*.txt")):
        return
    busy = [s for s in ("refresh", "crawl", "index", "generate") if running_job(ws, s) is not None]
    st.caption(
        tr(
            "重新检查网站：只重新索引有变化的网页，只为新增和修改的网页生成问答，旧问答标记为过期。",
            "Re-check the site: only changed pages are re-indexed, only new and changed pages get pairs, and the "
            "pairs of changed or removed pages are marked stale.",
        )
    )
    if st.button(
        tr("检查网站更新（爬取 → 索引 → 生成）", "Update from the site (crawl → index → generate)"),
        key="home_refresh",
        disabled=bool(busy),
    ):
        ui.start_step(ws, "refresh", [str(ws.root)])
        st.rerun()
    if latest_job(ws, "refresh") is not None:
        ui.job_panel(ws, "refresh")


def build_navigation():
    pages = [st.Page(home, title=tr("首页", "Home"), icon="🏠", default=True, url_path="home")]
    for step in steps.PAGE_STEPS:
        if os.path.exists(os.path.join(HERE, step.page)):
            pages.append(
                st.Page(step.page, title=ui.step_title(step.name, short=True), icon=step.icon, url_path=step.name)
            )
    return st.navigation(pages)


ui.language_switch()
ui.workspace_picker()
ui.page_run(done=False)
try:
    build_navigation().run()
except (StopException, Exception):  # st.stop(), or an error shown on the page: a rerun would not draw more
    ui.page_run(done=True)  # (a rerun request interrupting the page is neither: it is no Exception)
    raise
ui.page_run(done=True)  # the page got to its end (ui.redraw_if_page_unfinished)
