"""Page 4 (Config): preset form, live estimate and YAML preview, method switch, save, load, bad config."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from umtcds_core import config as C
from umtcds_core.workspace import Workspace

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "4_config.py")


@pytest.fixture(autouse=True)
def _no_gpu_probe(monkeypatch):
    monkeypatch.setenv("UMTCDS_NO_GPU_DETECT", "1")


def _workspace(root: Path) -> Workspace:
    ws = Workspace.create("cfg-page", root=root)
    ws.dataset_dir.mkdir(parents=True, exist_ok=True)
    (ws.dataset_dir / "train.jsonl").write_text('{"messages": []}\n', encoding="utf-8")
    return ws


def _page(ws: Workspace) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=90)
    at.session_state["workspace"] = str(ws.root)
    at.session_state["lang"] = "en"
    return at.run()


def _yaml_preview(at: AppTest) -> str:
    return [c.value for c in at.code if c.language == "yaml"][0]


def test_defaults_estimate_preview_and_save(_isolated_workspaces):
    ws = _workspace(_isolated_workspaces)
    at = _page(ws)
    assert not at.exception
    assert not at.error
    assert at.radio(key="cfg_w_method").value == "lora"
    assert at.number_input(key="cfg_w_lora_r").value == 16  # small-model preset for the embedded model
    metric = [m for m in at.metric if m.label == "Expected peak GPU memory"][0]
    assert metric.value.endswith("GiB")
    assert any("GB card" in m.value for m in at.markdown)
    preview = _yaml_preview(at)
    assert "lora_r: 16  # higher: more capacity" in preview and 'data_dir: "dataset"' in preview
    before = metric.value
    at.number_input(key="cfg_w_per_device_batch_size").set_value(32).run()
    after = [m for m in at.metric if m.label == "Expected peak GPU memory"][0].value
    assert float(after.split()[0]) > float(before.split()[0])  # the estimate follows the form
    assert "per_device_batch_size: 32" in _yaml_preview(at)
    at.button(key="cfg_save").click().run()
    assert not at.exception
    saved = C.load_config(ws.config_file)
    assert saved.per_device_batch_size == 32 and saved.output_dir.startswith("runs/")
    assert (ws.root / saved.data_dir / "train.jsonl").exists()


def test_switching_method_applies_its_preset(_isolated_workspaces):
    ws = _workspace(_isolated_workspaces)
    at = _page(ws)
    at.radio(key="cfg_w_method").set_value("ptuning-v2").run()
    assert not at.exception
    assert at.number_input(key="cfg_w_num_virtual_tokens").value == 32
    assert "P-tuning v2" in " ".join(m.value for m in at.markdown)
    assert 'method: "ptuning-v2"' in _yaml_preview(at)
    at.radio(key="cfg_w_method").set_value("qlora").run()
    assert at.selectbox(key="cfg_w_qlora_quant_type").value == "nf4"
    assert 'method: "qlora"' in _yaml_preview(at)


def test_loads_existing_config_and_reports_a_bad_one(_isolated_workspaces):
    ws = _workspace(_isolated_workspaces)
    C.save_config(C.preset_for("lora", "smollm2-135m", lora_r=32, learning_rate=2e-4), ws.config_file)
    at = _page(ws)
    assert at.number_input(key="cfg_w_lora_r").value == 32
    assert "learning_rate: 0.0002" in _yaml_preview(at)
    ws.config_file.write_text("lora_rank: 8\nmethod: lora\n", encoding="utf-8")
    at.button(key="cfg_reload").click().run()
    assert not at.exception
    assert any("lora_rank: unknown key; did you mean 'lora_r'?" in e.value for e in at.error)


def test_unknown_model_path_warns_instead_of_crashing(_isolated_workspaces):
    ws = _workspace(_isolated_workspaces)
    at = _page(ws)
    at.text_input(key="cfg_w_model").set_value(str(ws.root / "no-such-model")).run()
    assert not at.exception
    assert any("No model found" in w.value for w in at.warning)


def test_verdict_names_the_fix_in_the_ui_language(_isolated_workspaces):
    ws = _workspace(_isolated_workspaces)
    at = _page(ws)
    # the loss is computed in chunks, so only a really large step (512 × 1024 tokens) overflows 24 GB
    at.number_input(key="cfg_w_per_device_batch_size").set_value(512).run()
    at.number_input(key="cfg_w_max_input_length").set_value(512).run()
    at.number_input(key="cfg_w_max_output_length").set_value(512).run()
    assert any("needs batch size 1" in m.value and "to fit 24 GB" in m.value for m in at.markdown)
    at.session_state["lang"] = "zh"
    at.run()
    assert any("要放进 24 GB：批大小设为 1" in m.value for m in at.markdown)


def _field(at: AppTest, key: str):
    return at.number_input(key=f"cfg_w_{key}").value


def test_reset_restores_the_fields_and_save_writes_exactly_the_preview(_isolated_workspaces):
    """Issue 21 §2: "reset" and a method switch change the FIELDS (not only the preview); Save writes the preview."""
    ws = _workspace(_isolated_workspaces)
    at = _page(ws)
    preset = C.preset_for("lora", "smollm2-135m")
    at.number_input(key="cfg_w_learning_rate").set_value(0.5).run()
    at.number_input(key="cfg_w_per_device_batch_size").set_value(512).run()
    at.number_input(key="cfg_w_max_input_length").set_value(32768).run()
    assert "learning_rate: 0.5" in _yaml_preview(at)
    # legal but absurd: saving is allowed, with a warning per value and one for the estimate
    warned = " ".join(w.value for w in at.warning)
    assert "learning_rate 0.5 is unusually high" in warned
    assert "per_device_batch_size 512 is unusually high" in warned
    assert "more than any single card" in warned
    at.button(key="cfg_preset").click().run()
    assert not at.exception
    assert _field(at, "learning_rate") == preset.learning_rate
    assert _field(at, "per_device_batch_size") == preset.per_device_batch_size
    assert _field(at, "max_input_length") == preset.max_input_length
    at.button(key="cfg_save").click().run()
    assert ws.config_file.read_text(encoding="utf-8").rstrip("\n") == _yaml_preview(at)  # st.code drops the last \n
    assert any("Saved" in s.value for s in at.success)
    saved = C.load_config(ws.config_file)
    assert (saved.learning_rate, saved.per_device_batch_size) == (preset.learning_rate, preset.per_device_batch_size)

    # a method switch loads the new method's preset into the fields, and back again
    at.number_input(key="cfg_w_lora_r").set_value(64).run()
    at.radio(key="cfg_w_method").set_value("ptuning-v2").run()
    assert _field(at, "learning_rate") == C.preset_for("ptuning-v2", "smollm2-135m").learning_rate
    at.radio(key="cfg_w_method").set_value("lora").run()
    assert _field(at, "lora_r") == preset.lora_r
    assert f"lora_r: {preset.lora_r}  #" in _yaml_preview(at)


def test_out_of_range_blocks_saving_with_a_sentence_and_keeps_the_file(_isolated_workspaces):
    ws = _workspace(_isolated_workspaces)
    at = _page(ws)
    at.button(key="cfg_save").click().run()
    before = ws.config_file.read_text(encoding="utf-8")
    at.number_input(key="cfg_w_lora_r").set_value(0).run()
    at.number_input(key="cfg_w_learning_rate").set_value(2.0).run()
    assert not at.exception
    errors = " ".join(e.value for e in at.error)
    assert "lora_r: 0 is out of range" in errors and "learning_rate: must be between 0 and 1" in errors
    assert at.button(key="cfg_save").disabled
    assert not [c for c in at.code if c.language == "yaml"]  # nothing is previewed that could not be saved
    assert ws.config_file.read_text(encoding="utf-8") == before
    at.number_input(key="cfg_w_lora_r").set_value(8).run()
    at.number_input(key="cfg_w_learning_rate").set_value(1e-3).run()
    assert not at.error and not at.button(key="cfg_save").disabled


def test_chinese_page_speaks_chinese_about_problems(_isolated_workspaces):
    ws = _workspace(_isolated_workspaces)
    at = _page(ws)
    at.session_state["lang"] = "zh"
    at.number_input(key="cfg_w_num_epochs").set_value(100.0).run()
    assert any("num_epochs = 100，高于常用范围" in w.value for w in at.warning)
    at.number_input(key="cfg_w_lora_r").set_value(0).run()
    assert any("lora_r：0 超出范围" in e.value for e in at.error)
