"""umtcds_core.grounding: the one grounded prompt (numbered sources within a budget, refusal, citations), and
``umtcds chat --rag`` answering with the embedded model and listing its sources."""

from __future__ import annotations

import pytest

from tests.index_helpers import page_path
from umtcds_core import chat
from umtcds_core import grounding as g
from umtcds_core.cli import main
from umtcds_core.index import Index


def _chunk(url, title, text, n=0, score=1.0):
    return {
        "url": url,
        "title": title,
        "text": text,
        "page": url.rsplit("/", 1)[-1],
        "chunk_id": f"p#{n}",
        "score": score,
    }


def test_sources_are_numbered_per_page_with_instructions_and_the_question():
    chunks = [
        _chunk("http://x/lib.html", "Library", "Opens at 7:30.", 1, 3.0),
        _chunk("http://x/bus.html", "Bus", "Every 20 minutes.", 0, 2.0),
        _chunk("http://x/lib.html", "Library", "Library card = student ID.", 0, 1.0),
    ]
    messages, sources = g.build_grounded_messages("When does the library open?", chunks, "Be brief.", 1000)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"].startswith("Be brief.") and g.REFUSAL_EN in messages[0]["content"]
    assert [(s["n"], s["title"]) for s in sources] == [(1, "Library"), (2, "Bus")]  # one number per page
    assert sources[0]["text"].index("student ID") < sources[0]["text"].index("7:30")  # page order kept
    user = messages[1]["content"]
    assert "[1] Library (http://x/lib.html)" in user and "[2] Bus (http://x/bus.html)" in user
    assert user.rstrip().endswith("Question: When does the library open?")


def test_chinese_question_gets_chinese_instructions_and_refusal():
    messages, sources = g.build_grounded_messages("图书馆几点开门？", [], None, 500)
    assert (
        sources == [] and g.REFUSAL_ZH in messages[0]["content"] and "问题：图书馆几点开门？" in messages[1]["content"]
    )
    assert g.refusal_for("图书馆几点开门？") == g.REFUSAL_ZH and g.refusal_for("Who?") == g.REFUSAL_EN
    assert g.is_refusal(g.REFUSAL_ZH) and g.is_refusal(f'"{g.REFUSAL_EN}"') and not g.is_refusal("7:30 [1]")


def test_budget_cuts_the_best_source_to_fit_and_leaves_out_later_ones_that_do_not(embedded_model):
    tok, _ = embedded_model
    long_text = "The library opens at 7:30 on weekdays. " * 200
    chunks = [_chunk("http://x/a.html", "A", long_text), _chunk("http://x/b.html", "B", "Short page.")]
    for tokenizer in (None, tok):
        messages, sources = g.build_grounded_messages("When?", chunks, None, 300, tokenizer=tokenizer)
        count = g._counter(tokenizer)
        assert sum(count(m["content"]) for m in messages) <= 300
        assert sources[0]["title"] == "A" and sources[0]["text"].endswith("…")  # the best one, cut to fit
    _, sources = g.build_grounded_messages("When?", chunks[::-1], None, 300, tokenizer=tok)
    assert [s["title"] for s in sources] == ["B"]  # a later source that does not fit is left out, not cut


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Opens at 7:30 [1].", [1]),
        ("7:30 [2][1], closes 22:30 [1, 3].", [2, 1, 3]),
        ("早上7:30开门【2】，闭馆22:30[1，2]。", [2, 1]),
        ("No citation here; 2024 and [x].", []),
    ],
)
def test_cited_reads_markers(answer, expected):
    assert g.cited(answer) == expected


def test_cited_sources_ignore_numbers_that_were_not_shown():
    sources = [{"n": 1, "title": "A", "url": "u1"}, {"n": 2, "title": "B", "url": "u2"}]
    assert [s["title"] for s in g.cited_sources("x [2] y [7]", sources)] == ["B"]
    assert g.format_sources(sources) == "Sources:\n[1] A — u1\n[2] B — u2"


SOURCES = [
    {
        "n": 1,
        "title": "Canteen",
        "url": "u1",
        "text": "The North Canteen opens at 6:30 and serves breakfast until 9:00.",
    },
    {"n": 2, "title": "Library", "url": "u2", "text": "The library opens at 8:00 and closes at 22:00 on weekdays."},
    {"n": 3, "title": "图书馆", "url": "u3", "text": "图书馆周一至周五 8:00 开放，22:00 闭馆；周末 9:00 开放。"},
]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("On weekdays the library opens at 8:00 and closes at 22:00.", [2]),  # copied from [2], no marker
        ("图书馆周末 9:00 开放。", [3]),
        ("学校的食堂周五开放到晚上。", []),  # shares only single characters and one pair with the library page
        ("The library opens at 8:00 [2].", []),  # it cites: nothing to match
        (g.REFUSAL_EN, []),
        ("The gym is free for students on Sundays.", []),  # its words are on no page
        ("Library.", []),  # one word proves nothing
    ],
)
def test_matched_names_the_source_an_uncited_answer_was_taken_from(answer, expected):
    assert g.matched(answer, SOURCES) == expected


def test_marks_and_the_listing_keep_cited_apart_from_matched():
    marked = g.mark_sources("The library opens at 8:00 [2], canteen at 6:30 [1].", SOURCES)
    assert [(s["n"], s["cited"], s["matched"]) for s in marked] == [
        (1, True, False),
        (2, True, False),
        (3, False, False),
    ]
    listing = g.format_sources(SOURCES, answer="On weekdays the library opens at 8:00 and closes at 22:00.")
    assert listing.splitlines() == [
        "Sources:",
        "[1] Canteen — u1",
        "[2] Library — u2 ≈",
        "[3] 图书馆 — u3",
        f"({g.MARKS_LEGEND[1]})",
    ]
    assert g.format_sources(SOURCES, answer=g.REFUSAL_EN).splitlines()[-1] == "[3] 图书馆 — u3"  # nothing marked
    assert g.strip_citations("8:00 [2]，周末 9:00【3】。") == "8:00，周末 9:00。"


def test_retrieved_demo_chunks_make_a_prompt_with_the_source_page(demo_index):
    hits = Index.load(demo_index[1]).search("周末图书馆什么时候开放？", k=5)
    messages, sources = g.build_grounded_messages("周末图书馆什么时候开放？", hits, None, 1500)
    assert page_path(sources[0]["url"]) == "zh/library.html" and "9:00" in messages[1]["content"]


# ---- umtcds chat --rag -----------------------------------------------------------------------------------------------
@pytest.fixture
def embedded_loader(embedded_model, monkeypatch):
    """``load_chat_model`` returning the session's embedded model (no second load)."""
    tok, model = embedded_model
    monkeypatch.setattr(chat, "load_chat_model", lambda *a, **k: chat.ChatModel(tok, model, "smollm2-135m"))


def test_chat_rag_prints_the_answer_then_numbered_sources_with_full_urls(demo_index, embedded_loader, capsys):
    argv = ["chat", "--model", "smollm2-135m", "--rag", str(demo_index[1]), "--temperature", "0"]
    rc = main([*argv, "--max-new-tokens", "24", "--prompt", "When does the library open on weekdays?"])
    out = capsys.readouterr().out
    assert rc == 0
    answer, _, listing = out.partition("\nSources:\n")
    assert answer.strip()  # the model said something first
    lines = [line.rstrip(" ✓≈") for line in listing.strip().splitlines() if not line.startswith("(")]  # marks, legend
    assert lines[0].startswith("[1] Library — http://127.0.0.1:") and lines[0].endswith("/library.html")
    assert all(line.startswith(f"[{i}] ") and " — http://" in line for i, line in enumerate(lines, start=1))


def test_chat_rag_bad_index_is_one_sentence_before_any_model_loads(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(chat, "load_chat_model", lambda *a, **k: pytest.fail("the model must not load"))
    rc = main(["chat", "--model", "smollm2-135m", "--rag", str(tmp_path / "none"), "--prompt", "hi"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("Error: There is no index in") and "umtcds index" in err


def test_refusal_signal_bench_scores_a_signal_by_auc_and_the_issue_operating_points():
    """bench/refusal_signal_bench.py's arithmetic: the AUC, the two operating points (refuse at or above a threshold),
    and the IDF-weighted coverage in which a token on no page weighs the most."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import refusal_signal_bench as rs

    assert rs.auc([3, 4], [1, 2]) == 1.0 and rs.auc([1, 2], [3, 4]) == 0.0 and rs.auc([1], [1]) == 0.5
    separable = rs.operating_points([5, 6, 7, 8, 9], [0, 1, 2, 3, 4])
    assert separable["meets_both"] is True
    assert separable["refusing_80pct_unanswerable"] == {"threshold": 6, "answerable_refused_pct": 0.0}
    assert separable["refusing_le_20pct_answerable"] == {"threshold": 4, "unanswerable_refused_pct": 100.0}
    coin = rs.operating_points([0, 1, 2, 3, 4], [0, 1, 2, 3, 4])
    assert coin["meets_both"] is False and coin["refusing_80pct_unanswerable"]["answerable_refused_pct"] == 80.0

    idf = {"library": 0.5, "hour": 1.0, None: 3.0}
    assert rs.coverage(["library", "hour"], {"library", "hour"}, idf) == 1.0
    assert rs.coverage(["library", "dental"], {"library"}, idf) == 0.5 / 3.5  # "dental" is on no page
    assert rs.coverage([], set(), idf) == 1.0
