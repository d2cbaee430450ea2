"""Step 1 — Crawl: settings → a background ``umtcds crawl`` job → live counts → browse, read and drop pages.

A thin view: validation, URL rules and the crawl itself live in :mod:`umtcds_core.crawl`; the job runs the same CLI
a user would type, writing into the workspace's ``pages/`` folder, so closing the browser does not stop it.
"""

from __future__ import annotations

import shlex

import pandas as pd
import streamlit as st

from umtcds_core import ui
from umtcds_core.crawl import MANIFEST, CrawlConfig, url_verdict
from umtcds_core.errors import UserError
from umtcds_core.fetch import DEFAULT_TIMEOUT, DEFAULT_USER_AGENT
from umtcds_core.fileio import read_jsonl
from umtcds_core.i18n import error_text, tr
from umtcds_core.jobs import running_job

ws = ui.require_workspace()
pages_dir = ws.pages_dir
meta = ws.meta()

st.header(tr("第一步：爬取网页", "Step 1: Crawl the site"))
st.caption(
    tr(
        "⚠️ 获取数据前请先获得网站管理者的许可！爬虫只访问同一站点，默认遵守 robots.txt，并在请求之间停顿。",
        "⚠️ Get the site owner's permission before collecting data! The crawler stays on one site, obeys robots.txt "
        "by default and pauses between requests.",
    )
)


def _lines(text: str) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


# ---- settings -----------------------------------------------------------------------------------------------------
url = st.text_input(
    tr("起始网址", "Start URL"),
    value=meta.get("start_url", ""),
    placeholder="https://www.example.edu.cn/",
    key="crawl_url",
    help=tr(
        "学校网站首页或某个栏目页，需以 http:// 或 https:// 开头。",
        "The site's home or a section page, with http(s)://.",
    ),
)
c1, c2, c3, c4 = st.columns(4)
depth = c1.number_input(
    tr("深度（链接跳数）", "Depth (link hops)"),
    min_value=0,
    max_value=10,
    value=1,
    key="crawl_depth",
    help=tr("0 = 只取起始页；1 = 起始页及其直接链接。", "0 = only the start page; 1 = it and the pages it links to."),
)
max_pages = c2.number_input(
    tr("最多页数", "Max pages"), min_value=1, max_value=100_000, value=500, key="crawl_max_pages"
)
concurrency = c3.number_input(
    tr("并发数", "Concurrency"),
    min_value=1,
    max_value=32,
    value=4,
    key="crawl_concurrency",
    help=tr("同时进行的请求数；4 对学校服务器比较友好。", "Parallel requests; 4 is kind to a campus server."),
)
delay = c4.number_input(
    tr("请求间隔（秒）", "Delay (seconds)"),
    min_value=0.0,
    max_value=60.0,
    value=0.5,
    step=0.1,
    key="crawl_delay",
    help=tr(
        "同一主机两次请求之间的最短间隔；robots.txt 的 Crawl-delay 更大时以其为准。",
        "Minimum gap between requests to one host; robots.txt Crawl-delay wins when larger.",
    ),
)
respect_robots = st.toggle(tr("遵守 robots.txt", "Respect robots.txt"), value=True, key="crawl_robots")
if not respect_robots:
    st.warning(
        tr(
            "⚠️⚠️⚠️ 获取数据前请先获得网站开发者的许可！关闭 robots.txt 检查后，爬虫会访问网站不希望被抓取的页面。"
            "请仅在网站管理者明确同意时这样做。",
            "⚠️⚠️⚠️ Get the website owner's permission before collecting data! With robots.txt off, the crawler will "
            "visit pages the site asks crawlers to avoid. Do this only with the site owner's explicit consent.",
        )
    )

with st.expander(tr("筛选与高级选项", "Filters and advanced options")):
    f1, f2 = st.columns(2)
    include_text = f1.text_area(
        tr("只跟随匹配的链接（正则，每行一个）", "Follow only links matching (regex, one per line)"),
        key="crawl_include",
        placeholder=r"/info/|/tzgg/",
    )
    exclude_text = f2.text_area(
        tr("不跟随匹配的链接（正则，每行一个）", "Never follow links matching (regex, one per line)"),
        key="crawl_exclude",
        placeholder=r"/en/|\?.*print",
    )
    o1, o2 = st.columns(2)
    subdomains = o1.checkbox(
        tr("包含子域名（如 jwc.xxx.edu.cn）", "Include subdomains (e.g. jwc.xxx.edu.cn)"), key="crawl_subdomains"
    )
    attachments = o2.checkbox(tr("提取 PDF / Word 附件", "Extract PDF / Word attachments"), key="crawl_attachments")
    o3, o4 = st.columns([3, 1])
    user_agent = o3.text_input("User-Agent", value=DEFAULT_USER_AGENT, key="crawl_user_agent")
    timeout = o4.number_input(
        tr("超时（秒）", "Timeout (s)"), min_value=1.0, max_value=300.0, value=DEFAULT_TIMEOUT, key="crawl_timeout"
    )


def _config() -> CrawlConfig:
    return CrawlConfig(
        start_url=url,
        out_dir=pages_dir,
        depth=int(depth),
        max_pages=int(max_pages),
        concurrency=int(concurrency),
        delay=float(delay),
        respect_robots=respect_robots,
        include=_lines(include_text),
        exclude=_lines(exclude_text),
        subdomains=subdomains,
        attachments=attachments,
        user_agent=user_agent,
        timeout=float(timeout),
    )


with st.expander(tr("测试一个网址是否会被爬取", "Test whether a URL would be crawled")):
    probe = st.text_input(
        tr("要测试的网址", "URL to test"),
        key="crawl_probe",
        placeholder="https://www.example.edu.cn/info/1021/3456.htm",
    )
    if probe.strip():
        try:
            reason = url_verdict(probe.strip(), _config())
        except UserError as exc:
            st.error(error_text(exc))
        else:
            if reason is None:
                st.success(
                    tr(
                        "会跟随这个链接（robots.txt 在爬取时检查）。",
                        "Would be followed (robots.txt is checked while crawling).",
                    )
                )
            else:
                st.info(tr("不会跟随：", "Would be skipped: ") + reason)

# ---- start --------------------------------------------------------------------------------------------------------
active = running_job(ws, "crawl")
if st.button(tr("开始爬取", "Start crawl"), type="primary", disabled=active is not None, key="crawl_start"):
    try:
        cfg = _config()
    except UserError as exc:
        st.error(error_text(exc))
    else:
        args = [
            cfg.start_url,
            "--out",
            str(pages_dir),
            "--depth",
            str(cfg.depth),
            "--max-pages",
            str(cfg.max_pages),
            "--concurrency",
            str(cfg.concurrency),
            "--delay",
            f"{cfg.delay:g}",
            "--timeout",
            f"{cfg.timeout:g}",
        ]
        if not cfg.respect_robots:
            args.append("--ignore-robots")
        for pattern in cfg.include:
            args += ["--include", pattern]
        for pattern in cfg.exclude:
            args += ["--exclude", pattern]
        if cfg.subdomains:
            args.append("--subdomains")
        if cfg.attachments:
            args.append("--attachments")
        if cfg.user_agent != DEFAULT_USER_AGENT:
            args += ["--user-agent", cfg.user_agent]
        ws.update_meta(start_url=cfg.start_url)
        ui.start_step(ws, "crawl", args)
        st.session_state["crawl_last_command"] = "umtcds crawl " + shlex.join(args)
        st.rerun()
if st.session_state.get("crawl_last_command"):
    st.caption(tr("等价的命令行：", "Same as running: ") + f"`{st.session_state['crawl_last_command']}`")

job = ui.job_panel(ws, "crawl")


# ---- results --------------------------------------------------------------------------------------------------------
def _manifest() -> tuple[list[dict], int]:
    path = pages_dir / MANIFEST
    if not path.exists():
        return [], 0
    bad: list = []
    return read_jsonl(path, errors=bad), len(bad)


@st.fragment(run_every=2.0 if active is not None else None)
def _recent():
    records, _bad = _manifest()
    if not records:
        return
    st.subheader(tr("最近访问的网址", "Recent URLs"))
    rows = [
        {
            tr("网址", "URL"): r.get("url"),
            tr("状态", "Status"): r.get("status"),
            tr("标题", "Title"): r.get("title"),
            tr("字数", "Chars"): r.get("chars"),
            tr("结果", "Result"): tr("已保存", "saved") if r.get("path") else (r.get("error") or ""),
        }
        for r in reversed(records[-30:])
    ]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


_recent()

records, bad_lines = _manifest()
if bad_lines:
    st.warning(
        tr(
            f"manifest.jsonl 中有 {bad_lines} 行无法读取，已跳过。",
            f"{bad_lines} unreadable lines in manifest.jsonl were skipped.",
        )
    )
saved = {}
for r in records:
    if r.get("path"):
        saved[r["path"]] = r  # the latest record for each file wins
files = [name for name in saved if (pages_dir / name).exists()]
if files:
    st.subheader(tr(f"已保存的页面（{len(files)}）", f"Saved pages ({len(files)})"))
    table = pd.DataFrame(
        [
            {
                tr("文件", "File"): name,
                tr("标题", "Title"): saved[name].get("title"),
                tr("原始大小 (KB)", "Raw size (KB)"): round((saved[name].get("bytes") or 0) / 1024, 1),
                tr("正文大小 (KB)", "Text size (KB)"): round((pages_dir / name).stat().st_size / 1024, 1),
                tr("正文字数", "Extracted chars"): saved[name].get("chars"),
                tr(
                    "正文 / 原始", "Text / raw"
                ): f"{(pages_dir / name).stat().st_size / max(1, saved[name].get('bytes') or 1):.0%}",
                tr("编码", "Encoding"): saved[name].get("encoding") or saved[name].get("kind"),
                tr("网址", "URL"): saved[name].get("final_url") or saved[name].get("url"),
            }
            for name in files
        ]
    )
    st.dataframe(table, hide_index=True, width="stretch")
    chosen = st.selectbox(tr("查看页面正文", "Open a page's text"), files, key="crawl_open")
    if chosen:
        st.text_area(
            saved[chosen].get("final_url") or chosen,
            (pages_dir / chosen).read_text(encoding="utf-8", errors="replace"),
            height=300,
            disabled=True,
            key=f"crawl_text_{chosen}",
        )
    to_drop = st.multiselect(
        tr("从数据集中移除页面", "Drop pages from the set"),
        files,
        key="crawl_drop",
        help=tr(
            "删除这些 .txt 文件；重新爬取时不会再下载它们。",
            "Deletes these .txt files; a re-crawl will not fetch them again.",
        ),
    )
    if st.button(tr("移除所选页面", "Drop selected pages"), disabled=not to_drop, key="crawl_drop_btn"):
        for name in to_drop:
            ws.remove(pages_dir / name)
        st.session_state.pop("crawl_drop", None)
        st.session_state["crawl_dropped"] = len(to_drop)
        st.rerun()
    if st.session_state.get("crawl_dropped"):
        n = st.session_state.pop("crawl_dropped")
        st.success(tr(f"已移除 {n} 个页面。", f"Dropped {n} pages."))
elif records and active is None:
    st.info(tr("还没有保存任何页面；请查看上面的结果列。", "No page saved yet; see the Result column above."))
