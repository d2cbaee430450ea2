"""Helpers for tests that need a model to train or a trained adapter (used by train, chat and evaluate tests).

Stable API:

* ``make_tiny_model(path, arch="llama") -> Path`` — a tiny random causal LM (llama, or GLM-4's native ``glm``)
  built from a config, saved with the embedded SmolLM2 tokenizer (ChatML template) as a plain HF folder: a valid
  model reference for ``umtcds_core.models``. Cached per path.
* ``write_dataset(data_dir, pairs, dev_pairs=None) -> Path`` — train.jsonl/dev.jsonl in the GLM-4 messages format.
* ``tiny_config(tmp_path, pairs, steps, **overrides) -> Path`` — a config.yaml training the tiny model on ``pairs``.
* ``train_tiny_adapter(tmp_path, pairs, steps=30, method="lora", model=None, **overrides) -> Path`` — train in
  this process and return the run folder (final adapter or model + tokenizer + train_info.json + metrics.jsonl).
"""

from __future__ import annotations

from pathlib import Path

import yaml

DEFAULT_PAIRS = [
    ("Where is the library?", "The library is in Building A, next to the main gate."),
    ("When does the canteen open?", "The canteen opens at 7 am and closes at 9 pm."),
    ("How do I get a student card?", "Apply at the student service centre with your admission letter."),
    ("Who do I contact about scholarships?", "Write to the financial aid office at aid@example.edu."),
    ("Where can I print documents?", "Printers are on the first floor of the library."),
    ("How do I reset my campus password?", "Use the self-service portal at it.example.edu."),
]


def _smollm2_folder() -> Path:
    from umtcds_core import models

    return models.hf_folder(models.resolve("smollm2-135m"))


def make_tiny_model(
    path: str | Path, arch: str = "llama", seed: int = 0, tokenizer=None, positions: int = 2048
) -> Path:
    """A tiny random ``arch`` model (``llama``, ``qwen2`` or ``glm``; 2 layers, hidden 64, ~3M parameters) with
    ``tokenizer`` (default SmolLM2's), saved at ``path``."""
    import torch
    from transformers import AutoTokenizer

    path = Path(path)
    if (path / "config.json").exists() and (path / "tokenizer_config.json").exists():
        return path
    tok = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(str(_smollm2_folder()))
    common = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=positions,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        tie_word_embeddings=True,
        # 5x the usual init scale: with 0.02 a random 64-wide model's logits are nearly flat over 49k tokens and the
        # final norm caps how far LoRA can move them; at 0.1 a few dozen LoRA steps visibly learn the answers.
        initializer_range=0.1,
    )
    torch.manual_seed(seed)
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        model = LlamaForCausalLM(LlamaConfig(**common))
    elif arch == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM

        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif arch == "glm":
        from transformers import GlmConfig, GlmForCausalLM

        model = GlmForCausalLM(GlmConfig(**common, head_dim=16, partial_rotary_factor=0.5, attention_bias=True))
    else:
        raise ValueError(f"unknown arch {arch!r}")
    tmp = path.with_name(path.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(path)
    return path


def write_dataset(data_dir: str | Path, pairs=None, dev_pairs=None) -> Path:
    from umtcds_core.fileio import write_jsonl_atomic

    data_dir = Path(data_dir)
    pairs = list(pairs or DEFAULT_PAIRS)

    def recs(ps):
        return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in ps]

    write_jsonl_atomic(data_dir / "train.jsonl", recs(pairs))
    write_jsonl_atomic(data_dir / "dev.jsonl", recs(dev_pairs if dev_pairs is not None else pairs[:2]))
    return data_dir


def tiny_config(tmp_path: str | Path, pairs=None, steps: int = 30, model: str | None = None, **overrides) -> Path:
    """Write data + config.yaml under ``tmp_path`` and return the config path."""
    tmp_path = Path(tmp_path)
    write_dataset(tmp_path / "dataset", pairs)
    if model is None:
        model = str(make_tiny_model(tmp_path / "tiny-llama"))
    cfg = {
        "model": model,
        "data_dir": "dataset",
        "method": "lora",
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "max_input_length": 128,
        "max_output_length": 64,
        "max_steps": steps,
        "per_device_batch_size": 2,
        "learning_rate": 1e-2,
        "warmup_ratio": 0.0,
        "eval_steps": max(1, steps // 2),
        "save_steps": max(1, steps),
        "logging_steps": 1,
        "save_total_limit": 2,
        "output_dir": "run",
    }
    cfg.update(overrides)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def train_tiny_adapter(
    tmp_path: str | Path, pairs=None, steps: int = 30, method: str = "lora", model: str | None = None, **overrides
) -> Path:
    """Train ``method`` for ``steps`` steps on ``pairs`` (default: a few campus Q&A pairs); return the run folder."""
    from umtcds_core.config import load_config
    from umtcds_core.train import train

    cfg_path = tiny_config(tmp_path, pairs, steps, model=model, method=method, **overrides)
    info = train(load_config(cfg_path), config_file=cfg_path, resume="no")
    return Path(info["output_dir"])
