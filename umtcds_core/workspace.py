"""A project is a folder; this module knows its layout and reads each step's status from the files alone.

Layout (every arrow of the pipeline is a file, so any step can be re-run, inspected or done by hand)::

    <workspace>/
      workspace.json          name, created, start URL, free-form settings the dashboard remembers
      pages/                  step 1 — crawl output: *.txt + manifest.jsonl
      qa/                     step 2 — qa.jsonl + failures.jsonl (+ prompts)
      dataset/                step 3 — train.jsonl dev.jsonl test.jsonl (+ qa_edited.jsonl)
      config.yaml             step 4 — the training config
      runs/<run-id>/          step 5 — checkpoints, metrics.jsonl, final adapter; step 6 — eval/
      jobs/<job-id>/          background jobs (see jobs.py)

Why status from files: the dashboard can be restarted, the browser closed, or a step run from the CLI, and the
status shown is still true.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from . import steps
from .errors import UserError
from .fileio import iter_jsonl, read_json, write_json_atomic
from .jobs import DONE, FAILED, RUNNING, latest_job
from .runs import eval_metrics_path, has_final_model, list_runs, new_run_dir

DEFAULT_ROOT = Path(__file__).resolve().parent.parent / "data" / "workspaces"
STEPS = steps.STATUS_STEPS  # the steps with a status, from the one step registry

NOT_STARTED = "not started"  # a step's status; the others (running, done, failed) are its latest job's states

_NAME_RE = re.compile(r"^[\w\-. ]{1,64}$", re.UNICODE)


class WorkspaceError(UserError, ValueError):
    """A bad workspace name or a path that leaves the workspace."""


def workspaces_root() -> Path:
    return Path(os.environ.get("UMTCDS_WORKSPACES", DEFAULT_ROOT))


@dataclass(frozen=True)
class Workspace:
    root: Path

    # ---- layout -------------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.root.name

    @property
    def pages_dir(self) -> Path:
        return self.root / "pages"

    @property
    def qa_dir(self) -> Path:
        return self.root / "qa"

    @property
    def qa_file(self) -> Path:
        return self.qa_dir / "qa.jsonl"

    @property
    def dataset_dir(self) -> Path:
        return self.root / "dataset"

    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def jobs_dir(self) -> Path:
        return self.root / "jobs"

    @property
    def meta_file(self) -> Path:
        return self.root / "workspace.json"

    # ---- creation -----------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, name: str, root: Path | None = None) -> Workspace:
        """Create (or open) the workspace ``name`` under ``root`` (default ``data/workspaces``)."""
        if not _NAME_RE.match(name) or name in {".", ".."}:
            raise WorkspaceError(
                f"'{name}' is not a usable workspace name; use letters, digits, '-', '_', '.' or spaces (max 64).",
                zh=f"“{name}”不能用作项目名；请使用字母、数字、“-”、“_”、“.”或空格（最多 64 个字符）。",
            )
        ws = cls((root or workspaces_root()) / name)
        ws.root.mkdir(parents=True, exist_ok=True)
        if not ws.meta_file.exists():
            write_json_atomic(ws.meta_file, {"name": name, "created": time.time()})
        return ws

    @classmethod
    def open(cls, path: str | os.PathLike) -> Workspace:
        return cls(Path(path))

    def meta(self) -> dict:
        return read_json(self.meta_file, {}) or {}

    def update_meta(self, **values) -> dict:
        data = self.meta()
        data.update(values)
        write_json_atomic(self.meta_file, data)
        return data

    # ---- safety -------------------------------------------------------------------------------------------------
    def inside(self, path: str | os.PathLike) -> Path:
        """Resolve ``path`` (relative to the workspace) and refuse anything outside it.

        The dashboard deletes and overwrites only through this, so a typed ``../../etc`` cannot escape.
        """
        p = Path(path)
        p = (self.root / p) if not p.is_absolute() else p
        resolved = p.resolve()
        if resolved != self.root.resolve() and self.root.resolve() not in resolved.parents:
            raise WorkspaceError(
                f"{path} is outside the workspace {self.root}; choose a path inside it.",
                zh=f"{path} 在项目 {self.root} 之外；请选择项目内的路径。",
            )
        return resolved

    def remove(self, path: str | os.PathLike) -> None:
        target = self.inside(path)
        if target == self.root.resolve():
            raise WorkspaceError(
                "Refusing to delete the whole workspace from here.",
                zh="不能在这里删除整个项目。",
            )
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)

    # ---- runs ---------------------------------------------------------------------------------------------------
    def runs(self) -> list[Path]:
        """Run folders, newest first (what is inside one: :mod:`umtcds_core.runs`)."""
        return list_runs(self.runs_dir)

    def new_run_dir(self, prefix: str = "run") -> Path:
        return new_run_dir(self.runs_dir, prefix)

    # ---- status -------------------------------------------------------------------------------------------------
    def trained_runs(self) -> list[Path]:
        """Run folders holding a final model, newest first (what the train step's status and chat need)."""
        return [r for r in self.runs() if has_final_model(r)]

    def evaluated_runs(self) -> list[Path]:
        """Run folders holding evaluation scores, newest first (the evaluate step's status)."""
        return [r for r in self.runs() if eval_metrics_path(r).exists()]

    def _outputs_exist(self, step: str) -> bool:
        done = steps.get(step).done
        if done is None:
            raise KeyError(f"step {step!r} has no status of its own")
        return done(self)

    def status(self, step: str) -> str:
        """``not started`` / ``running`` / ``done`` / ``failed`` for one step, from files and job records only.

        The registry (:mod:`steps`) says which files mean "done"; a step that shows another's status (chat: train)
        reads that one.
        """
        step = steps.get(step).status_of or step
        job = latest_job(self, step)
        if job is not None:
            st = job.status()
            if st == RUNNING:
                return RUNNING
            if st == FAILED and not self._outputs_exist(step):
                return FAILED
        return DONE if self._outputs_exist(step) else NOT_STARTED

    def statuses(self) -> dict[str, str]:
        return {s: self.status(s) for s in STEPS}

    def site_changes(self) -> dict[str, int] | None:
        """What the latest crawl refresh found (see :func:`site_changes`)."""
        return site_changes(self.pages_dir)


def site_changes(pages_dir: Path) -> dict[str, int] | None:
    """``{"new", "changed", "unchanged", "removed"}`` page counts of the latest refresh run in a crawl folder's
    manifest (rows carry ``change`` and ``run``), or None when no refresh has run there.

    Why from the manifest: it is the crawl's own record, so the count is right however the refresh was started
    (the dashboard, the CLI, a cron line)."""
    rows = list(iter_jsonl(pages_dir / "manifest.jsonl", errors=[])) if (pages_dir / "manifest.jsonl").exists() else []
    last = next((r.get("run") for r in reversed(rows) if r.get("change")), None)
    if last is None:
        return None
    counts = dict.fromkeys(("new", "changed", "unchanged", "removed"), 0)
    for r in rows:
        if r.get("run") == last and r.get("change") in counts and (r.get("path") or r["change"] == "removed"):
            counts[r["change"]] += 1
    return counts


def list_workspaces(root: Path | None = None) -> list[Workspace]:
    root = root or workspaces_root()
    if not root.exists():
        return []
    return [Workspace(p) for p in sorted(root.iterdir()) if p.is_dir() and (p / "workspace.json").exists()]
