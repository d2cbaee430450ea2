"""Run folders read from their files alone: checkpoints and their completeness, metrics, summary, final adapter.

The folders are tiny but real: the file names and JSON that the Trainer and ``umtcds train`` write, laid out by hand
(the slow test_train.py checks the same functions on folders a real fine-tune wrote).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from umtcds_core import runs


def _write(path, data="") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")


def _checkpoint(run, step: int, *, weights="adapter_model.safetensors", state=True, adapter=True):
    ckpt = run / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    if weights:
        _write(ckpt / weights, "w")
    if adapter:
        _write(ckpt / runs.ADAPTER_CONFIG, {"peft_type": "LORA", "base_model_name_or_path": "adapter-base"})
    if state:
        _write(ckpt / "trainer_state.json", {"global_step": step})
    return ckpt


def _metrics(run, records) -> None:
    _write(run / runs.METRICS_FILE, "".join(json.dumps(r) + "\n" for r in records))


def test_runs_import_no_torch():
    code = "import sys, umtcds_core.runs; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_list_runs_new_run_dir_and_has_training(tmp_path):
    assert runs.list_runs(tmp_path / "missing") == []
    old, new = tmp_path / "run-a", tmp_path / "run-b"
    old.mkdir()
    new.mkdir()
    _write(tmp_path / "notes.txt", "not a run")
    t = time.time()
    os.utime(old, (t - 100, t - 100))
    assert runs.list_runs(tmp_path) == [new, old]
    fresh = runs.new_run_dir(tmp_path, prefix="run")
    assert fresh.parent == tmp_path and fresh.name.startswith("run-") and not fresh.exists()
    fresh.mkdir()
    again = runs.new_run_dir(tmp_path)  # the same second gets a "-2" suffix, never an existing folder
    assert again != fresh and not again.exists()
    assert not runs.has_training(old)
    _checkpoint(old, 3)
    _metrics(new, [{"kind": "start", "step": 0}])
    assert runs.has_training(old) and runs.has_training(new)
    argv = ["python", "-m", "umtcds_core.cli", "train", "c.yaml", "--output-dir", str(new)]
    assert runs.output_dir_of(argv) == str(new)
    assert runs.output_dir_of(["train", f"--output-dir={old}"]) == str(old)
    assert runs.output_dir_of(["train", "c.yaml"]) is None


def test_checkpoints_completeness_and_resume_point(tmp_path, capsys):
    run = tmp_path / "run"
    good = _checkpoint(run, 5)
    full = _checkpoint(run, 10, weights="model.safetensors", adapter=False)
    _checkpoint(run, 20, state=False)  # killed while saving: trainer_state.json (written last) is missing
    _checkpoint(run, 30, weights=None)  # weights missing
    bad_step = _checkpoint(run, 40)
    _write(bad_step / "trainer_state.json", {"global_step": 39})  # a state that belongs to another step
    _write(run / "checkpoint-x" / "trainer_state.json", {"global_step": 1})  # not a checkpoint name
    _write(run / "checkpoint-50", "a file, not a folder")
    assert [c.name for c in runs.list_checkpoints(run)] == [f"checkpoint-{n}" for n in (5, 10, 20, 30, 40)]
    assert runs.is_complete_checkpoint(good) and runs.is_complete_checkpoint(full)
    assert not any(runs.is_complete_checkpoint(run / f"checkpoint-{n}") for n in (20, 30, 40))
    assert runs.latest_complete_checkpoint(run) == full
    assert "Skipping half-written checkpoint checkpoint-40" in capsys.readouterr().err
    fsdp = _checkpoint(tmp_path / "fsdp", 7, weights=None, adapter=False)
    (fsdp / "pytorch_model_fsdp_0").mkdir()
    assert runs.is_complete_checkpoint(fsdp)
    assert runs.latest_complete_checkpoint(tmp_path / "nothing") is None
    assert runs.run_dir_of(good) == run and runs.run_dir_of(run) == run


def test_final_model_adapter_discovery_and_train_info(tmp_path):
    run = tmp_path / "run"
    _checkpoint(run, 5)
    _checkpoint(run, 20)
    assert not runs.has_final_model(run)
    assert runs.find_adapter(run).name == "checkpoint-20"
    assert [p.name for p in runs.loadable([run])] == ["checkpoint-20", "checkpoint-5"]
    assert runs.adapter_base_ref(run / "checkpoint-5") == "adapter-base"  # from adapter_config.json
    _write(run / runs.INFO_FILE, {"model": "info-base", "method": "lora", "system_prompt": "Be brief."})
    assert runs.adapter_base_ref(run / "checkpoint-5") == "info-base"  # the run's train_info.json wins
    assert runs.train_info(run / "checkpoint-5")["system_prompt"] == "Be brief."
    _write(run / runs.ADAPTER_CONFIG, {"peft_type": "PREFIX_TUNING", "base_model_name_or_path": "b"})
    _write(run / "adapter_model.safetensors", "w")
    assert runs.has_final_model(run) and runs.find_adapter(run) == run
    assert runs.adapter_type(run) == "PREFIX_TUNING" and runs.adapter_config(run)["base_model_name_or_path"] == "b"
    assert [p.name for p in runs.loadable([run])] == ["run", "checkpoint-20", "checkpoint-5"]
    assert runs.eval_run_dir(run / "checkpoint-5") == run
    assert runs.eval_metrics_path(run) == run / "eval" / "metrics.json"
    # a full fine-tune: the folder is the model itself
    full = tmp_path / "full"
    _write(full / runs.MODEL_CONFIG, {"model_type": "llama"})
    _write(full / "model-00001-of-00002.safetensors", "w")
    assert runs.has_final_model(full) and runs.is_full_model(full) and runs.is_full_model_run(full)
    assert runs.eval_run_dir(full) == full and not runs.is_full_model(run)
    assert not runs.is_full_model_run(tmp_path / "missing")
    # unusable folders: one sentence saying what to pick
    with pytest.raises(runs.RunError, match="does not exist"):
        runs.find_adapter(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(runs.RunError, match="holds no adapter"):
        runs.find_adapter(tmp_path / "empty")
    _write(tmp_path / "bare" / runs.ADAPTER_CONFIG, {"peft_type": "LORA"})
    with pytest.raises(runs.RunError, match="--model"):
        runs.adapter_base_ref(tmp_path / "bare")
    assert runs.train_info(tmp_path / "bare") == {} and runs.adapter_type(tmp_path / "empty") == ""


def test_metrics_drop_steps_redone_after_resume_and_summary(tmp_path):
    run = tmp_path / "run"
    assert runs.read_metrics(run) == []
    assert runs.run_summary(run)["state"] == "empty"
    _metrics(
        run,
        [
            {"kind": "start", "step": 0, "time": 100.0, "max_steps": 8},
            {"kind": "train", "step": 2, "loss": 2.0},
            {"kind": "train", "step": 4, "loss": 1.5},
            {"kind": "eval", "step": 4, "eval_loss": 1.7},
            {"kind": "train", "step": 6, "loss": 1.2},  # written after checkpoint-4, then the process was killed
            {"kind": "resume", "step": 4, "time": 200.0, "max_steps": 8},
            {"kind": "train", "step": 6, "loss": 1.1},
        ],
    )
    _write(run / runs.METRICS_FILE.replace(".jsonl", ".bak"), "")  # unrelated files are ignored
    with open(run / runs.METRICS_FILE, "a", encoding="utf-8") as fh:
        fh.write('{"kind": "train", "step": 7, "lo')  # a line being written right now
    recs = runs.read_metrics(run)
    assert recs == runs.read_metrics(runs.metrics_path(run))  # the run folder or the file
    assert [(r["kind"], r["step"]) for r in recs if r["kind"] == "train"] == [("train", 2), ("train", 4), ("train", 6)]
    assert [r.get("loss") for r in recs if r["kind"] == "train"][-1] == 1.1
    s = runs.run_summary(run)
    assert s["state"] == "no-checkpoint" and s["step"] == 6 and s["loss"] == 1.1 and s["eval_loss"] == 1.7
    assert s["max_steps"] == 8 and s["started"] == 100.0 and s["checkpoints"] == [] and s["name"] == "run"
    _checkpoint(run, 4)
    _checkpoint(run, 6, state=False)
    _write(run / runs.STOPPED_FILE, {"method": "qlora"})
    s = runs.run_summary(run)
    assert s["state"] == "resumable" and s["checkpoints"] == ["checkpoint-4"] and s["method"] == "qlora"
    _write(run / runs.ADAPTER_CONFIG, {"peft_type": "LORA"})
    _write(run / runs.INFO_FILE, {"config": {"method": "lora"}})
    s = runs.run_summary(run)
    assert s["state"] == "finished" and s["method"] == "lora"
