"""Evaluate page: start `umtcds evaluate` as a job on a workspace run, wait for it, show before/after scores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from streamlit.proto.Metric_pb2 import Metric as MetricProto
from streamlit.testing.v1 import AppTest

from tests.chat_helpers import write_test_split
from umtcds_core.evaluate import EVALUATE, METRICS
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

    at.text_input(key="ev_data").set_value(str(workspace.dataset_dir / "missing.jsonl")).run()
    at.button(key="ev_start").click().run()
    assert "does not exist" in at.error[0].value and latest_job(workspace, "evaluate") is None

    write_test_split(workspace.dataset_dir / "test.jsonl")
    at.text_input(key="ev_data").set_value(str(workspace.dataset_dir / "test.jsonl"))
    at.number_input(key="ev_max_new_tokens").set_value(20)
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


def test_evaluate_page_saves_the_settings_the_job_runs_with(workspace, fact_adapter):
    """Start saves the step's settings (from the schema) in the job folder and runs `umtcds evaluate --config` on
    that file: what the file says is what the job scored with; a bad value is the CLI's sentence and starts nothing."""
    run = workspace.runs_dir / "run-1"
    shutil.copytree(fact_adapter, run, ignore=shutil.ignore_patterns("eval", "merged"))
    data = write_test_split(workspace.dataset_dir / "test.jsonl")
    at = _page(workspace)
    at.number_input(key="ev_batch_size").set_value(0).run()
    assert "batch_size: must be at least 1" in at.error[0].value and at.button(key="ev_start").disabled
    at.number_input(key="ev_batch_size").set_value(2)
    at.number_input(key="ev_max_new_tokens").set_value(6)
    at.number_input(key="ev_limit").set_value(1).run()
    assert not at.error and not at.button(key="ev_start").disabled
    at.button(key="ev_start").click().run()
    job = latest_job(workspace, "evaluate")
    assert job is not None and job.settings_file.is_file()
    saved = EVALUATE.load_yaml(job.settings_file)
    assert saved == {
        **EVALUATE.defaults(),
        "adapter": str(run),
        "data": str(data),
        "out": str(run / "eval" / "metrics.json"),
        "max_new_tokens": 6,
        "batch_size": 2,
        "limit": 1,
    }
    argv = job.meta["argv"]
    assert argv[argv.index("--config") + 1] == str(job.settings_file)
    assert job.wait(timeout=400) == "done", job.log_tail()
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["n"] == 1 and metrics["max_new_tokens"] == 6  # the file's values, as scored
    assert metrics["data"] == saved["data"] and metrics["adapter"] == saved["adapter"]
    at.run()
    assert any(f"umtcds evaluate --config {job.settings_file}" in c.value for c in at.caption)


def test_evaluate_page_one_question_shows_no_verdict(workspace, fact_adapter, fact_chat_model):
    """n = 1: the deltas are shown neutrally with a sentence that n is too small; a missing score reads "—"."""
    from umtcds_core.evaluate import evaluate
    from umtcds_core.runs import eval_metrics_path

    run = workspace.runs_dir / "run-1"
    shutil.copytree(fact_adapter, run, ignore=shutil.ignore_patterns("eval", "merged"))
    # one question whose reference holds no key fact: key-fact is None for both models (and so is its delta)
    data = write_test_split(workspace.dataset_dir / "test.jsonl", [("Is the gym open?", "The gym is open to all.")])
    metrics = evaluate(None, data, out=eval_metrics_path(run), max_new_tokens=8, chat_model=fact_chat_model)
    assert metrics["n"] == 1 and metrics["delta"]["key-fact"] is None

    at = _page(workspace)
    assert not at.exception
    assert any("too few to compare" in w.value and "Only 1 test question:" in w.value for w in at.warning)
    scores = {m.label: m for m in at.metric if m.label in METRICS}
    assert scores["key-fact"].value == "—"
    with_delta = [m for m in scores.values() if m.proto.delta]
    assert with_delta and all(m.proto.color == MetricProto.MetricColor.GRAY for m in with_delta)  # not red/green
    for frame in at.dataframe:
        cells = frame.value.astype(str).to_numpy().ravel().tolist()
        assert "None" not in cells and "nan" not in cells
    assert "—" in at.dataframe[0].value.to_numpy().ravel().tolist()


def _wait_for(at, ready, timeout=60.0):
    """Re-run the page until ``ready(at)`` holds (or the timeout passes); returns the last run."""
    import time

    deadline = time.monotonic() + timeout
    at.run()
    while not ready(at) and time.monotonic() < deadline:
        time.sleep(0.2)
        at.run()
    return at


def test_evaluate_page_four_systems_chart_verdict_and_filters(workspace, fact_adapter, fact_chat_model, demo_index):
    """Four systems (a split built with context, scored live over the demo index): a grouped bar chart of the
    systems, the one-sentence verdict, the index offered as the retrieval setting, and the per-example filters."""
    from tests.umtcds_core.test_evaluate import _context_split
    from umtcds_core.evaluate import evaluate
    from umtcds_core.runs import eval_metrics_path

    _, index_dir = demo_index
    run = workspace.runs_dir / "run-1"
    shutil.copytree(fact_adapter, run, ignore=shutil.ignore_patterns("eval", "merged"))
    shutil.copytree(index_dir, workspace.root / "index")
    data = _context_split(workspace.root / "tmp", index_dir)
    metrics = evaluate(None, data, out=eval_metrics_path(run), max_new_tokens=4, limit=6, rag=index_dir, rag_k=3,
                       chat_model=fact_chat_model)  # fmt: skip
    assert metrics["systems"] == ["base", "tuned", "base+retrieval", "tuned+retrieval"]

    at = _wait_for(_page(workspace), lambda a: len(a.get("plotly_chart")) == 1)
    assert not at.exception
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert [t["name"] for t in chart["data"]] == metrics["systems"] and chart["layout"]["barmode"] == "group"
    assert "recall@k" in chart["data"][2]["x"] and "false-refusal" in chart["data"][0]["x"]
    verdict = [e.value for e in (*at.success, *at.info) if "answered best" in e.value or "tie" in e.value]
    assert verdict == [metrics["best"]["en"]]
    assert at.text_input(key="ev_rag").value == str(workspace.root / "index")  # the project's index is offered
    assert len(at.dataframe) == 2 and list(at.dataframe[0].value.columns)[:4] == metrics["systems"]
    rows = at.dataframe[1].value
    assert len(rows) == 6 + metrics["n_paraphrase"] and "tuned+retrieval_answer" in rows.columns

    at.selectbox(key="ev_system").set_value("tuned")
    at.radio(key="ev_filter").set_value("refusals")
    at = _wait_for(at, lambda a: "tuned_refused" in a.dataframe[1].value.columns)
    shown = at.dataframe[1].value
    assert all(v == "True" for v in shown["tuned_refused"].astype(str))  # only the tuned model's refusals
    at.radio(key="ev_filter").set_value("wrong")
    at = _wait_for(at, lambda a: any("shown" in c.value for c in a.caption))
    assert not at.exception and any(f"of {len(rows)} shown" in c.value for c in at.caption)
