"""Chat: adapter discovery, streaming, multi-turn, base vs tuned on one model, the CLI, unload, merge/export.

Real parts only: a tiny llama with a LoRA that learned made-up campus facts (session fixture ``fact_adapter``).
"""

from __future__ import annotations

import gc
import json
import shutil
import weakref

import pytest

from tests.chat_helpers import FACTS
from umtcds_core import chat, runs
from umtcds_core.chat import ChatError, ChatSession, GenOptions
from umtcds_core.cli import main
from umtcds_core.errors import UserError
from umtcds_core.runs import RunError

GREEDY = GenOptions(max_new_tokens=20, temperature=0.0)
Q_WIFI, A_WIFI = FACTS[0]


def test_find_adapter_run_checkpoint_and_errors(tmp_path, fact_adapter):
    assert runs.find_adapter(fact_adapter) == fact_adapter
    run = tmp_path / "run"
    for step in (5, 20):  # a run without a final adapter: its newest checkpoint wins
        shutil.copytree(fact_adapter, run / f"checkpoint-{step}")
    assert runs.find_adapter(run).name == "checkpoint-20"
    assert runs.run_dir_of(run / "checkpoint-20") == run
    assert [p.name for p in runs.loadable([run])] == ["checkpoint-20", "checkpoint-5"]
    # base model from the run's train_info.json, else adapter_config.json
    (run / "checkpoint-5" / "train_info.json").unlink()
    (run / "train_info.json").write_text(json.dumps({"base_model": "some-base"}))
    assert runs.adapter_base_ref(run / "checkpoint-5") == "some-base"
    (run / "train_info.json").unlink()
    cfg = json.loads((run / "checkpoint-5" / "adapter_config.json").read_text())
    assert runs.adapter_base_ref(run / "checkpoint-5") == cfg["base_model_name_or_path"]
    with pytest.raises(RunError, match="does not exist"):
        runs.find_adapter(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="holds no adapter"):
        runs.find_adapter(tmp_path / "empty")


def test_tuned_recalls_facts_base_does_not(fact_chat_model):
    cm = fact_chat_model
    assert cm.has_adapter and cm.adapter_kind == "LORA"
    for q, a in FACTS:
        msgs = [{"role": "user", "content": q}]
        assert cm.answer(msgs, GREEDY) == a
        assert a not in cm.answer(msgs, GREEDY, use_adapter=False)
    # batched (left-padded) generation gives the same answers as one at a time
    assert cm.answer_batch([[{"role": "user", "content": q}] for q, _ in FACTS], GREEDY, batch_size=2) == [
        a for _, a in FACTS
    ]


def test_stream_pieces_history_system_and_clear(fact_chat_model):
    session = ChatSession(fact_chat_model, options=GREEDY)  # trained without a system prompt
    pieces = list(session.stream(Q_WIFI))
    assert len(pieces) > 1 and "".join(pieces).strip() == A_WIFI
    assert session.history == [{"role": "user", "content": Q_WIFI}, {"role": "assistant", "content": A_WIFI}]
    session.system = "You are the campus assistant."
    msgs = session.messages("And the library?")
    session.system = None
    assert msgs[0] == {"role": "system", "content": "You are the campus assistant."}
    assert msgs[1:3] == session.history and msgs[-1]["content"] == "And the library?"
    second = session.ask("And the library?")  # a second turn: the history grows (the tiny model only knows turn 1)
    assert session.history[-1] == {"role": "assistant", "content": second} and len(session.history) == 4
    session.clear()
    assert session.history == []
    base, tuned = session.compare(FACTS[1][0])
    assert tuned == FACTS[1][1] and FACTS[1][1] not in base
    assert session.history[-1]["content"] == tuned and len(session.history) == 2
    with pytest.raises(ChatError):
        list(session.stream("   "))


def test_stream_stops_when_consumer_leaves(fact_chat_model):
    it = fact_chat_model.stream([{"role": "user", "content": Q_WIFI}], GenOptions(max_new_tokens=200, temperature=0))
    next(it)
    it.close()  # must stop the worker and release the lock
    assert fact_chat_model.lock.acquire(timeout=10)
    fact_chat_model.lock.release()


def test_cli_prompt_and_compare(fact_adapter, capsys):
    assert main(["chat", "--adapter", str(fact_adapter), "--prompt", Q_WIFI, "--temperature", "0"]) == 0
    assert capsys.readouterr().out.strip() == A_WIFI
    assert main(["chat", "--adapter", str(fact_adapter), "--prompt", Q_WIFI, "--temperature", "0", "--compare"]) == 0
    out = capsys.readouterr().out
    base_part, tuned_part = out.split("--- tuned ---")
    assert A_WIFI not in base_part and A_WIFI in tuned_part


def test_cli_errors_are_one_sentence(tmp_path, capsys):
    assert main(["chat", "--adapter", str(tmp_path / "missing"), "--prompt", "hi"]) == 1
    assert capsys.readouterr().err.startswith("Error: The adapter folder")
    assert main(["chat", "--prompt", "hi"]) == 1


def test_unload_drops_the_model(fact_adapter):
    cm = chat.load_chat_model(None, fact_adapter, device="cpu")
    ref = weakref.ref(cm.model)
    info = cm.unload()
    gc.collect()
    assert ref() is None and cm.model is None
    assert set(info) == {"before", "after"}


def test_merge_lora_into_standard_folder(tmp_path, fact_adapter, capsys):
    out = tmp_path / "merged"
    assert main(["chat", "--adapter", str(fact_adapter), "--merge-to", str(out)]) == 0
    assert (out / "config.json").exists() and (out / "tokenizer_config.json").exists()
    assert not (out / "adapter_config.json").exists()
    assert json.loads((out / "umtcds_export.json").read_text())["adapter_kind"] == "LORA"
    merged = chat.load_chat_model(str(out), device="cpu")  # a plain model folder now
    assert not merged.has_adapter
    assert merged.answer([{"role": "user", "content": Q_WIFI}], GREEDY) == A_WIFI
    merged.unload()
    from umtcds_core.export import ExportError, merge_adapter

    with pytest.raises(ExportError, match="not empty"):  # never overwrites
        merge_adapter(fact_adapter, out)


def test_ptuning_v2_checkpoint_loads_and_refuses_merge(tmp_path, fact_adapter):
    """A P-tuning v2 (peft prefix tuning) checkpoint loads, answers tuned and base, and cannot be merged."""
    import torch
    from peft import PrefixTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from umtcds_core.export import merge_adapter

    base_dir = json.loads((fact_adapter / "train_info.json").read_text())["base_model"]
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    )
    run = tmp_path / "pt-run" / "checkpoint-3"
    model.save_pretrained(str(run))
    cm = chat.load_chat_model(None, run.parent, device="cpu")
    assert cm.adapter_kind == "PREFIX_TUNING" and cm.adapter_dir == run
    msgs = [{"role": "user", "content": Q_WIFI}]
    opts = GenOptions(max_new_tokens=5, temperature=0.0)
    assert cm.answer(msgs, opts) and cm.answer(msgs, opts, use_adapter=False)
    assert len(cm.answer_batch([msgs, [{"role": "user", "content": "hi"}]], opts)) == 2
    cm.unload()
    with pytest.raises(UserError, match="cannot be merged"):
        merge_adapter(run, tmp_path / "out")


def test_cli_interactive_loop(fact_adapter, monkeypatch, capsys):
    import io

    q2, a2 = FACTS[1]
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{Q_WIFI}\n/clear\n\n{q2}\n/quit\n"))
    assert main(["chat", "--adapter", str(fact_adapter), "--temperature", "0", "--max-new-tokens", "20"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("> ") == 5  # a prompt per input line, up to /quit
    assert A_WIFI in captured.out and a2 in captured.out and "conversation cleared" in captured.err


# ---- loops and half characters (issue 21 item 7) ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("答案是" + "；" * 20, "答案是；"),  # one character again and again (the base model's "；；；…")
        ("ok " + "ab" * 10, "ok ab"),  # a short n-gram
        ("The library closes. " * 3, "The library closes. "),  # a sentence
        ("Hi\nThe fee is 100.\nThe fee is 100.\n\nThe fee is 100.\n", "Hi\nThe fee is 100."),  # the same line
        ("a" + "\n" * 20, "a\n"),  # blank lines are a loop too
    ],
)
def test_find_repetition_cuts_a_loop_to_one_copy(text, kept):
    keep = chat.find_repetition(text)
    assert keep is not None and text[:keep] == kept
    assert chat.final_text(text) == kept.strip()


@pytest.mark.parametrize(
    "text",
    [
        "答案是" + "；" * 19,  # just under the span
        "very very very good",  # a repeat that does not end the text
        "哈哈哈",  # short emphasis
        "x\nHello there\nHello there\nHello",  # the third line is not finished yet
        "| a | b | c | d | e | f |\n|---|---|---|---|---|---|",  # a markdown table rule
        "-" * 40,  # a horizontal rule
        "The campus Wi-Fi network is ZV-Air-7731.",
    ],
)
def test_find_repetition_leaves_normal_text(text):
    assert chat.find_repetition(text) is None
    assert chat.final_text(text) == text.strip()


def _stream_tokens(tok, ids, cut: int | None = None) -> list[str]:
    """Feed ``ids`` one token at a time through the chat streamer, as ``generate`` does; return the pieces."""
    import torch

    streamer = chat._text_streamer_class()(tok, skip_special_tokens=True)
    for i in ids[:cut]:
        streamer.put(torch.tensor([[i]]))
    streamer.end()
    return [p for p in streamer if p]


def test_streamer_shows_whole_characters_at_once_and_never_half(fact_chat_model):
    tok = fact_chat_model.tokenizer  # SmolLM2's byte-level BPE: a Chinese character is 1–3 tokens
    text = "图书馆 23:30 关门。答案是；；；"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert any(tok.decode(ids[:k]).endswith("\ufffd") for k in range(1, len(ids)))  # the case that used to show "�"
    pieces = _stream_tokens(tok, ids)
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)
    assert len(pieces) >= len(text) - 2  # streamed as it comes, punctuation too (no waiting for a space)
    half = next(k for k in range(len(ids), 0, -1) if tok.decode(ids[:k]).endswith("\ufffd"))
    cut = _stream_tokens(tok, ids, cut=half)  # generation stopped inside a character
    assert "".join(cut) == tok.decode(ids[:half]).rstrip("\ufffd") and not any("\ufffd" in p for p in cut)


@pytest.fixture(scope="module")
def embedded_chat(embedded_model):
    tok, model = embedded_model
    return chat.ChatModel(tokenizer=tok, model=model, base_ref="smollm2-135m")


def test_embedded_model_stops_on_a_loop(embedded_chat):
    """The embedded model falls into "；；；…" on this question (greedy): it stops there instead of at the limit."""
    msgs = [{"role": "user", "content": "宿舍费用是多少？；；；"}]
    usage: dict = {}
    pieces = list(embedded_chat.stream(msgs, GenOptions(max_new_tokens=256, temperature=0.0), usage=usage))
    assert usage["stop_reason"] == "repetition" and usage["completion_tokens"] < 120
    streamed = "".join(pieces)
    assert chat.find_repetition(streamed) is not None and not any("\ufffd" in p for p in pieces)
    assert chat.find_repetition(usage["text"]) is None and streamed.startswith(usage["text"])
    assert usage["text"].endswith("；") and not usage["text"].endswith("；；")


def test_repetition_stop_is_per_row_in_a_batch(fact_chat_model):
    """In a batch only the looping row is stopped; the random base model's answers come back without their loops."""
    import torch

    tok = fact_chat_model.tokenizer
    prompt = tok("Q: fee?", add_special_tokens=False)["input_ids"]
    rows = [tok("答案是" + "；" * 20, add_special_tokens=False)["input_ids"], tok("The fee is 100.")["input_ids"]]
    width = max(map(len, rows))
    ids = torch.tensor([prompt + [tok.pad_token_id] * (width - len(r)) + r for r in rows])  # left padding
    crit = chat._StopOnRepetition(tok, len(prompt))
    assert crit(ids, None).tolist() == [True, False] and crit.fired
    qs = [[{"role": "user", "content": q}] for q, _ in FACTS]
    base = fact_chat_model.answer_batch(qs, GenOptions(max_new_tokens=200, temperature=0.0), use_adapter=False)
    assert all(a and chat.find_repetition(a) is None and "\ufffd" not in a for a in base)


def test_embedded_model_cut_inside_a_character_shows_no_half(embedded_chat):
    """A token limit that falls inside a Chinese character ends before it, never with "�"."""
    msgs = [{"role": "user", "content": "图书馆几点关门？请用中文回答。"}]
    enc = embedded_chat.encode([msgs])
    out = embedded_chat.model.generate(**enc, max_new_tokens=16, do_sample=False, top_p=None, top_k=None,
                                       temperature=None, pad_token_id=embedded_chat.tokenizer.pad_token_id)  # fmt: skip
    new = out[0, enc["input_ids"].shape[1] :].tolist()
    tok = embedded_chat.tokenizer
    half = next(k for k in range(1, len(new)) if tok.decode(new[:k]).endswith("\ufffd"))
    usage: dict = {}
    pieces = list(embedded_chat.stream(msgs, GenOptions(max_new_tokens=half, temperature=0.0), usage=usage))
    assert usage["stop_reason"] == "length" and usage["completion_tokens"] == half
    assert "".join(pieces) == tok.decode(new[:half]).rstrip("\ufffd") and "\ufffd" not in usage["text"]
