"""Training on CPU with a tiny random model (built from a config) and, once, the embedded smollm2-135m."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.train_helpers import DEFAULT_PAIRS, make_tiny_model, tiny_config, train_tiny_adapter
from umtcds_core.config import load_config
from umtcds_core.errors import UserError
from umtcds_core.runs import is_complete_checkpoint, latest_complete_checkpoint, read_metrics
from umtcds_core.train import encode_conversation, stop_token_ids, train
from umtcds_core.train import run as train_cli

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama"))


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from umtcds_core.models import load_tokenizer

    return load_tokenizer(tiny_model, padding_side="right")


def _train_records(run: Path) -> list[dict]:
    return [r for r in read_metrics(run / "metrics.jsonl") if r.get("kind") == "train"]


# ---- tokenisation and loss masking ----------------------------------------------------------------------------
def test_prompt_matches_chat_inference_and_only_the_answer_is_labelled(tokenizer):
    msgs = [{"role": "user", "content": "Where is the library?"}, {"role": "assistant", "content": "In Building A."}]
    stops = stop_token_ids(tokenizer)
    enc = encode_conversation(tokenizer, msgs, 512, 512, stops)
    prompt = tokenizer.apply_chat_template(msgs[:1], add_generation_prompt=True, tokenize=True)["input_ids"]
    n = len(prompt)
    assert enc["input_ids"][:n] == prompt  # exactly what chat inference feeds
    assert enc["labels"][:n] == [-100] * n
    answer = enc["labels"][n:]
    assert -100 not in answer and answer == enc["input_ids"][n:]
    assert tokenizer.decode(answer) == "In Building A.<|im_end|>"  # the answer and its end-of-turn token, no more


def test_glm4_style_template_appends_user_token_as_end_of_turn(tokenizer):
    tok = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tok.add_special_tokens({"additional_special_tokens": ["[gMASK]", "<sop>", "<|user|>", "<|assistant|>"]})
    tok.chat_template = (
        "[gMASK]<sop>{% for m in messages %}{% if m['content'] %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    user_id = tok.convert_tokens_to_ids("<|user|>")
    msgs = [{"role": "user", "content": "图书馆在哪里？"}, {"role": "assistant", "content": "在A楼。"}]
    enc = encode_conversation(tok, msgs, 512, 512, [tok.eos_token_id, user_id])
    prompt = tok.apply_chat_template(msgs[:1], add_generation_prompt=True, tokenize=True)["input_ids"]
    assert tok.decode(prompt) == "[gMASK]<sop><|user|>\n图书馆在哪里？<|assistant|>"
    assert enc["input_ids"][: len(prompt)] == prompt
    supervised = [t for t in enc["labels"] if t != -100]
    assert tok.decode(supervised) == "\n在A楼。<|user|>"
    assert enc["input_ids"].count(tok.convert_tokens_to_ids("[gMASK]")) == 1


def test_truncation_keeps_template_head_and_generation_prompt(tokenizer):
    msgs = [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "yes " * 100}]
    enc = encode_conversation(tokenizer, msgs, 40, 16, stop_token_ids(tokenizer))
    n_prompt = enc["labels"].count(-100)
    assert n_prompt == 40 and len(enc["input_ids"]) == 40 + 16
    head = tokenizer.apply_chat_template(msgs[:1], add_generation_prompt=True, tokenize=True)["input_ids"]
    assert enc["input_ids"][:20] == head[:20] and enc["input_ids"][20:40] == head[-20:]


def test_only_answer_tokens_carry_loss(tiny_model, tokenizer):
    import torch

    from umtcds_core.models import load_model

    model = load_model(tiny_model, device="cpu")
    msgs = [{"role": "user", "content": DEFAULT_PAIRS[0][0]}, {"role": "assistant", "content": DEFAULT_PAIRS[0][1]}]
    enc = encode_conversation(tokenizer, msgs, 128, 64, stop_token_ids(tokenizer))
    ids = torch.tensor([enc["input_ids"]])
    labels = torch.tensor([enc["labels"]])
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
        logits = out.logits[0, :-1]
        per_token = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
    answer_positions = labels[0, 1:] != -100
    n_answer = len(tokenizer.apply_chat_template(msgs, tokenize=True)["input_ids"]) - len(
        tokenizer.apply_chat_template(msgs[:1], add_generation_prompt=True, tokenize=True)["input_ids"]
    )
    assert int(answer_positions.sum()) == n_answer - 1  # the ChatML newline after <|im_end|> is not trained
    assert torch.allclose(out.loss, per_token[answer_positions].mean(), atol=1e-5)
    assert not torch.allclose(out.loss, per_token.mean(), atol=1e-3)  # prompt tokens would change it


# ---- training runs ----------------------------------------------------------------------------------------------
def test_lora_loss_falls_and_everything_is_written(tmp_path, tiny_model):
    run = train_tiny_adapter(tmp_path, steps=30, model=tiny_model, save_steps=15, eval_steps=10)
    recs = _train_records(run)
    assert [r["step"] for r in recs] == list(range(1, 31))
    for r in recs:
        assert {"time", "loss", "learning_rate", "epoch", "grad_norm"} <= set(r)
    assert any("tokens_per_s" in r and r["tokens_per_s"] > 0 for r in recs)
    losses = [r["loss"] for r in recs]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0, losses
    evals = [r for r in read_metrics(run / "metrics.jsonl") if r.get("kind") == "eval"]
    assert [r["step"] for r in evals] == [10, 20, 30] and all("eval_loss" in r for r in evals)
    info = json.loads((run / "train_info.json").read_text())
    assert info["method"] == "lora" and info["packing"] is True and info["gradient_checkpointing"] is True
    assert info["lora_target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert info["final_metrics"]["global_step"] == 30 and info["config"]["max_steps"] == 30
    assert (run / "adapter_model.safetensors").exists() and (run / "tokenizer_config.json").exists()
    assert [p.name for p in sorted(run.glob("checkpoint-*"))] == ["checkpoint-15", "checkpoint-30"]
    # the saved adapter loads on the base model and has learnt the answers (what chat/evaluate rely on)
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    from umtcds_core.models import load_model

    tok = AutoTokenizer.from_pretrained(str(run))  # the run folder carries the tokenizer
    msgs = [{"role": "user", "content": DEFAULT_PAIRS[0][0]}, {"role": "assistant", "content": DEFAULT_PAIRS[0][1]}]
    enc = encode_conversation(tok, msgs, 128, 64, stop_token_ids(tok))
    ids, labels = torch.tensor([enc["input_ids"]]), torch.tensor([enc["labels"]])
    base = load_model(tiny_model, device="cpu")
    with torch.no_grad():
        base_loss = base(input_ids=ids, labels=labels).loss.item()
        tuned = PeftModel.from_pretrained(base, str(run)).eval()
        tuned_loss = tuned(input_ids=ids, labels=labels).loss.item()
    assert tuned_loss < base_loss - 1.0, (base_loss, tuned_loss)


@pytest.mark.parametrize("method", ["ptuning-v2", "full"])
def test_other_methods_run_and_write_metrics(tmp_path, tiny_model, method):
    run = train_tiny_adapter(tmp_path, steps=3, model=tiny_model, method=method, eval_steps=3, save_steps=3)
    assert len(_train_records(run)) == 3
    info = json.loads((run / "train_info.json").read_text())
    assert info["method"] == method
    if method == "ptuning-v2":
        assert (run / "adapter_config.json").exists()
        assert json.loads((run / "adapter_config.json").read_text())["peft_type"] == "PREFIX_TUNING"
        # issue 19: our prefix path passes the prefix into attention explicitly, so it packs and checkpoints
        assert info["packing"] is True and info["gradient_checkpointing"] is True
    else:
        assert (run / "model.safetensors").exists()
        assert json.loads((run / "config.json").read_text()).get("use_cache", True) is True


def test_glm_architecture_gets_its_lora_targets(tmp_path):
    glm = make_tiny_model(tmp_path / "tiny-glm", arch="glm")
    run = train_tiny_adapter(tmp_path, steps=2, model=str(glm), eval_steps=2, save_steps=2)
    info = json.loads((run / "train_info.json").read_text())
    assert info["lora_target_modules"] == ["q_proj", "k_proj", "v_proj"] and info["packing"] is True


def test_embedded_model_short_lora_run(tmp_path):
    run = train_tiny_adapter(
        tmp_path,
        pairs=DEFAULT_PAIRS[:2],
        steps=2,
        model="smollm2-135m",
        per_device_batch_size=1,
        max_input_length=48,
        max_output_length=24,
        dev_file="absent.jsonl",  # no eval: keep the real-weights run short
    )
    assert len(_train_records(run)) == 2
    assert json.loads((run / "adapter_config.json").read_text())["peft_type"] == "LORA"


# ---- user-facing errors -----------------------------------------------------------------------------------------
def test_errors_are_one_clear_sentence(tmp_path, tiny_model):
    cfg_path = tiny_config(tmp_path, steps=2, model=tiny_model)
    cfg = load_config(cfg_path)
    with pytest.raises(UserError, match="QLoRA"):
        train(load_config(cfg_path).__class__(**{**cfg.to_dict(), "method": "qlora"}), cfg_path)
    with pytest.raises(UserError, match="not layers of this llama"):
        train(cfg.__class__(**{**cfg.to_dict(), "lora_target_modules": ["query_key_value"]}), cfg_path)
    with pytest.raises(UserError, match="does not exist; build the dataset"):
        train(cfg.__class__(**{**cfg.to_dict(), "data_dir": "nowhere"}), cfg_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "train.jsonl").write_text('{"messages": [{"role": "user", "content": "q"}]}\n')
    with pytest.raises(UserError, match="no usable samples"):
        train(cfg.__class__(**{**cfg.to_dict(), "data_dir": "empty"}), cfg_path)
    with pytest.raises(UserError, match="No model found"):
        train(cfg.__class__(**{**cfg.to_dict(), "model": str(tmp_path / "missing-model")}), cfg_path)
    half = tmp_path / "run" / "checkpoint-1"
    half.mkdir(parents=True)
    with pytest.raises(UserError, match="already holds a run"):
        train(cfg, cfg_path, resume="no")
    with pytest.raises(UserError, match="not a complete checkpoint"):
        train(cfg, cfg_path, resume=str(half))
    with pytest.raises(UserError, match="does not exist; pass --resume auto"):
        train(cfg, cfg_path, resume=str(tmp_path / "run" / "checkpoint-99"))
    with pytest.raises(UserError, match="more GPUs than this machine has"):
        train_cli(argparse.Namespace(config=str(cfg_path), resume="auto", gpus=64, output_dir=None))


def test_checkpoint_completeness_and_metrics_after_resume(tmp_path):
    out = tmp_path / "run"
    good, half = out / "checkpoint-4", out / "checkpoint-6"
    good.mkdir(parents=True)
    half.mkdir()
    (good / "adapter_model.safetensors").write_bytes(b"x")
    (good / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    (half / "adapter_model.safetensors").write_bytes(b"x")  # killed before trainer_state.json was written
    assert is_complete_checkpoint(good) and not is_complete_checkpoint(half)
    assert latest_complete_checkpoint(out) == good
    lines = [
        {"kind": "start", "step": 0},
        *({"kind": "train", "step": s, "loss": 1.0} for s in range(1, 7)),
        {"kind": "resume", "step": 4},
        *({"kind": "train", "step": s, "loss": 0.5} for s in range(5, 9)),
    ]
    (out / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"half": ')
    steps = [(r["step"], r["loss"]) for r in read_metrics(out / "metrics.jsonl") if r.get("kind") == "train"]
    assert steps == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 1.0), (5, 0.5), (6, 0.5), (7, 0.5), (8, 0.5)]


# ---- kill / resume / stop ---------------------------------------------------------------------------------------
def _cli(cfg_path: Path, *extra: str, entry: tuple[str, ...] = ("umtcds_core.cli", "train")) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", *entry, str(cfg_path), *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.time() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError("training ended early:\n" + proc.stdout.read()[-3000:])
        if time.time() > end:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.02)


def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(tmp_path, tiny_model):
    common = dict(model=tiny_model, save_steps=3, eval_steps=100)
    ref_run = train_tiny_adapter(tmp_path / "ref", steps=12, **common)
    ref = {r["step"]: r for r in _train_records(ref_run)}

    cfg_path = tiny_config(tmp_path / "killed", steps=12, **common)
    out = tmp_path / "killed" / "run"
    proc = _cli(cfg_path, "--resume", "no")
    _wait_for(lambda: is_complete_checkpoint(out / "checkpoint-3"), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "adapter_model.safetensors").exists(), "the run finished before it could be killed"
    killed_at = max(r["step"] for r in _train_records(out))
    resumed_from_kill = latest_complete_checkpoint(out)

    proc = _cli(cfg_path, "--resume", "auto")
    output = proc.communicate(timeout=180)[0]
    assert proc.returncode == 0, output[-3000:]
    resumed_from = latest_complete_checkpoint(out)
    assert resumed_from.name == "checkpoint-12"
    recs = _train_records(out)
    assert [r["step"] for r in recs] == list(range(1, 13)), (killed_at, [r["step"] for r in recs])
    # same step count, optimizer/scheduler state and data order ⇒ the same losses and learning rates as without a kill
    for r in recs:
        assert r["loss"] == pytest.approx(ref[r["step"]]["loss"], rel=1e-4, abs=1e-5), r["step"]
        assert r["learning_rate"] == pytest.approx(ref[r["step"]]["learning_rate"], rel=1e-6)
    markers = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"resume"' in line]
    assert [m["step"] for m in markers] == [int(resumed_from_kill.name.split("-")[1])]
    state = json.loads((out / "checkpoint-12" / "trainer_state.json").read_text())
    assert state["global_step"] == 12


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, tiny_model):
    cfg_path = tiny_config(tmp_path, steps=200, model=tiny_model, save_steps=1000, eval_steps=1000)
    out = tmp_path / "run"
    proc = _cli(cfg_path, entry=("umtcds_core.train",))  # the module entry point torchrun uses
    _wait_for(lambda: len(_train_records(out)) >= 2 if (out / "metrics.jsonl").exists() else False, proc)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, output[-3000:]
    ckpt = latest_complete_checkpoint(out)
    assert ckpt is not None and 2 <= int(ckpt.name.split("-")[1]) < 200
    assert "Continue with --resume auto" in output
    assert not (out / "adapter_model.safetensors").exists()  # a stopped run is not a finished model
    cfg = yaml.safe_load(cfg_path.read_text())
    assert cfg["max_steps"] == 200


def test_failed_compile_falls_back_to_eager_with_a_note(monkeypatch):
    """A torch.compile failure shows up at the first call; the probe step catches it before the Trainer starts."""
    import types

    import torch
    from transformers import AutoModelForCausalLM, GlmConfig

    from umtcds_core import speed
    from umtcds_core.config import TrainConfig

    shape = dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2)
    glm = GlmConfig(**shape, num_key_value_heads=1, head_dim=16, vocab_size=256, pad_token_id=0)
    model = AutoModelForCausalLM.from_config(glm, dtype=torch.float32, attn_implementation="sdpa")

    def broken_compile(m, device=None, **options):
        def forward(self, *args, **kwargs):
            raise RuntimeError("Inductor could not lower an op")

        for layer in speed.decoder_layers(m):
            layer.forward = types.MethodType(forward, layer)
        return 2

    monkeypatch.setattr(speed, "compile_layers", broken_compile)
    monkeypatch.setattr(speed, "compile_usable", lambda device=None: True)  # a GPU would say so
    plan = speed.plan(TrainConfig(compile="on"), speed.Machine("cpu"))
    assert plan.compile and plan.packing and plan.checkpointing
    report = speed.apply(model, plan)
    assert report.compiled == 0
    assert any(
        "torch.compile failed (RuntimeError: Inductor could not lower an op); training runs eager" in n
        for n in report.notes
    )
    assert all(p.grad is None for p in model.parameters())  # the probe leaves no gradients behind
    out = model(input_ids=torch.tensor([[5, 6, 7]]), labels=torch.tensor([[5, 6, 7]]))
    assert torch.isfinite(out.loss)


def test_compiled_layers_through_the_trainer_match_eager(tmp_path, tiny_model, monkeypatch):
    """`compile: on` end to end through the Trainer (probe step, reentrant checkpointing, eval, save), on CPU via
    Inductor's C++ back end: the same per-step losses as the eager run, and the adapter is written."""
    from umtcds_core import speed

    eager = train_tiny_adapter(tmp_path / "eager", steps=4, model=tiny_model, eval_steps=4, save_steps=4)
    monkeypatch.setattr(speed, "compile_usable", lambda device=None: True)  # a GPU would say so
    compiled = train_tiny_adapter(
        tmp_path / "compiled", steps=4, model=tiny_model, eval_steps=4, save_steps=4, compile="on"
    )
    info = json.loads((compiled / "train_info.json").read_text())
    assert info["speed"]["compiled_layers"] == 2 and info["speed"]["kernels"] == []
    assert any(n.startswith("compiled 2 decoder layers with torch.compile") for n in info["notes"])
    la = [r["loss"] for r in _train_records(eager)]
    lb = [r["loss"] for r in _train_records(compiled)]
    assert len(la) == len(lb) == 4 and all(abs(a - b) < 1e-3 for a, b in zip(la, lb, strict=True)), (la, lb)
    evals = [r for r in read_metrics(compiled / "metrics.jsonl") if r.get("kind") == "eval"]
    assert len(evals) == 1 and abs(evals[0]["eval_loss"] - read_eval(eager)) < 1e-3
    assert (compiled / "adapter_model.safetensors").exists()


def read_eval(run: Path) -> float:
    return next(r["eval_loss"] for r in read_metrics(run / "metrics.jsonl") if r.get("kind") == "eval")
