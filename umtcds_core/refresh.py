"""``umtcds refresh PROJECT_DIR`` — bring a project up to date with its site: crawl --refresh → index → generate.

Why one command: a campus site changes every week, and what changed has to flow through three steps in order — the
crawl finds the new, changed and removed pages; the search index re-indexes only those; generate writes pairs only
for the new and changed pages and marks the pairs of changed or removed pages stale. Home's "update" button runs this
command as one background job, and the same line is what a cron entry runs.

Each step runs as its own ``umtcds <step>`` process with the settings the project last used for it (the job folder's
``settings.yaml`` the step's page saved), so the chain does exactly what the pages would and nothing new is
configured here:

1. **crawl** — the latest crawl's settings with ``--refresh`` (or the project's start URL with the defaults when it was
   crawled from the command line);
2. **index** — only when the project has a search index (``index/``); incremental by the index's own rule;
3. **generate** — only when the project has generated pairs with saved settings, and only when the refresh found
   something new, changed or removed (its API key comes from the environment or ``.streamlit/secrets.toml``, as for
   any job).

A step that fails stops the chain (its own sentence is in the log); what the steps before it wrote is kept.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from .errors import UserError
from .fileio import iter_jsonl
from .jobs import cli_argv, list_jobs
from .workspace import Workspace, site_changes

STEPS = ("crawl", "index", "generate")


def _latest_settings(ws: Workspace, step: str) -> Path | None:
    """The settings file of the project's latest ``step`` job that saved one (a page-started job), else None."""
    for job in list_jobs(ws, step):
        if job.settings_file.exists():
            return job.settings_file
    return None


def _start_url(ws: Workspace) -> str | None:
    """Where the project's crawl started: the dashboard records it; a command-line crawl's manifest says it too."""
    url = ws.meta().get("start_url")
    if url:
        return url
    manifest = ws.pages_dir / "manifest.jsonl"
    if manifest.exists():
        for row in iter_jsonl(manifest, errors=[]):
            if row.get("depth") == 0 and row.get("url"):
                return row["url"]
    return None


def plan(ws: Workspace) -> list[tuple[str, list[str] | None, str]]:
    """``[(step, argv after the command or None when skipped, why)]`` for the chain, from the project's files."""
    from .index import index_dir_of

    crawl_settings = _latest_settings(ws, "crawl")
    if crawl_settings is not None:
        crawl = ["--config", str(crawl_settings), "--out", str(ws.pages_dir), "--refresh", "--quiet"]
    elif (url := _start_url(ws)) is not None and any(ws.pages_dir.glob("*.txt")):
        crawl = [url, "--out", str(ws.pages_dir), "--refresh", "--quiet"]
    else:
        raise UserError(
            f"The project {ws.name} has no crawl to refresh; crawl its site first (the Crawl page or umtcds crawl).",
            zh=f"项目 {ws.name} 还没有可以刷新的爬取结果；请先爬取网站（“爬取”页面或 umtcds crawl）。",
        )
    out: list[tuple[str, list[str] | None, str]] = [("crawl", crawl, "")]
    index_dir = index_dir_of(ws)
    if (index_dir / "meta.json").exists():
        # the project's own index settings (chunk size, embedding model…) when the Crawl page saved them
        index_settings = _latest_settings(ws, "index")
        again = ["--config", str(index_settings)] if index_settings is not None else []
        out.append(("index", [*again, str(ws.pages_dir), "--out", str(index_dir), "--quiet"], ""))
    else:
        out.append(("index", None, "the project has no search index"))
    gen_settings = _latest_settings(ws, "generate")
    if gen_settings is not None and ws.qa_file.exists():
        out.append(("generate", ["--config", str(gen_settings)], ""))
    else:
        out.append(("generate", None, "no pairs were generated in this project yet"))
    return out


def refresh(ws: Workspace, log=print) -> int:
    """Run the chain; the first failing step's exit code (0 when all ran). Each step writes its own lines and
    progress (the job's progress file is inherited), so the dashboard shows the step that is running."""
    if not ws.meta_file.exists():
        raise UserError(
            f"{ws.root} is not a UMTCDS project folder; give the folder the dashboard created (data/workspaces/NAME).",
            zh=f"{ws.root} 不是 UMTCDS 项目文件夹；请给出仪表盘创建的文件夹（data/workspaces/项目名）。",
        )
    chain = plan(ws)
    for i, (step, args, why) in enumerate(chain, start=1):
        head = f"[refresh {i}/{len(chain)}] {step}"
        if step == "generate" and args is not None:
            changes = site_changes(ws.pages_dir) or {}
            if not any(changes.get(k) for k in ("new", "changed", "removed")):
                args, why = None, "the site has no new, changed or removed pages"
        if args is None:
            log(f"{head}: skipped ({why})")
            continue
        log(f"{head}: umtcds {step} {' '.join(args)}")
        rc = subprocess.call(cli_argv(step, *args), stdin=subprocess.DEVNULL)
        if rc != 0:
            log(f"[refresh] stopped at {step} (exit {rc}); what the steps before it wrote is kept.")
            return rc
    changes = site_changes(ws.pages_dir) or {}
    log(
        f"Refresh done: {changes.get('new', 0)} new, {changes.get('changed', 0)} changed, "
        f"{changes.get('removed', 0)} removed pages."
    )
    return 0


# ---- CLI ------------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("project", metavar="PROJECT_DIR", help="the project folder (data/workspaces/NAME)")


def run(args: argparse.Namespace) -> int:
    return refresh(Workspace.open(args.project), log=lambda msg: print(msg, flush=True))
