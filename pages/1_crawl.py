"""Step 1 — Crawl: settings → a background ``umtcds crawl`` job → live counts → browse, read and drop pages.

A thin view: the settings' labels, defaults and checks come from the crawl schema (:data:`umtcds_core.crawl.CRAWL`);
Start saves them as ``settings.yaml`` in the job folder and runs ``umtcds crawl --config <that file>`` — the same CLI a
user would type — writing into the workspace's ``pages/`` folder, so closing the browser does not stop it. While a
crawl runs, the page shows that crawl's settings (read back from its file), not its own defaults.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import streamlit as st

from umtcds_core import ui, ui_fields
from umtcds_core.crawl import CRAWL, MANIFEST, CrawlConfig, robots_verdict, url_verdict
from umtcds_core.dense import read_recipe
from umtcds_core.errors import UserError
from umtcds_core.fileio import read_jsonl
from umtcds_core.i18n import error_text, tr
from umtcds_core.index import INDEX, Index, index_dir_of, index_status, snippet
from umtcds_core.jobs import latest_job, running_job

ws = ui.require_workspace()
pages_dir = ws.pages_dir
meta = ws.meta()

ui.page_header("crawl")
st.caption(
    tr(
        "⚠️ 获取数据前请先获得网站管理者的许可！爬虫只访问同一站点，默认遵守 robots.txt，并在请求之间停顿。",
        "⚠️ Get the site owner's permission before collecting data! The crawler stays on one site, obeys robots.txt "
        "by default and pauses between requests.",
    )
)


def _lines(text: str) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def _label(name: str) -> str:
    return tr(*CRAWL[name].label)


def _help(name: str) -> str | None:
    return tr(*CRAWL[name].help) if CRAWL[name].help else None


# ---- settings: labels, help and defaults from the crawl schema (umtcds_core.crawl.CRAWL) -------------------------
_PLAIN = (
    "depth",
    "max_pages",
    "concurrency",
    "delay",
    "subdomains",
    "attachments",
    "user_agent",
    "timeout",
    "max_mb",
    "render",
    "render_concurrency",
    "render_timeout",
)


def _job_settings(job) -> dict | None:
    """The settings a job was started with (its settings.yaml), or None (started with flags, or unreadable)."""
    if job is None or not job.settings_file.exists():
        return None
    try:
        return CRAWL.load_yaml(job.settings_file)
    except UserError:
        return None


active = running_job(ws, "crawl")
shown = _job_settings(active)
if shown:  # a crawl runs: its own settings (from its settings.yaml) are shown, not this page's defaults
    ui_fields.seed(CRAWL, shown, "crawl_", _PLAIN, force=True)
    st.session_state["crawl_url"] = shown.get("start_url") or ""
    st.session_state["crawl_robots"] = bool(shown.get("respect_robots", True))
    st.session_state["crawl_include"] = "\n".join(shown.get("include") or [])
    st.session_state["crawl_exclude"] = "\n".join(shown.get("exclude") or [])
st.session_state.setdefault("crawl_url", meta.get("start_url", ""))
locked = active is not None
url = st.text_input(
    _label("start_url"),
    placeholder="https://www.example.edu.cn/",
    key="crawl_url",
    help=_help("start_url"),
    disabled=locked,
)
values = ui_fields.inputs(
    CRAWL, CRAWL.defaults(), "crawl_", names=("depth", "max_pages", "concurrency", "delay"), cols=4, disabled=locked
)
st.session_state.setdefault("crawl_robots", CRAWL["respect_robots"].default)
respect_robots = st.toggle(_label("respect_robots"), key="crawl_robots", disabled=locked)
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
    include_text = f1.text_area(_label("include"), key="crawl_include", placeholder=r"/info/|/tzgg/", disabled=locked)
    exclude_text = f2.text_area(_label("exclude"), key="crawl_exclude", placeholder=r"/en/|\?.*print", disabled=locked)
    values |= ui_fields.inputs(
        CRAWL, CRAWL.defaults(), "crawl_", names=("subdomains", "attachments"), cols=2, disabled=locked
    )
    values |= ui_fields.inputs(
        CRAWL, CRAWL.defaults(), "crawl_", names=("user_agent", "timeout", "max_mb"), cols=2, disabled=locked
    )
    values |= ui_fields.inputs(
        CRAWL, CRAWL.defaults(), "crawl_", names=("render", "render_concurrency", "render_timeout"), disabled=locked
    )
values.update(
    start_url=url.strip() or None,
    out_dir=str(pages_dir),
    respect_robots=respect_robots,
    include=_lines(include_text) or None,
    exclude=_lines(exclude_text) or None,
)


def _checked() -> tuple[dict, CrawlConfig]:
    """The page's settings validated by the schema (the CLI's sentences), then the start URL by CrawlConfig."""
    checked = CRAWL.check(values)
    return checked, CrawlConfig.from_settings(checked)


@st.cache_data(ttl=300, show_spinner=False)
def _robots(url: str, user_agent: str, timeout: float) -> str | None:
    return robots_verdict(url, CrawlConfig("http://x/", ".", user_agent=user_agent, timeout=timeout))


with st.expander(tr("测试一个网址是否会被爬取", "Test whether a URL would be crawled")):
    probe = st.text_input(
        tr("要测试的网址", "URL to test"),
        key="crawl_probe",
        placeholder="https://www.example.edu.cn/info/1021/3456.htm",
    )
    if probe.strip():
        try:
            _, cfg = _checked()
            reason = url_verdict(probe.strip(), cfg)
        except UserError as exc:
            st.error(error_text(exc))
        else:
            if reason is None and cfg.respect_robots:
                with st.spinner(tr("正在读取 robots.txt…", "Reading robots.txt…")):
                    reason = _robots(probe.strip(), cfg.user_agent, min(cfg.timeout, 10.0))
            if reason is None:
                st.success(
                    tr("会跟随这个链接（robots.txt 允许）。", "Would be followed (robots.txt allows it).")
                    if cfg.respect_robots
                    else tr("会跟随这个链接（已关闭 robots.txt 检查）。", "Would be followed (robots.txt is off).")
                )
            else:
                st.info(tr("不会跟随：", "Would be skipped: ") + reason)

# ---- start --------------------------------------------------------------------------------------------------------
if st.button(tr("开始爬取", "Start crawl"), type="primary", disabled=locked, key="crawl_start"):
    try:
        checked, cfg = _checked()
    except UserError as exc:
        st.error(error_text(exc))
    else:
        ws.update_meta(start_url=cfg.start_url)
        ui.start_step(ws, "crawl", [], settings=CRAWL.to_yaml(checked))
        st.rerun()
latest = latest_job(ws, "crawl")
if latest is not None and latest.settings_file.exists():
    st.caption(tr("等价的命令行：", "Same as running: ") + f"`umtcds crawl --config {latest.settings_file}`")

job = ui.job_panel(ws, "crawl")


# ---- results --------------------------------------------------------------------------------------------------------
def _manifest() -> tuple[list[dict], int]:
    path = pages_dir / MANIFEST
    if not path.exists():
        return [], 0
    bad: list = []
    return read_jsonl(path, errors=bad), len(bad)


def _cell(value) -> str:
    """A table cell: missing values as "—", never a raw "None"."""
    return "—" if value is None or value == "" else str(value)


def _of_latest_crawl(records: list[dict]) -> list[dict]:
    """The manifest lines the latest crawl job wrote: a URL that failed in an earlier crawl is not this crawl's.

    Each crawl stamps its lines with its start (``run``, to the microsecond); the latest job's lines are those of a
    run that started after the job did. ``fetched_at`` alone (whole seconds) could not tell apart two crawls started
    within the same second."""
    job = latest_job(ws, "crawl")
    started = (job.meta.get("started") if job is not None else None) or 0

    def run_start(r: dict) -> float:
        try:
            if r.get("run"):
                return datetime.fromisoformat(r["run"]).timestamp()
            # a manifest written before lines carried their run: the fetch time, to the second
            return datetime.strptime(r.get("fetched_at") or "", "%Y-%m-%dT%H:%M:%S%z").timestamp() + 0.999
        except ValueError:
            return 0.0

    if not started:
        return records
    return [r for r in records if run_start(r) >= started]


@st.fragment(run_every=2.0 if active is not None else None)
def _recent():
    ui.redraw_if_page_unfinished()
    records = _of_latest_crawl(_manifest()[0])
    if not records:
        return
    st.subheader(tr("最近访问的网址", "Recent URLs"))
    rows = [
        {
            tr("网址", "URL"): r.get("url"),
            tr("状态", "Status"): _cell(r.get("status")),
            tr("标题", "Title"): _cell(r.get("title")),
            tr("字数", "Chars"): r.get("chars") or 0,
            tr("结果", "Result"): tr("已保存", "saved") if r.get("path") else _cell(r.get("error")),
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
                tr("标题", "Title"): _cell(saved[name].get("title")),
                tr("原始大小 (KB)", "Raw size (KB)"): round((saved[name].get("bytes") or 0) / 1024, 1),
                tr("正文大小 (KB)", "Text size (KB)"): round((pages_dir / name).stat().st_size / 1024, 1),
                tr("正文字数", "Extracted chars"): saved[name].get("chars") or 0,
                tr(
                    "正文 / 原始", "Text / raw"
                ): f"{(pages_dir / name).stat().st_size / max(1, saved[name].get('bytes') or 1):.0%}",
                tr("编码", "Encoding"): _cell(saved[name].get("encoding") or saved[name].get("kind")),
                tr("网址", "URL"): saved[name].get("final_url") or saved[name].get("url"),
            }
            for name in files
        ]
    )
    st.dataframe(table, hide_index=True, width="stretch")
    chosen = st.selectbox(tr("查看页面正文", "Open a page's text"), files, key="crawl_open")
    if chosen:  # st.code, not a disabled text area: a disabled widget's text is drawn faint grey
        st.caption(saved[chosen].get("final_url") or chosen)
        st.code((pages_dir / chosen).read_text(encoding="utf-8", errors="replace"), language=None, wrap_lines=True,
                height=300)  # fmt: skip
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


# ---- search index: built from the saved pages by a background `umtcds index` job; a search box to try it ----------
@st.cache_resource(max_entries=2, show_spinner=False)
def _loaded_index(path: str, built_at: str) -> Index:  # built_at: a rebuilt index is loaded afresh
    return Index.load(path, check_stale=False)


if files and active is None:
    index_dir = index_dir_of(ws)
    st.subheader(tr("搜索索引", "Search index"))
    status = index_status(index_dir)
    index_running = running_job(ws, "index") is not None
    if not status.built:
        st.info(
            tr(
                "还没有搜索索引。建立后，对话页可以根据网站内容回答，并列出答案来自哪些页面。",
                "No search index yet. With one, the Chat page can answer from the website and list the pages the "
                "answer comes from.",
            )
        )
    elif status.stale:
        st.warning(
            tr(
                f"建立索引后有 {len(status.stale)} 个页面发生了变化；请刷新索引。",
                f"{len(status.stale)} pages changed since the index was built; refresh it.",
            )
        )
    else:
        st.caption(
            tr(
                f"索引包含 {status.pages} 个页面、{status.chunks} 个段落（建立于 {status.built_at}）。",
                f"The index holds {status.pages} pages in {status.chunks} chunks (built {status.built_at}).",
            )
            + (
                tr(f" 同时使用向量模型 {status.embed_model}。", f" Embeddings: {status.embed_model}.")
                if status.embed_model
                else ""
            )
        )
    # the optional embedding-model folder, from the index schema; it starts as the model the index remembers
    index_values = ui_fields.inputs(
        INDEX,
        {"embed_model": status.embed_model or None},
        "ix_",
        names=("embed_model", "embed_batch_size"),
        cols=2,
        disabled=index_running,
    )
    label = (
        tr("刷新搜索索引", "Refresh the search index") if status.built else tr("建立搜索索引", "Build the search index")
    )
    if st.button(label, key="crawl_index", disabled=index_running):
        try:  # a wrong folder is said here, before a job starts (reads its JSON only, no model is loaded)
            checked = INDEX.check({**index_values, "pages_dir": str(pages_dir), "out_dir": str(index_dir)})
            if checked.get("embed_model"):
                read_recipe(checked["embed_model"])
        except UserError as exc:
            st.error(error_text(exc))
        else:
            args = [str(pages_dir), "--out", str(index_dir), "--quiet"]
            ui.start_step(ws, "index", args, settings=INDEX.to_yaml(checked))
            st.rerun()
    if latest_job(ws, "index") is not None:
        ui.job_panel(ws, "index", show_log=False)
    if status.built:
        question = st.text_input(
            tr("试着搜索", "Try a search"),
            key="crawl_search",
            placeholder=tr("例如：图书馆几点开门？", "e.g. When does the library open?"),
        )
        if question.strip():
            try:
                hits = _loaded_index(str(index_dir), status.built_at).search(question, k=5)
            except UserError as exc:
                st.error(error_text(exc))
            else:
                if not hits:
                    st.info(
                        tr("没有段落包含这些词；换个说法试试。", "No chunk shares a word with this; try other words.")
                    )
                for hit in hits:
                    link = (
                        f"[{hit['title'] or hit['page']}]({hit['url']})" if hit["url"] else hit["title"] or hit["page"]
                    )
                    st.markdown(f"**{hit['rank']}.** {link} · {tr('得分', 'score')} {hit['score']:.2f}")
                    st.caption(snippet(hit["text"]))
ui.next_step("crawl")  # a link to the next step once this one is done
