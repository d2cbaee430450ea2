"""Export: hf / gguf / ollama / vllm from a real LoRA adapter, the GGUF read back by transformers, bad inputs.

The models are tiny real ones built here (2 layers, a 300-token byte-level BPE tokenizer with ChatML), so a GGUF
round trip takes seconds: transformers' GGUF reader spends its time on the vocabulary and the module count, which
made the embedded 135M model take minutes per file on the 2-core CI machine. The converter and the check are the same
code either way.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.train_helpers import make_tiny_model
from umtcds_core import export as E
from umtcds_core.cli import main

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SYSTEM = "You answer questions about Zorvale University."


def _tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    texts = [q for q in E.CHECK_PROMPTS] + ["The library closes at 23:30.", "Apply at the student office."] * 20
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<|endoftext|>"
    )
    tok.pad_token = tok.eos_token
    tok.chat_template = CHATML
    return tok


def _tiny_run(folder: Path, arch: str) -> Path:
    """A tiny ``arch`` base model folder and a LoRA run on it (random, non-zero LoRA weights: the merge matters)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    tok = _tiny_tokenizer()
    base = make_tiny_model(folder / f"base-{arch}", arch, tokenizer=tok, positions=512)
    model = AutoModelForCausalLM.from_pretrained(base)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, lora)
    run = folder / f"run-{arch}"
    peft_model.save_pretrained(run)
    tok.save_pretrained(run)
    info = {"model": str(base), "method": "lora", "system_prompt": SYSTEM}
    (run / "train_info.json").write_text(json.dumps(info), encoding="utf-8")
    return run


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("export_runs")
    return {arch: _tiny_run(folder, arch) for arch in ("llama", "qwen2")}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gguf_round_trip_matches_the_merged_model(tmp_path, tiny_runs, arch):
    import gguf

    record = E.export(tiny_runs[arch], tmp_path / "out", "gguf", device="cpu")
    out = tmp_path / "out"
    assert record["gguf_files"] == [f"run-{arch}-f16.gguf", f"run-{arch}-q8_0.gguf"]
    saved = json.loads((out / E.INFO_FILE).read_text(encoding="utf-8"))
    f16, q8 = saved["gguf_check"]
    assert f16["ok"] and q8["ok"] and f16["top1_agreement"] == 1.0 and f16["tokenizer_same_ids"] == 1.0
    assert f16["max_rel_diff"] < 0.01 and 0 < f16["max_abs_diff"] < q8["max_abs_diff"]  # q8_0 really quantised
    reader = gguf.GGUFReader(str(out / f"run-{arch}-q8_0.gguf"))
    assert reader.fields["general.architecture"].contents() == arch
    assert reader.fields["tokenizer.chat_template"].contents() == CHATML
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    assert not list(tmp_path.glob("*.partial"))


def test_ollama_modelfile_matches_the_chat_template(tmp_path, tiny_runs, capsys):
    out = tmp_path / "ollama"
    argv = ["export", str(tiny_runs["llama"]), "--format", "ollama", "--out", str(out), "--no-check"]
    assert main([*argv, "--gguf-types", "q8_0", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "ollama create run-llama -f Modelfile" in printed
    modelfile = (out / "Modelfile").read_text(encoding="utf-8")
    assert "FROM ./run-llama-q8_0.gguf" in modelfile and (out / "run-llama-q8_0.gguf").is_file()
    assert f'SYSTEM """{SYSTEM}"""' in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "PARAMETER num_ctx 512" in modelfile and "PARAMETER temperature" in modelfile
    # What Ollama's Go template renders for a conversation (SYSTEM joins .Messages) equals the Jinja template's text.
    go, _ = E.ollama_template(CHATML)
    assert go.startswith("{{- range .Messages }}")
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Where is the library?"}]
    rendered = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs) + "<|im_start|>assistant\n"
    assert _tiny_tokenizer().apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == rendered


def test_vllm_base_plus_lora_where_it_fits_else_merged(tmp_path, tiny_runs, capsys):
    run = tiny_runs["llama"]
    lora = tmp_path / "vllm-lora"
    assert main(["export", str(run), "--format", "vllm", "--out", str(lora)]) == 0
    script = (lora / "serve.sh").read_text(encoding="utf-8")
    assert "--enable-lora" in script and "--lora-modules run-llama=./adapter" in script
    assert "--max-lora-rank 8" in script and (lora / "adapter" / "adapter_config.json").is_file()
    assert "vllm serve" in capsys.readouterr().out and "vllm serve" in (lora / "README.txt").read_text()

    merged = tmp_path / "vllm-merged"
    assert main(["export", str(run), "--format", "vllm", "--out", str(merged), "--vllm-mode", "merged"]) == 0
    assert (merged / "model" / "config.json").is_file() and not (merged / "model" / "adapter_config.json").exists()
    assert "vllm serve ./model" in (merged / "serve.sh").read_text(encoding="utf-8")
    assert json.loads((merged / E.INFO_FILE).read_text())["vllm_layout"] == "merged"

    cfg = json.loads((run / "adapter_config.json").read_text())
    head = tmp_path / "head-adapter"
    head.mkdir()
    (head / "adapter_config.json").write_text(json.dumps({**cfg, "target_modules": ["q_proj", "lm_head"]}))
    assert "lm_head" in E.vllm_lora_problem(head, "LORA", str(run.parent / "base-llama"))[0]
    assert "GGUF" in E.vllm_lora_problem(run, "LORA", "smollm2-135m")[0]


def test_hf_export_replaces_only_with_force(tmp_path, tiny_runs, capsys):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "old.txt").write_text("x")
    argv = ["export", str(tiny_runs["qwen2"]), "--format", "hf", "--out", str(out)]
    assert main(argv) == 1
    assert "not empty" in capsys.readouterr().err and (out / "old.txt").exists()
    assert main([*argv, "--force"]) == 0
    assert (out / "config.json").is_file() and not (out / "old.txt").exists()
    assert json.loads((out / E.INFO_FILE).read_text())["adapter_kind"] == "LORA"


def test_bad_inputs_are_one_sentence(tmp_path, tiny_runs, capsys, monkeypatch):
    prefix = tmp_path / "ptuning"
    prefix.mkdir()
    (prefix / "adapter_config.json").write_text(json.dumps({"peft_type": "PREFIX_TUNING"}))
    for fmt in ("hf", "gguf", "vllm"):
        assert main(["export", str(prefix), "--format", fmt, "--out", str(tmp_path / fmt)]) == 1
        assert "cannot be merged" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", str(tiny_runs["llama"])]) == 1
    assert "--out DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse's own one line for a format that does not exist
        main(["export", str(tiny_runs["llama"]), "--format", "onnx", "--out", str(tmp_path / "x")])
    assert "invalid choice" in capsys.readouterr().err
    from transformers import LlamaConfig, LlamaForCausalLM

    narrow = tmp_path / "narrow"  # a base of another width: the adapter's matrices do not fit it
    LlamaForCausalLM(
        LlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2)
    ).save_pretrained(narrow)
    _tiny_tokenizer().save_pretrained(narrow)
    argv = ["export", str(tiny_runs["llama"]), "--out", str(tmp_path / "mismatch")]
    assert main([*argv, "--model", str(narrow), "--device", "cpu"]) == 1
    assert "does not fit" in capsys.readouterr().err
    from transformers import GlmConfig

    with pytest.raises(E.ExportError, match="convert_hf_to_gguf"):
        E._gguf_arch(GlmConfig())
    with pytest.raises(E.ExportError, match="--vllm-mode merged"):
        E.export(tiny_runs["llama"], tmp_path / "v", "vllm", model="smollm2-135m", vllm_mode="lora")
    monkeypatch.setitem(E.TOLERANCE, "q8_0", 0.0)  # a check that fails: nothing is left behind
    with pytest.raises(E.ExportError, match="does not match the merged model"):
        E.export(tiny_runs["llama"], tmp_path / "strict", "gguf", gguf_types=["q8_0"], device="cpu")
    assert not (tmp_path / "strict").exists() and not (tmp_path / "strict.partial").exists()
