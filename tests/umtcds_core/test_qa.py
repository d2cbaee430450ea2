"""Q&A generation: parsing, chunking, curation, resumable runs through the real SDKs against a local server, the CLI,
and the real embedded model on a few short pages."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fake_llm_server import FakeLLMServer  # noqa: E402

from umtcds_core import cli  # noqa: E402
from umtcds_core.errors import UserError  # noqa: E402
from umtcds_core.llm import AuthError, OpenAIBackend, RetryPolicy, ZhipuBackend, estimate_tokens  # noqa: E402
from umtcds_core.qa import (  # noqa: E402
    GenSettings,
    Grounding,
    NearDuplicateIndex,
    chunk_text,
    dump_prompts,
    generate,
    load_prompts,
    parse_pairs,
    parse_score,
    prompts_from_yaml,
    read_pages,
    settled_pairs,
)

KEY = "sk-qa-test-5f3c2a1b9d8e7f60"

PAGES = {
    "admissions.txt": (
        "Admissions Office\nHome | News | Contact\n"
        "The Admissions Office of Qingshan University is in Room 101 of the Main Building.\n"
        "It is open Monday to Friday from 8:30 to 17:00, phone 0571-88886666.\n"
        "Applications for the fall semester close on June 30.\n"
    ),
    "library.txt": (
        "Library\nThe university library opens at 7:30 and closes at 22:00 every day.\n"
        "Students can borrow up to 20 books for 60 days with their campus card.\n"
    ),
    "jwc.txt": (
        "教务处通知\n关于2024年秋季学期选课的通知。选课时间为9月1日至9月7日，学生需登录教务系统完成选课。\n"
        "教务处办公室位于行政楼三楼，联系电话：0571-86661234。\n"
    ),
    "empty.txt": "  \n",
}


def _pages(tmp_path: Path, pages: dict[str, str] = PAGES) -> Path:
    d = tmp_path / "pages"
    d.mkdir()
    for name, text in pages.items():
        (d / name).write_text(text, encoding="utf-8")
    return d


def _outcomes(out: Path) -> tuple[list[dict], list[dict]]:
    qa = [json.loads(x) for x in (out / "qa.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    fails = [json.loads(x) for x in (out / "failures.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    return qa, fails


def _openai(srv, key=KEY, **kw) -> OpenAIBackend:
    return OpenAIBackend("fake-model", key, srv.openai_base, timeout=5, retry=RetryPolicy(base_delay=0.01), **kw)


# ---- parsing --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "reply",
    [
        '[{"question": "Where is the library?", "answer": "Next to Gate 2."}]',
        'Sure! Here you go:\n```json\n[{"question": "Where is the library?", "answer": "Next to Gate 2."}]\n```\nHope it helps.',
        '<think>The user wants JSON. Let me think {"question": "no"}</think>[{"Question": "Where is the library?", "Answer": "Next to Gate 2."}]',
        '{"pairs": [{"q": "Where is the library?", "a": "Next to Gate 2."}]}',
        '[{"question": "Where is the library?", "answer": "Next to Gate 2.",},]',
        "Q: Where is the library?\nA: Next to Gate 2.",
        "1. **Question:** Where is the library?\n   **Answer:** Next to Gate 2.",
        # a truncated array, cut by max_tokens mid-way through the second object
        '[{"question": "Where is the library?", "answer": "Next to Gate 2."}, {"question": "When does it op',
        # the degenerate nesting a 135M model produces: the pair is whole, the rest is noise
        '[{"question": "Where is the library?", "answer": "Next to Gate 2.", "data": { "type": "json", "data": { "type":',
    ],
)
def test_parser_recovers_the_pair_from_many_reply_shapes(reply):
    pairs = parse_pairs(reply)
    assert pairs[0] == {"question": "Where is the library?", "answer": "Next to Gate 2."}


def test_parser_chinese_lines_and_multiline_answers():
    reply = "问：图书馆几点开门？\n答：每天7:30开门，\n22:00闭馆。\n问题：怎么借书？\n答案：刷校园卡借书。"
    assert parse_pairs(reply) == [
        {"question": "图书馆几点开门？", "answer": "每天7:30开门，\n22:00闭馆。"},
        {"question": "怎么借书？", "answer": "刷校园卡借书。"},
    ]


@pytest.mark.parametrize("reply", ["", "I cannot help with that.", "<think>only thinking, never answered", "[1, 2, 3]"])
def test_parser_returns_nothing_for_unparseable_replies(reply):
    assert parse_pairs(reply) == []


@pytest.mark.parametrize(
    ("reply", "settled"),
    [
        ('[{"question": "A?", "answer": "B."}, {"question": "C?", "answer": "D', 1),  # JSON cut inside an answer
        ('[{"question": "A?", "answer": "B."}, {"question": "C?", "answer": "D."}', 2),  # both objects closed
        ('```json\n[{"question": "A?", "answer": "B."}]\n```', 1),
        ("Q: A?\nA: B.\nQ: C?\nA: D.", 1),  # the last answer may go on over more lines
        ("Q: A?\nA: B.\nQ: C?\nA: D.\nQ: E", 2),  # a new question closes the answer before it
        ('"question": "A?", "answer": "B. More', 0),  # a cut answer is salvaged only at the end of a reply
        ("No pairs here.", 0),
    ],
)
def test_settled_pairs_counts_only_pairs_more_text_cannot_change(reply, settled):
    assert settled_pairs(reply) == settled


def test_parse_score():
    assert parse_score("4") == 4
    assert parse_score("Score: 2/5") == 2
    assert parse_score("<think>maybe 5?</think>评分：3") == 3
    assert parse_score("no idea") is None


# ---- chunking and curation ----------------------------------------------------------------------------------------
def test_chunks_respect_the_token_budget_and_keep_all_text():
    text = "\n".join(f"第{i}条：学生应在规定时间内完成选课并按时缴费，逾期不予办理。" for i in range(40))
    text += "\n" + "很长的一句话" * 400  # one line longer than a chunk, no sentence breaks
    chunks = chunk_text(text, 200, estimate_tokens)
    assert len(chunks) > 5
    assert all(estimate_tokens(c) <= 200 for c in chunks)
    assert "".join(chunks).replace("\n", "") == text.replace("\n", "")


def test_near_duplicates_by_character_ngrams_work_for_chinese_and_english():
    idx = NearDuplicateIndex(0.8)
    idx.add("图书馆每天几点开门？")
    idx.add("When does the university library open?")
    assert idx.is_duplicate("图书馆每天几点开门?")  # exact after normalisation
    assert idx.is_duplicate("图书馆每天几点开门呢？")  # near
    assert idx.is_duplicate("When does the university library open ?")
    assert not idx.is_duplicate("食堂在哪里？")
    assert not idx.is_duplicate("How many books can a student borrow?")


def test_near_duplicates_with_different_numbers_are_kept_like_the_dataset_grouping():
    """3号楼 and 4号楼 are different questions: generation keeps both, as the dataset step's grouping does; the same
    question with the same number is still dropped."""
    from umtcds_core.dataset import find_groups

    idx = NearDuplicateIndex(0.85)
    first = "学校3号宿舍楼每天晚上几点关门？"
    idx.add(first)
    assert not idx.is_duplicate("学校4号宿舍楼每天晚上几点关门？")
    assert idx.is_duplicate("学校3号宿舍楼每天晚上几点关门呢？")
    assert not idx.is_duplicate("What time does Building 4 close at night?")
    idx.add("What time does Building 3 close at night?")
    assert not idx.is_duplicate("What time does Building 4 close at night?")
    assert idx.is_duplicate("What time does Building 3 close at night ?")
    assert find_groups([first, "学校4号宿舍楼每天晚上几点关门？"], 0.85) == [[0], [1]]


def test_grounding_rejects_made_up_numbers_and_unrelated_answers():
    g = Grounding(PAGES["admissions.txt"])
    assert g.score("It is in Room 101 of the Main Building.") > 0.8
    assert g.score("Call 0571-12345678.") == 0.0
    assert g.score("The swimming pool is heated in winter.") < 0.5
    zh = Grounding(PAGES["jwc.txt"])
    assert zh.score("位于行政楼三楼。") == 1.0


def test_prompt_file_roundtrip_and_clear_errors(tmp_path):
    text = dump_prompts(load_prompts())
    assert prompts_from_yaml(text) == load_prompts()
    f = tmp_path / "p.yaml"
    f.write_text("en:\n  qa_system: Only JSON please.\n", encoding="utf-8")
    assert load_prompts(f)["en"]["qa_system"] == "Only JSON please."
    with pytest.raises(UserError, match="qa_sytem"):
        prompts_from_yaml("en:\n  qa_sytem: typo\n")
    with pytest.raises(UserError, match=r"\{text\}"):
        prompts_from_yaml("zh:\n  qa_user: 写问答对\n")
    with pytest.raises(UserError, match="does not exist"):
        read_pages(tmp_path / "missing")


# ---- runs against the local chat-completions server ---------------------------------------------------------------
def test_every_page_ends_in_qa_or_failures_and_a_rerun_resumes(tmp_path):
    pages = _pages(tmp_path)
    out = tmp_path / "qa"
    with FakeLLMServer(api_key=KEY) as srv:
        settings = GenSettings(backend="openai", clean=True, pairs_per_page=3)
        summary = generate(pages, out, _openai(srv), settings, concurrency=3)
        qa, fails = _outcomes(out)
        assert {q["file"] for q in qa} == {"admissions.txt", "library.txt", "jwc.txt"}
        assert [f["file"] for f in fails] == ["empty.txt"] and fails[0]["retryable"] is False
        assert summary.pairs == len(qa) and summary.failures == 1 and summary.tokens_out > 0
        for q in qa:
            assert q["question"] and q["answer"] and q["source"] and q["grounding"] >= 0.5
        # two stages: a clean request and a Q&A request per page (with the few-shot example before the page)
        systems = [r["body"]["messages"][0]["content"] for r in srv.chat_requests()]
        assert sum("clean" in s or "清洗" in s for s in systems) == 3  # the Chinese page got the zh prompts
        assert sum("question-answer" in s or "问答对" in s for s in systems) == 3
        assert any(len(r["body"]["messages"]) == 4 for r in srv.chat_requests())
        n = len(srv.chat_requests())
        again = generate(pages, out, _openai(srv), settings)
        assert again.skipped == 4 and again.processed == 0 and len(srv.chat_requests()) == n
        # other settings → pages are generated again; the old pairs move to superseded.jsonl, nothing is lost
        generate(pages, out, _openai(srv), GenSettings(backend="openai", clean=False, pairs_per_page=1))
        qa2, fails2 = _outcomes(out)
        assert len(qa2) == 3 and len(fails2) == 1
        assert len((out / "superseded.jsonl").read_text().splitlines()) == len(qa)


def test_unparseable_replies_are_reasked_then_recorded_and_retried_next_run(tmp_path):
    pages = _pages(tmp_path, {"library.txt": PAGES["library.txt"]})
    out = tmp_path / "qa"
    with FakeLLMServer(api_key=KEY) as srv:
        for _ in range(3):
            srv.push_reply("Sorry, I can only chat about the weather.")
        settings = GenSettings(backend="openai", pairs_per_page=2, max_parse_retries=2)
        generate(pages, out, _openai(srv), settings)
        qa, fails = _outcomes(out)
        assert qa == [] and fails[0]["stage"] == "parse" and fails[0]["retryable"] is True
        assert "after 3 attempts" in fails[0]["reason"] and "weather" in fails[0]["reply"]
        temps = [r["body"]["temperature"] for r in srv.chat_requests()]
        assert temps[0] == 0.0 and min(temps[1:]) >= 0.7  # re-asks sample
        generate(pages, out, _openai(srv), settings)  # the server now answers properly
        qa, fails = _outcomes(out)
        assert len(qa) == 2 and fails == []


def test_judge_scores_are_kept_and_low_ones_filtered(tmp_path):
    pages = _pages(tmp_path, {"library.txt": PAGES["library.txt"], "jwc.txt": PAGES["jwc.txt"]})
    out = tmp_path / "qa"

    def responder(body):
        system = body["messages"][0]["content"]
        if "rate" in system or "评分" in system:
            return "2" if "选课" in body["messages"][-1]["content"] else "5"
        from fake_llm_server import default_responder

        return default_responder(body)

    with FakeLLMServer(api_key=KEY, responder=responder) as srv:
        generate(pages, out, _openai(srv), GenSettings(backend="openai", judge=True, judge_threshold=3))
    qa, fails = _outcomes(out)
    assert qa and all(q["judge_score"] == 5 and q["file"] == "library.txt" for q in qa)
    assert fails[0]["file"] == "jwc.txt" and "judge score below 3" in fails[0]["reason"]


def test_ungrounded_and_duplicate_pairs_are_dropped(tmp_path):
    pages = _pages(tmp_path, {"a.txt": PAGES["library.txt"], "b.txt": PAGES["library.txt"] + "\nSee you soon.\n"})
    out = tmp_path / "qa"
    reply = json.dumps(
        [
            {"question": "When does the library open?", "answer": "It opens at 7:30 and closes at 22:00 every day."},
            {"question": "When does the library open ?", "answer": "At 7:30."},
            {"question": "Who is the president?", "answer": "Professor Zhang Wei since 2019, phone 12345678."},
            {"question": "Hi?", "answer": ""},
            {"question": "What are the library hours?", "answer": "It opens at 7:30 and closes at 22:00 every day."},
        ]
    )
    with FakeLLMServer(api_key=KEY, responder=lambda body: reply) as srv:
        generate(pages, out, _openai(srv), GenSettings(backend="openai", pairs_per_page=5), group_size=1)
    qa, fails = _outcomes(out)
    # pages claim questions as they finish (two pages in flight), so either page may be first. The first keeps
    # "When does the library open?" and drops the near-duplicate question, the made-up phone number, the empty
    # answer and its own repeated answer; the other page's first question was asked already, and its repeated
    # answer is new on that page, so "What are the library hours?" stays there.
    kept = {f: [q["question"] for q in qa if q["file"] == f] for f in ("a.txt", "b.txt")}
    assert sorted(kept.values()) == [["What are the library hours?"], ["When does the library open?"]]
    assert fails == []
    with FakeLLMServer(api_key=KEY, responder=lambda body: reply) as srv:
        generate(pages, tmp_path / "qa2", _openai(srv), GenSettings(backend="openai", pairs_per_page=2), group_size=1)
    qa, fails = _outcomes(tmp_path / "qa2")
    assert len(qa) == 1 and len(fails) == 1  # two pairs a page: the page that comes second has only repeats left
    assert {qa[0]["file"], fails[0]["file"]} == {"a.txt", "b.txt"}
    assert "duplicate question" in fails[0]["reason"]


def test_a_bad_key_stops_the_run_at_once_and_the_next_run_continues(tmp_path):
    pages = _pages(tmp_path, {f"p{i}.txt": PAGES["library.txt"].replace("22:00", f"2{i}:00") for i in range(8)})
    out = tmp_path / "qa"
    with FakeLLMServer(api_key=KEY) as srv:
        backend = ZhipuBackend(
            "glm-4-flash", "sk-revoked-000000000", srv.zhipu_base, retry=RetryPolicy(base_delay=0.01)
        )
        with pytest.raises(AuthError, match="401"):
            generate(pages, out, backend, GenSettings(backend="zhipuai"), concurrency=2)
        assert len(srv.chat_requests()) <= 2  # the first wave only, not one per page
        assert not (out / "qa.jsonl").exists() or _outcomes(out) == ([], [])
        good = ZhipuBackend("glm-4-flash", KEY, srv.zhipu_base)
        generate(pages, out, good, GenSettings(backend="zhipuai"), concurrency=2)
    qa, fails = _outcomes(out)
    assert len({q["file"] for q in qa}) + len(fails) == 8


def test_cli_generate_with_zhipu_key_from_env_never_writes_the_key(tmp_path, monkeypatch, capsys):
    pages = _pages(tmp_path)
    out = tmp_path / "out"
    monkeypatch.setenv("CAMPUS_GLM_KEY", KEY)
    with FakeLLMServer(api_key=KEY) as srv:
        prompt_file = tmp_path / "prompts.yaml"
        prompt_file.write_text(
            "en:\n  qa_system: |\n    Write question-answer pairs. JSON array only.\n", encoding="utf-8"
        )
        argv = ["generate", str(pages), "--out", str(out), "--backend", "zhipuai", "--base-url", srv.zhipu_base]
        argv += ["--api-key-env", "CAMPUS_GLM_KEY", "--pairs-per-page", "2", "--concurrency", "2", "--no-clean"]
        argv += ["--prompt-file", str(prompt_file), "--lang", "en"]
        assert cli.main(argv) == 0
        assert any(
            r["body"]["messages"][0]["content"].startswith("Write question-answer pairs.") for r in srv.chat_requests()
        )
        assert all(r["headers"]["authorization"] == f"Bearer {KEY}" for r in srv.chat_requests())
    assert "pairs from 3 pages" in capsys.readouterr().out
    written = sorted(p.name for p in out.iterdir())
    assert written == ["failures.jsonl", "prompts.yaml", "qa.jsonl"]
    for p in out.rglob("*"):
        assert KEY not in p.read_text(encoding="utf-8")
    monkeypatch.setenv("CAMPUS_GLM_KEY", "sk-wrong-11111111111")
    (pages / "new.txt").write_text(PAGES["library.txt"].replace("Library", "Gym"), encoding="utf-8")
    with FakeLLMServer(api_key=KEY) as srv:
        argv[argv.index("--base-url") + 1] = srv.zhipu_base
        assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: The server refused the API key (HTTP 401)") and "sk-wrong-11111111111" not in err


def test_cli_rejects_an_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["generate", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--backend", "openai"]) == 1
    assert "No .txt or .md pages" in capsys.readouterr().err


# ---- the real embedded model --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_local_embedded_model_writes_parseable_pairs(tmp_path):
    """smollm2-135m on two short English pages, batched; a 135M model is weak, so we ask for at least one page
    (with these settings both pages give a grounded pair: the few-shot JSON example and the parser's salvage of an
    answer cut by max_tokens do the work)."""
    from umtcds_core.llm import LocalBackend

    pages = _pages(tmp_path, {k: PAGES[k] for k in ("admissions.txt", "library.txt")})
    out = tmp_path / "qa"
    import torch

    backend = LocalBackend("smollm2-135m", batch_size=4, device="cpu")
    settings = GenSettings(backend="local", pairs_per_page=2, max_tokens=72, max_parse_retries=0, lang="en")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy 2-core machine two torch threads spin-wait and run many times slower
    try:
        summary = generate(pages, out, backend, settings)
    finally:
        torch.set_num_threads(threads)
        backend.close()
    qa, fails = _outcomes(out)
    assert len({q["file"] for q in qa}) + len(fails) == 2
    assert len({q["file"] for q in qa}) >= 1, fails
    assert summary.tokens_out > 0
    for q in qa:
        assert q["question"] and q["answer"] and q["grounding"] >= 0.5


def test_long_pages_are_chunked_so_each_request_stays_within_budget(tmp_path):
    long_text = "Student Handbook\n" + "\n".join(
        f"Rule {i}: students of department {i} register at office {100 + i} before September {i % 28 + 1}."
        for i in range(30)
    )
    pages = _pages(tmp_path, {"handbook.txt": long_text})
    out = tmp_path / "qa"

    def responder(body):  # one pair per chunk, asking about the chunk's first rule
        first = body["messages"][-1]["content"].split('"""')[1].strip().splitlines()[0]
        return json.dumps([{"question": f"What does {first.split(':')[0]} say?", "answer": first}])

    with FakeLLMServer(api_key=KEY, responder=responder) as srv:
        generate(pages, out, _openai(srv), GenSettings(backend="openai", pairs_per_page=1, chunk_tokens=120))
        page_parts = [r["body"]["messages"][-1]["content"] for r in srv.chat_requests()]
    assert len(page_parts) > 5
    assert all(estimate_tokens(p.split('"""')[1]) <= 120 for p in page_parts)
    qa, fails = _outcomes(out)
    assert fails == [] and len({q["chunk"] for q in qa}) == len(page_parts)


def test_a_slow_reply_holds_back_only_its_own_page(tmp_path):
    """Remote generation is a sliding window, not waves: while one page's request hangs, every other page is
    requested, finished and written (with waves of 2 x concurrency pages, pages beyond the slow page's wave would
    wait for it)."""
    import time

    from fake_llm_server import default_responder

    words = ["Bookshop", "Canteen", "Dormitory", "Gymnasium", "Hospital", "Laboratory", "Museum"]
    pages = {"a_slow.txt": "Slowpoke Hall opens at 9:00 and closes at 17:00 on weekdays.\n"}
    for w in words:
        pages[f"b_{w.lower()}.txt"] = f"{w} services open at 8:00 and close at 20:00 on every weekday.\n"
    out = tmp_path / "qa"
    written_while_slow: list[int] = []

    def written() -> int:
        path = out / "qa.jsonl"
        return len(path.read_text(encoding="utf-8").splitlines()) if path.exists() else 0

    def responder(body: dict) -> str:
        if "Slowpoke" in body["messages"][-1]["content"]:
            deadline = time.monotonic() + 4  # below the client's 5 s timeout
            while written() < len(words) and time.monotonic() < deadline:
                time.sleep(0.02)
            written_while_slow.append(written())
        return default_responder(body)

    with FakeLLMServer(api_key=KEY, responder=responder) as srv:
        settings = GenSettings(backend="openai", clean=False, pairs_per_page=1)
        summary = generate(_pages(tmp_path, pages), out, _openai(srv), settings, concurrency=2)
    assert written_while_slow == [len(words)]  # all other pages were written while the slow reply was pending
    qa, fails = _outcomes(out)
    assert not fails and summary.pairs == len(pages)
    assert {q["file"] for q in qa} == set(pages) and qa[-1]["file"] == "a_slow.txt"


def test_remote_schedule_bench_smoke():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import generate_remote_bench

    result = generate_remote_bench.main(["--pages", "6", "--concurrency", "2", "--median-s", "0.005"])
    assert result["bench"] == "generate_remote" and result["speedup"] > 0
    for side in ("baseline", "ours"):
        assert result[side]["pages"] == 6 and result[side]["failures"] == 0 and result[side]["pairs"] >= 6
    assert (result["baseline"]["schedule"], result["ours"]["schedule"]) == ("waves", "window")


# ---- settings declared once: the CLI, the settings YAML and the page read GENERATE ---------------------------------
def test_settings_file_runs_and_flags_win(tmp_path, monkeypatch, capsys):
    """`umtcds generate --config FILE` takes IN_DIR/--out from the file; a flag given too wins over it."""
    from umtcds_core.qa import GENERATE

    pages = _pages(tmp_path)
    out = tmp_path / "out"
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeLLMServer(api_key=KEY) as srv:
        values = GENERATE.check(
            {"in_dir": str(pages), "out_dir": str(out), "backend": "openai", "base_url": srv.openai_base}
            | {"pairs_per_page": 3, "clean": False, "lang": "en", "max_pages": 1}
        )
        path = GENERATE.save_yaml(values, tmp_path / "settings.yaml")
        assert "api_key" not in path.read_text(encoding="utf-8").replace("api_key_env", "")  # never a key field
        assert cli.main(["generate", "--config", str(path), "--pairs-per-page", "1"]) == 0
        qa_requests = [r for r in srv.chat_requests() if "question-answer" in r["body"]["messages"][0]["content"]]
        asked = [r["body"]["messages"][-1]["content"] for r in qa_requests]  # not the paraphrase/unanswerable ones
    assert "pairs from 1 pages" in capsys.readouterr().out  # max_pages from the file: one page of three
    assert all("Write 1 question-answer pairs" in a for a in asked)  # the flag won over pairs_per_page: 3
    with pytest.raises(SystemExit):  # argparse choices, as before
        cli.main(["generate", "--config", str(path), "--lang", "fr"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"in_dir: {pages}\nout_dir: {out}\npairs_per_page: 0\nbackend: openai\n", encoding="utf-8")
    assert cli.main(["generate", "--config", str(bad)]) == 1
    assert "pairs_per_page: must be at least 1" in capsys.readouterr().err


def test_pages_can_be_picked_or_capped(tmp_path):
    pages = _pages(tmp_path)
    with FakeLLMServer(api_key=KEY) as srv:
        settings = GenSettings(backend="openai", clean=False, pairs_per_page=1)
        s1 = generate(pages, tmp_path / "a", _openai(srv), settings, only=["library.txt"])
        s2 = generate(pages, tmp_path / "b", _openai(srv), settings, max_pages=2)
        with pytest.raises(UserError, match="No page named nope.txt"):
            generate(pages, tmp_path / "c", _openai(srv), settings, only=["nope.txt"])
    assert s1.processed == 1 and {q["file"] for q in _outcomes(tmp_path / "a")[0]} == {"library.txt"}
    assert s2.processed == 2 and s2.skipped == len(PAGES) - 2


def test_cpu_sized_defaults_and_the_time_estimate():
    from umtcds_core.qa import CPU_MAX_TOKENS, estimate_seconds, resolved_max_tokens

    assert resolved_max_tokens({"backend": "local", "device": "cpu"}) == CPU_MAX_TOKENS
    assert resolved_max_tokens({"backend": "zhipuai"}) == 1024
    assert resolved_max_tokens({"backend": "local", "device": "cpu", "max_tokens": 96}) == 96
    # 4 pages x 256 tokens, no clean pass (local), at 32 tokens/s: 32 s
    assert estimate_seconds(4, {"backend": "local", "max_tokens": 256}, 32.0) == pytest.approx(32.0)
    assert estimate_seconds(4, {"backend": "local", "max_tokens": 256, "clean": True}, 32.0) == pytest.approx(64.0)


@pytest.mark.slow
def test_local_job_reports_tokens_inside_a_batch_and_stop_keeps_finished_pages(tmp_path):
    """The real embedded model in a real background job (one page per batch, short replies): progress.json shows
    tokens and tokens/s before any page has finished, and Stop keeps every page finished so far."""
    import time

    from umtcds_core.jobs import cli_argv, start_job
    from umtcds_core.qa import GENERATE
    from umtcds_core.workspace import Workspace

    texts = [PAGES[k] for k in ("admissions.txt", "library.txt")]
    pages = _pages(tmp_path, {f"p{i}.txt": texts[i % 2].replace("Qingshan", f"Qingshan {i}") for i in range(8)})
    ws = Workspace.create("gen-stop", root=tmp_path)
    values = GENERATE.check(
        {"in_dir": str(pages), "out_dir": str(ws.qa_dir), "backend": "local", "device": "cpu", "batch_size": 1}
        | {"max_tokens": 48, "pairs_per_page": 1, "max_parse_retries": 0, "lang": "en"}
    )
    job = start_job(
        ws, "generate", cli_argv("generate"), env={"OMP_NUM_THREADS": "1"}, settings=GENERATE.to_yaml(values)
    )
    assert "--config" in job.meta["argv"] and job.settings_file.exists()

    def finished() -> int:
        return sum(
            len({json.loads(x)["file"] for x in (ws.qa_dir / f).read_text(encoding="utf-8").splitlines() if x.strip()})
            for f in ("qa.jsonl", "failures.jsonl")
            if (ws.qa_dir / f).exists()
        )

    seen_inside_batch = False
    deadline = time.time() + 300
    while time.time() < deadline and finished() < 2:
        prog = job.progress() or {}
        counters = prog.get("counters") or {}
        if prog.get("done") == 0 and counters.get("tokens", 0) > 0:
            seen_inside_batch = seen_inside_batch or (counters.get("tokens_per_s", 0) > 0 and prog.get("eta_s"))
        assert job.status() == "running", job.log_tail()
        time.sleep(0.1)
    assert seen_inside_batch, job.progress()
    assert finished() >= 2, job.log_tail()
    assert job.stop() == "stopped"
    kept = finished()
    assert 2 <= kept < 8  # the finished pages stayed; the run did not get to the end
    qa, _ = _outcomes(ws.qa_dir)
    assert all(q["file"].startswith("p") for q in qa)


@pytest.mark.slow
def test_measure_speed_with_the_embedded_model():
    from umtcds_core.qa import measure_speed

    assert measure_speed("smollm2-135m", device="cpu", batch_size=1, tokens=8) > 0


# ---- unanswerable questions and paraphrases (issue 15 §4) -------------------------------------------------------------
def test_key_terms_and_the_lexical_answered_check():
    from umtcds_core.qa import PageTerms, key_terms

    library = PageTerms(PAGES["library.txt"])
    assert key_terms("How many libraries are there?") == ["libra"]  # stems: "libraries" meets "library"
    assert library.answers("When does the library open?")
    assert library.answers("How many books can students borrow?")
    assert not library.answers("Who is the president of the university?")  # "president": nowhere on the page
    assert not library.answers("Can I borrow 30 books?")  # 30 is not on the page
    jwc = PageTerms(PAGES["jwc.txt"])
    assert jwc.answers("选课时间是什么时候？") and jwc.answers("教务处的电话是多少？")
    assert not jwc.answers("教务处处长是谁？")
    far = PageTerms("The library opens at 8:00.\n" + "Filler text here. " * 40 + "\nThe gym has a pool.")
    assert not far.answers("Does the library have a pool?")  # both words there, but paragraphs apart


def test_unanswerable_questions_get_the_refusal_and_paraphrases_are_kept(tmp_path):
    from umtcds_core.grounding import REFUSAL_EN, REFUSAL_ZH

    pages = _pages(tmp_path, {"library.txt": PAGES["library.txt"], "jwc.txt": PAGES["jwc.txt"]})
    out = tmp_path / "qa"
    with FakeLLMServer(api_key=KEY) as srv:
        settings = GenSettings(backend="openai", pairs_per_page=2, unanswerable=1, paraphrase=True)
        summary = generate(pages, out, _openai(srv), settings)
    qa, fails = _outcomes(out)
    assert fails == []
    refused = [q for q in qa if q["kind"] == "unanswerable"]
    assert {q["file"]: q["answer"] for q in refused} == {"library.txt": REFUSAL_EN, "jwc.txt": REFUSAL_ZH}
    assert all("paraphrase" not in q and q["key"] and q["source"] for q in refused)
    answerable = [q for q in qa if q["kind"] == "answerable"]
    assert len(answerable) == 4 and all(q["paraphrase"] != q["question"] for q in answerable)
    assert all(q["question"] in q["paraphrase"] for q in answerable)  # the fake server rewords by a prefix
    assert summary.unanswerable == 2 and summary.paraphrases == 4 and summary.pairs == len(qa) == 6


def test_an_answerable_unanswerable_question_is_rejected_lexically_and_by_the_judge(tmp_path):
    """The model proposes "unanswerable" questions the page does answer: the lexical check drops one, the judge the
    other (a paraphrase list of the wrong length is not lined up, so those pairs keep no paraphrase)."""
    from fake_llm_server import default_responder

    pages = _pages(tmp_path, {"library.txt": PAGES["library.txt"]})

    def responder(body):
        system, last = body["messages"][0]["content"], body["messages"][-1]["content"]
        if "does NOT answer" in system:
            return json.dumps(
                ["When does the library close?", "Is the library pleasant to sit in?", "Who is the dean?"]
            )
        if "yes or no" in system:
            return "Yes." if "pleasant" in last else "No."
        if "paraphrase" in system:
            return '["Only one paraphrase."]'
        return default_responder(body)

    for judge, expected in ((False, "Is the library pleasant to sit in?"), (True, "Who is the dean?")):
        out = tmp_path / f"qa-{judge}"
        with FakeLLMServer(api_key=KEY, responder=responder) as srv:
            settings = GenSettings(backend="openai", pairs_per_page=2, unanswerable=1, paraphrase=True, judge=judge)
            generate(pages, out, _openai(srv), settings)
        qa, fails = _outcomes(out)
        assert [q["question"] for q in qa if q["kind"] == "unanswerable"] == [expected]
        assert not any("paraphrase" in q for q in qa) and fails == []


def test_resume_keys_ignore_the_new_options_while_they_are_off():
    """A qa.jsonl written before unanswerable/paraphrase existed still resumes with both off (the key is the hash of
    the settings without them and without their templates, as before); turning either on (the CLI's defaults) is
    another output, so another key."""
    import hashlib
    from dataclasses import asdict

    from umtcds_core.qa import GENERATE, LATER_FEATURES, PROMPT_KEYS

    later = {t for _, _, templates in LATER_FEATURES for t in templates}
    assert later < set(PROMPT_KEYS)

    def key_before_the_new_options(settings: GenSettings) -> str:
        old = asdict(settings)
        for name, _, _ in LATER_FEATURES:
            del old[name]
        old["prompts"] = {lang: {k: v for k, v in t.items() if k not in later} for lang, t in old["prompts"].items()}
        return hashlib.sha256(json.dumps(old, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:12]

    defaults = GENERATE.check({"backend": "openai"})
    assert (defaults["unanswerable"], defaults["paraphrase"]) == (1, True)
    off = GenSettings.from_settings(defaults | {"unanswerable": 0, "paraphrase": False})
    base = GenSettings(backend="openai")  # code that builds settings itself: both off
    assert off.key() == key_before_the_new_options(off) and base.key() == key_before_the_new_options(base)
    keys = {
        GenSettings.from_settings(defaults | change).key()
        for change in ({}, {"unanswerable": 0}, {"paraphrase": False}, {"unanswerable": 2})
    }
    assert len(keys) == 4 and off.key() not in keys


def test_cli_flags_for_unanswerable_and_paraphrase(tmp_path, capsys):
    pages = _pages(tmp_path, {"library.txt": PAGES["library.txt"]})
    with FakeLLMServer() as srv:  # a local server with a base URL needs no key
        base = ["generate", str(pages), "--backend", "openai", "--base-url", srv.openai_base, "--no-clean"]
        base += ["--pairs-per-page", "2"]
        assert cli.main([*base, "--out", str(tmp_path / "a")]) == 0  # defaults: 1 unanswerable, paraphrases on
        assert "1 are unanswerable questions" in capsys.readouterr().out
        assert cli.main([*base, "--out", str(tmp_path / "b"), "--unanswerable", "0", "--no-paraphrase"]) == 0
        assert "unanswerable" not in capsys.readouterr().out
        assert cli.main([*base, "--out", str(tmp_path / "c"), "--unanswerable", "-1"]) == 1
        assert "unanswerable" in capsys.readouterr().err
    a, _ = _outcomes(tmp_path / "a")
    b, _ = _outcomes(tmp_path / "b")
    assert [q["kind"] for q in a] == ["answerable", "answerable", "unanswerable"]
    assert all(q.get("paraphrase") for q in a[:2])
    assert [q["kind"] for q in b] == ["answerable", "answerable"] and not any("paraphrase" in q for q in b)


def test_prompt_files_keep_the_new_templates_editable(tmp_path):
    prompts = load_prompts(None)
    assert "{questions}" in prompts["zh"]["paraphrase_user"] and "{text}" in prompts["en"]["unanswerable_user"]
    assert prompts_from_yaml(dump_prompts(prompts)) == prompts
    with pytest.raises(UserError, match=r"paraphrase_user.*\{questions\}"):
        prompts_from_yaml("en:\n  paraphrase_user: Paraphrase these.\n")


def test_parse_questions_and_yes_no():
    from umtcds_core.qa import parse_questions, parse_yes_no

    assert parse_questions('Sure:\n```json\n["Who is the dean?", "Is there a pool?"]\n```') == [
        "Who is the dean?",
        "Is there a pool?",
    ]
    assert parse_questions('[{"paraphrase": "Where is it?"}]') == ["Where is it?"]
    assert parse_questions("1. Who is the dean?\n2) 图书馆有咖啡厅吗？") == ["Who is the dean?", "图书馆有咖啡厅吗？"]
    assert [parse_yes_no(r) for r in ("Yes.", "no", "否", "是", "没有回答", "maybe")] == [
        True,
        False,
        False,
        True,
        False,
        None,
    ]
