"""umtcds_core.methods: the table of training methods — names, help, presets, what each supports, and that the
parameters it counts for the memory estimate are the ones a real wrapped model trains."""

from __future__ import annotations

import pytest

from umtcds_core import config as C
from umtcds_core import memory, methods
from umtcds_core.config import ConfigError

TINY = dict(
    num_hidden_layers=2,
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=512,
    pad_token_id=0,
)


def test_table_names_help_and_config_compatibility():
    assert methods.METHODS == ("lora", "qlora", "ptuning-v2", "full") == C.METHODS
    for name in methods.METHODS:
        m = methods.get(name)
        zh, en = m.help
        assert m.name == name and zh.startswith("**") and en.startswith("**") and zh != en
        assert methods.METHOD_HELP[name] == m.help
    with pytest.raises(ConfigError, match="is not one of lora, qlora, ptuning-v2, full"):
        methods.get("sft")


def test_what_each_method_supports():
    lora, qlora, pt, full = (methods.get(n) for n in methods.METHODS)
    assert lora.packing and lora.checkpointing and lora.compile and not lora.quantised
    assert qlora.quantised and qlora.compile and qlora.compile_group == 1 and lora.compile_group == 2
    # P-tuning v2's prefix reaches attention explicitly (umtcds_core.prefix): it packs, checkpoints and compiles,
    # one layer per compiled call (each layer's prefix slice is its call's argument)
    assert pt.packing and pt.checkpointing and pt.compile and pt.compile_group == 1 and pt.adapter == "prefix"
    assert full.sharded and full.load_dtype("bf16") == "fp32" and lora.load_dtype("bf16") == "bf16"
    assert lora.quantization(C.TrainConfig(), "bf16") is None
    # the adapters' state is 16 bytes a parameter; full fine-tuning in bf16 keeps grads and moments in bf16
    assert lora.state_bytes("bf16") == 16 and full.state_bytes("bf16") == 6 and full.state_bytes("fp32") == 12


def test_presets_come_from_the_table_and_are_valid():
    assert set(C.PRESETS) == {f"{s}-{m}" for s in ("glm4", "small") for m in methods.METHODS}
    assert C.PRESETS is methods.PRESETS
    for name, values in C.PRESETS.items():
        cfg = C.TrainConfig.from_dict(values)
        assert cfg.method == name.split("-", 1)[1]
    # P-tuning v2 packs since its prefix reaches attention explicitly (umtcds_core.prefix; test_prefix.py)
    assert C.PRESETS["glm4-ptuning-v2"].get("packing", True) is True
    assert C.preset_for("full", "smollm2-135m").learning_rate == 5e-5


@pytest.mark.parametrize("method", ["lora", "ptuning-v2", "full"])
def test_wrap_trains_the_parameters_the_estimate_counts(method):
    """Each method's ``wrap`` on a tiny real GLM leaves exactly as many trainable parameters as the table's
    ``trainable`` counts for the memory estimate (from the same config.json)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM, GlmConfig

    hf = GlmConfig(**TINY)
    model = AutoModelForCausalLM.from_config(hf, dtype=torch.float32)
    cfg = C.TrainConfig(method=method, lora_r=4, num_virtual_tokens=8, lora_target_modules=["q_proj", "v_proj"])
    m = methods.get(method)
    wrapped, targets = m.wrap(model, cfg)
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    shape = memory.shape_from_hf_config(hf.to_dict())
    assert trainable == m.trainable(cfg, shape, memory.count_params(shape)["total"])
    assert targets == (["q_proj", "v_proj"] if method == "lora" else None)


def test_lora_targets_default_per_architecture_and_reject_unknown_modules():
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, GlmConfig

    from umtcds_core.errors import UserError

    model = AutoModelForCausalLM.from_config(GlmConfig(**TINY), dtype=torch.float32)
    assert methods.lora_targets(model, None) == ["q_proj", "k_proj", "v_proj"]  # GLM: the demo's q/k/v
    assert methods.lora_targets(model, ["all-linear"]) == "all-linear"
    with pytest.raises(UserError, match="not layers of this glm"):
        methods.lora_targets(model, ["query_key_value"])
