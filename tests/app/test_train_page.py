"""The Train page, with real runs of the tiny model in a workspace."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.train_helpers import make_tiny_model, train_tiny_adapter
from umtcds_core.jobs import latest_job
from umtcds_core.runs import has_final_model
from umtcds_core.workspace import DONE, Workspace

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "5_train.py")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained_ws(tmp_path_factory) -> Workspace:
    """A workspace with config.yaml, dataset/ and one finished run (runs/run-a), trained for real."""
    ws = Workspace.create("train-page", root=tmp_path_factory.mktemp("ws"))
    model = make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")
    train_tiny_adapter(ws.root, steps=6, model=str(model), output_dir="runs/run-a", eval_steps=3, save_steps=3)
    return ws


def _page(ws: Workspace) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["workspace"] = str(ws.root)
    at.session_state["lang"] = "en"
    return at


def _traces(at: AppTest) -> list[dict]:
    chart = at.get("plotly_chart")[0]
    return json.loads(chart.proto.spec)["data"]


def test_page_draws_the_chart_of_a_real_run(trained_ws):
    at = _page(trained_ws).run()
    assert not at.exception, at.exception
    names = [t.get("name") for t in _traces(at)]
    assert {"train loss", "train loss (smoothed)", "eval loss", "learning rate"} <= set(names)
    eval_trace = next(t for t in _traces(at) if t.get("name") == "eval loss")
    assert list(eval_trace["x"]) == [3, 6]
    lr_trace = next(t for t in _traces(at) if t.get("name") == "learning rate")
    assert lr_trace.get("yaxis") == "y2"  # learning rate on the second axis
    labels = {m.label: m.value for m in at.metric}
    assert labels["State"] == "finished" and labels["Train loss"] != "—"
    assert any(b.label.startswith("Download chart") for b in at.get("download_button"))
    # log-scale toggle
    at.toggle(key="train_log").set_value(True).run()
    assert json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]["yaxis"]["type"] == "log"


def test_past_runs_overlay_and_resume_button(trained_ws):
    # a second run folder that was stopped after its checkpoint: same real files, final adapter removed
    run_b = trained_ws.runs_dir / "run-b"
    shutil.copytree(trained_ws.runs_dir / "run-a", run_b, dirs_exist_ok=True)
    for name in ("adapter_model.safetensors", "adapter_config.json", "train_info.json"):
        (run_b / name).unlink()
    at = _page(trained_ws).run()
    assert not at.exception, at.exception
    assert at.selectbox(key="train_resume_pick").options == ["run-b"]
    others = at.multiselect(key="train_overlay")
    other = others.options[0]
    others.set_value([other]).run()
    names = [t.get("name") for t in _traces(at)]
    assert f"{other} · train" in names and f"{other} · eval" in names
    shutil.rmtree(run_b)


def test_start_button_runs_training_in_the_background(trained_ws):
    at = _page(trained_ws).run()
    at.button(key="train_start").click().run()
    assert not at.exception, at.exception
    job = latest_job(trained_ws, "train")
    argv = job.meta["argv"]
    assert argv[-4:-2] == ["--resume", "no"] and argv[-2] == "--output-dir"
    run_dir = Path(argv[-1])
    assert run_dir.parent == trained_ws.runs_dir
    assert job.wait(timeout=240) == DONE, job.log_tail()
    assert has_final_model(run_dir) and (run_dir / "metrics.jsonl").exists()
    at = _page(trained_ws).run()
    assert not at.exception
    assert at.get("plotly_chart")  # the page now follows the new run
    assert run_dir.name in json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]["title"]["text"]


def test_without_config_the_page_says_what_to_do(tmp_path):
    ws = Workspace.create("empty", root=tmp_path)
    at = _page(ws).run()
    assert not at.exception
    assert any("No training config" in w.value for w in at.warning)


def test_doubtful_config_is_repeated_before_start(tmp_path, monkeypatch):
    """Issue 21 §2: a legal but absurd config (lr 0.5, 100 epochs) warns on the Train page too, before Start."""
    from umtcds_core import config as C

    monkeypatch.setenv("UMTCDS_NO_GPU_DETECT", "1")
    ws = Workspace.create("doubtful", root=tmp_path)
    C.save_config(C.preset_for("lora", "smollm2-135m", learning_rate=0.5, num_epochs=100.0), ws.config_file)
    at = _page(ws).run()
    assert not at.exception
    warned = " ".join(w.value for w in at.warning)
    assert "learning_rate 0.5 is unusually high" in warned and "num_epochs 100 is unusually high" in warned
