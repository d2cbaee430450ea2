"""One typed training config ↔ YAML.

SKELETON written by the foundation so that training (train.py) and the config step agree on field names; the config
issue owns this file and adds validation, commented YAML, presets, the memory estimate and the ``umtcds config`` CLI.
Field names below are the contract: do not rename them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from .errors import UserError

METHODS = ("lora", "qlora", "ptuning-v2", "full")


class ConfigError(UserError, ValueError):
    """A config problem; the message names the key and the fix."""


@dataclass
class TrainConfig:
    # ---- model and data
    model: str = "smollm2-135m"
    """Model reference: embedded name, local HF folder or .gguf (see models.py)."""
    data_dir: str = "dataset"
    """Folder with the split files (relative paths are resolved against the YAML's folder)."""
    train_file: str = "train.jsonl"
    dev_file: str = "dev.jsonl"
    test_file: str = "test.jsonl"
    system_prompt: str | None = None
    # ---- method
    method: str = "lora"
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_target_modules: list[str] | None = None
    """None = chosen per architecture."""
    qlora_bits: int = 4
    qlora_quant_type: str = "nf4"
    qlora_double_quant: bool = True
    num_virtual_tokens: int = 128
    """P-tuning v2 (peft prefix tuning) virtual tokens per layer."""
    # ---- lengths and schedule
    max_input_length: int = 512
    max_output_length: int = 512
    num_epochs: float = 3.0
    max_steps: int = -1
    """> 0 overrides num_epochs."""
    per_device_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # ---- eval, save, log
    eval_steps: int = 50
    save_steps: int = 50
    logging_steps: int = 5
    save_total_limit: int = 3
    # ---- speed and memory
    gradient_checkpointing: bool = True
    packing: bool = True
    precision: str = "auto"
    """auto | bf16 | fp16 | fp32 (auto: bf16 on Ampere+, fp16 on older GPUs, fp32 on CPU)."""
    seed: int = 42
    output_dir: str = "output"
    extra: dict = field(default_factory=dict)
    """Free-form, ignored by training (UI notes)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"Unknown config key(s): {', '.join(unknown)}; remove them or check the spelling.")
        return cls(**data)


def load_config(path: str | Path) -> TrainConfig:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"Config file {path} does not exist; write one with `umtcds config` or the Config page.")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a YAML mapping of keys to values.")
    return TrainConfig.from_dict(data)


def save_config(cfg: TrainConfig, path: str | Path) -> Path:
    from .fileio import write_text_atomic

    return write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), allow_unicode=True, sort_keys=False))
