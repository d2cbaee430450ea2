"""Evaluate: test-split parsing, the GLM-4 demo's metrics (jieba + rouge_chinese + nltk BLEU-4), key facts, and a real
base-vs-tuned run on the fact adapter (one model load, files in ``<run>/eval/``)."""

from __future__ import annotations

import csv
import json

import pytest

from tests.chat_helpers import FACTS, write_test_split
from umtcds_core import evaluate as ev
from umtcds_core.cli import main


def test_split_record_formats():
    glm4 = {
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1"},
            {"role": "user", "content": "Q2"},
            {"role": "assistant", "content": " A2 "},
        ]
    }
    prompt, ref = ev.split_record(glm4)
    assert ref == "A2" and [m["content"] for m in prompt] == ["S", "Q1", "A1", "Q2"]
    sharegpt = {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}], "system": "S"}
    assert ev.split_record(sharegpt) == ([{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}], "A")
    alpaca = {"instruction": "Q", "input": "ctx", "output": "A"}
    assert ev.split_record(alpaca) == ([{"role": "user", "content": "Q\nctx"}], "A")
    assert ev.split_record({"messages": [{"role": "user", "content": "Q"}]}) is None
    assert ev.split_record({"text": "x"}) is None


def test_load_examples_reports_bad_input(tmp_path):
    with pytest.raises(ev.EvalError, match="does not exist"):
        ev.load_examples(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no answer"}\nnot json\n', encoding="utf-8")
    with pytest.raises(ev.EvalError, match="holds no record"):
        ev.load_examples(bad)
    good = write_test_split(tmp_path / "test.jsonl")
    assert [e["question"] for e in ev.load_examples(good, limit=2)] == [q for q, _ in FACTS[:2]]


def test_chinese_metrics_follow_the_glm4_recipe():
    ref = "图书馆每天早上8:00开放，晚上22:30关闭。"
    same = ev.score(ref, ref)
    assert same["rouge-1"] == pytest.approx(100) and same["rouge-l"] == pytest.approx(100)
    assert same["bleu-4"] == pytest.approx(1.0) and same["key-fact"] == 100
    worse = ev.score("图书馆晚上关闭。", ref)
    assert 0 < worse["rouge-1"] < 100 and worse["bleu-4"] < 1 and worse["key-fact"] < 100
    empty = ev.score("", ref)
    assert empty["rouge-l"] == 0 and empty["bleu-4"] == 0 and empty["key-fact"] == 0
    assert ev.tokens("我在 清华大学 学习") == ["我", "在", "清华大学", "学习"]  # no whitespace tokens


def test_key_facts():
    facts = ev.key_facts("The library closes at 23:30; ask Quillan Marsh in room B204 about the 1,200 seats.")
    assert {"23:30", "Quillan", "Marsh", "B204", "1200"} <= set(facts)
    assert "The" not in facts and "204" not in facts
    assert ev.key_facts("Apply at the service centre.") == []  # a capitalised word that only starts a sentence
    assert "ZV-Air-7731" in ev.key_facts("The network is ZV-Air-7731.")
    assert ev.key_fact_score("Closes 23:30, see marsh (B204), 1,200 seats, Quillan", facts) == 100
    assert ev.key_fact_score("no idea", facts) == 0
    assert ev.key_fact_score("anything", []) is None
    zh = ev.key_facts("请在2024年9月1日前到北京大学报到。")
    assert "2024年9月1日" in zh and "北京大学" in zh and "9" not in zh
    assert ev.mean_scores([{"key-fact": None, "bleu-4": 1.0}, {"key-fact": 50.0, "bleu-4": 0.0}])["key-fact"] == 50.0


def test_evaluate_tuned_beats_base(tmp_path, fact_adapter, monkeypatch):
    data = write_test_split(tmp_path / "test.jsonl")
    monkeypatch.setenv("UMTCDS_PROGRESS_FILE", str(tmp_path / "progress.json"))
    out = tmp_path / "run-eval" / "metrics.json"
    rc = main(["evaluate", "--adapter", str(fact_adapter), "--data", str(data), "--out", str(out),
               "--max-new-tokens", "20", "--batch-size", "2"])  # fmt: skip
    assert rc == 0
    metrics = json.loads(out.read_text())
    base, tuned = metrics["metrics"]["base"], metrics["metrics"]["tuned"]
    assert metrics["n"] == len(FACTS) and metrics["adapter_kind"] == "LORA"
    for name in ("bleu-4", "rouge-1", "rouge-2", "rouge-l", "key-fact"):
        assert tuned[name] > base[name], name
        assert metrics["delta"][name] == pytest.approx(tuned[name] - base[name], abs=1e-3)
    assert tuned["key-fact"] == 100 and tuned["rouge-l"] == pytest.approx(100)
    rows = [json.loads(line) for line in (out.parent / "examples.jsonl").read_text().splitlines()]
    assert [r["reference"] for r in rows] == [a for _, a in FACTS]
    assert all(r["tuned_answer"] == r["reference"] and r["base_answer"] != r["reference"] for r in rows)
    with open(out.parent / "examples.csv", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(FACTS) and {"question", "base_answer", "tuned_answer", "tuned_rouge-l"} <= set(table[0])
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert progress["done"] == progress["total"] == 2 * len(FACTS)


def test_evaluate_default_out_is_the_run_eval_folder(tmp_path, fact_chat_model, fact_adapter):
    import shutil

    run = shutil.copytree(fact_adapter, tmp_path / "runs" / "run-7")  # keep the shared fixture folder clean
    shutil.copytree(fact_adapter, run / "checkpoint-3")
    data = write_test_split(tmp_path / "test.jsonl", FACTS[:1])
    metrics = ev.evaluate(None, data, adapter=str(run / "checkpoint-3"), max_new_tokens=12, chat_model=fact_chat_model)
    assert (run / "eval" / "metrics.json").exists() and metrics["n"] == 1  # a checkpoint's results go to its run
    assert "tuned" in ev.format_report(metrics)
    assert fact_chat_model.model is not None  # a caller's model is not unloaded


def test_cli_config_file_round_trip_and_flags_win(tmp_path, fact_adapter):
    """The settings YAML (as the Evaluate page saves it) run by the real CLI; flags given too win over the file."""
    data = write_test_split(tmp_path / "test.jsonl")
    out = tmp_path / "eval" / "metrics.json"
    settings = tmp_path / "evaluate.yaml"
    values = {"adapter": str(fact_adapter), "data": str(data), "out": str(out), "max_new_tokens": 4, "limit": 2}
    ev.EVALUATE.save_yaml(values, settings)
    assert ev.EVALUATE.load_yaml(settings) == {**ev.EVALUATE.defaults(), **values}
    assert main(["evaluate", "--config", str(settings), "--max-new-tokens", "20", "--batch-size", "2"]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["n"] == 2 and metrics["max_new_tokens"] == 20  # limit from the file, max_new_tokens from the flag
    assert metrics["adapter"] == str(fact_adapter) and metrics["data"] == str(data)
    assert metrics["metrics"]["tuned"]["key-fact"] == 100


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--max-new-tokens", "0"], "max_new_tokens: must be at least 1 (128 suits campus answers)"),
        (["--limit", "-5"], "limit: must be 0 (all examples) or more"),
    ],
)
def test_cli_bad_value_is_one_sentence_and_exit_1(tmp_path, capsys, argv, expected):
    assert main(["evaluate", "--model", "smollm2-135m", "--data", str(tmp_path / "t.jsonl"), *argv]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"Error: The settings has a problem — {expected}" and "Traceback" not in err


def test_cli_needs_a_model_and_the_test_split(tmp_path, capsys):
    settings = tmp_path / "evaluate.yaml"
    settings.write_text("data: test.jsonl\nbatch_size: 0\nmax_new_token: 9\n", encoding="utf-8")
    assert main(["evaluate", "--config", str(settings)]) == 1
    err = capsys.readouterr().err
    assert f"Error: {settings} has 2 problems:" in err and "did you mean 'max_new_tokens'?" in err
    assert "batch_size: must be at least 1" in err and "Traceback" not in err
    assert main(["evaluate", "--data", "test.jsonl"]) == 1
    assert capsys.readouterr().err.startswith("Error: Give --model")
    assert main(["evaluate", "--model", "smollm2-135m"]) == 1
    assert "Give --data with the test split" in capsys.readouterr().err


# ---- four systems, refusals, citations, retrieval recall, the judge (issue 15 §5) ----------------------------------
def _context_split(tmp_path, index_dir, n_unanswerable=1):
    """A test split built by the dataset step with --context retrieved over the demo index (paraphrases included)."""
    from tests.umtcds_core.test_dataset import _seed_pairs_for, write_jsonl
    from umtcds_core import dataset as ds

    pairs = _seed_pairs_for(index_dir)
    for p in pairs[:20]:
        p["paraphrase"] = "Please tell me: " + p["question"]
    inp = write_jsonl(tmp_path / "qa.jsonl", pairs)
    ds.build_dataset(inp, tmp_path / "ds", "1:0:1", seed=1, context="retrieved", index=index_dir, context_k=3)
    return tmp_path / "ds" / "test.jsonl"


def test_evaluate_writes_the_four_system_table_with_judge(tmp_path, fact_adapter, demo_index, capsys):
    from tests.fake_llm_server import FakeLLMServer

    _, index_dir = demo_index
    data = _context_split(tmp_path, index_dir)
    out = tmp_path / "eval" / "metrics.json"
    with FakeLLMServer() as srv:
        rc = main(["evaluate", "--adapter", str(fact_adapter), "--data", str(data), "--out", str(out),
                   "--rag", str(index_dir), "--rag-k", "3", "--limit", "4", "--max-new-tokens", "6",
                   "--judge", "openai", "--judge-base-url", srv.openai_base, "--judge-model", "grader"])  # fmt: skip
        judged = srv.chat_requests()
    printed = capsys.readouterr().out
    assert rc == 0
    metrics = json.loads(out.read_text())
    systems = ["base", "tuned", "base+retrieval", "tuned+retrieval"]
    assert metrics["systems"] == systems and list(metrics["metrics"]) == systems
    assert metrics["retrieval"] == {"mode": "live", "index": str(index_dir), "k": 3}
    assert metrics["n"] == 4 and metrics["n_paraphrase"] >= 1 and set(metrics["paraphrase"]) == set(systems)
    for name in systems:
        assert set(ev.ALL_METRICS) <= set(metrics["metrics"][name])
        assert metrics["metrics"][name]["judge"] == 4  # the fake judge says "Score: 4" to every answer
    for name in ("base", "tuned"):  # closed book: nothing shown, nothing to cite
        assert metrics["metrics"][name]["recall@k"] is None and metrics["metrics"][name]["citation-acc"] is None
    assert set(metrics["delta"]) == set(ev.METRICS)
    rows = [json.loads(line) for line in (out.parent / "examples.jsonl").read_text().splitlines()]
    tests = [r for r in rows if r["variant"] == "test"]
    # recall@k is the share of answerable test questions whose page is among the shown sources (LLM-free)
    answerable = [r for r in tests if r["kind"] != "unanswerable"]
    expect = 100 * sum(r["tuned+retrieval_source_shown"] for r in answerable) / len(answerable)
    assert metrics["metrics"]["tuned+retrieval"]["recall@k"] == pytest.approx(expect)
    assert metrics["metrics"]["base+retrieval"]["recall@k"] == metrics["metrics"]["tuned+retrieval"]["recall@k"] > 0
    assert all(len(r["base+retrieval_sources"]) <= 3 for r in rows)
    assert len(judged) == 4 * len(rows)  # one grade per answer, with the prompt and the raw reply kept
    body = judged[0]["body"]
    assert body["model"] == "grader" and "Reference answer:" in body["messages"][-1]["content"]
    assert all(r["tuned_judge_reply"] == "Score: 4" for r in rows)
    assert metrics["judge"]["backend"] == "openai" and "{reference}" in metrics["judge"]["prompt"]
    with open(out.parent / "examples.csv", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(rows) and {"variant", "tuned+retrieval_answer", "base_judge"} <= set(table[0])
    for name in systems:  # the printed table has one column per system
        assert name in printed.splitlines()[0]
    assert metrics["best"]["en"] in printed


def test_evaluate_stored_context_without_index(tmp_path, fact_chat_model, demo_index):
    """A split built with --context retrieved is scored with the context it was built with when no --rag is given."""
    _, index_dir = demo_index
    data = _context_split(tmp_path, index_dir)
    metrics = ev.evaluate(None, data, out=tmp_path / "e" / "metrics.json", max_new_tokens=4, limit=3,
                          chat_model=fact_chat_model)  # fmt: skip
    assert metrics["retrieval"]["mode"] == "stored" and len(metrics["systems"]) == 4
    assert metrics["judge"] is None and metrics["metrics"]["tuned"]["judge"] is None


def test_summarize_refusals_citations_and_recall():
    """The trust metrics on hand-made rows: what each percentage counts."""
    rows = [  # two answerable (one cited right, one refused), one unanswerable refused, one unanswerable answered
        {"s_should_refuse": False, "s_refused": False, "s_cites_source": True, "s_source_shown": True},
        {"s_should_refuse": False, "s_refused": True, "s_cites_source": False, "s_source_shown": False},
        {"s_should_refuse": True, "s_refused": True, "s_cites_source": None, "s_source_shown": None},
        {"s_should_refuse": True, "s_refused": False, "s_cites_source": None, "s_source_shown": None},
    ]
    out = ev.summarize(rows, "s")
    assert out["refusal-acc"] == 50 and out["false-refusal"] == 50
    assert out["citation-acc"] == 100 and out["recall@k"] == 50 and out["judge"] is None
    assert out["attribution-acc"] == 100
    # two more answered: one cites nothing but was matched to its page (≈), one cites nothing and matches nothing
    rows += [
        {"s_should_refuse": False, "s_refused": False, "s_cites_source": False, "s_matches_source": True},
        {"s_should_refuse": False, "s_refused": False, "s_cites_source": False, "s_matches_source": False},
    ]
    out = ev.summarize(rows, "s")
    assert round(out["citation-acc"], 2) == 33.33 and round(out["attribution-acc"], 2) == 66.67


def test_verdict_names_the_best_system_only_with_enough_questions():
    m = {"base": {"key-fact": 10.0}, "tuned+retrieval": {"key-fact": 60.0, "refusal-acc": 80.0}}
    en, zh = ev.verdict({"n": 12, "metrics": m})
    assert en.startswith("tuned+retrieval answered best: key-fact 60%") and "refusing 80%" in en and "最好" in zh
    assert "no system can be named best" in ev.verdict({"n": 2, "metrics": m})[0]
    assert "tie" in ev.verdict({"n": 12, "metrics": {"a": {"key-fact": 5.0}, "b": {"key-fact": 5.0}}})[0]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--rag", "{tmp}/no-index"], "There is no index in"),
        (["--judge", "zhipuai", "--judge-api-key-env", "UMTCDS_TEST_NO_SUCH_KEY"], "No Zhipu API key"),
        (["--judge-prompt", "Rate {answer}"], "judge_prompt: must contain {question}, {reference} and {answer}"),
    ],
)
def test_cli_bad_rag_or_judge_is_one_sentence(tmp_path, capsys, monkeypatch, extra, expected):
    monkeypatch.delenv("UMTCDS_TEST_NO_SUCH_KEY", raising=False)
    data = write_test_split(tmp_path / "test.jsonl")
    argv = ["evaluate", "--model", str(tmp_path / "never-loaded"), "--data", str(data)]
    assert main(argv + [a.replace("{tmp}", str(tmp_path)) for a in extra]) == 1
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_stale_index_is_one_sentence(tmp_path, capsys, demo_index):
    import shutil

    from umtcds_core.index import build_index

    pages, _ = demo_index
    shutil.copytree(pages, tmp_path / "pages")
    build_index(tmp_path / "pages", tmp_path / "index")
    page = sorted((tmp_path / "pages").glob("*.txt"))[0]
    page.write_text(page.read_text(encoding="utf-8") + "\nChanged.\n", encoding="utf-8")
    data = write_test_split(tmp_path / "test.jsonl")
    assert main(["evaluate", "--model", "x", "--data", str(data), "--rag", str(tmp_path / "index")]) == 1
    err = capsys.readouterr().err
    assert "changed since the index was built" in err and "Traceback" not in err
