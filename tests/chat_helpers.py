"""A LoRA adapter that has learned a few made-up campus facts, for the chat/evaluate/serve tests.

``train_fact_adapter(folder) -> run dir`` trains LoRA on the tiny random llama from ``tests.train_helpers`` (a real
model from a config, SmolLM2's tokenizer and chat template) with a minimal peft loop, and saves it like a training
run: ``adapter_config.json`` + weights + tokenizer + ``train_info.json``. ``lm_head`` is a LoRA target so a 3M-param
random model memorises the answers in a few dozen full-batch steps (seconds on CPU); the base model has never seen
them, which is the point of the tests: tuned recalls, base does not.
"""

from __future__ import annotations

from pathlib import Path

FACTS = [
    ("What is the campus Wi-Fi network called?", "The campus Wi-Fi network is ZV-Air-7731."),
    ("When does the library close?", "The library closes at 23:30 every day."),
    ("Who is the president of Zorvale University?", "The president is Quillan Marsh."),
]


def write_test_split(path: str | Path, pairs=FACTS) -> Path:
    """``test.jsonl`` in the GLM-4 messages format."""
    from umtcds_core.fileio import write_jsonl_atomic

    recs = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in pairs]
    return write_jsonl_atomic(Path(path), recs)


def train_fact_adapter(folder: str | Path, pairs=FACTS, steps: int = 40, lr: float = 1e-2, seed: int = 0) -> Path:
    """Train and save a LoRA run folder under ``folder`` with the real ``umtcds train`` machinery; returns the run.

    Full batches (all facts in each step), no dropout, and ``lm_head`` + MLP among the LoRA targets let the tiny random
    model memorise the answers in a few dozen steps.
    """
    from tests.train_helpers import train_tiny_adapter

    folder = Path(folder)
    run = folder / "run"
    if (run / "adapter_config.json").exists():
        return run
    return train_tiny_adapter(
        folder,
        pairs=list(pairs),
        steps=steps,
        lora_r=16,
        lora_alpha=32,
        lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"],
        learning_rate=lr,
        per_device_batch_size=len(pairs),
        lr_scheduler="constant",
        max_grad_norm=100.0,  # the tiny random model needs big steps; clipping at 1.0 slows memorising a lot
        packing=False,
        gradient_checkpointing=False,
        seed=seed,
        eval_steps=steps,
    )
