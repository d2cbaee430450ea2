"""Dataset page, "From students" tab (issue 16 §3): serve/ feedback and question logs → rows → one click → qa.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

from umtcds_core.fileio import read_jsonl
from umtcds_core.grounding import REFUSAL_EN
from umtcds_core.workspace import Workspace

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "3_dataset.py")
SRC = [{"n": 1, "url": "https://u.edu/library", "title": "Library"}]


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def test_from_students_rows_become_pairs_in_one_click(_isolated_workspaces):
    ws = Workspace.create("students", root=_isolated_workspaces)
    _jsonl(ws.qa_file, [{"question": "Where is the gym?", "answer": "Building 4.", "source": "https://u.edu/gym"}])
    _jsonl(ws.root / "serve" / "questions.jsonl", [
        {"time": "2025-05-01T10:00:00+00:00", "answer_id": "r1", "question": "Is the pool open on Sunday?",
         "answer": REFUSAL_EN, "refused": True, "sources": SRC},
    ])  # fmt: skip
    _jsonl(ws.root / "serve" / "feedback.jsonl", [
        {"time": "2025-05-01T10:05:00+00:00", "answer_id": "d1", "question": "When does the library open?",
         "answer": "At 9.", "sources": SRC, "rating": "down", "correction": "At 8 on weekdays.", "verified": True},
    ])  # fmt: skip
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["workspace"] = str(ws.root)
    at.session_state["lang"] = "en"
    at.run()
    assert not at.exception and len(at.data_editor[0].value) == 1  # the pairs' table first
    at.segmented_control(key="ds_tab").set_value("students").run()
    assert not at.exception
    table = at.data_editor[0].value
    assert list(table["question"]) == ["When does the library open?", "Is the pool open on Sunday?"]
    assert list(table["answer"]) == ["At 8 on weekdays.", ""]  # the correction is filled in
    assert list(table["sources"][0]) == ["https://u.edu/library"] and "refused" in table["why"][1]

    key = at.data_editor[0].key
    at.session_state[key] = {"edited_rows": {0: {"add": True}, 1: {"add": True}}, "added_rows": [], "deleted_rows": []}
    at.run()
    at.button(key="ds_st_add").click().run()  # the refused one has no answer yet: one sentence, nothing added
    assert any("has no answer yet" in e.value for e in at.error) and len(read_jsonl(ws.qa_file)) == 1

    at.session_state[key] = {"edited_rows": {0: {"add": True}, 1: {"add": True, "answer": "Yes, 10:00-18:00."}},
                             "added_rows": [], "deleted_rows": []}  # fmt: skip
    at.run()
    at.button(key="ds_st_add").click().run()
    assert not at.exception
    rows = read_jsonl(ws.qa_file)
    assert [(r["question"], r["answer"], r["origin"]) for r in rows[1:]] == [
        ("When does the library open?", "At 8 on weekdays.", "students"),
        ("Is the pool open on Sunday?", "Yes, 10:00-18:00.", "students"),
    ]
    assert rows[1]["source"] == "https://u.edu/library" and rows[1]["kind"] == "answerable"
    assert any("Added 2 pairs" in s.value for s in at.success)
    assert not at.data_editor  # both handled: nothing left to do
    at.segmented_control(key="ds_tab").set_value("review").run()
    assert len(at.data_editor[0].value) == 3  # the pairs' table shows them at once
