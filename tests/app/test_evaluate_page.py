"""Evaluate page: start `umtcds evaluate` as a job on a workspace run, wait for it, show before/after scores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from streamlit.testing.v1 import AppTest

from tests.chat_helpers import write_test_split
from umtcds_core.evaluate import METRICS
from umtcds_core.jobs import latest_job

ROOT = Path(__file__).resolve().parents[2]


def _page(ws):
    at = AppTest.from_file(str(ROOT / "pages" / "7_evaluate.py"), default_timeout=60)
    at.session_state["workspace"] = str(ws.root)
    at.session_state["lang"] = "en"
    return at.run()


def test_evaluate_page_without_runs(workspace):
    at = _page(workspace)
    assert not at.exception and "step 5" in at.info[0].value


def test_evaluate_page_runs_job_and_shows_scores(workspace, fact_adapter):
    run = workspace.runs_dir / "run-1"
    shutil.copytree(fact_adapter, run, ignore=shutil.ignore_patterns("eval", "merged"))
    at = _page(workspace)
    assert not at.exception and "No evaluation results" in at.info[-1].value

    at.text_input(key="ev_test").set_value(str(workspace.dataset_dir / "missing.jsonl")).run()
    at.button(key="ev_start").click().run()
    assert "does not exist" in at.error[0].value and latest_job(workspace, "evaluate") is None

    write_test_split(workspace.dataset_dir / "test.jsonl")
    at.text_input(key="ev_test").set_value(str(workspace.dataset_dir / "test.jsonl"))
    at.number_input(key="ev_max_new").set_value(20)
    at.button(key="ev_start").click().run()
    job = latest_job(workspace, "evaluate")
    assert job is not None and "--adapter" in job.meta["argv"]
    assert job.wait(timeout=400) == "done", job.log_tail()

    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["metrics"]["tuned"]["rouge-l"] > metrics["metrics"]["base"]["rouge-l"]
    at.run()
    assert not at.exception
    scores = {m.label: m for m in at.metric if m.label in METRICS}  # (the job panel shows its counters too)
    assert list(scores) == list(METRICS)
    assert scores["rouge-l"].value == "100" and scores["key-fact"].value == "100"  # tuned, with the delta beside
    assert len(at.dataframe) == 2  # scores table + per-example table
    assert workspace.status("evaluate") == "done"
