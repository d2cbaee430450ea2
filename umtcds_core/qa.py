"""``umtcds generate`` — clean crawled pages and turn them into question-answer pairs with any LLM.

Usage::

    umtcds generate IN_DIR --out OUT_DIR --backend {local,zhipuai,openai} [--model NAME|PATH] [--base-url URL]
                    [--api-key-env VAR] [--pairs-per-page N] [--concurrency K] [--clean/--no-clean] [--lang auto|zh|en]
                    [--prompt-file prompts.yaml] [--judge] [--retry-failed]

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
* **Resumable**: each page is keyed by its content hash and the generation settings; a re-run skips pages already in
  ``qa.jsonl`` (or failed for good) and retries pages that failed on the LLM (``--retry-failed``: all failures).
* **Throughput**: with a remote API, ``--concurrency`` pages are in flight at a time, each through its own stages,
  and the next page starts as soon as one finishes (a slow reply holds back only its page); local generation is
  batched in waves of pages (``--batch-size``) and the model is freed when the run ends.

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
from .errors import UserError
from .fileio import BadLine, append_jsonl, iter_jsonl, write_text_atomic
from .text import compact, han_ratio, normalize

PAGE_SUFFIXES = (".txt", ".md", ".markdown")
PROMPTS_FILE = "prompts.yaml"

# ---- prompts ------------------------------------------------------------------------------------------------------
# Placeholders: {text} (the page chunk), {n} (pairs wanted), {title}, and for the judge {question}/{answer}.
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
    },
}
PROMPT_KEYS = tuple(DEFAULT_PROMPTS["en"])


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
        for key in ("clean_user", "qa_user", "judge_user"):
            if "{text}" not in t[key]:
                raise UserError(
                    f"The prompt '{key}' ({lang}) in {where} lacks the {{text}} placeholder; add it back.",
                    zh=f"{where} 中的提示词 '{key}'（{lang}）缺少 {{text}} 占位符；请把它加回去。",
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
    head = "# Prompt templates for `umtcds generate` (edit, then pass with --prompt-file). Placeholders: {text} {n} {title} {question} {answer}\n"
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
    pages = []
    for path in sorted(in_dir.rglob("*")):
        rel = path.relative_to(in_dir)
        if not path.is_file() or path.suffix.lower() not in PAGE_SUFFIXES or any(p.startswith(".") for p in rel.parts):
            continue
        text = path.read_bytes().decode("utf-8", errors="replace").replace("\r\n", "\n").lstrip("\ufeff")
        key = str(rel)
        pages.append(
            Page(
                path, key, text, urls.get(key) or urls.get(path.name) or key, hashlib.sha256(text.encode()).hexdigest()
            )
        )
    return pages


# ---- settings -----------------------------------------------------------------------------------------------------
@dataclass
class GenSettings:
    """Everything that changes the output; its hash is part of each page's resume key."""

    backend: str = "local"
    model: str = ""
    lang: str = "auto"  # auto | zh | en
    clean: bool = False
    pairs_per_page: int = 5
    max_tokens: int = 1024
    chunk_tokens: int = 1500
    temperature: float = 0.0
    max_parse_retries: int = 2
    judge: bool = False
    judge_threshold: int = 3
    limits: CurationLimits = field(default_factory=CurationLimits)
    prompts: dict = field(default_factory=lambda: load_prompts(None))

    def __post_init__(self):
        if self.pairs_per_page < 1:
            raise UserError("--pairs-per-page must be at least 1.", zh="--pairs-per-page 至少为 1。")
        if self.lang not in ("auto", "zh", "en"):
            raise UserError(
                f"--lang must be auto, zh or en, not '{self.lang}'.",
                zh=f"--lang 必须是 auto、zh 或 en，不能是“{self.lang}”。",
            )
        if not 1 <= self.judge_threshold <= 5:
            raise UserError("--judge-threshold must be between 1 and 5.", zh="--judge-threshold 必须在 1 到 5 之间。")
        if self.max_tokens < 16:
            raise UserError("--max-tokens must be at least 16.", zh="--max-tokens 至少为 16。")

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:12]


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

    def complete(self, convs: list[list[dict]], max_tokens: int, temperature: float) -> list[str | Exception]:
        from .llm import FATAL_ERRORS

        if not convs:
            return []
        if self.local:
            try:
                return list(self.backend.chat_batch(convs, max_tokens=max_tokens, temperature=temperature))
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
            replies = self.completer.complete(convs, s.max_tokens, temperature)
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
        # 5. optional judge
        if s.judge and candidates:
            convs = []
            for _i, j, pair in candidates:
                p = s.prompts[chunks[j][1]]
                user = render(p["judge_user"], text=chunks[j][2], question=pair["question"], answer=pair["answer"])
                convs.append([{"role": "system", "content": p["judge_system"]}, {"role": "user", "content": user}])
            replies = self.completer.complete(convs, 16, 0.0)
            kept = []
            for (i, j, pair), reply in zip(candidates, replies, strict=True):
                score = None if isinstance(reply, Exception) else parse_score(reply)
                pair["judge_score"] = score
                if score is not None and score < s.judge_threshold:
                    dropped[i][f"judge score below {s.judge_threshold}"] += 1
                    continue
                kept.append((i, j, pair))
            candidates = kept
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

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_out / self.seconds if self.seconds > 0 else 0.0


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
) -> Summary:
    """Process the pages of ``in_dir`` still missing from ``out_dir`` and append their outcome; see the module doc.

    ``schedule``: "auto" — waves of pages for a local model (batched generation), a sliding window of pages for a
    remote API; "waves" forces waves (``bench/generate_remote_bench.py`` measures one against the other).
    """
    from .progress import Progress

    in_dir, out_dir = Path(in_dir), Path(out_dir)
    pages = read_pages(in_dir)
    if not pages:
        raise UserError(
            f"No .txt or .md pages in {in_dir}; run the crawl step first or put text files there.",
            zh=f"{in_dir} 里没有 .txt 或 .md 页面；请先运行爬取步骤，或把文本文件放到那里。",
        )
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
    summary.skipped = len(pages) - len(todo)
    redo = {p.rel for p in todo}

    # Pairs of a page that is generated again (its text or the settings changed) move to superseded.jsonl (kept);
    # failure lines of pages that now have pairs or are retried are dropped (each page ends in exactly one file).
    kept_qa, superseded = [], []
    for line, o in qa_raw:
        f = o.get("file") if o else None
        if f in keys and o.get("key") != keys[f] and (f in redo or keys[f] in failed):
            superseded.append(line)
        else:
            kept_qa.append(line)
    if superseded:
        with open(out_dir / "superseded.jsonl", "a", encoding="utf-8") as fh:
            fh.write("\n".join(superseded) + "\n")
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
        if o and o.get("file") not in redo and isinstance(o.get("question"), str):
            dedupe.add(o["question"])

    local = getattr(backend, "name", "") == "local"
    gen = Generator(backend, settings, concurrency=concurrency, dedupe=dedupe)
    model_name = settings.model or getattr(backend, "model", "") or getattr(backend, "model_ref", "") or ""
    start, tokens0 = time.time(), getattr(backend, "tokens_out", 0)
    lock = threading.Lock()
    try:
        with Progress(len(todo), unit="pages", desc="generate") as prog:
            prog.update(0, pages=0, pairs=0, failures=0, tokens_per_s=0.0, skipped=summary.skipped)
            units = (
                _local_waves(
                    gen, todo, keys, group_size or (2 * _local_batch_hint(backend) if local else 2 * concurrency)
                )
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
                                        **({"judge_score": pair["judge_score"]} if "judge_score" in pair else {}),
                                        "backend": settings.backend,
                                        "model": model_name,
                                        "key": r.key,
                                    },
                                )
                            summary.pairs += len(r.pairs)
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
                prog.update(
                    len(batch),
                    pages=summary.processed,
                    pairs=summary.pairs,
                    failures=summary.failures,
                    tokens_per_s=round(summary.tokens_per_s, 1),
                )
    finally:
        gen.close()
        summary.seconds = time.time() - start
        summary.tokens_out = getattr(backend, "tokens_out", 0) - tokens0
    return summary


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
    clean = args.clean if args.clean is not None else args.backend != "local"
    return GenSettings(
        backend=args.backend,
        model=args.model or "",
        lang=args.lang,
        clean=clean,
        pairs_per_page=args.pairs_per_page,
        max_tokens=args.max_tokens,
        chunk_tokens=args.chunk_tokens,
        temperature=args.temperature,
        max_parse_retries=args.max_parse_retries,
        judge=args.judge,
        judge_threshold=args.judge_threshold,
        limits=CurationLimits(min_grounding=args.min_grounding),
        prompts=load_prompts(args.prompt_file),
    )


# ---- CLI ----------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .llm import BACKENDS

    parser.add_argument("in_dir", metavar="IN_DIR", help="folder of .txt/.md pages (the crawl output)")
    parser.add_argument("--out", required=True, metavar="OUT_DIR", help="writes qa.jsonl and failures.jsonl here")
    parser.add_argument("--backend", choices=BACKENDS, default="local", help="which LLM (default: local)")
    parser.add_argument("--model", help="model name (remote) or NAME|PATH (local; default smollm2-135m)")
    parser.add_argument("--base-url", help="API endpoint (zhipuai: overrides the default; openai: the server URL)")
    parser.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="environment variable holding the key (default ZHIPUAI_API_KEY / OPENAI_API_KEY)",
    )
    parser.add_argument("--pairs-per-page", type=int, default=5, metavar="N", help="pairs asked per page chunk (5)")
    parser.add_argument("--concurrency", type=int, default=4, metavar="K", help="parallel requests, remote (4)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="prompts per generate() call, local (default auto: 8 on CPU, as many as GPU memory allows up to 256)",
    )
    parser.add_argument(
        "--clean",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="clean each page first (default: on for remote)",
    )
    parser.add_argument("--lang", choices=("auto", "zh", "en"), default="auto", help="prompt language (auto: per page)")
    parser.add_argument("--prompt-file", help=f"YAML with edited templates (see OUT_DIR/{PROMPTS_FILE})")
    parser.add_argument("--judge", action="store_true", help="rate each pair 1-5 with the same LLM and filter")
    parser.add_argument("--judge-threshold", type=int, default=3, help="lowest judge score kept (3)")
    parser.add_argument("--min-grounding", type=float, default=0.5, help="share of an answer found in its page (0.5)")
    parser.add_argument("--max-tokens", type=int, default=1024, help="reply length cap per request (1024)")
    parser.add_argument("--chunk-tokens", type=int, default=1500, help="largest page chunk per request (1500)")
    parser.add_argument("--temperature", type=float, default=0.0, help="first-try temperature; re-asks use >=0.7")
    parser.add_argument("--max-parse-retries", type=int, default=2, help="re-asks on an unparseable reply (2)")
    parser.add_argument("--retry-failed", action="store_true", help="also retry pages that failed for good before")
    parser.add_argument("--device", help="local: cpu, cuda, mps (default: best)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per remote request (120)")


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from .llm import make_backend

    if args.concurrency < 1 or (args.batch_size is not None and args.batch_size < 1):
        raise UserError(
            "--concurrency and --batch-size must be at least 1.", zh="--concurrency 和 --batch-size 都至少为 1。"
        )
    settings = settings_from_args(args)
    out_dir = Path(args.out)
    pages = read_pages(args.in_dir)  # fail early on a bad IN_DIR, before loading a model
    if not pages:
        raise UserError(
            f"No .txt or .md pages in {args.in_dir}; run the crawl step first or put text files there.",
            zh=f"{args.in_dir} 里没有 .txt 或 .md 页面；请先运行爬取步骤，或把文本文件放到那里。",
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    prompt_out = out_dir / PROMPTS_FILE
    if not args.prompt_file or Path(args.prompt_file).resolve() != prompt_out.resolve():
        write_text_atomic(prompt_out, dump_prompts(settings.prompts))
    backend = make_backend(
        args.backend,
        args.model,
        args.base_url,
        args.api_key_env,
        concurrency=args.concurrency,
        batch_size=args.batch_size,
        device=args.device,
        timeout=args.timeout,
    )
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # dashboard Stop: end like Ctrl-C, files kept
    try:
        summary = generate(
            args.in_dir, out_dir, backend, settings, concurrency=args.concurrency, retry_failed=args.retry_failed
        )
    finally:
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
