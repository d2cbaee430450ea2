"""Step 4: config schema, commented YAML round trip, validation messages, presets, memory estimate, CLI."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest
import yaml

from umtcds_core import config as C
from umtcds_core.cli import main as cli_main

TINY_SHAPE = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
    "vocab_size": 1000,
    "tie_embeddings": False,
    "attention_bias": False,
    "gated_mlp": True,
}


@pytest.fixture(autouse=True)
def _no_gpu_probe(monkeypatch):
    monkeypatch.setenv("UMTCDS_NO_GPU_DETECT", "1")  # verdicts must not depend on the test machine


def test_field_names_are_the_contract():
    names = [f.name for f in fields(C.TrainConfig)]
    for key in (
        "model data_dir train_file dev_file test_file system_prompt method lora_r lora_alpha lora_dropout "
        "lora_target_modules qlora_bits qlora_quant_type qlora_double_quant num_virtual_tokens max_input_length "
        "max_output_length num_epochs max_steps per_device_batch_size gradient_accumulation_steps learning_rate "
        "lr_scheduler warmup_ratio weight_decay max_grad_norm eval_steps save_steps logging_steps save_total_limit "
        "gradient_checkpointing packing precision compile seed output_dir extra"
    ).split():
        assert key in names


@pytest.mark.parametrize("method", C.METHODS)
def test_yaml_round_trip_with_comments(tmp_path, method):
    cfg = C.preset_for(
        method,
        None,
        learning_rate=3e-5,
        system_prompt='校园助手: "请简洁"\n第二行',
        lora_target_modules=["q_proj", "v_proj"],
        extra={"note": "试验 #1"},
    )
    path = C.save_config(cfg, tmp_path / "config.yaml")
    text = path.read_text(encoding="utf-8")
    assert "lora_r: " in text and "# higher: more capacity, more memory" in text
    assert all(line.count("#") >= 1 for line in text.splitlines() if line.startswith("lora_"))
    assert "learning_rate: 3.0e-05" in text
    raw = yaml.safe_load(text)
    assert raw["learning_rate"] == 3e-5 and isinstance(raw["learning_rate"], float)
    assert C.load_config(path) == cfg


def test_bad_config_lists_every_problem_with_key_and_fix(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "method: lorra\nlora_rank: 16\nlora_r: 0\nlearning_rate: fast\nprecision: bf32\nmax_steps: 0\npacking: maybe\n",
        encoding="utf-8",
    )
    with pytest.raises(C.ConfigError) as info:
        C.load_config(path)
    msg = str(info.value)
    assert msg.startswith(f"{path} has 7 problems:")
    assert "lora_rank: unknown key; did you mean 'lora_r'?" in msg
    assert "method: 'lorra' is not one of lora, qlora, ptuning-v2, full" in msg
    assert "lora_r: 0 is out of range" in msg
    assert "learning_rate: must be a number (got 'fast')" in msg
    assert "precision: 'bf32' is not one of auto, bf16, fp16, fp32" in msg
    assert "max_steps: use -1" in msg
    assert "packing: must be true or false" in msg
    assert len(info.value.problems) == 7


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: x\nlora_r: [8\n", encoding="utf-8")
    with pytest.raises(C.ConfigError, match=r"not valid YAML at line \d"):
        C.load_config(path)
    with pytest.raises(C.ConfigError, match="does not exist"):
        C.load_config(tmp_path / "nope.yaml")


def test_constructor_validates_and_forgiving_numbers():
    with pytest.raises(C.ConfigError, match="lora_dropout"):
        C.TrainConfig(lora_dropout=1.5)
    cfg = C.TrainConfig.from_dict({"learning_rate": "5e-4", "max_steps": 3000.0})
    assert cfg.learning_rate == 5e-4 and cfg.max_steps == 3000


def test_presets_match_the_glm4_demo_and_small_model():
    lora = C.TrainConfig.from_dict(C.PRESETS["glm4-lora"])
    assert (lora.lora_r, lora.lora_alpha, lora.lora_dropout, lora.learning_rate) == (8, 32, 0.1, 5e-4)
    assert (lora.max_input_length, lora.max_output_length) == (512, 512)
    assert C.TrainConfig.from_dict(C.PRESETS["glm4-ptuning-v2"]).num_virtual_tokens == 128
    assert C.TrainConfig.from_dict(C.PRESETS["glm4-full"]).learning_rate == 5e-5
    assert C.preset_name("lora", "smollm2-135m") == "small-lora"
    assert C.preset_for("qlora", "smollm2-135m").method == "qlora"


def test_preset_for_large_hf_model_uses_glm4_values(tmp_path):
    from transformers import GlmConfig

    folder = tmp_path / "glm-shape"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(GlmConfig().to_dict()), encoding="utf-8")
    assert C.preset_name("lora", str(folder)) == "glm4-lora"
    cfg = C.preset_for("lora", str(folder), max_steps=10)
    assert cfg.lora_r == 8 and cfg.max_steps == 10 and cfg.model == str(folder)


def test_param_count_matches_glm4_9b_arithmetic():
    shape = C.glm4_9b_shape()
    counts = C.count_params(shape)
    assert counts["layer"] == 203_960_832
    assert counts["total"] == 9_399_951_360


def test_estimate_glm4_lora_against_the_demo_figure():
    # GLM-4 demo README: LoRA 512/512, batch 1, gradient checkpointing: 21,531 MiB (nvidia-smi) on an A100.
    est = C.estimate_glm4_9b_lora()
    assert est["params_trainable"] == 5_406_720  # r=8 on q/k/v (reference arithmetic)
    assert abs(est["total_gib"] - 21531 / 1024) / (21531 / 1024) < 0.10
    assert "fits a 24 GB card" in est["verdict"]
    assert est["overlap_gib"] > 0  # checkpointing: the recomputed layer and the loss's logits are not both alive
    no_gc = C.estimate_glm4_9b_lora(gradient_checkpointing=False)
    assert no_gc["activations_gib"] > 5 * est["activations_gib"]


def test_estimate_verdicts_and_monotonic():
    shape = C.glm4_9b_shape()
    base = C.TrainConfig.from_dict(C.PRESETS["glm4-lora"])
    long = base.replace(per_device_batch_size=8)
    e1, e8 = C.estimate_memory(base, shape, gpus=[]), C.estimate_memory(long, shape, gpus=[])
    assert e8["total_gib"] > e1["total_gib"]
    assert "needs QLoRA" in e8["verdict"] or "batch size 1" in e8["verdict"]
    q = C.estimate_memory(base.replace(method="qlora"), shape, gpus=[])
    assert q["weights_gib"] < e1["weights_gib"] / 2
    full = C.estimate_memory(base.replace(method="full", learning_rate=5e-5), shape, gpus=[])
    assert full["total_gib"] > 60 and "needs QLoRA to fit 24 GB" in full["verdict"]
    assert full["fit"]["fixes"] == ["qlora"] and full["fit"]["target_gib"] == 24
    mine = C.estimate_memory(base, shape, gpus=[{"name": "Test GPU", "total_gib": 16.0}])
    assert "does not fit your Test GPU" in mine["verdict"]


def test_estimate_tiny_shape_components_add_up():
    cfg = C.TrainConfig(method="lora", per_device_batch_size=2, max_input_length=64, max_output_length=64)
    est = C.estimate_memory(cfg, TINY_SHAPE, gpus=[])
    parts = sum(est[k] for k in ("weights_gib", "trainable_state_gib", "activations_gib", "logits_gib"))
    assert abs(parts - est["overlap_gib"] - est["peak_allocated_gib"]) < 0.05
    assert est["tokens_per_step"] == 256


def test_embedded_model_shape_and_cli(tmp_path, capsys):
    shape = C.model_shape("smollm2-135m")
    assert (shape["hidden_size"], shape["num_layers"], shape["vocab_size"]) == (576, 30, 49152)
    data = tmp_path / "ws" / "dataset"
    data.mkdir(parents=True)
    (data / "train.jsonl").write_text('{"messages": []}\n', encoding="utf-8")
    out = tmp_path / "ws" / "config.yaml"
    argv = ["config", "--method", "lora", "--model", "smollm2-135m", "--data", str(data), "--out", str(out)]
    rc = cli_main([*argv, "--max-steps", "30", "--save-steps", "10", "--lr", "1e-3", "--output-dir", "runs/a"])
    printed = capsys.readouterr().out
    assert rc == 0 and "Memory estimate" in printed and "GB card" in printed
    cfg = C.load_config(out)
    assert (cfg.max_steps, cfg.save_steps, cfg.learning_rate, cfg.output_dir) == (30, 10, 1e-3, "runs/a")
    assert cfg.data_dir == "dataset" and cfg.lora_r == 16 and cfg.compile == "auto"
    assert cli_main([*argv, "--compile", "off", "--no-estimate"]) == 0 and C.load_config(out).compile == "off"
    with pytest.raises(C.ConfigError, match="compile: 'fast' is not one of auto, on, off"):
        C.TrainConfig.from_dict({"compile": "fast"})
    rc = cli_main([*argv, "--lora-r", "0", "--no-estimate"])
    assert rc == 1 and "lora_r: 0 is out of range" in capsys.readouterr().err
    rc = cli_main(["config", "--method", "full", "--model", "smollm2-135m", "--data", str(tmp_path), "--out", str(out)])
    assert rc == 1 and "has no train.jsonl" in capsys.readouterr().err


def test_cli_prints_advice_in_chinese_after_english(tmp_path, capsys, monkeypatch):
    data = tmp_path / "ws" / "dataset"
    data.mkdir(parents=True)
    (data / "train.jsonl").write_text('{"messages": []}\n', encoding="utf-8")
    argv = ["config", "--method", "lora", "--model", "smollm2-135m", "--data", str(data)]
    argv += ["--out", str(tmp_path / "ws" / "config.yaml"), "--precision", "fp16", "--no-estimate"]
    monkeypatch.setenv("UMTCDS_LANG", "zh")
    assert cli_main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    note = next(i for i, line in enumerate(lines) if line.startswith("Note: fp16"))
    assert any(line.startswith("提示：fp16") for line in lines[note + 1 :])
    monkeypatch.setenv("UMTCDS_LANG", "en")
    assert cli_main(argv) == 0
    assert "提示" not in capsys.readouterr().out


def test_param_count_matches_real_models_built_on_meta():
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GlmConfig

    smol = C.model_shape("smollm2-135m")
    llama = AutoConfig.for_model(
        "llama",
        hidden_size=smol["hidden_size"],
        num_hidden_layers=smol["num_layers"],
        num_attention_heads=smol["num_heads"],
        num_key_value_heads=smol["num_kv_heads"],
        intermediate_size=smol["intermediate_size"],
        vocab_size=smol["vocab_size"],
        tie_word_embeddings=True,
    )
    for hf_cfg in (GlmConfig(), llama):
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_cfg)
        real = sum(p.numel() for p in model.parameters())
        assert C.count_params(C.shape_from_hf_config(hf_cfg.to_dict()))["total"] == real


def test_advice_in_both_languages():
    """Legal but doubtful choices get a sentence in the dashboard's language; sound choices get none."""
    from umtcds_core.config import TrainConfig, advice

    risky = TrainConfig(method="lora", precision="fp16", learning_rate=1e-6, save_steps=150, eval_steps=100)
    en, zh = advice(risky), advice(risky, "zh")
    assert len(en) == len(zh) == 3
    assert any("fp16" in s and "bf16" in s for s in en) and any("NaN" in s and "bf16" in s for s in zh)
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in s) for s in zh)
    assert advice(TrainConfig(method="lora", save_steps=200, eval_steps=100), "zh") == []


def test_config_problems_in_both_languages(tmp_path, monkeypatch):
    """The ConfigError listing problems carries the same list in Chinese; error_text picks it by UMTCDS_LANG."""
    from umtcds_core import i18n

    with pytest.raises(C.ConfigError) as info:
        C.TrainConfig(lora_r=0, learning_rate=2)
    exc = info.value
    en = [
        "lora_r: 0 is out of range; use 4–64 (8 is the GLM-4 demo's)",
        "learning_rate: must be between 0 and 1; try 5e-4 (LoRA) or 5e-5 (full)",
    ]
    zh = [
        "lora_r：0 超出范围；请用 4–64（GLM-4 官方示例用 8）",
        "learning_rate：必须在 0 和 1 之间；可以试试 5e-4（LoRA）或 5e-5（全量微调）",
    ]
    assert str(exc) == "The config has 2 problems:\n" + "\n".join(f"- {x}" for x in en)
    assert exc.zh == "配置有 2 个问题：\n" + "\n".join(f"- {x}" for x in zh)
    assert exc.problems == en
    monkeypatch.setenv("UMTCDS_LANG", "zh")
    assert i18n.error_text(exc) == exc.zh
    monkeypatch.setenv("UMTCDS_LANG", "en")
    assert i18n.error_text(exc) == str(exc)

    # validate() stays English; validate_zh() gives the same problems, in the same order, in Chinese
    bad = C.TrainConfig()  # valid; then broken field by field (setattr does not re-validate)
    for key, value in {"lora_r": "8", "packing": "yes", "method": "sft", "max_steps": 0, "extra": []}.items():
        setattr(bad, key, value)
    en_all, zh_all = C.validate(bad), C.validate_zh(bad)
    assert len(en_all) == len(zh_all) == 5
    for e, z in zip(en_all, zh_all, strict=True):
        assert z.split("：")[0] == e.split(":")[0]  # same key first
        assert any("\u4e00" <= ch <= "\u9fff" for ch in z)

    # problems found outside validate() (unknown keys) and the file name in the heading are translated too
    path = tmp_path / "bad.yaml"
    path.write_text("lora_rank: 16\n", encoding="utf-8")
    with pytest.raises(C.ConfigError) as info:
        C.load_config(path)
    assert str(info.value) == f"{path} has a problem — lora_rank: unknown key; did you mean 'lora_r'?"
    assert info.value.zh == f"配置文件 {path} 有一个问题——lora_rank：未知的键；是不是想写“lora_r”？"


def test_advice_knows_the_dataset_size():
    """Issue 21 §8: a tiny training split and an eval/log interval longer than the whole run are named."""
    from umtcds_core.config import advice, max_optimizer_steps

    cfg = C.preset_for("lora", "smollm2-135m")  # batch 8, 3 epochs, eval every 50 steps
    assert max_optimizer_steps(cfg, 15) == 6
    assert max_optimizer_steps(cfg.replace(max_steps=40), 15) == 40
    en = advice(cfg, n_train=15)
    assert any(s.startswith("Only 15 training pairs") for s in en)
    assert any("eval_steps is 50 but the run has at most 6 steps" in s for s in en)
    zh = advice(cfg, "zh", n_train=15)
    assert len(zh) == len(en) and any("训练集只有 15 对问答" in s for s in zh)
    assert advice(cfg.replace(eval_steps=50, logging_steps=5), n_train=2000) == []


def test_methods_fit_names_every_method_for_the_card():
    shape = C.glm4_9b_shape()
    base = C.TrainConfig.from_dict(C.PRESETS["glm4-lora"])
    fit = C.methods_fit(base, shape, gpus=[])
    assert fit["card"] == {"name": "24 GB", "total_gib": 24.0, "detected": False}
    rows = {r["method"]: r for r in fit["rows"]}
    assert set(rows) == set(C.METHODS)
    assert rows["qlora"]["fits"] and rows["lora"]["fits"] and not rows["full"]["fits"]
    assert rows["qlora"]["total_gib"] < rows["lora"]["total_gib"]
    small = C.methods_fit(base, shape, gpus=[{"name": "Test GPU", "total_gib": 12.0}])
    assert small["card"]["detected"] and small["card"]["name"] == "Test GPU"
    assert [r["method"] for r in small["rows"] if r["fits"]] == ["qlora"]
