"""``umtcds demo``: workspace handling, seed selection, the Home-page card, and (slow) a real ``--fast`` run.

The fast run is the real pipeline — demo site over HTTP, crawl, the embedded model generating, dataset, config, a few
LoRA steps, evaluate, chat — shrunk so it proves the plumbing in a few minutes on a 2-core CPU (not the learning).
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from umtcds_core.demo import DEMO_NAME, DemoSettings, pick_seed, prepare_workspace, run
from umtcds_core.demo_site import QA_SEED_FILE
from umtcds_core.errors import UserError
from umtcds_core.workspace import Workspace


def test_prepare_workspace_refuses_someone_elses_project(tmp_path):
    ws = Workspace.create("mine", root=tmp_path)
    (ws.pages_dir).mkdir()
    (ws.pages_dir / "a.txt").write_text("precious", encoding="utf-8")
    with pytest.raises(UserError, match="did not make"):
        prepare_workspace(ws.root)
    assert (ws.pages_dir / "a.txt").read_text(encoding="utf-8") == "precious"


def test_prepare_workspace_reuses_a_demo_folder_and_clears_step_outputs(tmp_path, _isolated_workspaces):
    ws = prepare_workspace(None)
    assert ws.root == _isolated_workspaces / DEMO_NAME
    assert ws.meta()["demo"] is True
    ws.pages_dir.mkdir()
    (ws.pages_dir / "old.txt").write_text("old", encoding="utf-8")
    (ws.runs_dir / "demo-1").mkdir(parents=True)
    again = prepare_workspace(None)
    assert again.root == ws.root
    assert not ws.pages_dir.exists()  # step outputs cleared for a clean run …
    assert (ws.runs_dir / "demo-1").is_dir()  # … earlier runs kept


def test_pick_seed_spreads_over_pages():
    all_rows = [json.loads(x) for x in QA_SEED_FILE.read_text(encoding="utf-8").splitlines() if x.strip()]
    picked = pick_seed(10)
    assert len(picked) == 10
    assert len({r["source"] for r in picked}) == 10  # one per page before a second from any page
    assert pick_seed(None) == all_rows
    assert pick_seed(0) == []


def test_home_card_sets_up_the_demo_project(_isolated_workspaces):
    from streamlit.testing.v1 import AppTest

    def app():
        import streamlit as st

        from umtcds_core.demo import render_demo_card

        st.session_state.setdefault("lang", "en")
        render_demo_card()

    at = AppTest.from_function(app, default_timeout=30).run()
    assert not at.exception
    assert "Try the demo" in at.subheader[0].value
    at.button(key="demo_setup").click().run()
    assert not at.exception
    ws = Workspace.open(_isolated_workspaces / DEMO_NAME)
    url = ws.meta()["start_url"]
    assert at.session_state["workspace"] == str(ws.root)
    assert any(url in s.value for s in at.success)
    with urllib.request.urlopen(url, timeout=5) as resp:  # the site is served by the dashboard process
        assert b"Qingshan University" in resp.read()


@pytest.mark.slow
def test_fast_demo_runs_every_step(tmp_path, capsys):
    import argparse

    ws_dir = tmp_path / "demo-ws"
    rc = run(argparse.Namespace(workspace=str(ws_dir), fast=True, steps=None, seed_pairs=None, gen_pages=None))
    out = capsys.readouterr().out
    report = json.loads((ws_dir / "demo_report.json").read_text(encoding="utf-8"))
    steps = {s["step"]: s for s in report["steps"]}
    assert rc == 0, out
    assert list(steps) == ["crawl", "generate", "dataset", "config", "train", "evaluate", "chat"]
    assert all(s["status"] == "done" for s in steps.values()), out
    assert all(s["seconds"] >= 0 for s in steps.values())
    ws = Workspace.open(ws_dir)
    fast = DemoSettings.fast()
    assert len(list(ws.pages_dir.glob("*.txt"))) == fast.max_pages
    assert ws.qa_file.exists() and (ws.qa_dir / "failures.jsonl").exists()
    merged = [json.loads(x) for x in (ws.dataset_dir / "qa_edited.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sum(r["demo_origin"] == "seed" for r in merged) == fast.seed_pairs
    assert steps["dataset"]["data"]["generated"] == sum(r["demo_origin"] == "generated" for r in merged)
    run_dir = Path(steps["train"]["files"][0])
    run_dir = run_dir if run_dir.is_absolute() else ws.root / run_dir
    assert (run_dir / "adapter_config.json").exists()
    assert (run_dir / "eval" / "metrics.json").exists()
    assert "Time per step:" in out and "Q:" in steps["chat"]["summary"]


def test_demo_crawl_step_builds_the_index(tmp_path):
    """The crawl step indexes what it saved (`umtcds index`), so evaluate can score base/tuned + retrieval."""
    from umtcds_core.demo import Demo
    from umtcds_core.demo_site import DemoSite
    from umtcds_core.index import Index, index_dir_of

    ws = prepare_workspace(tmp_path / "demo-ws")
    demo = Demo(ws, DemoSettings.fast(), out=lambda _: None)
    with DemoSite() as site:
        demo.site = site
        rep = demo.crawl()
    assert rep.status == "done" and "indexed 3 pages" in rep.summary
    assert Index.load(index_dir_of(ws)).search("library opening hours", 3)
    assert any(f.endswith("index") for f in rep.files)
