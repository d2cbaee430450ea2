"""feedback.py: serve/feedback.jsonl + serve/questions.jsonl → items to review → pairs appended to qa.jsonl."""

from __future__ import annotations

import json

import pytest

from umtcds_core import feedback as fb
from umtcds_core.fileio import read_jsonl
from umtcds_core.grounding import REFUSAL_EN, REFUSAL_ZH

SRC = [{"n": 1, "url": "https://u.edu/library", "title": "Library"}]


def _write(path, rows, tail: str = ""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) + tail, encoding="utf-8")


@pytest.fixture
def served(workspace):
    """A project whose serve/ folder holds a logged day: answered, refused, rated and corrected questions."""
    folder = fb.serve_dir(workspace)
    _write(
        folder / fb.QUESTIONS_NAME,
        [
            {"time": "2025-05-01T10:00:00+00:00", "answer_id": "a1", "question": "When does the library open?",
             "answer": "At 9.", "refused": False, "sources": SRC},
            {"time": "2025-05-01T10:01:00+00:00", "answer_id": "a2", "question": "图书馆周日开门吗？",
             "answer": REFUSAL_ZH, "refused": True, "sources": SRC},
            {"time": "2025-05-01T10:02:00+00:00", "answer_id": "a3", "question": "Where is the gym?",
             "answer": "Building 4.", "refused": False, "sources": []},
            {"time": "2025-05-01T10:03:00+00:00", "via": "api", "question": "Is there Wi-Fi?",
             "answer": REFUSAL_EN, "refused": True, "sources": []},
        ],
    )  # fmt: skip
    _write(
        folder / fb.FEEDBACK_NAME,
        [
            {"time": "2025-05-01T10:05:00+00:00", "answer_id": "a1", "question": "When does the library open?",
             "answer": "At 9.", "sources": SRC, "rating": "down", "correction": None, "verified": True},
            {"time": "2025-05-01T10:06:00+00:00", "answer_id": "a1", "question": "When does the library open?",
             "answer": "At 9.", "sources": SRC, "rating": "down", "correction": "At 8 on weekdays.",
             "verified": True},
            {"time": "2025-05-01T10:07:00+00:00", "answer_id": "a3", "question": "Where is the gym?",
             "answer": "Building 4.", "sources": [], "rating": "up", "correction": None, "verified": True},
            {"time": "2025-05-01T10:08:00+00:00", "answer_id": None, "question": "Who runs the canteen?",
             "answer": "Nobody.", "sources": [], "rating": "down", "correction": "", "verified": False},
        ],
        tail='{"half a line',  # the server may be writing the last line right now
    )  # fmt: skip
    return workspace


def test_items_merge_ratings_refusals_and_corrections(served):
    errors: list = []
    items = fb.workspace_items(served, errors)
    assert len(errors) == 1  # the half line is reported, not fatal
    by_q = {i.question: i for i in items}
    assert "Where is the gym?" not in by_q  # 👍 and not refused: nothing to fix
    assert [i.question for i in items][0] == "Who runs the canteen?"  # newest first
    lib = by_q["When does the library open?"]
    assert lib.reasons() == ["down", "correction"] and lib.correction == "At 8 on weekdays."
    assert lib.sources == SRC and not lib.needs_answer
    sunday = by_q["图书馆周日开门吗？"]
    assert sunday.reasons() == ["refused"] and sunday.needs_answer and sunday.sources == SRC
    assert by_q["Is there Wi-Fi?"].refused and by_q["Who runs the canteen?"].verified is False


def test_to_pairs_and_add_pairs_mark_items_done(served):
    items = fb.workspace_items(served)
    by_q = {i.question: i for i in items}
    lib, sunday = by_q["When does the library open?"], by_q["图书馆周日开门吗？"]
    with pytest.raises(fb.NeedsAnswer, match="has no answer yet"):
        fb.to_pairs([lib, sunday])
    pairs = fb.to_pairs([lib, sunday], {sunday.id: "周日 10:00–18:00 开放。"})
    assert pairs[0]["answer"] == "At 8 on weekdays." and pairs[0]["source"] == "https://u.edu/library"
    assert pairs[0]["origin"] == "students" and pairs[0]["kind"] == "answerable" and pairs[0]["sources"] == SRC
    assert pairs[1]["answer"] == "周日 10:00–18:00 开放。" and pairs[1]["student_reasons"] == ["refused"]
    kept = fb.to_pairs([by_q["Is there Wi-Fi?"]], {by_q["Is there Wi-Fi?"].id: REFUSAL_EN})
    assert kept[0]["kind"] == "unanswerable"  # the builder agrees the site does not say: a refusal pair

    served.qa_file.parent.mkdir(parents=True, exist_ok=True)
    served.qa_file.write_text(json.dumps({"question": "q0", "answer": "a0", "source": "s"}) + "\n", encoding="utf-8")
    edited = served.dataset_dir / "qa_edited.jsonl"
    edited.parent.mkdir(parents=True)
    edited.write_text(json.dumps({"question": "q0", "answer": "a0 (edited)", "source": "s"}) + "\n", encoding="utf-8")
    assert fb.add_pairs(served, pairs) == 2
    assert [r["question"] for r in read_jsonl(served.qa_file)][1:] == [lib.question, sunday.question]
    assert len(read_jsonl(edited)) == 3 and edited.stat().st_mtime >= served.qa_file.stat().st_mtime
    done = {i.question: i.done for i in fb.workspace_items(served)}
    assert done[lib.question] and done[sunday.question] and not done["Is there Wi-Fi?"]

    from umtcds_core import dataset as ds

    res = ds.load_pairs([edited])  # the dataset step reads them like any pair, keeping where they came from
    assert not res.problems and res.pairs[-1].to_qa_record()["origin"] == "students"


def test_no_serve_folder_is_no_items(workspace):
    assert fb.workspace_items(workspace) == []
