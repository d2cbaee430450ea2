"""``umtcds generate`` — clean crawled pages and turn them into question-answer pairs with any LLM.

Usage::

    umtcds generate IN_DIR --out OUT_DIR --backend {local,zhipuai,openai} [--model NAME|PATH] [--base-url URL]
                    [--api-key-env VAR] [--pairs-per-page N] [--concurrency K] [--clean/--no-clean] [--lang auto|zh|en]
                    [--prompt-file prompts.yaml] [--judge] [--retry-failed] [--pages A,B] [--max-pages N]
                    [--unanswerable N] [--paraphrase/--no-paraphrase]
    umtcds generate --config settings.yaml [any flag above, which wins over the file]

Every setting is declared once in :class:`GenerateSettings` (type, default, bounds, labels, help, YAML comment, flag):
the flags, the settings YAML the Generate page saves in its job folder and the page's labels come from it. API keys
are never settings (environment or ``.streamlit/secrets.toml``; ``--api-key-env`` names the variable).

Features, each with its flag and trade-off:

* **Two stages or one** (``--clean/--no-clean``): a clean call (drop leftover menus/footers, keep facts) before the
  Q&A call, as the original BLOCK2.1/2.2 did; default on for remote backends, off for ``local`` (a small local model
  tends to rewrite rather than clean, and it doubles the time).
* **Prompts** zh/en (``--lang auto`` picks per page from its script), editable: the effective templates are written to
  ``OUT_DIR/prompts.yaml``; ``--prompt-file`` loads an edited copy (any subset of keys). A worked example (few-shot)
  is sent before each page — it is what makes a 135M model answer with a JSON array at all.
* **Chunking by tokens** (``--chunk-tokens``): long pages are split at line/sentence boundaries so prompt + reply fit
  the model's context (the local tokenizer counts; for remote models a character estimate does).
* **A tolerant parser**: a JSON array (inside a ```json fence or prose, even truncated), ``Q:/A:`` or ``问：/答：`` lines;
  ``<think>…</think>`` is ignored. An unparseable reply is re-asked up to ``--max-parse-retries`` times (sampling).
* **Curation**: too-short/empty pairs, exact and near duplicates (character n-gram Jaccard, which works for Chinese),
  answers with little grounding in their page (``--min-grounding``; numbers must appear in the page), and with
  ``--judge`` an LLM rating 1–5 kept on the pair (``--judge-threshold``).
* **Questions the site cannot answer, and paraphrases** (``--unanswerable N``, default 1 per page;
  ``--paraphrase/--no-paraphrase``, default on): after curation one more round asks, per page, for questions on its
  topic that its text does not answer — kept with the refusal sentence of :mod:`grounding` as answer and
  ``"kind": "unanswerable"`` (answerable pairs say ``"answerable"``) — and, per chunk, for a reworded copy of each
  kept question, stored as ``"paraphrase"`` on its pair and used only in evaluation. An "unanswerable" question whose
  key terms and numbers all occur close together in the page is dropped (:class:`PageTerms`), and with ``--judge``
  the LLM is asked whether the text answers it. Both are off while their values are 0/off, and then leave the resume
  key as it was (:data:`LATER_FEATURES`).
* **Resumable**: each page is keyed by its content hash and the generation settings; a re-run skips pages already in
  ``qa.jsonl`` (or failed for good) and retries pages that failed on the LLM (``--retry-failed``: all failures).
  After a crawl refresh only new and changed pages are generated; pairs of a changed or removed page stay in
  ``qa.jsonl`` marked ``"stale": true`` (the dataset step leaves them out and lists them).
* **Personal data** (``--pii mask``, the default; ``--pii-names``): resident ID numbers, mobile numbers and personal
  e-mails are replaced by placeholders before the LLM sees a page (:mod:`pii`; office landlines and the site's own
  addresses stay); each pair records what its page had masked (``"pii"``) and the summary line counts it.
* **Throughput**: with a remote API, ``--concurrency`` pages are in flight at a time, each through its own stages,
  and the next page starts as soon as one finishes (a slow reply holds back only its page); local generation is
  batched in waves of pages (``--batch-size``; one batch per wave on a CPU, so pages are written batch by batch)
  and the model is freed when the run ends.
* **A CPU is slow**: without a GPU a local model gets ``--max-tokens`` 256 unless given; ``--pages``/``--max-pages``
  pick a few pages; progress reports tokens and tokens/s inside a batch, and ``OUT_DIR/speed.json`` keeps the
  measured rate so the dashboard can say how long the next run will take.

Every page ends either with pairs in ``OUT_DIR/qa.jsonl`` or with one line in ``OUT_DIR/failures.jsonl`` saying why.
A rejected API key stops the whole run at once; pages not reached stay pending for the next run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import signal
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import dataset
from . import schema as S
from .errors import UserError
from .fileio import BadLine, append_jsonl, iter_jsonl, write_text_atomic
from .llm import BACKENDS
from .text import CJK_RE, compact, han_ratio, normalize

setting = S.setting

PAGE_SUFFIXES = (".txt", ".md", ".markdown")
REMOVED_DIR = "removed"  # crawl.REMOVED_DIR (not imported: crawl pulls in the fetcher)
PROMPTS_FILE = "prompts.yaml"

# ---- prompts ------------------------------------------------------------------------------------------------------
# Placeholders: {text} (the page chunk), {n} (pairs wanted), {title}, and for the judge {question}/{answer};
# {questions} (one per line) for the paraphrase request.
# The page text always sits between lines of three double quotes, so the model (and our test server) can find it.
DEFAULT_PROMPTS: dict[str, dict[str, str]] = {
    "en": {
        "clean_system": (
            "You clean text extracted from a university web page. Remove navigation menus, footers, copyright lines, "
            "share buttons and other leftovers. Keep every fact (names, dates, places, numbers, rules) exactly as "
            "written. Do not add anything. Reply with the cleaned text only."
        ),
        "clean_user": 'Clean this text from the page "{title}":\n"""\n{text}\n"""',
        "qa_system": (
            "You write question-answer pairs for a campus help assistant from a university web page. Each question "
            "must be answerable from the text alone; each answer must use the facts of the text. Reply with a JSON "
            'array only: [{"question": "...", "answer": "..."}].'
        ),
        "qa_user": 'Write {n} question-answer pairs from this text as a JSON array.\n"""\n{text}\n"""',
        "example_text": (
            "North Canteen\nThe North Canteen serves breakfast from 6:30 to 9:00. It is next to Dormitory 5. "
            "Students pay with their campus card."
        ),
        "example_pairs": (
            '[{"question": "When does the North Canteen serve breakfast?", "answer": "From 6:30 to 9:00."}, '
            '{"question": "Where is the North Canteen?", "answer": "It is next to Dormitory 5."}]'
        ),
        "judge_system": (
            "You rate question-answer pairs for a campus help assistant. Rate from 1 (useless or wrong) to 5 "
            "(clear, useful and fully supported by the text). Reply with the number only."
        ),
        "judge_user": 'Text:\n"""\n{text}\n"""\nQuestion: {question}\nAnswer: {answer}\nScore (1-5):',
        "unanswerable_system": (
            "You write questions that a university web page does NOT answer: questions a student could plausibly ask "
            "about the topic of the page, whose answer is missing from its text (do not ask about anything the text "
            'says). Reply with a JSON array of strings only: ["..."].'
        ),
        "unanswerable_user": (
            'Write {n} questions about the topic of the page "{title}" that this text does NOT answer, as a JSON '
            'array.\n"""\n{text}\n"""'
        ),
        "unanswerable_judge_system": (
            "You check whether a text answers a question. Reply yes if the answer is in the text, no if it is not. "
            "Reply with yes or no only."
        ),
        "unanswerable_judge_user": 'Text:\n"""\n{text}\n"""\nQuestion: {question}\nDoes the text answer it (yes/no)?',
        "paraphrase_system": (
            "You paraphrase questions: ask the same thing with other words and another sentence structure, keeping "
            "every name, number and detail. Reply with a JSON array of strings only, one paraphrase per question, in "
            "the same order."
        ),
        "paraphrase_user": 'Paraphrase these {n} questions (one per line) as a JSON array.\n"""\n{questions}\n"""',
    },
    "zh": {
        "clean_system": (
            "你负责清洗从高校网页中提取的文本：删除导航菜单、页脚、版权声明、分享按钮等无关内容；"
            "名称、日期、地点、数字、规定等事实必须原样保留；不要添加任何内容。只回复清洗后的文本。"
        ),
        "clean_user": '请清洗网页《{title}》中的这段文本：\n"""\n{text}\n"""',
        "qa_system": (
            "你根据高校网页内容为校园问答助手编写问答对。每个问题都必须能仅凭文本回答，答案必须使用文本中的事实。"
            '只回复一个 JSON 数组：[{"question": "……", "answer": "……"}]。'
        ),
        "qa_user": '根据下面的文本写 {n} 个问答对，以 JSON 数组回复。\n"""\n{text}\n"""',
        "example_text": "北区食堂\n北区食堂早餐供应时间为6:30至9:00，位于5号宿舍楼旁边。学生使用校园卡付款。",
        "example_pairs": (
            '[{"question": "北区食堂早餐什么时候供应？", "answer": "早餐供应时间为6:30至9:00。"}, '
            '{"question": "北区食堂在哪里？", "answer": "位于5号宿舍楼旁边。"}]'
        ),
        "judge_system": (
            "你为校园问答助手的问答对评分：1 分表示无用或错误，5 分表示清楚、有用且完全有文本依据。只回复分数数字。"
        ),
        "judge_user": '文本：\n"""\n{text}\n"""\n问题：{question}\n答案：{answer}\n评分（1-5）：',
        "unanswerable_system": (
            "你为校园问答助手编写网页“没有回答”的问题：与这个高校网页的主题相关、学生很可能会问，但文本中找不到答案的问题"
            '（不要问文本里写到的内容）。只回复一个 JSON 字符串数组：["……"]。'
        ),
        "unanswerable_user": '围绕网页《{title}》的主题，写 {n} 个这段文本没有回答的问题，以 JSON 数组回复。\n"""\n{text}\n"""',
        "unanswerable_judge_system": "你判断一段文本是否回答了一个问题：文本中有答案就回复“是”，没有就回复“否”。只回复是或否。",
        "unanswerable_judge_user": '文本：\n"""\n{text}\n"""\n问题：{question}\n文本回答了这个问题吗（是/否）？',
        "paraphrase_system": (
            "你改写问题：用不同的词语和句式问同一件事，保留所有名称、数字和细节。只回复一个 JSON 字符串数组，"
            "每个问题一个改写，顺序不变。"
        ),
        "paraphrase_user": '改写下面的 {n} 个问题（每行一个），以 JSON 数组回复。\n"""\n{questions}\n"""',
    },
}
PROMPT_KEYS = tuple(DEFAULT_PROMPTS["en"])
UNANSWERABLE_PROMPTS = (
    "unanswerable_system",
    "unanswerable_user",
    "unanswerable_judge_system",
    "unanswerable_judge_user",
)
PARAPHRASE_PROMPTS = ("paraphrase_system", "paraphrase_user")
REQUIRED_PLACEHOLDERS = {
    "clean_user": "{text}",
    "qa_user": "{text}",
    "judge_user": "{text}",
    "unanswerable_user": "{text}",
    "unanswerable_judge_user": "{text}",
    "paraphrase_user": "{questions}",
}
"""The placeholder each user template cannot do without (the page text, or the questions to paraphrase)."""


def render(template: str, **values) -> str:
    """Fill ``{name}`` placeholders without ``str.format`` (templates contain JSON braces)."""
    for k, v in values.items():
        template = template.replace("{" + k + "}", str(v))
    return template


def load_prompts(path: str | Path | None = None) -> dict[str, dict[str, str]]:
    """The default templates, overridden by a YAML file (``{zh: {...}, en: {...}}``, any subset of keys)."""
    if path is None:
        return prompts_from_yaml("")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(
            f"Cannot read the prompt file {p} ({exc.strerror}); check the path.",
            zh=f"无法读取提示词文件 {p}（{exc.strerror}）；请检查路径。",
        ) from None
    return prompts_from_yaml(text, where=str(p))


def prompts_from_yaml(text: str, where: str = "the prompt text") -> dict[str, dict[str, str]]:
    """Defaults overridden by the templates in YAML ``text``; a :class:`UserError` says what is wrong with it."""
    import yaml

    prompts = {lang: dict(t) for lang, t in DEFAULT_PROMPTS.items()}
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise UserError(
            f"{where} is not valid YAML ({exc}); fix it or delete it to get the defaults.",
            zh=f"{where} 不是有效的 YAML（{exc}）；请修正它，或删除它以使用默认提示词。",
        ) from None
    if not isinstance(data, dict) or not set(data) <= set(DEFAULT_PROMPTS):
        found = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise UserError(
            f"{where} must map 'zh' and/or 'en' to templates; found {found}.",
            zh=f"{where} 的顶层只能是 'zh' 和/或 'en'，其下各是一组模板；实际找到的是 {found}。",
        )
    for lang, templates in data.items():
        if not isinstance(templates, dict):
            raise UserError(
                f"In {where}, '{lang}' must hold key: template lines.",
                zh=f"{where} 中 '{lang}' 下面必须是“键: 模板”形式的行。",
            )
        unknown = set(templates) - set(PROMPT_KEYS)
        if unknown:
            raise UserError(
                f"Unknown prompt keys {sorted(unknown)} in {where} ({lang}); valid keys: {', '.join(PROMPT_KEYS)}.",
                zh=f"{where}（{lang}）中有未知的提示词键 {sorted(unknown)}；有效的键为：{', '.join(PROMPT_KEYS)}。",
            )
        for key, value in templates.items():
            prompts[lang][key] = "" if value is None else str(value)
    for lang, t in prompts.items():
        for key, placeholder in REQUIRED_PLACEHOLDERS.items():
            if placeholder not in t[key]:
                raise UserError(
                    f"The prompt '{key}' ({lang}) in {where} lacks the {placeholder} placeholder; add it back.",
                    zh=f"{where} 中的提示词 '{key}'（{lang}）缺少 {placeholder} 占位符；请把它加回去。",
                )
    return prompts


def dump_prompts(prompts: dict[str, dict[str, str]]) -> str:
    """YAML with block scalars, so the templates stay readable and editable by hand."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def _str(dumper, value):
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _str)
    head = "# Prompt templates for `umtcds generate` (edit, then pass with --prompt-file). Placeholders: {text} {n} {title} {question} {answer} {questions}\n"
    return head + yaml.dump(prompts, Dumper=_Dumper, allow_unicode=True, sort_keys=False, width=1000)


# ---- text utilities -----------------------------------------------------------------------------------------------
def detect_lang(text: str) -> str:
    return "zh" if han_ratio(text[:4000]) > 0.15 else "en"


def char_ngrams(text: str, n: int) -> set[str]:
    if len(text) <= n:
        return {text} if text else set()
    return {text[i : i + n] for i in range(len(text) - n + 1)}


def _n_for(text: str) -> int:
    return 2 if han_ratio(text) > 0.3 else 3


def chunk_text(text: str, max_tokens: int, count: Callable[[str], int]) -> list[str]:
    """Split ``text`` into chunks of at most ``max_tokens`` (by ``count``), at line, then sentence, then character
    boundaries, keeping lines whole where possible."""
    max_tokens = max(16, int(max_tokens))
    pieces: list[tuple[str, int]] = []
    for line in (ln.strip() for ln in text.splitlines()):
        if not line:
            continue
        n = count(line)
        if n <= max_tokens:
            pieces.append((line, n))
            continue
        for sent in (s for s in re.split(r"(?<=[。！？；!?;.])\s*", line) if s):
            m = count(sent)
            if m <= max_tokens:
                pieces.append((sent, m))
                continue
            step = max(1, int(len(sent) * max_tokens / m * 0.9))
            for i in range(0, len(sent), step):
                part = sent[i : i + step]
                pieces.append((part, count(part)))
    chunks: list[str] = []
    cur: list[str] = []
    cur_n = 0
    for piece, n in pieces:
        if cur and cur_n + n + 1 > max_tokens:
            chunks.append("\n".join(cur))
            cur, cur_n = [], 0
        cur.append(piece)
        cur_n += n + 1
    if cur:
        chunks.append("\n".join(cur))
    return chunks


# ---- reply parsing ------------------------------------------------------------------------------------------------
_THINK_RE = re.compile(r"<think(?:ing)?>.*?</think(?:ing)?>", re.S | re.I)
_FENCE_RE = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)```", re.S)
_Q_KEYS = ("question", "q", "问题", "问", "query", "instruction", "prompt")
_A_KEYS = ("answer", "a", "答案", "答", "response", "output")
_JSON_PAIR_RE = re.compile(
    r'"(?:question|q|问题)"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:answer|a|答案)"\s*:\s*"((?:[^"\\]|\\.)*)"', re.I
)
_CUT_PAIR_RE = re.compile(
    r'"(?:question|q|问题)"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:answer|a|答案)"\s*:\s*"((?:[^"\\]|\\.)*)$', re.I
)
_Q_LINE = re.compile(r"^[\s>*#\-\d.、)）]*\**\s*(?:Q|Question|问题|问)\s*\d*\s*\**\s*[:：]\s*\**\s*(.*)$", re.I)
_A_LINE = re.compile(r"^[\s>*#\-]*\**\s*(?:A|Answer|答案|答)\s*\d*\s*\**\s*[:：]\s*\**\s*(.*)$", re.I)


def strip_thinking(reply: str) -> str:
    """Drop a reasoning model's ``<think>…</think>`` block (also a lone closing tag, or an unclosed opening one)."""
    text = _THINK_RE.sub("", reply or "")
    low = text.lower()
    if "</think>" in low:
        text = text[low.rfind("</think>") + len("</think>") :]
    low = text.lower()
    if "<think>" in low:
        text = text[: low.find("<think>")]
    return text.strip()


def _pair_from(obj) -> dict | None:
    if not isinstance(obj, dict):
        return None
    low = {str(k).strip().lower(): v for k, v in obj.items()}
    q = next((low[k] for k in _Q_KEYS if k in low), None)
    a = next((low[k] for k in _A_KEYS if k in low), None)
    if isinstance(q, str) and isinstance(a, (str, int, float)):
        return {"question": q.strip(), "answer": str(a).strip()}
    return None


def _pairs_from_value(value) -> list[dict]:
    if isinstance(value, list):
        out = []
        for item in value:
            pair = _pair_from(item)
            if pair:
                out.append(pair)
            elif isinstance(item, (list, dict)):
                out.extend(_pairs_from_value(item))
        return out
    if isinstance(value, dict):
        pair = _pair_from(value)
        if pair:
            return [pair]
        out = []
        for v in value.values():
            if isinstance(v, (list, dict)):
                out.extend(_pairs_from_value(v))
        return out
    return []


def _json_pairs(text: str) -> list[dict]:
    for candidate in (text, re.sub(r",\s*([\]}])", r"\1", text)):
        try:
            pairs = _pairs_from_value(json.loads(candidate))
            if pairs:
                return pairs
        except ValueError:
            pass
    # Scan for decodable values (prose around the JSON, or an array truncated by max_tokens).
    decoder = json.JSONDecoder()
    out: list[dict] = []
    i = 0
    while i < len(text):
        if text[i] not in "[{":
            i += 1
            continue
        try:
            value, end = decoder.raw_decode(text, i)
        except ValueError:
            i += 1
            continue
        found = _pairs_from_value(value)
        out.extend(found)
        i = end if found else i + 1
    return out


def _unescape(s: str) -> str:
    try:
        return json.loads(f'"{s}"').strip()
    except ValueError:
        return s.strip()


def _regex_pairs(text: str) -> list[dict]:
    """Pairs from JSON-looking text that does not decode: complete ``"question": "…", "answer": "…"`` members, and a
    last answer cut off by the token limit, trimmed back to its last complete sentence."""
    out = [{"question": _unescape(q), "answer": _unescape(a)} for q, a in _JSON_PAIR_RE.findall(text)]
    cut = _CUT_PAIR_RE.search(text)
    if cut and not _JSON_PAIR_RE.search(text, cut.start()):
        answer = _unescape(cut.group(2).rstrip("\\"))
        end = max(answer.rfind(c) for c in ".!?。！？")
        if end > 0:
            out.append({"question": _unescape(cut.group(1)), "answer": answer[: end + 1]})
    return out


def _line_pairs(text: str) -> list[dict]:
    out: list[dict] = []
    q: list[str] | None = None
    a: list[str] | None = None

    def flush():
        if q is not None and a is not None and " ".join(q).strip() and " ".join(a).strip():
            out.append({"question": " ".join(q).strip(), "answer": "\n".join(a).strip()})

    for line in text.splitlines():
        mq, ma = _Q_LINE.match(line), _A_LINE.match(line)
        if mq:
            flush()
            q, a = [mq.group(1).strip(" *")], None
        elif ma and q is not None:
            a = [ma.group(1).strip(" *")]
        elif line.strip() and q is not None:
            (a if a is not None else q).append(line.strip())
    flush()
    return out


def parse_pairs(reply: str) -> list[dict]:
    """Question-answer pairs from an LLM reply, as tolerant as we can be; ``[]`` when there are none."""
    text = strip_thinking(reply)
    if not text:
        return []
    for block in _FENCE_RE.findall(text):
        pairs = _json_pairs(block)
        if pairs:
            return pairs
    return _json_pairs(text) or _regex_pairs(text) or _line_pairs(text)


_PROBE = " x."
"""Text appended to a reply to see which of its pairs more text could still change: it would lengthen an open
answer (``A: …`` lines, a JSON string the token limit cut) but not a closed JSON object or quoted member."""


def settled_pairs(reply: str) -> int:
    """How many of ``parse_pairs(reply)``'s pairs, counted from the first, more text would leave as they are.

    Why: generation stops a row once it holds the pairs asked for (:func:`pairs_done`); the pairs kept must be the
    ones the full reply would have given, so a last answer that may still be growing does not count."""
    pairs = parse_pairs(reply)
    if not pairs:
        return 0
    longer = parse_pairs(reply + _PROBE)
    n = 0
    for a, b in zip(pairs, longer, strict=False):
        if a != b:
            break
        n += 1
    return n


def pairs_done(n: int) -> Callable[[str], bool]:
    """``done`` for a local model's Q&A reply: true once it holds ``n`` settled pairs (the rest would be cut)."""
    return lambda text: settled_pairs(text) >= n


def parse_score(reply: str) -> int | None:
    """A 1–5 rating from a judge's reply (``4``, ``Score: 4/5``, ``评分：4``); None when there is none."""
    text = strip_thinking(reply)
    m = re.search(r"(?:score|rating|评分|分数)\D{0,6}([1-5])(?!\d)", text, re.I) or re.search(
        r"(?<![\d.])([1-5])(?![\d.])", text
    )
    return int(m.group(1)) if m else None


# ---- curation -----------------------------------------------------------------------------------------------------
class NearDuplicateIndex:
    """Questions already kept, for dropping repeats while generating: the same test as the dataset step's grouping
    (:func:`umtcds_core.dataset.find_groups`), online. A question is a duplicate when its normalised text was seen,
    or when an earlier one has the same numbers (3号楼 vs 4号楼 are different questions) and a Jaccard similarity of
    :func:`~umtcds_core.dataset.shingles` (characters + bigrams for Chinese, trigrams else: no word segmenter
    needed) of at least ``threshold``. An inverted index over shingles keeps each check fast.
    """

    def __init__(self, threshold: float = 0.85):
        self.threshold = threshold
        self._exact: set[str] = set()
        self._kept: list[tuple[frozenset[str], frozenset[str]]] = []  # (shingles, numbers) per question
        self._index: dict[str, list[int]] = defaultdict(list)

    def __len__(self) -> int:
        return len(self._kept)

    def is_duplicate(self, text: str) -> bool:
        if normalize(text) in self._exact:
            return True
        grams, nums = dataset.shingles(text), dataset.numbers(text)
        if not grams:
            return False
        hits: Counter[int] = Counter()
        for g in grams:
            hits.update(self._index.get(g, ()))
        for i, shared in hits.items():
            kept, kept_nums = self._kept[i]
            if kept_nums == nums and shared / (len(grams) + len(kept) - shared) >= self.threshold:
                return True
        return False

    def add(self, text: str) -> None:
        self._exact.add(normalize(text))
        grams = dataset.shingles(text)
        idx = len(self._kept)
        self._kept.append((grams, dataset.numbers(text)))
        for g in grams:
            self._index[g].append(idx)


class Grounding:
    """How much of an answer is supported by its page: the share of the answer's character n-grams found in the page,
    and 0 when the answer has a number (3+ digits) the page does not contain — a made-up phone number is the worst
    kind of wrong answer."""

    def __init__(self, page_text: str):
        self.norm = compact(page_text)
        self.digits = re.sub(r"\D", " ", page_text)
        self._grams = {n: char_ngrams(self.norm, n) for n in (2, 3)}

    def score(self, answer: str) -> float:
        for num in re.findall(r"\d{3,}", answer):
            if num not in self.digits:
                return 0.0
        grams = char_ngrams(compact(answer), _n_for(answer))
        if not grams:
            return 0.0
        page = self._grams[_n_for(answer)]
        return len(grams & page) / len(grams)


@dataclass
class CurationLimits:
    min_question_chars: int = 4
    min_answer_chars: int = 2
    max_question_chars: int = 300
    max_answer_chars: int = 2000
    min_grounding: float = 0.5
    near_duplicate: float = 0.85


def check_pair(pair: dict, grounding: Grounding, limits: CurationLimits) -> tuple[str | None, float]:
    """``(reason it is dropped or None, grounding score)`` for one pair."""
    q = re.sub(r"\s+", " ", pair.get("question", "")).strip()
    a = pair.get("answer", "").strip()
    pair["question"], pair["answer"] = q, a
    if len(compact(q)) < limits.min_question_chars or len(compact(a)) < limits.min_answer_chars:
        return "too short", 0.0
    if len(q) > limits.max_question_chars or len(a) > limits.max_answer_chars:
        return "too long", 0.0
    if compact(q) == compact(a):
        return "answer repeats the question", 0.0
    g = grounding.score(a)
    if g < limits.min_grounding:
        return "not grounded in the page", g
    return None, g


# ---- unanswerable questions and paraphrases -------------------------------------------------------------------------
ANSWERABLE, UNANSWERABLE = "answerable", "unanswerable"
"""A pair's ``kind`` in ``qa.jsonl`` (a pair without one is answerable: hand-written and older pairs)."""


def refusal(question: str) -> str:
    """The refusal answer of an unanswerable question, in the question's language: the sentences the grounded prompt
    asks the model for (:mod:`grounding`), so training, chat and evaluation agree on what "the website does not say"
    looks like."""
    from .grounding import refusal_for

    return refusal_for(question)


_LIST_LINE = re.compile(r"^\s*(?:[-*•>]+|\(?\d+[.)、）:]|[QqＱ]\d*[:：.])?\s*")


def parse_questions(reply: str) -> list[str]:
    """Question strings from a reply: a JSON array of strings (or of objects with a question/paraphrase field), in a
    fence or prose; else one per non-empty line, list markers and quotes stripped."""
    text = strip_thinking(reply)
    if not text:
        return []

    def from_value(value) -> list[str]:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list):
            return [q for item in value for q in from_value(item)]
        if isinstance(value, dict):
            low = {str(k).lower(): v for k, v in value.items()}
            for k in ("paraphrase", "question", "q", "问题", "改写"):
                if isinstance(low.get(k), str):
                    return [low[k]]
            return [q for v in value.values() if isinstance(v, (list, dict)) for q in from_value(v)]
        return []

    decoder = json.JSONDecoder()
    for block in [*_FENCE_RE.findall(text), text]:
        for i, ch in enumerate(block):
            if ch not in "[{":
                continue
            try:
                value, _ = decoder.raw_decode(block, i)
            except ValueError:
                continue
            found = [q.strip() for q in from_value(value) if q.strip()]
            if found:
                return found
    lines = (_LIST_LINE.sub("", ln).strip().strip("\"'“”,") for ln in text.splitlines())
    return [ln for ln in lines if ln and not ln.startswith(("```", "[", "]"))]


def parse_yes_no(reply: str) -> bool | None:
    """A judge's yes (True) / no (False) from ``yes``, ``No.``, ``是``, ``否``, ``没有``; None when it says neither."""
    text = strip_thinking(reply).strip().lower()
    m = re.search(r"\b(yes|no)\b", text)
    if m:
        return m.group(1) == "yes"
    for ch_no in ("否", "没有", "不是"):
        if ch_no in text:
            return False
    return True if "是" in text or "有" in text else None


_EN_STOP = frozenset(
    "a an the of to in on at for from with by and or but not no is are was were be been being do does did done "
    "can could should would will shall may might must have has had there here this that these those it its they "
    "them their you your we our us i me my he she his her what when where which who whom whose why how whether "
    "any some many much more most long often about into than then also only just still ever if so such as "
    "student students page website site please tell know say says said".split()
)
_ZH_STOP = (
    "请问 什么 哪里 哪儿 哪些 哪个 哪位 多少 几点 几个 几月 几号 怎么 怎样 如何 是否 是不是 为什么 可以 能否 能不能 需要 "
    "有没有 有哪些 什么时候 时候 地方 情况 一下 告诉 知道 应该 具体 学生 同学 我们 我 你 吗 呢 吧 啊 的 了 是 有 在 和 与 及 或 "
    "要 会 能 该 把 被 对 到 从 给 都 也 就 还 请"
).split()


def _stem(word: str) -> str:
    for suffix in ("ing", "ies", "ied", "ed", "es", "s", "ly"):
        if len(word) - len(suffix) >= 4 and word.endswith(suffix):
            word = word[: -len(suffix)]
            break
    return word[:5]


def key_terms(question: str) -> list[str]:
    """The words a question hinges on, lower-cased: numbers, English content words (cut to a 5-letter stem, so
    "libraries" meets "library") and Chinese words (jieba) that are not question words or fillers."""
    text = question.lower()
    terms = re.findall(r"\d+(?:[.:：]\d+)*", text)
    terms += [_stem(w) for w in re.findall(r"[a-z][a-z'-]+", text) if len(w) >= 3 and w not in _EN_STOP]
    chinese = "".join(ch if CJK_RE.match(ch) else " " for ch in question)
    if chinese.strip():
        import logging

        import jieba

        jieba.setLogLevel(logging.WARNING)
        for word in jieba.lcut(chinese):
            word = word.strip()
            for stop in _ZH_STOP:  # question words glued to a content word (图书馆吗 → 图书馆)
                if len(stop) > 1 and word != stop:
                    word = word.replace(stop, " ")
            for part in word.split():
                if len(part) >= 2 and part not in _ZH_STOP:
                    terms.append(part)
    return list(dict.fromkeys(terms))


class PageTerms:
    """Where each term occurs in a page (lower-cased text), to tell whether a question's key terms sit together."""

    WINDOW = 300
    """Characters either side of an anchor within which every other term must occur: about one paragraph."""

    def __init__(self, page_text: str):
        self.text = page_text.lower()
        self._cache: dict[str, list[int]] = {}

    def positions(self, term: str) -> list[int]:
        if term not in self._cache:
            # a number is a whole number (30 is not the 30 of 7:30 or 130); a word may be part of a longer one
            pattern = rf"(?<![\d.:：]){re.escape(term)}(?![\d])" if term[0].isdigit() else re.escape(term)
            self._cache[term] = [m.start() for m in re.finditer(pattern, self.text)]
        return self._cache[term]

    def answers(self, question: str) -> bool:
        """True when the page probably answers ``question``: every key term (numbers included) occurs, all within
        :attr:`WINDOW` characters of one occurrence of the rarest. A cheap, deliberately eager check — dropping a
        good unanswerable question costs one pair; keeping an answered one teaches the model to refuse a fact."""
        import bisect

        terms = key_terms(question)
        if not terms:
            return False
        where = [self.positions(t) for t in terms]
        if any(not w for w in where):
            return False
        where.sort(key=len)
        for anchor in where[0]:
            if all(
                (i := bisect.bisect_left(w, anchor - self.WINDOW)) < len(w) and w[i] <= anchor + self.WINDOW
                for w in where[1:]
            ):
                return True
        return False


def check_unanswerable(question: str, page: PageTerms, limits: CurationLimits) -> str | None:
    """Why an "unanswerable" question is dropped, or None to keep it."""
    if len(compact(question)) < limits.min_question_chars:
        return "too short"
    if len(question) > limits.max_question_chars:
        return "too long"
    if page.answers(question):
        return "unanswerable question answered by the page"
    return None


def check_paraphrase(question: str, paraphrase: str, limits: CurationLimits) -> bool:
    """A paraphrase worth keeping: a real question of sensible length, not the question itself, and asking about the
    same numbers (a changed room number asks something else)."""
    p = compact(paraphrase)
    return (
        limits.min_question_chars <= len(p)
        and len(paraphrase) <= limits.max_question_chars
        and normalize(paraphrase) != normalize(question)
        and dataset.numbers(paraphrase) == dataset.numbers(question)
    )


# ---- pages --------------------------------------------------------------------------------------------------------
@dataclass
class Page:
    path: Path
    rel: str  # path relative to IN_DIR, the stable identity of the page
    text: str
    source: str  # the page's URL when the crawl manifest knows it, else ``rel``
    hash: str

    @property
    def title(self) -> str:
        first = next((ln.strip() for ln in self.text.splitlines() if ln.strip()), "")
        return first[:120]


def _manifest_urls(in_dir: Path) -> dict[str, str]:
    urls: dict[str, str] = {}
    for rec in iter_jsonl(in_dir / "manifest.jsonl", errors=[]):
        path, url = rec.get("path"), rec.get("final_url") or rec.get("url")
        if path and url:
            p = Path(path)
            urls[p.name] = url
            try:
                urls[str(p.resolve().relative_to(in_dir.resolve()))] = url
            except ValueError:
                urls[str(p)] = url
    return urls


def read_pages(in_dir: str | Path) -> list[Page]:
    """The text/markdown pages under ``in_dir`` (recursively, hidden files skipped), in a stable order."""
    in_dir = Path(in_dir)
    if not in_dir.is_dir():
        raise UserError(
            f"The input folder {in_dir} does not exist; run the crawl step first or give a folder of .txt files.",
            zh=f"输入文件夹 {in_dir} 不存在；请先运行爬取步骤，或指定一个包含 .txt 文件的文件夹。",
        )
    urls = _manifest_urls(in_dir)
    crawled = (in_dir / "manifest.jsonl").exists()
    pages = []
    for path in sorted(in_dir.rglob("*")):
        rel = path.relative_to(in_dir)
        if not path.is_file() or path.suffix.lower() not in PAGE_SUFFIXES or any(p.startswith(".") for p in rel.parts):
            continue
        if crawled and len(rel.parts) > 1 and rel.parts[0] == REMOVED_DIR:
            continue  # pages a crawl refresh found gone: kept for the record, never a source of pairs
        text = path.read_bytes().decode("utf-8", errors="replace").replace("\r\n", "\n").lstrip("\ufeff")
        key = str(rel)
        pages.append(
            Page(
                path, key, text, urls.get(key) or urls.get(path.name) or key, hashlib.sha256(text.encode()).hexdigest()
            )
        )
    return pages


# ---- settings -----------------------------------------------------------------------------------------------------
CPU_MAX_TOKENS = 256
"""``max_tokens`` for a local model on a CPU when none is given: a 135M model on 2 cores makes ~10–30 tokens/s, so
1,024-token replies kept a page busy for minutes (issue 21); 256 still holds a few short pairs."""
CPU_MAX_PAGES = 25
"""Pages the Generate page suggests for a local model on a CPU (all of them on a GPU or a remote API): the whole
22-page demo site, and a bounded first run on a real site."""
CPU_PAIRS = 2
"""Pairs per page the Generate page suggests for a local model on a CPU: a reply stops once it holds them."""
CPU_BATCH = 8
"""Batch size the Generate page suggests for a local model on a CPU: the step engine's running batch
(``LocalBackend.engine``). A CPU decoding step costs about the same at 4 and 8 rows, so 8 rows make nearly twice the
tokens (bench/results/generate_qa_cpu_demo_step.json: 22 demo pages in 113 s at 8 rows, 161 s at 4, 238 s with the
static batches of 4 before the step engine — 2.10×, the same pairs on every page)."""
CPU_PAGES_PER_MIN = 11.7
"""Demo-site pages per minute of Q&A generation on a 2-core CPU with the page's CPU settings (2 pairs per page, batch
8, replies of up to 256 tokens), measured on all 22 demo pages (bench/results/generate_qa_cpu_demo_step.json)."""


@dataclass
class GenerateSettings:
    """The generate step's settings as the user gives them (``umtcds generate`` flags, a settings YAML, the page).

    API keys are never settings: they come from the environment or ``.streamlit/secrets.toml`` (``api_key_env``
    names the variable), so a saved settings file can be shared."""

    in_dir: str | None = setting(
        None,
        ("网页文件夹", "Pages folder"),
        "folder of .txt/.md pages (the crawl output; the IN_DIR argument)",
        kind=str,
        nullable=True,
        flag="",
        widget="hidden",
    )
    out_dir: str | None = setting(
        None,
        ("输出文件夹", "Output folder"),
        "writes qa.jsonl and failures.jsonl here",
        kind=str,
        nullable=True,
        flag="--out",
        widget="hidden",
    )
    backend: str = setting(
        "local",
        ("模型来源", "LLM backend"),
        "local: a model on this machine; zhipuai: Zhipu's API (GLM-4-flash); openai: any OpenAI-compatible server",
        choices=BACKENDS,
        widget="radio",
    )
    model: str | None = setting(
        None,
        ("模型", "Model"),
        "model name (remote) or NAME|PATH (local); null = smollm2-135m, glm-4-flash or the server's first model",
        help=("本地：内置名称、HF 文件夹或 .gguf 文件", "Local: an embedded name, a HF folder or a .gguf file"),
        kind=str,
        nullable=True,
    )
    base_url: str | None = setting(
        None,
        ("接口地址（可选）", "Base URL (optional)"),
        "API endpoint (zhipuai: overrides the default; openai: the server URL)",
        kind=str,
        nullable=True,
    )
    api_key_env: str | None = setting(
        None,
        ("密钥环境变量名", "Key variable name"),
        "environment variable holding the key (null = ZHIPUAI_API_KEY / OPENAI_API_KEY); the key is never saved",
        kind=str,
        nullable=True,
    )
    pairs_per_page: int = setting(
        5,
        ("每页问答对数", "Pairs per page"),
        "pairs asked per page chunk; more: more data, weaker pairs from a small model",
        min=1,
        typical=(1, 20),
        range_msg=("must be at least 1", "至少为 1"),
    )
    concurrency: int = setting(
        4,
        ("并发数", "Concurrency"),
        "pages in flight at once with a remote API; more: faster until the API rate-limits",
        min=1,
        typical=(1, 64),
        range_msg=("must be at least 1", "至少为 1"),
    )
    batch_size: int | None = setting(
        None,
        ("批大小（0 = 自动）", "Batch size (0 = auto)"),
        "local: prompts per generate() call; null = auto (8 on CPU, as many as GPU memory allows up to 256)",
        help=(
            "本地模型：0 表示按显存自动选择（GPU 上最多 256，CPU 上 8）。",
            "Local model: 0 picks it from free GPU memory (up to 256 on a GPU, 8 on CPU).",
        ),
        kind=int,
        nullable=True,
        min=1,
        range_msg=("must be at least 1 (or null: automatic)", "至少为 1（或 null：自动）"),
    )
    clean: bool | None = setting(
        None,
        ("先清洗文本", "Clean text first"),
        "one more LLM call per page to strip leftover menus; null = on for remote backends, off for local",
        help=(
            "多一次模型调用，去掉残留的导航等噪声。",
            "One more LLM call per page to strip leftover navigation noise.",
        ),
        kind=bool,
        nullable=True,
    )
    lang: str = setting(
        "auto",
        ("提示词语言", "Prompt language"),
        "prompt language; auto picks zh or en per page from its script",
        choices=("auto", "zh", "en"),
        range_msg=("must be auto, zh or en, not '{value}'", "必须是 auto、zh 或 en，不能是“{value}”"),
    )
    max_tokens: int | None = setting(
        None,
        ("回复最多 token", "Max reply tokens"),
        f"reply length cap per request; lower: faster, too low cuts pairs off; null = 1024 "
        f"({CPU_MAX_TOKENS} for a local model on a CPU)",
        help=("越小越快；太小会截断问答对。", "Lower: faster; too low cuts pairs off."),
        kind=int,
        nullable=True,
        min=16,
        step=32,
        range_msg=("must be at least 16", "至少为 16"),
    )
    chunk_tokens: int = setting(
        1500,
        ("每段最多 token", "Chunk tokens"),
        "largest page chunk per request; longer pages are split at line/sentence boundaries",
        min=64,
        range_msg=("must be at least 64", "至少为 64"),
    )
    temperature: float = setting(
        0.0,
        ("温度", "Temperature"),
        "first-try sampling temperature (0 = greedy); re-asks use at least 0.7",
        min=0,
        max=2,
        step=0.1,
    )
    max_parse_retries: int = setting(
        2,
        ("解析失败重问次数", "Re-asks"),
        "re-asks on an unparseable reply; more: fewer failed pages, more time",
        min=0,
    )
    judge: bool = setting(
        False,
        ("让模型给问答对打分（1–5）并过滤", "Let the LLM rate pairs (1–5) and filter"),
        "rate each pair 1-5 with the same LLM and drop those below judge_threshold (one more call per pair)",
    )
    judge_threshold: int = setting(
        3,
        ("最低分", "Lowest score kept"),
        "lowest judge score kept",
        min=1,
        max=5,
        range_msg=("must be between 1 and 5", "必须在 1 到 5 之间"),
    )
    min_grounding: float = setting(
        0.5,
        ("最低依据度", "Min grounding"),
        "share of an answer that must be found in its page; higher: fewer invented answers, fewer pairs",
        min=0,
        max=1,
        step=0.05,
    )
    unanswerable: int = setting(
        1,
        ("每页无法回答的问题数", "Unanswerable questions per page"),
        "questions per page on its topic that the page does not answer, kept with the refusal answer so the model "
        "learns to say so (kind: unanswerable); 0 = none",
        help=(
            "与网页主题相关、但网页没有给出答案的问题，答案是拒答句，让模型学会说“网站上没有提到”。",
            "Questions on the page's topic that it does not answer, with the refusal as answer, so the model "
            "learns to say the website does not say.",
        ),
        min=0,
        typical=(0, 5),
        range_msg=("must be 0 or more", "必须大于或等于 0"),
    )
    paraphrase: bool = setting(
        True,
        ("为每个问题生成改写（仅用于评估）", "Paraphrase each question (evaluation only)"),
        "ask the LLM for a reworded copy of each question, kept as 'paraphrase' on its pair and used only to "
        "evaluate (one more call per page chunk)",
    )
    prompt_file: str | None = setting(
        None,
        ("提示词文件", "Prompt file"),
        f"YAML with edited templates (see OUT_DIR/{PROMPTS_FILE}); null = the defaults",
        kind=str,
        nullable=True,
        widget="hidden",
    )
    pages: list[str] | None = setting(
        None,
        ("只处理这些网页", "Only these pages"),
        "page files to process (relative to IN_DIR); null = every page",
        kind=list,
        nullable=True,
        example="[library.txt, admissions.txt]",
    )
    max_pages: int | None = setting(
        None,
        ("最多处理网页数", "At most N pages"),
        "process at most this many of the pages still to do, in order; null = all (a CPU run: start with a few)",
        kind=int,
        nullable=True,
        min=1,
        range_msg=("must be at least 1 (or null: all)", "至少为 1（或 null：全部）"),
    )
    retry_failed: bool = setting(
        False, ("重试失败的网页", "Retry failed pages"), "also retry pages that failed for good"
    )
    pii: str = setting(
        "mask",
        ("个人信息", "Personal data"),
        "mask: ID numbers, mobile numbers and personal e-mails become placeholders before the LLM sees a page "
        "(office phones and the site's own addresses are kept); off: pages are sent as they are",
        help=(
            "遮盖：把身份证号、手机号和个人邮箱替换成占位符再交给大模型；办公电话和学校自己的邮箱保留。",
            "mask: ID numbers, mobile numbers and personal e-mails are replaced before the LLM sees the text; "
            "office phones and the site's own addresses stay.",
        ),
        choices=("off", "mask"),
        choice_labels={"off": ("不处理", "off"), "mask": ("遮盖", "mask")},
        widget="radio",
    )
    pii_names: bool = setting(
        False,
        ("同时遮盖人名", "Also mask person names"),
        "also mask person names (jieba part-of-speech nr) — for news and award lists; may hit a few place words",
        show=lambda v: v.get("pii") == "mask",
    )
    device: str | None = setting(
        None, ("设备", "Device"), "local: cpu, cuda or mps; null = the best there is", kind=str, nullable=True
    )
    timeout: float = setting(
        120.0,
        ("请求超时（秒）", "Request timeout (s)"),
        "seconds per remote request",
        min=0,
        min_open=True,
        range_msg=("must be a positive number of seconds", "必须是大于 0 的秒数"),
    )


GENERATE = S.from_dataclass(
    GenerateSettings,
    "generate",
    title="UMTCDS generate settings — written by the Generate page; run with `umtcds generate --config`",
)
"""The generate step's schema: the CLI flags, the settings YAML, the page's labels and :class:`GenSettings`' checks."""


def needs_key(values: dict) -> bool:
    """Whether a run with these settings needs an API key: Zhipu always; an OpenAI-compatible server unless a base URL
    is given (vLLM and Ollama accept any key); a local model never (the same rule :func:`llm.make_backend` applies)."""
    return values.get("backend") == "zhipuai" or (values.get("backend") == "openai" and not values.get("base_url"))


def has_gpu(device: str | None = None) -> bool:
    """Whether a local model would run on a GPU (``device`` given, or the best one torch finds)."""
    if device:
        return not device.startswith("cpu")
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available() or getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolved_max_tokens(values: dict) -> int:
    """``max_tokens``, or when it is null 1,024 — :data:`CPU_MAX_TOKENS` for a local model without a GPU."""
    if values.get("max_tokens"):
        return int(values["max_tokens"])
    return CPU_MAX_TOKENS if values.get("backend") == "local" and not has_gpu(values.get("device")) else 1024


LATER_FEATURES: tuple[tuple[str, object, tuple[str, ...]], ...] = (
    ("unanswerable", 0, UNANSWERABLE_PROMPTS),
    ("paraphrase", False, PARAPHRASE_PROMPTS),
)
"""Settings added after resume keys were first written: ``(name, value when off, its prompt templates)``. While a
feature is off, neither it nor its templates enter the key, so a ``qa.jsonl`` made before it existed still resumes."""


@dataclass
class GenSettings:
    """Everything that changes the output; its hash is part of each page's resume key (defaults: :data:`GENERATE`'s,
    ``max_tokens`` and ``clean`` resolved — except ``unanswerable``/``paraphrase``, which are off here: the CLI, a
    settings file and the Generate page turn them on through :meth:`from_settings`, while code that builds settings
    itself (the demo, benchmarks) keeps exactly the pairs it asked for)."""

    backend: str = GENERATE["backend"].default
    model: str = ""
    lang: str = GENERATE["lang"].default  # auto | zh | en
    clean: bool = False
    pairs_per_page: int = GENERATE["pairs_per_page"].default
    max_tokens: int = 1024
    chunk_tokens: int = GENERATE["chunk_tokens"].default
    temperature: float = GENERATE["temperature"].default
    max_parse_retries: int = GENERATE["max_parse_retries"].default
    judge: bool = GENERATE["judge"].default
    judge_threshold: int = GENERATE["judge_threshold"].default
    limits: CurationLimits = field(default_factory=CurationLimits)
    prompts: dict = field(default_factory=lambda: load_prompts(None))
    pii: str = GENERATE["pii"].default  # off | mask: what the LLM is shown (pii.py)
    pii_names: bool = GENERATE["pii_names"].default
    unanswerable: int = 0  # questions per page the page does not answer (refusal answers); GENERATE's default is 1
    paraphrase: bool = False  # a reworded copy of each question, for evaluation; GENERATE's default is on

    def __post_init__(self):
        for name in ("pairs_per_page", "lang", "judge_threshold", "max_tokens", "pii", "unanswerable"):
            S.check_value(GENERATE, name, getattr(self, name))

    def key(self) -> str:
        data = asdict(self)
        for name, off, templates in LATER_FEATURES:
            if data[name] == off:  # see LATER_FEATURES: turned off, the key is the one earlier versions wrote
                del data[name]
                data["prompts"] = {
                    lang: {k: v for k, v in t.items() if k not in templates} for lang, t in data["prompts"].items()
                }
        return hashlib.sha256(json.dumps(data, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:12]

    @classmethod
    def from_settings(cls, values: dict) -> GenSettings:
        """The output-changing part of validated :data:`GENERATE` values (``clean``/``max_tokens`` resolved)."""
        clean = values["clean"] if values.get("clean") is not None else values["backend"] != "local"
        return cls(
            backend=values["backend"],
            model=values.get("model") or "",
            lang=values["lang"],
            clean=clean,
            pairs_per_page=values["pairs_per_page"],
            max_tokens=resolved_max_tokens(values),
            chunk_tokens=values["chunk_tokens"],
            temperature=float(values["temperature"]),
            max_parse_retries=values["max_parse_retries"],
            judge=values["judge"],
            judge_threshold=values["judge_threshold"],
            limits=CurationLimits(min_grounding=float(values["min_grounding"])),
            prompts=load_prompts(values.get("prompt_file")),
            pii=values["pii"],
            pii_names=values["pii_names"],
            unanswerable=values["unanswerable"],
            paraphrase=values["paraphrase"],
        )


@dataclass
class PageResult:
    page: Page
    key: str
    pairs: list[dict] = field(default_factory=list)
    reason: str | None = None
    retryable: bool = False
    stage: str = ""
    reply: str = ""


class _Fatal(Exception):
    """Wraps an AuthError/BackendConfigError raised inside a worker so the run stops at once."""


# ---- the LLM calls ------------------------------------------------------------------------------------------------
class Completer:
    """``complete(conversations) -> list[str | Exception]`` over a backend: batched for local, a bounded thread pool
    for remote backends. A fatal error (bad key, no such model) is raised at once and stops the run."""

    def __init__(self, backend, concurrency: int = 4):
        self.backend = backend
        self.local = getattr(backend, "name", "") == "local"
        self.pool = None if self.local else ThreadPoolExecutor(max_workers=max(1, concurrency))

    def complete(
        self, convs: list[list[dict]], max_tokens: int, temperature: float, done: Callable[[str], bool] | None = None
    ) -> list[str | Exception]:
        """``done``: a local model stops each reply as soon as it is true of its text (remote replies come whole)."""
        from .llm import FATAL_ERRORS

        if not convs:
            return []
        if self.local:
            extra = {"done": done} if done is not None else {}
            try:
                return list(self.backend.chat_batch(convs, max_tokens=max_tokens, temperature=temperature, **extra))
            except FATAL_ERRORS:
                raise
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory: these pages fail, the run goes on
                return [exc] * len(convs)

        def call(c):
            try:
                return self.backend.chat(c, max_tokens=max_tokens, temperature=temperature)
            except FATAL_ERRORS as exc:
                raise _Fatal() from exc
            except Exception as exc:  # noqa: BLE001 - LLMError and friends: this page fails
                return exc

        futures = [self.pool.submit(call, c) for c in convs]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for f in done:
            if f.exception() is not None:
                for p in pending:
                    p.cancel()
                exc = f.exception()
                raise (exc.__cause__ if isinstance(exc, _Fatal) else exc)
        return [f.result() for f in futures]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


# ---- the pipeline -------------------------------------------------------------------------------------------------
def _qa_conversation(prompts: dict, text: str, title: str, n: int) -> list[dict]:
    conv = [{"role": "system", "content": prompts["qa_system"]}]
    if prompts.get("example_text", "").strip() and prompts.get("example_pairs", "").strip():
        conv.append(
            {"role": "user", "content": render(prompts["qa_user"], text=prompts["example_text"], n=2, title="")}
        )
        conv.append({"role": "assistant", "content": prompts["example_pairs"]})
    conv.append({"role": "user", "content": render(prompts["qa_user"], text=text, n=n, title=title)})
    return conv


class Generator:
    """Runs the clean → Q&A → curate → judge pipeline over groups of pages with one backend."""

    def __init__(self, backend, settings: GenSettings, concurrency: int = 4, dedupe: NearDuplicateIndex | None = None):
        self.backend = backend
        self.s = settings
        self.completer = Completer(backend, concurrency)
        self.dedupe = dedupe if dedupe is not None else NearDuplicateIndex(settings.limits.near_duplicate)
        self._dedupe_lock = threading.Lock()  # remote runs process several pages at once (see ``generate``)
        self._count = getattr(backend, "count_tokens", None)
        self.qa_done: Callable[[str], bool] | None = pairs_done(settings.pairs_per_page)
        """A local model stops a Q&A reply once it holds the pairs asked for (the rest is cut anyway); None: never."""

    def _count_tokens(self, text: str) -> int:
        from .llm import estimate_tokens

        return self._count(text) if self._count else estimate_tokens(text)

    def _chunk_budget(self, prompts: dict) -> int:
        ctx = int(getattr(self.backend, "context_tokens", 0) or 8192)
        overhead = self._count_tokens(
            prompts["qa_system"] + prompts["qa_user"] + prompts["example_text"] + prompts["example_pairs"]
        )
        room = ctx - self.s.max_tokens - overhead - 64
        return max(64, min(self.s.chunk_tokens, room))

    def lang_of(self, page: Page) -> str:
        return detect_lang(page.text) if self.s.lang == "auto" else self.s.lang

    def run_group(self, pages: list[tuple[Page, str]]) -> list[PageResult]:
        s = self.s
        results = [PageResult(p, k) for p, k in pages]
        # 1. chunks: (result index, lang, chunk text)
        chunks: list[tuple[int, str, str]] = []
        chunk_no: dict[int, int] = {}  # position in ``chunks`` -> chunk number within its page
        for i, r in enumerate(results):
            lang = self.lang_of(r.page)
            body = r.page.text.strip()
            if len(compact(body)) < 20:
                r.reason, r.stage = "the page has no usable text (empty or under 20 characters)", "read"
                continue
            for k, c in enumerate(chunk_text(body, self._chunk_budget(s.prompts[lang]), self._count_tokens)):
                chunk_no[len(chunks)] = k
                chunks.append((i, lang, c))
        # 2. clean (optional)
        if s.clean and chunks:
            convs = [
                [
                    {"role": "system", "content": s.prompts[lang]["clean_system"]},
                    {
                        "role": "user",
                        "content": render(s.prompts[lang]["clean_user"], text=c, title=results[i].page.title),
                    },
                ]
                for i, lang, c in chunks
            ]
            budget = min(4096, max(self._count_tokens(c) for _, _, c in chunks) * 5 // 4 + 64)
            replies = self.completer.complete(convs, budget, 0.0)
            cleaned: list[tuple[int, tuple[int, str, str]]] = []  # (old position, chunk)
            for j, ((i, lang, c), reply) in enumerate(zip(chunks, replies, strict=True)):
                if isinstance(reply, Exception):
                    self._fail(results[i], f"clean failed: {reply}", "clean", retryable=True)
                    continue
                text = strip_thinking(reply)
                # A reply far shorter than its chunk dropped facts (or refused): keep the raw chunk instead.
                cleaned.append((j, (i, lang, text if len(compact(text)) >= 0.3 * len(compact(c)) else c)))
            kept = [(j, c) for j, c in cleaned if results[c[0]].reason is None]
            chunk_no = {new: chunk_no[old] for new, (old, _) in enumerate(kept)}
            chunks = [c for _, c in kept]
        # 3. Q&A with bounded re-asks on unparseable replies
        parsed: dict[int, list[dict]] = {}
        last_reply: dict[int, str] = {}
        pending = list(range(len(chunks)))
        for attempt in range(1 + max(0, s.max_parse_retries)):
            if not pending:
                break
            convs = [
                _qa_conversation(
                    s.prompts[chunks[j][1]], chunks[j][2], results[chunks[j][0]].page.title, s.pairs_per_page
                )
                for j in pending
            ]
            temperature = s.temperature if attempt == 0 else max(0.7, s.temperature)
            replies = self.completer.complete(convs, s.max_tokens, temperature, done=self.qa_done)
            still = []
            for j, reply in zip(pending, replies, strict=True):
                if isinstance(reply, Exception):
                    self._fail(results[chunks[j][0]], f"Q&A request failed: {reply}", "qa", retryable=True)
                    continue
                pairs = parse_pairs(reply)
                if pairs:
                    parsed[j] = pairs[: s.pairs_per_page]
                else:
                    last_reply[j] = reply
                    still.append(j)
            pending = still
        unparseable: dict[int, str] = {}
        for j in pending:
            unparseable.setdefault(chunks[j][0], last_reply.get(j, ""))
        # 4. curation per page (dedupe across all pages so far)
        dropped: dict[int, Counter] = defaultdict(Counter)
        candidates: list[tuple[int, int, dict]] = []  # (result idx, chunk idx, pair)
        grounding: dict[int, Grounding] = {}
        seen: dict[int, NearDuplicateIndex] = {}
        answers: dict[int, set[str]] = defaultdict(set)  # one answer per page: different questions, same answer
        for j, pairs in sorted(parsed.items()):
            i = chunks[j][0]
            if results[i].reason:
                continue
            g = grounding.setdefault(i, Grounding(results[i].page.text))
            seen_here = seen.setdefault(i, NearDuplicateIndex(s.limits.near_duplicate))
            for pair in pairs:
                why, score = check_pair(pair, g, s.limits)
                if why is None:
                    with self._dedupe_lock:
                        earlier = self.dedupe.is_duplicate(pair["question"])
                    if earlier or seen_here.is_duplicate(pair["question"]):
                        why = "duplicate question"
                if why is None and compact(pair["answer"]) in answers[i]:
                    why = "duplicate answer"
                if why:
                    dropped[i][why] += 1
                    continue
                seen_here.add(pair["question"])
                answers[i].add(compact(pair["answer"]))
                pair["grounding"] = round(score, 3)
                candidates.append((i, j, pair))
        # 4b. paraphrases of the kept questions and unanswerable questions: extras, asked together in one round
        unanswerable = self._extras(results, chunks, candidates, seen, dropped)
        # 5. optional judge (a 1-5 score for each pair; "does the page answer it?" for each unanswerable question)
        if s.judge and (candidates or unanswerable):
            convs = []
            for _i, j, pair in candidates:
                p = s.prompts[chunks[j][1]]
                user = render(p["judge_user"], text=chunks[j][2], question=pair["question"], answer=pair["answer"])
                convs.append([{"role": "system", "content": p["judge_system"]}, {"role": "user", "content": user}])
            for _i, j, pair in unanswerable:
                p = s.prompts[chunks[j][1]]
                user = render(p["unanswerable_judge_user"], text=chunks[j][2], question=pair["question"])
                convs.append(
                    [{"role": "system", "content": p["unanswerable_judge_system"]}, {"role": "user", "content": user}]
                )
            replies = self.completer.complete(convs, 16, 0.0)
            n_pairs, kept = len(candidates), []
            for (i, j, pair), reply in zip(candidates, replies[:n_pairs], strict=True):
                score = None if isinstance(reply, Exception) else parse_score(reply)
                pair["judge_score"] = score
                if score is not None and score < s.judge_threshold:
                    dropped[i][f"judge score below {s.judge_threshold}"] += 1
                    continue
                kept.append((i, j, pair))
            candidates = kept
            kept = []
            for (i, j, pair), reply in zip(unanswerable, replies[n_pairs:], strict=True):
                if not isinstance(reply, Exception) and parse_yes_no(reply):  # no verdict: the lexical check stands
                    dropped[i]["unanswerable question answered by the page (judge)"] += 1
                    continue
                kept.append((i, j, pair))
            unanswerable = kept
        # 6. assemble
        for i, j, pair in candidates:
            if results[i].reason:
                continue
            with self._dedupe_lock:  # check and claim in one step: pages finishing together cannot both keep it
                duplicate = self.dedupe.is_duplicate(pair["question"])
                if not duplicate:
                    self.dedupe.add(pair["question"])
            if duplicate:  # another page (of this group, or finished meanwhile) asked it first
                dropped[i]["duplicate question"] += 1
                continue
            results[i].pairs.append({**pair, "kind": ANSWERABLE, "chunk": chunk_no.get(j, 0)})
        refusals: Counter[int] = Counter()
        for i, j, pair in unanswerable:
            if results[i].reason or not results[i].pairs or refusals[i] >= s.unanswerable:
                continue  # no answerable pair survived: the page fails as before, refusals alone teach nothing of it
            with self._dedupe_lock:
                duplicate = self.dedupe.is_duplicate(pair["question"])
                if not duplicate:
                    self.dedupe.add(pair["question"])
            if duplicate:
                dropped[i]["duplicate question"] += 1
                continue
            refusals[i] += 1
            results[i].pairs.append({**pair, "chunk": chunk_no.get(j, 0)})
        for i, r in enumerate(results):
            if r.reason or r.pairs:
                continue
            if i in unparseable and not dropped[i]:
                tries = 1 + max(0, s.max_parse_retries)
                self._fail(r, f"the reply could not be parsed as Q&A pairs after {tries} attempts", "parse", True)
                r.reply = unparseable[i][:300]
            elif dropped[i]:
                detail = ", ".join(f"{n} {why}" for why, n in dropped[i].most_common())
                self._fail(r, f"no pair survived curation ({detail})", "curate", retryable=False)
            else:
                self._fail(r, "the model returned no pairs", "qa", retryable=True)
        return results

    def _extras(self, results, chunks, candidates, seen, dropped) -> list[tuple[int, int, dict]]:
        """Ask, in one round, for a paraphrase of each kept question (one request per chunk; stored on the pair as
        ``paraphrase``) and for ``unanswerable`` questions per page (one request, shown the page's first chunk).
        Returns the unanswerable questions that pass :func:`check_unanswerable` and the duplicate checks (twice as
        many as wanted when the judge will look at them: it may reject some), as
        ``(result index, chunk index, pair)`` with the refusal answer. A failed or unparseable reply only costs its
        extras: the page's pairs stand without them."""
        s = self.s
        convs: list[list[dict]] = []
        jobs: list[tuple] = []
        budgets: list[int] = []
        if s.paraphrase:
            by_chunk: dict[int, list[dict]] = defaultdict(list)
            for _i, j, pair in candidates:
                by_chunk[j].append(pair)
            for j, pairs in sorted(by_chunk.items()):
                p = s.prompts[chunks[j][1]]
                listing = "\n".join(pair["question"] for pair in pairs)
                user = render(p["paraphrase_user"], questions=listing, n=len(pairs))
                convs.append([{"role": "system", "content": p["paraphrase_system"]}, {"role": "user", "content": user}])
                jobs.append(("paraphrase", j, pairs))
                budgets.append(2 * self._count_tokens(listing) + 16 * len(pairs) + 32)
        if s.unanswerable > 0:
            first: dict[int, int] = {}
            for i, j, _pair in candidates:
                first[i] = min(j, first.get(i, j))
            for i, j in sorted(first.items()):
                p = s.prompts[chunks[j][1]]
                user = render(p["unanswerable_user"], text=chunks[j][2], n=s.unanswerable, title=results[i].page.title)
                convs.append(
                    [{"role": "system", "content": p["unanswerable_system"]}, {"role": "user", "content": user}]
                )
                jobs.append(("unanswerable", i, j))
                budgets.append(48 * s.unanswerable + 32)
        if not convs:
            return []
        replies = self.completer.complete(convs, min(s.max_tokens, max(budgets)), s.temperature)
        out: list[tuple[int, int, dict]] = []
        for job, reply in zip(jobs, replies, strict=True):
            if isinstance(reply, Exception):
                continue
            if job[0] == "paraphrase":
                _, j, pairs = job
                found = parse_questions(reply)
                if len(found) == len(pairs):  # matched by position: a short or long list cannot be lined up
                    for pair, para in zip(pairs, found, strict=True):
                        para = re.sub(r"\s+", " ", para).strip()
                        if check_paraphrase(pair["question"], para, s.limits):
                            pair["paraphrase"] = para
                continue
            _, i, j = job
            terms = PageTerms(results[i].page.text)
            kept, room = 0, s.unanswerable * (2 if s.judge else 1)  # spares for the judge to reject
            for q in parse_questions(reply):
                if kept >= room:
                    break
                q = re.sub(r"\s+", " ", q).strip()
                why = check_unanswerable(q, terms, s.limits)
                if why is None:
                    with self._dedupe_lock:
                        earlier = self.dedupe.is_duplicate(q)
                    if earlier or seen[i].is_duplicate(q):
                        why = "duplicate question"
                if why:
                    dropped[i][why] += 1
                    continue
                seen[i].add(q)
                out.append((i, j, {"question": q, "answer": refusal(q), "kind": UNANSWERABLE}))
                kept += 1
        return out

    @staticmethod
    def _fail(r: PageResult, reason: str, stage: str, retryable: bool) -> None:
        if r.reason is None:
            r.reason, r.stage, r.retryable = reason, stage, retryable

    def close(self) -> None:
        self.completer.close()


# ---- resumable run ------------------------------------------------------------------------------------------------
@dataclass
class Summary:
    pages: int = 0
    skipped: int = 0
    processed: int = 0
    pairs: int = 0
    failures: int = 0
    tokens_out: int = 0
    seconds: float = 0.0
    bad_lines: list[str] = field(default_factory=list)
    stale: int = 0  # pairs whose page changed or was removed since they were made (kept, marked "stale": true)
    pii: Counter = field(default_factory=Counter)  # personal data masked, by kind (pii.KINDS), over this run's pages
    pii_pages: int = 0  # pages of this run with anything masked
    unanswerable: int = 0  # of ``pairs``: questions the page does not answer, with the refusal answer
    paraphrases: int = 0  # pairs that got a paraphrase (for evaluation)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_out / self.seconds if self.seconds > 0 else 0.0


def _is_stale(o: dict | None, current: dict[str, str]) -> bool:
    """A generated pair whose page is gone from IN_DIR or whose text changed since (its key starts with the page's
    text hash). Pairs without our ``file``/``key`` (imported, hand-written) are never stale."""
    if not o or not isinstance(o.get("file"), str) or "-" not in str(o.get("key") or ""):
        return False
    return o["file"] not in current or str(o["key"]).split("-", 1)[0] != current[o["file"]]


MASKED_DIR = "masked"
"""``qa/masked/<page text hash>.txt``: a page's text as the LLM was sent it, for pages that had personal data masked.
Named by the original text's hash (the first part of a pair's ``key``), so a stale pair still finds the text its
pairs came from after the page changed."""


def sent_text(qa_dir: str | Path, pair: dict) -> str | None:
    """The masked page text the LLM was sent for a generated ``pair`` (see :data:`MASKED_DIR`), or None when its page
    had nothing masked, the pair is not a generated one, or the copy was not kept (generated before it was)."""
    key = str(pair.get("key") or "")
    if not pair.get("pii") or "-" not in key:
        return None
    path = Path(qa_dir) / MASKED_DIR / f"{key.split('-', 1)[0]}.txt"
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


def _masked_page(page: Page, settings: GenSettings, masked: dict[str, dict]) -> Page:
    """The page as the LLM may see it (:mod:`pii`); its hash stays the original text's, so resume keys and the stale
    check follow the site, not the masking. What was masked is noted in ``masked`` by page."""
    from .pii import mask

    result = mask(page.text, page.source, names=settings.pii_names, lang=detect_lang(page.text))
    if not result.counts:
        return page
    masked[page.rel] = dict(result.counts)
    return Page(page.path, page.rel, result.text, page.source, page.hash)


def _read_raw(path: Path) -> list[tuple[str, dict | None]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        out.append((line, obj if isinstance(obj, dict) else None))
    return out


def _local_batch_hint(backend) -> int:
    """Pages per wave for a local backend: its batch size, or for the automatic one 128 on a GPU and 8 on CPU."""
    if getattr(backend, "batch_size", None):
        return backend.batch_size
    import torch

    device = getattr(backend, "device", None) or ("cuda" if torch.cuda.is_available() else "cpu")
    return 128 if str(device).startswith("cuda") else 8


def generate(
    in_dir: str | Path,
    out_dir: str | Path,
    backend,
    settings: GenSettings,
    *,
    concurrency: int = 4,
    retry_failed: bool = False,
    group_size: int | None = None,
    schedule: str = "auto",
    only: list[str] | None = None,
    max_pages: int | None = None,
) -> Summary:
    """Process the pages of ``in_dir`` still missing from ``out_dir`` and append their outcome; see the module doc.

    ``schedule``: "auto" — waves of pages for a local model (batched generation), a sliding window of pages for a
    remote API; "waves" forces waves (``bench/generate_remote_bench.py`` measures one against the other).
    ``only``: page files (relative to ``in_dir``) to consider; ``max_pages``: at most this many of those still to do.

    Each page's pairs are appended as soon as its wave (local) or its own stages (remote) finish, so a stopped run
    keeps every finished page. A local model reports its tokens while it generates (``progress.json``: tokens,
    tokens/s and an ETA from them), because one wave on a CPU can take minutes.
    """
    from .progress import Progress

    in_dir, out_dir = Path(in_dir), Path(out_dir)
    pages = read_pages(in_dir)
    if not pages:
        raise UserError(
            f"No .txt or .md pages in {in_dir}; run the crawl step first or put text files there.",
            zh=f"{in_dir} 里没有 .txt 或 .md 页面；请先运行爬取步骤，或把文本文件放到那里。",
        )
    current = {p.rel: p.hash[:16] for p in pages}  # every page, picked or not: what "stale" is measured against
    pages = select_pages(pages, only)
    out_dir.mkdir(parents=True, exist_ok=True)
    qa_path, fail_path = out_dir / "qa.jsonl", out_dir / "failures.jsonl"
    skey = settings.key()
    keys = {p.rel: f"{p.hash[:16]}-{skey}" for p in pages}
    summary = Summary(pages=len(pages))

    # What is already there: pairs (by key) and failures (by key).
    qa_raw, fail_raw = _read_raw(qa_path), _read_raw(fail_path)
    summary.bad_lines = [f"{qa_path}: unreadable line kept as is" for _, o in qa_raw if o is None]
    have_pairs = {o.get("key") for _, o in qa_raw if o}
    failed = {o.get("key"): o for _, o in fail_raw if o}
    todo: list[Page] = []
    for p in pages:
        k = keys[p.rel]
        if k in have_pairs:
            continue
        f = failed.get(k)
        if f is not None and not (retry_failed or f.get("retryable")):
            continue
        todo.append(p)
    if max_pages is not None:
        todo = todo[: max(0, int(max_pages))]
    summary.skipped = len(pages) - len(todo)
    redo = {p.rel for p in todo}

    # Pairs of a page whose text changed or that was removed (a crawl refresh) stay in qa.jsonl marked
    # "stale": true — the dataset step leaves them out and lists them. Pairs of a page generated again only because
    # the settings changed move to superseded.jsonl (kept). Failure lines of pages that now have pairs or are
    # retried are dropped (each page ends in exactly one file).
    kept_qa, superseded, rewrite = [], [], False
    stale_files: set[str] = set()
    for line, o in qa_raw:
        f = o.get("file") if o else None
        stale = _is_stale(o, current)
        if stale:
            stale_files.add(f)
            summary.stale += 1
        if not stale and f in keys and o.get("key") != keys[f] and (f in redo or keys[f] in failed):
            superseded.append(line)
            rewrite = True
            continue
        if o is not None and bool(o.get("stale")) != stale:
            o = {k: v for k, v in o.items() if k != "stale"} | ({"stale": True} if stale else {})
            line, rewrite = json.dumps(o, ensure_ascii=False), True
        kept_qa.append(line)
    if superseded:
        with open(out_dir / "superseded.jsonl", "a", encoding="utf-8") as fh:
            fh.write("\n".join(superseded) + "\n")
    if rewrite:
        write_text_atomic(qa_path, "".join(ln + "\n" for ln in kept_qa))

    def keep_failure(o: dict | None) -> bool:
        if o is None or o.get("file") not in keys:
            return True  # unreadable, or a page no longer in IN_DIR: not ours to judge
        f = o["file"]
        return f not in redo and o.get("key") == keys[f] and keys[f] not in have_pairs

    kept_fail = [line for line, o in fail_raw if keep_failure(o)]
    if len(kept_fail) != len(fail_raw) or not fail_path.exists():
        write_text_atomic(fail_path, "".join(ln + "\n" for ln in kept_fail))
    qa_path.touch()  # both files exist after any run, even one that wrote no pair yet

    dedupe = NearDuplicateIndex(settings.limits.near_duplicate)
    for _, o in qa_raw:
        if o and o.get("file") not in redo and isinstance(o.get("question"), str) and not _is_stale(o, current):
            dedupe.add(o["question"])  # a stale pair's question may be asked again of its page's new text

    masked: dict[str, dict] = {}  # page -> what was masked in it
    if settings.pii == "mask":
        todo = [_masked_page(p, settings, masked) for p in todo]
        for counts in masked.values():
            summary.pii.update(counts)
        summary.pii_pages = len(masked)
        for p in todo:
            if p.rel in masked:  # what the LLM is sent, kept for review (the dataset page shows it beside a pair)
                write_text_atomic(out_dir / MASKED_DIR / f"{p.hash[:16]}.txt", p.text)

    local = getattr(backend, "name", "") == "local"
    gen = Generator(backend, settings, concurrency=concurrency, dedupe=dedupe)
    model_name = settings.model or getattr(backend, "model", "") or getattr(backend, "model_ref", "") or ""
    start, tokens0 = time.time(), getattr(backend, "tokens_out", 0)
    lock = threading.Lock()
    try:
        with Progress(len(todo), unit="pages", desc="generate") as prog:
            prog.update(0, pages=0, pairs=0, failures=0, tokens=0, tokens_per_s=0.0, skipped=summary.skipped)
            if local:
                _live_tokens(
                    backend, prog, summary, start, tokens0, len(todo) * settings.max_tokens * (1 + settings.clean)
                )
            units = (
                _local_waves(gen, todo, keys, group_size or _local_wave(backend))
                if local or schedule == "waves"
                else _remote_window(gen, todo, keys, max(1, concurrency), group_size or 1)
            )
            for batch in units:
                for r in batch:
                    with lock:
                        if r.pairs:
                            for pair in r.pairs:
                                append_jsonl(
                                    qa_path,
                                    {
                                        "question": pair["question"],
                                        "answer": pair["answer"],
                                        "source": r.page.source,
                                        "file": r.page.rel,
                                        "title": r.page.title,
                                        "chunk": pair.get("chunk", 0),
                                        "grounding": pair.get("grounding"),
                                        "kind": pair.get("kind", ANSWERABLE),
                                        **({"paraphrase": pair["paraphrase"]} if pair.get("paraphrase") else {}),
                                        **({"judge_score": pair["judge_score"]} if "judge_score" in pair else {}),
                                        "backend": settings.backend,
                                        "model": model_name,
                                        "key": r.key,
                                        **({"pii": masked[r.page.rel]} if r.page.rel in masked else {}),
                                    },
                                )
                            summary.pairs += len(r.pairs)
                            summary.unanswerable += sum(p.get("kind") == UNANSWERABLE for p in r.pairs)
                            summary.paraphrases += sum(bool(p.get("paraphrase")) for p in r.pairs)
                        else:
                            record = {
                                "source": r.page.source,
                                "file": r.page.rel,
                                "reason": r.reason,
                                "stage": r.stage,
                                "retryable": r.retryable,
                                "key": r.key,
                                "time": round(time.time(), 1),
                            }
                            if r.reply:
                                record["reply"] = r.reply
                            append_jsonl(fail_path, record)
                            summary.failures += 1
                        summary.processed += 1
                summary.seconds = time.time() - start
                summary.tokens_out = getattr(backend, "tokens_out", 0) - tokens0
                prog.set_eta(None)  # pages have finished: the page rate is the better ETA from here
                prog.update(
                    len(batch),
                    pages=summary.processed,
                    pairs=summary.pairs,
                    failures=summary.failures,
                    tokens=summary.tokens_out,
                    tokens_per_s=round(summary.tokens_per_s, 1),
                )
    finally:
        if local and hasattr(backend, "on_tokens"):
            backend.on_tokens = None
        gen.close()
        summary.seconds = time.time() - start
        summary.tokens_out = getattr(backend, "tokens_out", 0) - tokens0
    return summary


# ---- how long a local run takes -----------------------------------------------------------------------------------
SPEED_FILE = "speed.json"
"""OUT_DIR/speed.json: the tokens/s a local model last measured on this machine (written by local runs only)."""


def _device_kind(backend) -> str:
    model = getattr(backend, "_model", None)
    device = str(getattr(model, "device", None) or getattr(backend, "device", None) or "")
    return "gpu" if device.startswith(("cuda", "mps")) else "cpu"


def record_speed(out_dir: str | Path, model: str, backend, summary: Summary) -> None:
    """Keep the measured tokens/s of a local run, so the next run's time can be estimated before it starts."""
    from .fileio import write_json_atomic

    if summary.tokens_per_s <= 0:
        return
    write_json_atomic(
        Path(out_dir) / SPEED_FILE,
        {
            "model": model or getattr(backend, "model_ref", "") or "",
            "device": _device_kind(backend),
            "tokens_per_s": round(summary.tokens_per_s, 2),
            "tokens": summary.tokens_out,
            "seconds": round(summary.seconds, 1),
            "time": round(time.time(), 1),
        },
    )


def load_speed(out_dir: str | Path, model: str, device: str) -> float | None:
    """The tokens/s measured for ``model`` on a ``device`` ("cpu" | "gpu") here, or None when never measured."""
    from .fileio import read_json

    data = read_json(Path(out_dir) / SPEED_FILE) or {}
    if data.get("model") == model and data.get("device") == device and (data.get("tokens_per_s") or 0) > 0:
        return float(data["tokens_per_s"])
    return None


def measure_speed(model: str, device: str | None = None, batch_size: int | None = None, tokens: int = 24) -> float:
    """Tokens/s of a local model on one batch of real Q&A prompts (the few-shot example as the page), measured here.

    Why measure: a 135M model makes ~10–30 tokens/s on two CPU cores and thousands on a GPU; no table can say which
    machine this is. Prompt processing is included, as in a real run. The model is freed afterwards."""
    from .llm import LocalBackend

    backend = LocalBackend(model, batch_size=batch_size, device=device)
    try:
        prompts = DEFAULT_PROMPTS["en"]
        conv = _qa_conversation(prompts, prompts["example_text"], "North Canteen", 2)
        n = backend.batch_size or (8 if _device_kind(backend) == "cpu" else 32)
        backend.gen_kwargs["min_new_tokens"] = tokens  # a fixed length: early stops would flatter the figure
        start = time.time()
        backend.chat_batch([conv] * n, max_tokens=tokens)
        return backend.tokens_out / max(1e-6, time.time() - start)
    finally:
        backend.close()


def estimate_seconds(pages: int, values: dict, tokens_per_s: float) -> float:
    """An upper-ish time for ``pages`` pages: each asks up to ``max_tokens`` per stage (a small model often uses them
    all), at the measured rate. Re-asks and long pages' extra chunks add to it; early stops take from it."""
    values = GENERATE.merge(values)
    clean = values["clean"] if values.get("clean") is not None else values["backend"] != "local"
    return pages * resolved_max_tokens(values) * (1 + int(clean)) / max(1e-6, tokens_per_s)


def select_pages(pages: list[Page], only: list[str] | None) -> list[Page]:
    """The pages named in ``only`` (files relative to IN_DIR), in folder order; all when ``only`` is empty. A name
    that is not there is one sentence (a typo would otherwise make a silent empty run)."""
    if not only:
        return pages
    wanted = set(only)
    missing = sorted(wanted - {p.rel for p in pages})
    if missing:
        raise UserError(
            f"No page named {', '.join(missing)} in the input folder; pick from its .txt/.md files.",
            zh=f"输入文件夹里没有名为 {', '.join(missing)} 的网页；请从其中的 .txt/.md 文件里选择。",
        )
    return [p for p in pages if p.rel in wanted]


def _local_wave(backend) -> int:
    """Pages per wave of a local model: two batches. On a GPU sorting more prompts by length pads less; on a CPU the
    step engine (``LocalBackend.engine``) gives a finished reply's row to a page of the second batch at once instead
    of letting it wait for its batch's longest reply. More would delay the first written pages (a CPU wave takes
    minutes)."""
    return 2 * _local_batch_hint(backend)


def _live_tokens(backend, prog, summary: Summary, start: float, tokens0: int, budget: int) -> None:
    """Report a local model's tokens while it generates: the ``tokens``/``tokens_per_s`` counters and, until the
    first pages finish, an ETA from the token budget (pages × max_tokens × stages: small models often use it all)."""
    live = {"tokens": 0}

    def on_tokens(n: int) -> None:
        live["tokens"] += n
        tokens = getattr(backend, "tokens_out", 0) - tokens0 + live["tokens"]
        elapsed = max(1e-6, time.time() - start)
        rate = tokens / elapsed
        if summary.processed == 0 and rate > 0:
            prog.set_eta(max(0.0, budget - tokens) / rate)
        prog.update(0, tokens=tokens, tokens_per_s=round(rate, 1))

    def on_batch_end() -> None:
        live["tokens"] = 0  # the batch's tokens are in backend.tokens_out now

    backend.on_tokens = on_tokens
    backend.on_batch_end = on_batch_end


def _local_waves(gen: Generator, todo: list[Page], keys: dict, group: int):
    """Local model: pages in waves of ``group``, so each stage of a wave is one batched ``generate`` call."""
    for g0 in range(0, len(todo), group):
        yield gen.run_group([(p, keys[p.rel]) for p in todo[g0 : g0 + group]])


def _remote_window(gen: Generator, todo: list[Page], keys: dict, concurrency: int, group: int = 1):
    """Remote API: each page runs its clean → Q&A → judge stages on its own, ``concurrency`` pages at a time, and a
    new page starts as soon as one finishes — a slow reply holds back only its own page, not a whole wave. Results
    are yielded (and so written) as pages finish, so a stopped run loses only the pages still in flight; a fatal
    error (bad key) stops everything at once."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor
    from concurrent.futures import wait as wait_futures

    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="umtcds-page")
    pending = iter(range(0, len(todo), group))
    in_flight: set = set()

    def submit_next() -> None:
        g0 = next(pending, None)
        if g0 is not None:
            in_flight.add(pool.submit(gen.run_group, [(p, keys[p.rel]) for p in todo[g0 : g0 + group]]))

    try:
        for _ in range(concurrency):
            submit_next()
        while in_flight:
            done, _ = wait_futures(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                in_flight.discard(future)
                results = future.result()
                submit_next()
                yield results
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def settings_from_args(args: argparse.Namespace) -> GenSettings:
    """The output-changing settings of a command line (``--config`` file and flags merged and checked)."""
    return GenSettings.from_settings(GENERATE.from_args(args))


# ---- CLI ----------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """IN_DIR by hand (a positional; it may come from ``--config``), every flag (and ``--config``) from GENERATE."""
    parser.add_argument(
        "in_dir", metavar="IN_DIR", nargs="?", help="folder of .txt/.md pages (the crawl output; or in --config)"
    )
    GENERATE.add_arguments(parser)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from .llm import make_backend

    values = GENERATE.from_args(args)
    for name, flag in (("in_dir", "IN_DIR"), ("out_dir", "--out OUT_DIR")):
        if not values.get(name):
            raise UserError(
                f"No {flag} given; name it on the command line (or {name} in the settings file).",
                zh=f"没有给出 {flag}；请在命令行上指定（或在设置文件中写 {name}）。",
            )
    settings = GenSettings.from_settings(values)
    in_dir, out_dir = values["in_dir"], Path(values["out_dir"])
    pages = read_pages(in_dir)  # fail early on a bad IN_DIR, before loading a model
    if not pages:
        raise UserError(
            f"No .txt or .md pages in {in_dir}; run the crawl step first or put text files there.",
            zh=f"{in_dir} 里没有 .txt 或 .md 页面；请先运行爬取步骤，或把文本文件放到那里。",
        )
    select_pages(pages, values.get("pages"))  # a wrong page name, before loading a model
    out_dir.mkdir(parents=True, exist_ok=True)
    prompt_out = out_dir / PROMPTS_FILE
    prompt_file = values.get("prompt_file")
    if not prompt_file or Path(prompt_file).resolve() != prompt_out.resolve():
        write_text_atomic(prompt_out, dump_prompts(settings.prompts))
    backend = make_backend(
        values["backend"],
        values.get("model"),
        values.get("base_url"),
        values.get("api_key_env"),
        concurrency=values["concurrency"],
        batch_size=values.get("batch_size"),
        device=values.get("device"),
        timeout=values["timeout"],
    )
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # dashboard Stop: end like Ctrl-C, files kept
    summary = Summary()
    try:
        summary = generate(
            in_dir,
            out_dir,
            backend,
            settings,
            concurrency=values["concurrency"],
            retry_failed=values["retry_failed"],
            only=values.get("pages"),
            max_pages=values.get("max_pages"),
        )
    finally:
        if values["backend"] == "local" and summary.tokens_out > 0:
            record_speed(out_dir, settings.model or values.get("model") or "", backend, summary)
        backend.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    for line in summary.bad_lines[:5]:
        print(f"Warning: {line}", file=sys.stderr)
    print(
        f"{summary.pairs} pairs from {summary.processed - summary.failures} pages written to {out_dir / 'qa.jsonl'}; "
        f"{summary.failures} pages failed (see failures.jsonl); {summary.skipped} pages were already done; "
        f"{summary.tokens_out} tokens generated at {summary.tokens_per_s:.1f} tokens/s."
    )
    if summary.unanswerable or summary.paraphrases:
        print(
            f"Of these, {summary.unanswerable} are unanswerable questions (answer: the refusal sentence) and "
            f"{summary.paraphrases} answerable pairs have a paraphrase for evaluation."
        )
    if summary.pii_pages:
        from .pii import describe_counts

        print(
            f"Personal data masked before the LLM saw it: {describe_counts(summary.pii)} on {summary.pii_pages} pages."
        )
    if summary.stale:
        print(
            f"{summary.stale} pairs of changed or removed pages are marked stale in qa.jsonl "
            "(kept; the dataset step leaves them out)."
        )
    return 0


def load_results(out_dir: str | Path) -> tuple[list[dict], list[dict], list[BadLine]]:
    """``(pairs, failures, unreadable lines)`` of a generate output folder, for the dashboard."""
    errors: list[BadLine] = []
    out_dir = Path(out_dir)
    return (
        list(iter_jsonl(out_dir / "qa.jsonl", errors)),
        list(iter_jsonl(out_dir / "failures.jsonl", errors)),
        errors,
    )


__all__ = [
    "DEFAULT_PROMPTS",
    "GenSettings",
    "Generator",
    "NearDuplicateIndex",
    "Grounding",
    "chunk_text",
    "generate",
    "parse_pairs",
    "parse_score",
    "read_pages",
    "load_prompts",
    "dump_prompts",
    "load_results",
]
