"""What students told the assistant, turned back into Q&A pairs: ``serve/*.jsonl`` → ``qa/qa.jsonl``.

``umtcds serve`` writes two files into the project's ``serve/`` folder: ``feedback.jsonl`` (👍/👎 and an optional
"the right answer is…" from the students' page) and, only with ``--log-questions``, ``questions.jsonl`` (every
answered question, its answer, whether it was refused, the sources it was given). Neither stores an IP address.

This module reads both and keeps what a builder should look at — answers rated 👎, questions the assistant refused,
and corrections — one :class:`Item` per answer (the server's ``answer_id`` joins a question to its rating). The
Dataset page's "From students" tab lists them; :func:`to_pairs` turns the chosen ones into pairs in the same record
shape step 2 writes (plus ``"origin": "students"``), and :func:`add_pairs` appends them to ``qa.jsonl``. That closes
the loop crawl → tune → serve → improve: the next dataset split and training run learn what students asked.

Why a module of its own, torch- and Streamlit-free: the page stays a view, and the merge rules (which rating wins,
what needs a typed answer, what was already added) are tested without a server or a model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError
from .fileio import BadLine, append_jsonl, iter_jsonl
from .grounding import is_refusal
from .qa import ANSWERABLE, UNANSWERABLE

if TYPE_CHECKING:
    from .workspace import Workspace

FEEDBACK_NAME = "feedback.jsonl"
QUESTIONS_NAME = "questions.jsonl"
ORIGIN = "students"
"""The ``origin`` of a pair made from what students said (step 2's pairs have none)."""


def serve_dir(ws: Workspace) -> Path:
    """The project's ``serve/`` folder: where ``umtcds serve --feedback-dir <project>`` writes (the Publish section
    starts it so), and where serving an adapter of the project writes by default."""
    return ws.root / "serve"


@dataclass
class Item:
    """One answer a student saw, worth a builder's look: rated 👎, refused, or corrected."""

    id: str
    question: str
    answer: str
    sources: list[dict] = field(default_factory=list)
    rating: str | None = None
    """The latest 👍/👎 (``"up"``/``"down"``) on this answer, or None when nobody rated it."""
    correction: str | None = None
    """The latest "the right answer is…" a student typed."""
    refused: bool = False
    time: str = ""
    lang: str | None = None
    verified: bool = True
    """False when the rating named its answer by text instead of by the server's id (it cannot be checked)."""
    done: bool = False
    """Already turned into a pair (a record in qa.jsonl carries this item's id)."""

    @property
    def needs_answer(self) -> bool:
        """No correction to use: the builder has to type the answer."""
        return not self.correction

    def reasons(self) -> list[str]:
        """Why it is listed: any of ``down``, ``refused``, ``correction``."""
        return [r for r, on in (("down", self.rating == "down"), ("refused", self.refused),
                                ("correction", bool(self.correction))) if on]  # fmt: skip


def _item_id(rec: dict) -> str:
    """The server's answer id; without one, a hash of the question and the answer (the same answer rated twice is one
    item)."""
    if rec.get("answer_id"):
        return str(rec["answer_id"])
    text = f"{rec.get('question', '')}\x00{rec.get('answer', '')}"
    return "t" + hashlib.sha1(text.encode()).hexdigest()[:15]


def _text(value) -> str:
    return value.strip() if isinstance(value, str) else ""


def added_ids(files: list[Path]) -> set[str]:
    """Ids of student items already made into pairs (``student_id`` of the ``origin: students`` records)."""
    out: set[str] = set()
    for path in files:
        for rec in iter_jsonl(path, errors=[]):
            if rec.get("origin") == ORIGIN and rec.get("student_id"):
                out.add(str(rec["student_id"]))
    return out


def read_items(folder: str | Path, added: set[str] | None = None, errors: list[BadLine] | None = None) -> list[Item]:
    """The items of ``folder`` (a ``serve/`` folder), newest first: 👎, refused or corrected answers.

    A rating joins its answer through ``answer_id``; the latest rating and the latest non-empty correction win (a
    student may change their mind). 👍 without a correction on an answer that was not refused is left out: there is
    nothing to fix. Unreadable lines go to ``errors`` (when given) and are skipped, never fatal — the server may be
    writing the last line right now."""
    folder = Path(folder)
    errors = [] if errors is None else errors
    items: dict[str, Item] = {}

    def item_of(rec: dict) -> Item | None:
        question, answer = _text(rec.get("question")), _text(rec.get("answer"))
        if not question:
            return None
        key = _item_id(rec)
        it = items.get(key)
        if it is None:
            it = items[key] = Item(key, question, answer)
        if not it.sources and isinstance(rec.get("sources"), list):
            it.sources = [s for s in rec["sources"] if isinstance(s, dict)]
        it.time = max(it.time, str(rec.get("time") or ""))
        return it

    for rec in iter_jsonl(folder / QUESTIONS_NAME, errors):
        it = item_of(rec)
        if it is not None:
            it.refused = bool(rec.get("refused")) if "refused" in rec else (not it.answer or is_refusal(it.answer))
    for rec in iter_jsonl(folder / FEEDBACK_NAME, errors):
        it = item_of(rec)
        if it is None:
            continue
        if rec.get("rating") in ("up", "down"):
            it.rating = rec["rating"]
        if _text(rec.get("correction")):
            it.correction = _text(rec["correction"])
        if rec.get("lang") in ("zh", "en"):
            it.lang = rec["lang"]
        it.verified = it.verified and rec.get("verified", True) is not False
        it.refused = it.refused or not it.answer or is_refusal(it.answer)
    added = added or set()
    out = []
    for it in items.values():
        if it.reasons():
            it.done = it.id in added
            out.append(it)
    return sorted(out, key=lambda i: i.time, reverse=True)


def workspace_items(ws: Workspace, errors: list[BadLine] | None = None) -> list[Item]:
    """:func:`read_items` of the project's ``serve/`` folder, each marked ``done`` once a pair was made of it."""
    return read_items(serve_dir(ws), added_ids(_pair_files(ws)), errors)


def _pair_files(ws: Workspace) -> list[Path]:
    from .dataset import EDITED_NAME

    return [ws.qa_file, ws.dataset_dir / EDITED_NAME]


class NeedsAnswer(UserError, ValueError):
    """A chosen item has no answer yet."""


def to_pairs(items: list[Item], answers: dict[str, str] | None = None) -> list[dict]:
    """The chosen ``items`` as step-2 ``qa.jsonl`` records; ``answers``: what the builder typed, by item id.

    The answer is the builder's text, else the student's correction. A refusal the builder keeps (typing the refusal
    sentence: the site really does not say) becomes an unanswerable pair, like step 2's. The first retrieved source is
    the pair's ``source``; all of them are kept. Raises :class:`NeedsAnswer` naming the first question that has no
    answer, so nothing half is added."""
    answers = answers or {}
    out = []
    for it in items:
        answer = _text(answers.get(it.id)) or _text(it.correction)
        if not answer:
            q = it.question if len(it.question) <= 60 else it.question[:57] + "…"
            raise NeedsAnswer(
                f"'{q}' has no answer yet; type the right answer in its row (or untick it).",
                zh=f"“{q}”还没有答案；请在这一行填写正确答案（或取消勾选）。",
            )
        first = it.sources[0] if it.sources else {}
        record = {
            "question": it.question,
            "answer": answer,
            "source": first.get("url") or "",
            "title": first.get("title") or "",
            "kind": UNANSWERABLE if is_refusal(answer) else ANSWERABLE,
            "origin": ORIGIN,
            "student_id": it.id,
            "student_reasons": it.reasons(),
        }
        if it.sources:
            record["sources"] = it.sources
        out.append(record)
    return out


def add_pairs(ws: Workspace, records: list[dict]) -> int:
    """Append ``records`` to the project's ``qa.jsonl`` — and to the Dataset page's edited copy when there is one,
    written last so the page shows them and does not take qa.jsonl for a newer step-2 run."""
    from .dataset import EDITED_NAME

    edited = ws.dataset_dir / EDITED_NAME
    for rec in records:
        append_jsonl(ws.qa_file, rec)
    if edited.exists():
        for rec in records:
            append_jsonl(edited, rec)
    return len(records)
