"""The step registry: the one list that the CLI, the dashboard, the workspace statuses and the demo read."""

from __future__ import annotations

import argparse
import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from umtcds_core import cli, demo, steps
from umtcds_core.workspace import DONE, NOT_STARTED, RUNNING, STEPS, Workspace

ROOT = Path(__file__).resolve().parents[2]


def test_every_page_file_exists_and_is_numbered_in_wizard_order():
    on_disk = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "pages").glob("*.py"))
    assert [s.page for s in steps.PAGE_STEPS] == on_disk  # no page without a step, no step without a page
    for n, step in enumerate(steps.PAGE_STEPS, start=1):
        assert Path(step.page).name.startswith(f"{n}_")
        assert steps.number(step.name) == n
        assert step.icon and all(step.title) and step.title[0] != step.title[1]


def test_every_command_module_has_run_and_add_arguments():
    for step in steps.STEPS:
        module = importlib.import_module(step.module)
        assert callable(module.run) and callable(module.add_arguments), step.module
        parser = argparse.ArgumentParser(prog=f"umtcds {step.command}")
        module.add_arguments(parser)  # declares its flags without error
        assert step.help.endswith(".") and len(step.help) < 80


def test_cli_commands_are_the_registry_in_order():
    assert list(cli.COMMANDS) == [s.command for s in steps.STEPS]
    assert list(cli.COMMANDS)[-3:] == ["serve", "demo", "doctor"]  # commands without a page come last
    assert all(steps.get(name).page is None for name in ("serve", "demo", "doctor"))


def test_the_registry_imports_neither_streamlit_nor_torch():
    code = "import sys, umtcds_core.steps, umtcds_core.workspace, umtcds_core.cli; print(sorted(m for m in ('torch', 'streamlit') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
    tree = ast.parse((ROOT / "umtcds_core" / "steps.py").read_text(encoding="utf-8"))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert imported <= {"__future__", "collections.abc", "dataclasses", "typing"}  # a leaf: no cycle possible


def test_workspace_statuses_cover_every_page_step(tmp_path):
    ws = Workspace.create("w", root=tmp_path)
    statuses = ws.statuses()
    assert set(statuses) == {s.name for s in steps.PAGE_STEPS} == set(STEPS)
    assert set(statuses.values()) == {NOT_STARTED}


def test_chat_shows_the_train_status_and_each_step_reads_its_outputs(tmp_path):
    ws = Workspace.create("w", root=tmp_path)
    (ws.dataset_dir).mkdir()
    (ws.dataset_dir / "train.jsonl").write_text('{"q": 1}\n', encoding="utf-8")
    run = ws.new_run_dir()
    run.mkdir(parents=True)
    assert ws.status("chat") == NOT_STARTED
    (run / "adapter_config.json").write_text("{}", encoding="utf-8")
    assert ws.status("dataset") == ws.status("train") == ws.status("chat") == DONE
    assert ws.trained_runs() == [run]
    assert ws.status("evaluate") == NOT_STARTED
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text("{}", encoding="utf-8")
    assert ws.status("evaluate") == DONE
    with pytest.raises(KeyError, match="unknown step 'fly'"):
        ws.status("fly")


def test_a_running_train_job_shows_on_chat_too(tmp_path):
    from umtcds_core.jobs import start_job

    ws = Workspace.create("w", root=tmp_path)
    job = start_job(ws, "train", [sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert ws.status("train") == ws.status("chat") == RUNNING
    finally:
        job.stop()


def test_titles_and_next_steps_follow_the_wizard():
    assert steps.title("crawl", "zh") == "1 · 爬取网页"
    assert steps.title("config", "en") == "4 · Training config"
    assert steps.title("config", "en", short=True) == "4 · Config"
    names = [s.name for s in steps.PAGE_STEPS]
    assert [steps.next_step(n).name for n in names[:-1]] == names[1:]
    assert steps.next_step(names[-1]) is None


def test_the_demo_runs_every_wizard_step_with_the_registry_modules():
    assert sorted(demo.STEPS) == sorted(s.name for s in steps.PAGE_STEPS)
    assert demo.STEPS[-1] == "chat"  # looks for a learned fact in evaluate's answers
    assert all(demo.MODULES[n] == steps.get(n).module for n in demo.STEPS)
