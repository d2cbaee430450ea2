"""The one grounded prompt: numbered website sources + the question, answered with ``[n]`` citations or a refusal.

Why one builder: chat (``umtcds chat --rag``, the Chat page), serving, evaluation and retrieval-augmented training
data must show the model the *same* prompt, or a model tuned on one format is scored or served on another. Everything
about that format — the instructions, the source layout, the refusal sentences, how citations are read back — lives
here, torch-free and Streamlit-free.

Usage::

    hits = Index.load("index/").search(question, k=5)
    messages, sources = build_grounded_messages(question, hits, system_prompt=None, budget_tokens=1500)
    answer = model.answer(messages)
    for n in cited(answer): print(sources[n - 1]["title"], sources[n - 1]["url"])

Chunks of one page share one number (a citation names a page, which is what a student can open). Sources are added
best first until ``budget_tokens`` (measured with the model's tokenizer when given, else estimated) would be exceeded;
the first source is cut to fit rather than dropped, so the model always sees the best match.
"""

from __future__ import annotations

import re

from .index import _CJK_RE, tokenize

REFUSAL_EN = "The website does not say."
"""What the model answers when the sources do not hold the answer (English questions)."""
REFUSAL_ZH = "网站上没有提到这一点。"
"""The same for Chinese questions."""

INSTRUCTIONS_EN = (
    "Answer the question using only the numbered sources from the university website. "
    "After each fact, cite its source as [n]. "
    f'If the sources do not contain the answer, reply exactly: "{REFUSAL_EN}"'
)
INSTRUCTIONS_ZH = (
    f"只根据下面编号的学校网站资料回答问题。每个事实后用 [n] 标出资料编号。如果资料中没有答案，请只回答：“{REFUSAL_ZH}”"
)

SOURCE_TEXT_MAX = 2000
"""Characters of one page's text shown at most (several chunks of a long page still leave room for the others)."""


def is_chinese(text: str) -> bool:
    """True when ``text`` has Chinese characters: the question's language picks the instructions and the refusal."""
    return bool(_CJK_RE.search(text or ""))


def refusal_for(question: str) -> str:
    return REFUSAL_ZH if is_chinese(question) else REFUSAL_EN


def is_refusal(answer: str) -> bool:
    """True when ``answer`` is (or starts with) one of the refusal sentences."""
    text = (answer or "").strip().strip('"“”')
    return text.startswith(REFUSAL_EN[:-1]) or text.startswith(REFUSAL_ZH[:-1])


def estimate_tokens(text: str) -> int:
    """Tokens of ``text`` without a tokenizer: about one per Chinese character and one per four other characters
    (an over-estimate for most tokenizers, so a prompt built with it fits)."""
    cjk = len(_CJK_RE.findall(text))
    return cjk + (len(text) - cjk + 3) // 4


def _counter(tokenizer):
    if tokenizer is None:
        return estimate_tokens
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False))


def _group(chunks: list[dict]) -> list[dict]:
    """Chunks grouped by page (url, else page file), best page first, a page's chunks in their order on the page."""
    pages: dict[str, dict] = {}
    for c in chunks:
        key = c.get("url") or c.get("page") or c.get("title", "")
        page = pages.setdefault(
            key,
            {
                "url": c.get("url", ""),
                "title": c.get("title", ""),
                "page": c.get("page", ""),
                "score": c.get("score"),
                "parts": [],
            },
        )
        page["parts"].append(c)
    for page in pages.values():
        page["parts"].sort(key=lambda c: _chunk_number(c.get("chunk_id", "")))
        page["text"] = "\n".join(c.get("text", "").strip() for c in page["parts"])[:SOURCE_TEXT_MAX]
        page["chunk_ids"] = [c.get("chunk_id", "") for c in page.pop("parts")]
    return list(pages.values())


def _chunk_number(chunk_id: str) -> int:
    tail = chunk_id.rsplit("#", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def source_block(n: int, source: dict) -> str:
    """One numbered source as the model sees it: ``[n] title (url)`` then the text."""
    where = f" ({source['url']})" if source.get("url") else ""
    return f"[{n}] {source.get('title') or source.get('page') or ''}{where}\n{source.get('text', '').strip()}"


def build_grounded_messages(
    question: str,
    chunks: list[dict],
    system_prompt: str | None = None,
    budget_tokens: int = 1500,
    tokenizer=None,
) -> tuple[list[dict[str, str]], list[dict]]:
    """Chat messages that ask ``question`` over ``chunks`` (hits from :meth:`umtcds_core.index.Index.search`), and
    the sources they show, numbered from 1 (``sources[n - 1]`` is ``[n]``: ``n, url, title, page, text, score,
    chunk_ids``).

    ``budget_tokens`` bounds the whole prompt (instructions, sources and question). With no chunks, the model is
    shown that there are no sources and asked to refuse — the honest answer.
    """
    zh = is_chinese(question)
    count = _counter(tokenizer)
    instructions = INSTRUCTIONS_ZH if zh else INSTRUCTIONS_EN
    system = f"{system_prompt.strip()}\n\n{instructions}" if system_prompt and system_prompt.strip() else instructions
    head = "资料：" if zh else "Sources:"
    tail = f"问题：{question.strip()}" if zh else f"Question: {question.strip()}"
    used = count(system) + count(head) + count(tail) + 16  # chat-template overhead
    sources: list[dict] = []
    blocks: list[str] = []
    for page in _group(chunks):
        n = len(sources) + 1
        block = source_block(n, page)
        cost = count(block) + 2
        if used + cost > budget_tokens:
            if sources:
                continue  # a smaller page further down may still fit
            room = budget_tokens - used - count(source_block(n, {**page, "text": ""})) - 2
            if room <= 16:
                break
            text = page["text"]
            while text and count(text) > room:  # shrink to fit, a tenth at a time (few tokenizer calls)
                text = text[: int(len(text) * 0.9)]
            page = {**page, "text": text.rstrip() + "…"}
            block = source_block(n, page)
            cost = count(block) + 2
        sources.append({"n": n, **page})
        blocks.append(block)
        used += cost
    if not blocks:
        blocks = ["（没有找到相关资料）" if zh else "(no matching page was found)"]
    user = f"{head}\n\n" + "\n\n".join(blocks) + f"\n\n{tail}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}], sources


_CITE_RE = re.compile(r"[\[【]\s*(\d{1,3}(?:\s*[,，、]\s*\d{1,3})*)\s*[\]】]")


def cited(answer: str) -> list[int]:
    """The source numbers ``answer`` cites (``[1]``, ``[1, 3]``, ``【2】``), each once, in order of first citation."""
    out: list[int] = []
    for m in _CITE_RE.finditer(answer or ""):
        for part in re.split(r"[,，、]", m.group(1)):
            n = int(part.strip())
            if n > 0 and n not in out:
                out.append(n)
    return out


def strip_citations(text: str) -> str:
    """``text`` without its ``[n]`` markers (what is scored against a reference, or matched against a source)."""
    return re.sub(r"\s*" + _CITE_RE.pattern, "", text or "").strip()


MATCH_SHARE = 0.6
"""Share of an answer's words that must stand in one source for :func:`matched` to name that source."""


def matched(answer: str, sources: list[dict]) -> list[int]:
    """The source an answer that cites none was taken from: ``[n]`` of the source holding the most of the answer's
    words (:func:`umtcds_core.index.tokenize`: folded English words, Chinese words and character pairs), when that is at
    least :data:`MATCH_SHARE` of them; else ``[]``. Nothing for a refusal, an answer that cites, or one of fewer than
    two words.

    Why: a small model often copies its answer out of a source and forgets the ``[n]`` (the embedded 135M model
    almost never writes one), and a student still needs the page. What is matched is shown apart from what is cited
    (≈, ``matched``), since the model did not say it.
    """
    if not sources or cited(answer) or is_refusal(answer):
        return []
    words = _match_words(strip_citations(answer))
    if len(words) < 2:
        return []
    share, n = max((len(words & _match_words(s.get("text") or "")) / len(words), -s["n"]) for s in sources)
    return [-n] if share >= MATCH_SHARE else []


def _match_words(text: str) -> set[str]:
    """The index's tokens without single Chinese characters: common ones (学, 校, 生 …) stand on every Chinese page
    and would match an invented answer to any of them; Chinese words and character pairs remain."""
    return {w for w in tokenize(text) if len(w) > 1 or not _CJK_RE.match(w)}


def mark_sources(answer: str, sources: list[dict]) -> list[dict]:
    """``sources`` (each with ``n``), each with ``cited`` (the answer names it as ``[n]``) and ``matched`` (see
    :func:`matched`): what the chat page, ``umtcds chat --rag`` and ``umtcds serve --rag`` show with an answer."""
    named, found = set(cited(answer)), set(matched(answer, sources))
    return [{**s, "cited": s["n"] in named, "matched": s["n"] in found} for s in sources]


def cited_sources(answer: str, sources: list[dict]) -> list[dict]:
    """The sources ``answer`` cites that exist (a model may cite ``[7]`` of five)."""
    by_n = {s["n"]: s for s in sources}
    return [by_n[n] for n in cited(answer) if n in by_n]


def source_mark(source: dict) -> str:
    """`` ✓`` for a source the answer cites, `` ≈`` for one it was matched to (:func:`mark_sources`), else ``""``."""
    return " ✓" if source.get("cited") else " ≈" if source.get("matched") else ""


MARKS_LEGEND = (
    "✓ 回答引用了该资料；≈ 回答未标注来源，但内容出自该资料",
    "✓ cited by the answer; ≈ not cited, but the answer's words are on that page",
)
"""What :func:`source_mark`'s marks mean, (Chinese, English)."""


def format_sources(sources: list[dict], zh: bool = False, answer: str | None = None) -> str:
    """Sources as plain lines, ``[n] title — full URL`` (the CLI's listing under an answer); given the ``answer``,
    each line carries its mark (:func:`source_mark`) and a legend line follows when any is marked."""
    head = "来源：" if zh else "Sources:"
    shown = mark_sources(answer, sources) if answer is not None else sources
    lines = [
        f"[{s['n']}] {s.get('title') or s.get('page')} — {s.get('url') or s.get('page')}{source_mark(s)}" for s in shown
    ]
    if any(source_mark(s) for s in shown):
        lines.append(f"({MARKS_LEGEND[0] if zh else MARKS_LEGEND[1]})")
    return "\n".join([head, *lines]) if lines else ("来源：无" if zh else "Sources: none found")
