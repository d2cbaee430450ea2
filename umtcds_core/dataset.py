"""Step 3 — Q&A pairs → validated, deduplicated, leak-free ``train/dev/test.jsonl``.

Usage::

    umtcds dataset IN --out DATA_DIR [--split 8:1:1] [--seed 42] [--format glm4|sharegpt|alpaca]
                      [--system-prompt TEXT] [--dedup-threshold 0.5]
                      [--context none|retrieved --index INDEX_DIR [--context-k 5] [--oracle-share 0.8]
                       [--context-copies 1]]
    umtcds dataset --config settings.yaml [IN] [any flag above, which wins over the file]

Every setting is declared once in :class:`DatasetSettings` (type, default, bounds, labels, help, YAML comment, flag);
the flags, a settings YAML and the Dataset page's widgets come from it.

IN is a ``qa.jsonl`` (step 2's output), a folder of them, or the user's own JSONL / JSON / CSV of pairs. A record may
spell its pair as ``question``/``answer``, ``instruction`` (+ ``input``)/``output``, ``prompt``/``response``,
``messages`` (role/content), ShareGPT ``conversations`` (from/value) or CSV headers ``问题``/``答案`` (UTF-8 or GBK) —
so our own output of every format reads back.

Why each step:

* **Validation** names the file and line of every broken record (bad JSON, no recognisable fields, empty text) and
  whether it was skipped; one bad line never costs the valid ones.
* **Grouping** puts exact and near-duplicate questions (character n-gram Jaccard; characters + bigrams for Chinese,
  trigrams for other scripts, so it needs no word segmenter) into one group, and a group lands in one split — otherwise the test
  split measures memorisation of a paraphrase seen in training. Step 2's evaluation-only ``paraphrase`` of a question
  groups like a question too, and an unanswerable question (``"kind": "unanswerable"``, answered with the refusal)
  joins its page's closest answerable question (:func:`sibling_groups`). Paraphrases are never training examples;
  unanswerable pairs train the refusal; the report counts both per split.
* **Exact counts**: the target size of each split is computed with the largest-remainder rule (floor of
  ``n * ratio``, then the leftover pairs go one each to the splits with the largest fractional parts, ties to the
  earlier split: train, dev, test); every split with a non-zero ratio gets at least one pair when there are at least
  three pairs. 101 pairs at 8:1:1 → 81/10/10. Groups are placed first (seeded, weighted by free room), single pairs
  fill the rest, so the targets are met exactly unless one group is larger than the room left (then the report says so).
* **Formats**: ``glm4`` is what the GLM-4 fine-tuning demo and ``umtcds train`` read (``{"messages": [...]}`` with an
  optional leading ``system``); ``sharegpt`` and ``alpaca`` also get a LLaMA-Factory ``dataset_info.json``.
* **Context** (``--context retrieved``, retrieval-augmented fine-tuning): each record's user turn is the grounded
  prompt (:mod:`umtcds_core.grounding`, the one chat, serve and evaluate use) over the top ``--context-k`` chunks of
  ``--index`` for its question. In every split a seeded ``--oracle-share`` of the answerable records is sure to show
  its source chunk and its target ends with that page's citation ``[n]``; the rest show only other pages and are
  answered with the refusal sentence — so the tuned model learns both to cite and to say "the website does not say".
  ``--context-copies N`` (N ≥ 2) gives each answerable training question N records and applies the share *within*
  them, so the same question is seen with its source (answered) and without it (refused): what decides is the
  sources, not the question. Dev and test keep one record per question.
  Test records carry a ``meta`` object (bare question, answer, source page, kind, paraphrase, context shown) that
  ``umtcds evaluate`` reads; ``umtcds train`` reads the records as they are.
* Every file is written atomically, and ``DATA_DIR/split_report.json`` records counts, groups, warnings and problems.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import random
import re
import unicodedata
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import schema as S
from .errors import UserError
from .fileio import BadLine, iter_jsonl, write_json_atomic, write_jsonl_atomic
from .text import CJK_RE, normalize

setting = S.setting
optional_text = S.optional_text

FORMATS = ("glm4", "sharegpt", "alpaca")
CONTEXTS = ("none", "retrieved")
SPLITS = ("train", "dev", "test")
TINY = 10
FEW = 50
"""Fewer pairs than this: a tuned model memorises them (the Config page says the same, config.advice)."""
FEW_TEST = 5
"""A test split smaller than this gives scores that swing with a single answer."""
INPUT_SUFFIXES = (".jsonl", ".json", ".csv")
# Files in a workspace's qa/ folder that are not pairs (step 2 writes them next to qa.jsonl).
IGNORED_NAMES = {"failures.jsonl", "progress.json", "split_report.json", "dataset_info.json", "state.json"}
EDITED_NAME = "qa_edited.jsonl"
SCORE_KEYS = ("score", "judge_score", "rating")
DEFAULT_SYSTEM_PROMPT = "你是一个校园问答助手，请根据学校官网的信息准确、简洁地回答问题。"

ROLE_ALIASES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "system": "system",
}


class DatasetError(UserError, ValueError):
    """A dataset problem phrased for the user."""


# ---- settings: each declared once (schema.py); the CLI flags, a --config YAML and the Dataset page read them ------
def _split_ok(text) -> bool:
    return split_ratios(text) is not None


def _retrieved(values: dict) -> bool:
    """The context options matter (and are shown) only when training with retrieved context."""
    return values.get("context") == "retrieved"


@dataclass
class DatasetSettings:
    """What ``umtcds dataset`` runs with: flags, a ``--config`` YAML, or both (flags win); the page passes these too."""

    input: str | None = optional_text(
        ("输入", "Input"),
        "qa.jsonl, a folder of them, or your own JSONL/JSON/CSV of pairs (the IN argument)",
        flag="",
        widget="hidden",
        example="qa/qa.jsonl",
    )
    out: str | None = optional_text(
        ("输出文件夹", "Output folder"),
        "folder for train/dev/test.jsonl and split_report.json",
        flag="--out",
        widget="hidden",
        example="dataset",
    )
    split: str = setting(
        "8:1:1",
        ("划分比例（训练:验证:测试）", "Split (train:dev:test)"),
        "train:dev:test ratios (8:1:1, 0.8,0.1,0.1 or 80/10/10); near-duplicate questions stay in one split",
        valid=_split_ok,
        range_msg=(
            "'{value}' is not three non-negative numbers with train > 0; write it like 8:1:1 or 0.8,0.1,0.1",
            "“{value}”不是三个非负数（训练集须大于 0）；请写成 8:1:1 或 0.8,0.1,0.1",
        ),
    )
    seed: int = setting(
        42,
        ("随机种子", "Seed"),
        "random seed of the split; same seed + same pairs = same split",
        help=("相同的种子和问答对得到相同的划分。", "The same seed and pairs give the same split."),
        min=0,
        range_msg=("must be 0 or more (42 is the usual)", "必须大于或等于 0（常用 42）"),
    )
    format: str = setting(
        "glm4",
        ("格式", "Format"),
        "glm4: what umtcds train and the GLM-4 demo read; sharegpt / alpaca: also a LLaMA-Factory dataset_info.json",
        help=(
            "glm4：GLM-4 微调示例与 `umtcds train` 使用的 `messages` 格式；sharegpt / alpaca：同时写出 LLaMA-Factory 的 "
            "dataset_info.json。",
            "glm4: the messages format the GLM-4 demo and umtcds train read; sharegpt / alpaca also write "
            "LLaMA-Factory's dataset_info.json.",
        ),
        choices=FORMATS,
    )
    dedup_threshold: float = setting(
        0.5,
        ("近似重复阈值", "Near-duplicate threshold"),
        "question similarity (character n-gram Jaccard) from which pairs are grouped; lower: bigger groups",
        help=(
            "问题相似度达到该值即视为近似重复、放进同一集合；越低分组越大。",
            "Questions at least this similar are grouped into one split; lower: bigger groups.",
        ),
        min=0,
        min_open=True,
        max=1,
        typical=(0.3, 0.9),
        step=0.05,
        range_msg=("{value} must be in (0, 1]; 0.5 is a good start", "{value} 必须在 (0, 1] 之内；可以先试 0.5"),
    )
    system_prompt: str | None = optional_text(
        ("系统提示（放在每条样本最前面；留空 = 不加）", "System prompt (first in every sample; empty = none)"),
        "system message put first in every sample (a pair's own wins); null = none",
        widget="textarea",
        example=f'"{DEFAULT_SYSTEM_PROMPT}"',
    )
    include_stale: bool = setting(
        False,
        ("保留过期的问答对", "Keep stale pairs"),
        'keep pairs marked "stale" (their page changed or was removed since); false: leave them out and list them',
        help=(
            "网站刷新后，内容已修改或已删除的网页的问答对会被标为过期；默认不放进数据集。",
            "After a site refresh, pairs of changed or removed pages are marked stale; by default they stay out.",
        ),
    )
    context: str = setting(
        "none",
        ("训练时附带网站资料", "Context in training"),
        "none: question alone (closed book); retrieved: the grounded prompt over the top-k chunks of --index, "
        "the answer cited [n] (or refused when only unrelated chunks are shown)",
        help=(
            "附带检索资料：每条样本的问题前附上从索引检索到的网站资料（与“根据网站回答”的聊天同一格式），答案末尾标出来源 "
            "[n]；一部分样本只给无关资料，答案是拒答句，模型由此学会“网站上没有提到”。",
            "retrieved: each sample shows the chunks retrieved for its question (the same prompt grounded chat uses) "
            "and its answer cites the source [n]; some samples show only unrelated chunks and teach the refusal.",
        ),
        choices=CONTEXTS,
        choice_labels={
            "none": ("不附带（闭卷）", "none (closed book)"),
            "retrieved": ("附带检索到的资料", "retrieved"),
        },
        widget="radio",
    )
    index: str | None = optional_text(
        ("索引文件夹", "Index folder"),
        "the index built by `umtcds index` (needed with context: retrieved), e.g. index",
        example="index",
        show=_retrieved,
    )
    context_k: int = setting(
        5,
        ("每个问题的资料段数", "Chunks per question"),
        "with context: retrieved, how many chunks each prompt shows; more: longer prompts (raise max_input_length)",
        min=1,
        max=20,
        typical=(2, 8),
        range_msg=("must be between 1 and 20 (5 is a good start)", "必须在 1 到 20 之间（可以先试 5）"),
        show=_retrieved,
    )
    oracle_share: float = setting(
        0.8,
        ("含答案资料的样本比例", "Share with the source chunk"),
        "with context: retrieved, the share of answerable samples whose prompt is sure to hold the source chunk; the "
        "rest show only other chunks and are answered with the refusal sentence",
        min=0,
        max=1,
        typical=(0.5, 0.95),
        step=0.05,
        range_msg=("{value} must be between 0 and 1 (0.8 is the usual)", "{value} 必须在 0 到 1 之间（常用 0.8）"),
        show=_retrieved,
    )
    context_copies: int = setting(
        1,
        ("每个问题的训练样本数", "Training records per question"),
        "with context: retrieved, how many training records each answerable question gets; from 2 the share with "
        "the source is applied within each question's records, so the same question is answered with its source and "
        "refused without it (dev and test keep one record per question)",
        help=(
            "设为 2 或更多时，同一个问题在训练集里出现多次：有的附带含答案的资料（回答并标出来源），有的只附带无关资料（拒答）。"
            "模型只能靠读资料来判断该回答还是拒答。",
            "From 2, each training question appears several times: some records show its source (answered and "
            "cited), others only unrelated chunks (refused), so only the sources tell the model which to do.",
        ),
        min=1,
        max=10,
        typical=(1, 4),
        range_msg=("must be between 1 and 10 (1: one record per question)", "必须在 1 到 10 之间（1 = 每个问题一条）"),
        show=_retrieved,
    )


def _context_needs_index(values: dict) -> list[S.Pair]:
    if values.get("context") == "retrieved" and not values.get("index"):
        return [
            (
                "index: context retrieved needs the index; build it with `umtcds index PAGES_DIR --out index` and "
                "give --index index",
                "index：context 为 retrieved 时需要索引；请先用 `umtcds index PAGES_DIR --out index` 建立索引并用 "
                "--index index 指定",
            )
        ]
    return []


DATASET = S.from_dataclass(
    DatasetSettings,
    "dataset",
    rules=(_context_needs_index,),
    title="UMTCDS dataset settings — run with `umtcds dataset --config`",
)
"""The dataset step's schema: the CLI flags, the settings YAML and the Dataset page's widgets come from it."""
DEFAULT_SPLIT = DATASET["split"].default
DEFAULT_THRESHOLD = DATASET["dedup_threshold"].default


def check_setting(name: str, value) -> None:
    """Raise the field's own sentence (the one the CLI and the page show) when ``value`` breaks its declaration — for
    callers that come straight to :func:`build_dataset` without a validated settings dict."""
    problems = DATASET.field_problems(DATASET[name], value)
    if problems:
        en, zh = problems[0]
        raise DatasetError(f"{en}.", zh=f"{zh}。")


# ---- records ----------------------------------------------------------------------------------------------------
@dataclass
class Pair:
    """One question-answer pair (plus earlier turns, if it came from a multi-turn conversation)."""

    question: str
    answer: str
    source: str = ""
    score: float | None = None
    system: str | None = None
    history: list[list[str]] = field(default_factory=list)
    """Earlier ``[question, answer]`` turns of the same conversation (empty for plain pairs)."""
    origin: str = ""
    """``file:line`` it was read from (for messages and the report)."""
    extra: dict = field(default_factory=dict)
    """Other fields of the input record (url, title, …), kept when pairs are saved back."""

    @property
    def id(self) -> str:
        return hashlib.sha1(f"{self.question}\x00{self.answer}".encode()).hexdigest()[:12]

    def to_qa_record(self) -> dict:
        """The step-2 ``qa.jsonl`` shape (what the editor saves)."""
        rec = {"question": self.question, "answer": self.answer, "source": self.source}
        if self.score is not None:
            rec["score"] = self.score
        if self.system:
            rec["system"] = self.system
        if self.history:
            rec["history"] = self.history
        for k, v in self.extra.items():
            rec.setdefault(k, v)
        return rec


@dataclass
class Problem:
    """A broken or doubtful input record: where, why, and whether it was left out."""

    path: str
    line: int
    reason: str
    skipped: bool = True

    def __str__(self) -> str:
        what = "skipped" if self.skipped else "kept"
        return f"{self.path}:{self.line}: {self.reason} ({what})"


@dataclass
class LoadResult:
    pairs: list[Pair]
    problems: list[Problem]
    files: list[str]


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return value.strip()
    return None


def _first(rec: dict, keys: tuple[str, ...]):
    for k in keys:
        if k in rec:
            return k, rec[k]
    return None, None


def _score(rec: dict) -> float | None:
    for k in SCORE_KEYS:
        v = rec.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        if isinstance(v, str):
            try:
                return float(v)
            except ValueError:
                continue
    return None


def _from_turns(turns: list, role_key: str, content_key: str) -> tuple[str | None, list[list[str]], str | None]:
    """(system, [[q, a], …], error) from a list of role/content dicts."""
    system = None
    pairs: list[list[str]] = []
    pending: str | None = None
    for i, msg in enumerate(turns):
        if not isinstance(msg, dict):
            return None, [], f"message {i + 1} is not an object"
        role = ROLE_ALIASES.get(str(msg.get(role_key, "")).lower())
        content = _text(msg.get(content_key))
        if role is None:
            return None, [], f"message {i + 1} has an unknown role {msg.get(role_key)!r}"
        if content is None:
            return None, [], f"message {i + 1} has no text '{content_key}'"
        if role == "system":
            if i != 0:
                return None, [], "a system message may only come first"
            system = content or None
        elif role == "user":
            if pending is not None:
                pending = f"{pending}\n{content}"  # two user turns in a row: one question
            else:
                pending = content
        else:
            if pending is None:
                return None, [], f"message {i + 1} is an assistant turn without a question before it"
            pairs.append([pending, content])
            pending = None
    if not pairs:
        return None, [], "no user→assistant turn"
    return system, pairs, ("trailing user message without an answer ignored" if pending else None)


QUESTION_KEYS = ("question", "instruction", "prompt", "query", "问题", "问")
ANSWER_KEYS = ("answer", "output", "response", "答案", "回答", "答")
KNOWN_KEYS = {
    *QUESTION_KEYS,
    *ANSWER_KEYS,
    "来源",
    "input",
    "messages",
    "conversations",
    "source",
    "system",
    "history",
    *SCORE_KEYS,
}


def parse_record(rec: dict, origin: str) -> tuple[Pair | None, str | None]:
    """One input record → ``(pair, None)``, ``(pair, note)`` (kept with a note) or ``(None, reason)``."""
    note = None
    history: list[list[str]] = []
    system = _text(rec.get("system")) or None
    if isinstance(rec.get("messages"), list) or isinstance(rec.get("conversations"), list):
        key = "messages" if isinstance(rec.get("messages"), list) else "conversations"
        turns = rec[key]
        role_key, content_key = ("role", "content")
        if turns and isinstance(turns[0], dict) and "from" in turns[0]:
            role_key, content_key = ("from", "value")
        msg_system, qa, err = _from_turns(turns, role_key, content_key)
        if not qa:
            return None, f"'{key}': {err}"
        note = err
        system = msg_system or system
        history = qa[:-1]
        question, answer = qa[-1]
    else:
        qkey, qval = _first(rec, QUESTION_KEYS)
        akey, aval = _first(rec, ANSWER_KEYS)
        if qkey is None and akey is None:
            return None, (
                "no question/answer fields (expected question+answer, instruction+output, prompt+response or messages)"
            )
        if qkey is None:
            return None, "missing field 'question'"
        if akey is None:
            return None, "missing field 'answer'"
        question, answer = _text(qval), _text(aval)
        if question is None:
            return None, f"field '{qkey}' is not text"
        if answer is None:
            return None, f"field '{akey}' is not text"
        extra_input = _text(rec.get("input")) if qkey == "instruction" else None
        if extra_input:
            question = f"{question}\n{extra_input}"
        raw_hist = rec.get("history")
        if isinstance(raw_hist, list):
            for turn in raw_hist:
                if isinstance(turn, (list, tuple)) and len(turn) == 2 and all(_text(t) for t in turn):
                    history.append([_text(turn[0]), _text(turn[1])])
    if not question:
        return None, "empty question"
    if not answer:
        return None, "empty answer"
    source = _text(rec.get("source")) or _text(rec.get("url")) or _text(rec.get("来源")) or ""
    extra = {k: v for k, v in rec.items() if k not in KNOWN_KEYS}
    pair = Pair(question, answer, source, _score(rec), system, history, origin, extra)
    return pair, note


def _csv_text(path: Path) -> str:
    """UTF-8 (with or without BOM), else GB18030 — Excel on Chinese Windows saves CSV in GBK."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("gb18030", errors="replace")


def _iter_csv(path: Path, problems: list[Problem]):
    reader = csv.DictReader(io.StringIO(_csv_text(path), newline=""))
    if not reader.fieldnames:
        return
    for row in reader:
        line = reader.line_num
        if None in row:  # more cells than header columns
            problems.append(Problem(str(path), line, "more cells than header columns"))
            continue
        yield line, {k.strip(): v for k, v in row.items() if k is not None and v is not None}


def _iter_json_array(path: Path, problems: list[Problem]):
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        data = json.loads(text)
    except ValueError as exc:
        problems.append(Problem(str(path), getattr(exc, "lineno", 1), f"invalid JSON ({exc})"))
        return
    items = data if isinstance(data, list) else [data]
    # Report the line where each item starts (best effort: find each top-level '{').
    starts = _item_lines(text) if isinstance(data, list) else [1]
    for i, item in enumerate(items):
        line = starts[i] if i < len(starts) else i + 1
        if not isinstance(item, dict):
            problems.append(Problem(str(path), line, f"item {i + 1} is not an object"))
            continue
        yield line, item


def _item_lines(text: str) -> list[int]:
    """Line numbers where the top-level objects of a JSON array start."""
    lines, depth, line, in_str, esc = [], 0, 1, False, False
    for ch in text:
        if ch == "\n":
            line += 1
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"':
            in_str = True
        elif ch in "[{":
            if depth == 1 and ch == "{":
                lines.append(line)
            depth += 1
        elif ch in "]}":
            depth -= 1
    return lines


def input_files(inp: str | Path) -> list[Path]:
    """The files IN names: the file itself, or the pair files of a folder. A ``qa_edited.jsonl`` (the dashboard's
    reviewed copy) replaces the other pair files of its folder and subfolders, because it already holds them."""
    inp = Path(inp).expanduser()
    if not inp.exists():
        raise DatasetError(
            f"{inp} does not exist; give a qa.jsonl file, a folder of them, or a JSONL/CSV of pairs.",
            zh=f"{inp} 不存在；请给出 qa.jsonl 文件、包含它们的文件夹，或问答对的 JSONL/CSV 文件。",
        )
    if inp.is_file():
        if inp.suffix.lower() not in INPUT_SUFFIXES:
            raise DatasetError(
                f"{inp} is not a .jsonl, .json or .csv file; convert it to one of those.",
                zh=f"{inp} 不是 .jsonl、.json 或 .csv 文件；请把它转换成其中一种格式。",
            )
        return [inp]
    if (inp / "workspace.json").exists():  # a whole workspace: its reviewed copy, else step 2's output
        if (inp / "dataset" / EDITED_NAME).exists():
            return [inp / "dataset" / EDITED_NAME]
        inp = inp / "qa"
        if not inp.is_dir():
            raise DatasetError(
                f"The workspace {inp.parent} has no Q&A pairs yet; run step 2 (generate) first.",
                zh=f"项目 {inp.parent} 还没有问答对；请先运行第 2 步（生成问答）。",
            )
    files = sorted(
        p
        for p in inp.rglob("*")
        if p.is_file()
        and p.suffix.lower() in INPUT_SUFFIXES
        and p.name not in IGNORED_NAMES
        and not p.name.startswith(".")
    )
    split_names = {f"{s}.jsonl" for s in SPLITS}
    if any(p.name not in split_names for p in files):  # split outputs next to pairs are ours, not input
        files = [p for p in files if p.name not in split_names]
    edited_dirs = {p.parent for p in files if p.name == EDITED_NAME}
    # the edited copy already holds everything the dashboard showed (qa.jsonl + imports below it)
    files = [p for p in files if p.name == EDITED_NAME or not any(d == p.parent or d in p.parents for d in edited_dirs)]
    if not files:
        raise DatasetError(
            f"{inp} holds no .jsonl, .json or .csv files of pairs; run step 2 first or pick the file.",
            zh=f"{inp} 里没有问答对的 .jsonl、.json 或 .csv 文件；请先运行第 2 步，或直接选择那个文件。",
        )
    return files


def load_pairs(inp: str | Path | list[Path]) -> LoadResult:
    """Read every pair from IN; each broken record becomes a :class:`Problem` (file + line), nothing raises."""
    files = inp if isinstance(inp, list) else input_files(inp)
    pairs: list[Pair] = []
    problems: list[Problem] = []
    for path in files:
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".csv":
            rows = _iter_csv(path, problems)
        elif suffix == ".json":
            rows = _iter_json_array(path, problems)
        else:
            bad: list[BadLine] = []
            rows = _numbered_jsonl(path, bad)
            rows = list(rows)
            problems.extend(Problem(b.path, b.lineno, b.reason) for b in bad)
        for line, rec in rows:
            pair, msg = parse_record(rec, f"{path}:{line}")
            if pair is None:
                problems.append(Problem(str(path), line, msg or "unreadable"))
                continue
            if msg:
                problems.append(Problem(str(path), line, msg, skipped=False))
            pairs.append(pair)
    problems.sort(key=lambda p: (p.path, p.line))
    return LoadResult(pairs, problems, [str(f) for f in files])


def _numbered_jsonl(path: Path, bad: list[BadLine]):
    """(line number, object) for a JSONL file; fileio reports broken lines into ``bad``."""
    # iter_jsonl skips blank lines, so number the lines ourselves and match objects to them.
    with open(path, encoding="utf-8", errors="replace") as fh:
        numbered = [(i, line) for i, line in enumerate(fh, 1) if line.strip()]
    objs_bad: list[BadLine] = []
    good = list(iter_jsonl(path, objs_bad))
    bad_lines = {b.lineno for b in objs_bad}
    bad.extend(objs_bad)
    good_lines = [i for i, _ in numbered if i not in bad_lines]
    return list(zip(good_lines, good, strict=False))


def save_pairs(path: str | Path, pairs: list[Pair]) -> Path:
    """Write pairs in the step-2 ``qa.jsonl`` shape (atomically) — the editor's save."""
    return write_jsonl_atomic(path, [p.to_qa_record() for p in pairs])


EDITABLE = ("question", "answer", "source", "paraphrase")


def apply_table_edits(records: list[dict], visible: list[int], delta: dict | None) -> tuple[list[dict], list[str]]:
    """Apply a table editor's changes (``st.data_editor`` state) to ``records``; returns (new records, notes).

    ``visible[i]`` is the index in ``records`` of the table's row ``i`` (the table may show a search result).
    ``delta`` = ``{"edited_rows": {row: {column: value}}, "added_rows": [{column: value}], "deleted_rows": [row]}``.
    A change that would leave a question or answer empty is not applied, and a new row is only added once both are
    filled, so the saved file never holds a pair the next step would reject.
    """
    delta = delta or {}
    out = [dict(r) for r in records]
    notes: list[str] = []
    for row, changes in (delta.get("edited_rows") or {}).items():
        try:
            idx = visible[int(row)]
        except (ValueError, IndexError):
            continue
        for col, value in (changes or {}).items():
            if col not in EDITABLE:
                continue
            text = "" if value is None else str(value).strip()
            if col in ("question", "answer") and not text:
                notes.append(f"row {int(row) + 1}: an empty {col} is not saved; delete the row instead.")
                continue
            if col == "paraphrase" and not text:
                out[idx].pop(col, None)  # no paraphrase: the pair is evaluated on its question alone
                continue
            out[idx][col] = text
    deleted = set()
    for row in delta.get("deleted_rows") or []:
        try:
            deleted.add(visible[int(row)])
        except (ValueError, IndexError):
            continue
    out = [r for i, r in enumerate(out) if i not in deleted]
    incomplete = 0
    for added in delta.get("added_rows") or []:
        q = str(added.get("question") or "").strip()
        a = str(added.get("answer") or "").strip()
        if q and a:
            para = str(added.get("paraphrase") or "").strip()
            source = str(added.get("source") or "").strip() or "manual"
            out.append({"question": q, "answer": a, "source": source, **({"paraphrase": para} if para else {})})
        elif q or a or added.get("source"):
            incomplete += 1
    if incomplete:
        notes.append(f"{incomplete} new row(s) need both a question and an answer before they are saved.")
    return out, notes


def search_rows(records: list[dict], term: str) -> list[int]:
    """Indices of records whose question, answer or source contains ``term`` (case-insensitive; all when empty)."""
    term = (term or "").strip().casefold()
    if not term:
        return list(range(len(records)))
    return [
        i
        for i, r in enumerate(records)
        if any(term in str(r.get(k) or "").casefold() for k in ("question", "answer", "source"))
    ]


# ---- duplicates -------------------------------------------------------------------------------------------------
_NUM_RE = re.compile(r"\d+")


def shingles(text: str) -> frozenset[str]:
    """Character n-grams of the normalised text: characters + bigrams when it is mostly CJK, else trigrams."""
    norm = normalize(text)
    cjk = len(CJK_RE.findall(norm))
    if cjk and cjk >= 0.3 * len(norm.replace(" ", "")):
        # Characters and bigrams: a one-word synonym swap (怎么→如何) still leaves most of both.
        norm = norm.replace(" ", "")
        return frozenset(norm) | frozenset(norm[i : i + 2] for i in range(len(norm) - 1))
    n = 3
    if len(norm) <= n:
        return frozenset([norm]) if norm else frozenset()
    return frozenset(norm[i : i + n] for i in range(len(norm) - n + 1))


def numbers(text: str) -> frozenset[str]:
    """The numbers in a question (building, year, course code): questions that differ in them are never duplicates."""
    return frozenset(_NUM_RE.findall(unicodedata.normalize("NFKC", text)))


def jaccard(a: frozenset, b: frozenset) -> float:
    if not a or not b:
        return 0.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def _disjoint_sets(n: int):
    """``(find, union)`` over ``0..n-1`` (path halving; a set's root is its smallest member, so groups come out in
    first-member order)."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)

    return find, union


def find_groups(questions: list[str], threshold: float = DEFAULT_THRESHOLD) -> list[list[int]]:
    """Indices grouped by exact or near-duplicate question (Jaccard of shingles ≥ threshold, transitive).

    Two questions whose numbers differ (楼号, years, course codes) are never near-duplicates.

    Candidates come from prefix filtering (an exact technique for Jaccard joins): each question's shingles are
    ordered rarest first, and only its first ``|s| - ceil(threshold·|s|) + 1`` go into the inverted index, since two
    sets with Jaccard ≥ threshold must share one of those. Frequent shingles (的, 吗, "the") are thereby never probed,
    which keeps thousands of questions fast. Returns every group (singletons included), each sorted, ordered by first
    member.
    """
    find, union = _disjoint_sets(len(questions))

    sh = [shingles(q) for q in questions]
    nums = [numbers(q) for q in questions]
    df: dict[str, int] = defaultdict(int)
    for s in sh:
        for g in s:
            df[g] += 1
    exact: dict[str, int] = {}
    index: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(sh):
        key = normalize(questions[i])
        if key in exact:
            union(exact[key], i)
        else:
            exact[key] = i
        prefix = sorted(s, key=lambda g: (df[g], g))[: len(s) - math.ceil(threshold * len(s)) + 1]
        candidates: set[int] = set()
        for g in prefix:
            candidates.update(index[g])
            index[g].append(i)
        for j in candidates:
            if nums[i] != nums[j] or find(i) == find(j):  # different numbers: "Building 3" vs "Building 4"
                continue
            if jaccard(s, sh[j]) >= threshold:
                union(i, j)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(questions)):
        groups[find(i)].append(i)
    return sorted(groups.values(), key=lambda g: g[0])


def _page_of(pair: Pair) -> str:
    """The page a generated pair came from (step 2's ``file``, else its ``source``): siblings share it."""
    return str(pair.extra.get("file") or pair.source or "")


def sibling_groups(pairs: list[Pair], threshold: float = DEFAULT_THRESHOLD) -> list[list[int]]:
    """:func:`find_groups` over the questions *and their paraphrases*, with every unanswerable question joined to the
    answerable question of its page it most resembles — the groups a split keeps together.

    Why: a paraphrase (step 2's ``"paraphrase"``, asked only in evaluation) is a fair test of understanding only if
    neither it nor a near-duplicate of it was trained, so it groups like a question of its own. An unanswerable
    question stays with its closest answerable sibling, so a refusal and the fact it borders ("When does the library
    open on Sundays?" / "When does the library open?") are trained or tested together. Not whole pages: a page split
    would leave the closed-book model no trained fact to be tested on, changing what the test split measures.
    Same shape as :func:`find_groups` (every group, singletons included, sorted, ordered by first member)."""
    texts = [p.question for p in pairs]
    owner = list(range(len(pairs)))
    for i, p in enumerate(pairs):
        para = p.extra.get("paraphrase")
        if isinstance(para, str) and para.strip():
            texts.append(para)
            owner.append(i)
    find, union = _disjoint_sets(len(pairs))

    for g in find_groups(texts, threshold):
        for t in g[1:]:
            union(owner[g[0]], owner[t])
    answerable: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(pairs):
        if _page_of(p) and not is_unanswerable(p):
            answerable[_page_of(p)].append(i)
    for i, p in enumerate(pairs):
        siblings = answerable.get(_page_of(p)) if is_unanswerable(p) else None
        if siblings:
            mine = shingles(p.question)
            union(i, max(siblings, key=lambda j: (jaccard(mine, shingles(pairs[j].question)), -j)))
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(pairs)):
        groups[find(i)].append(i)
    return sorted(groups.values(), key=lambda g: g[0])


def drop_exact_duplicates(pairs: list[Pair]) -> tuple[list[Pair], list[Problem]]:
    """Drop a pair whose normalised question *and* answer equal an earlier pair's (it adds nothing but weight)."""
    seen: dict[tuple[str, str], str] = {}
    kept, dropped = [], []
    for p in pairs:
        key = (normalize(p.question), normalize(p.answer))
        if key in seen:
            path, _, line = p.origin.rpartition(":")
            dropped.append(Problem(path, int(line) if line.isdigit() else 0, f"exact duplicate of {seen[key]}"))
            continue
        seen[key] = p.origin
        kept.append(p)
    return kept, dropped


# ---- split ------------------------------------------------------------------------------------------------------
def split_ratios(text) -> tuple[float, float, float] | None:
    """'8:1:1' / '0.8,0.1,0.1' / '80/10/10' → ratios (train, dev, test); None when it is not three such numbers."""
    parts = [p for p in re.split(r"[:,/ ]+", str(text).strip()) if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        return None
    if len(values) != 3 or not all(math.isfinite(v) and v >= 0 for v in values) or values[0] <= 0:
        return None
    return values  # type: ignore[return-value]


def parse_split(text: str) -> tuple[float, float, float]:
    """'8:1:1' / '0.8,0.1,0.1' / '80/10/10' → ratios (train, dev, test)."""
    values = split_ratios(text)
    if values is None:
        check_setting("split", str(text))  # raises the declared sentence
    return values  # type: ignore[return-value]


def split_counts(n: int, ratios: tuple[float, float, float]) -> tuple[int, int, int]:
    """Exact split sizes for ``n`` pairs (largest-remainder rule; see the module docstring)."""
    total = sum(ratios)
    quotas = [n * r / total for r in ratios]
    counts = [int(q) for q in quotas]
    order = sorted(range(3), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    if n >= 3:  # every split the user asked for gets at least one pair
        for i in range(1, 3):
            if ratios[i] > 0 and counts[i] == 0:
                donor = max(range(3), key=lambda j: (counts[j], -j))
                counts[donor] -= 1
                counts[i] += 1
    elif n == 2 and ratios[1] > 0:
        counts = [1, 1, 0]
    elif n == 1:
        counts = [1, 0, 0]
    return counts[0], counts[1], counts[2]


@dataclass
class SplitResult:
    splits: dict[str, list[Pair]]
    targets: dict[str, int]
    groups: list[list[int]]
    """Every multi-member group as indices into the input list."""
    group_split: list[str]
    warnings: list[str]
    warnings_zh: list[str] = field(default_factory=list)
    """The same warnings in Chinese, same order (the dashboard shows one language)."""


def size_warnings(n: int, targets: dict[str, int]) -> list[tuple[str, str]]:
    """``(English, Chinese)`` warnings about too few pairs or too small a test split, for ``n`` pairs split into
    ``targets`` — said before the split (Dataset page) and recorded with it (``split_report.json``)."""
    notes: list[tuple[str, str]] = []
    if n < TINY:
        notes.append(
            (
                f"Only {n} pairs: the split is {targets['train']}/{targets['dev']}/{targets['test']} "
                "(each split gets at least one pair when possible); scores on such tiny dev/test sets mean little, "
                "generate more pairs before trusting them.",
                f"只有 {n} 对问答：划分为 {targets['train']}/{targets['dev']}/{targets['test']}（尽量每个集合至少一对）；"
                "这么小的验证/测试集上的分数参考价值很低，请先多生成一些问答对。",
            )
        )
    elif n < FEW:
        notes.append(
            (
                f"Only {n} pairs: a model tuned on so few memorises them rather than learning the site; "
                "a real assistant needs a few hundred.",
                f"只有 {n} 对问答：模型只会死记这些问题，学不到网站的内容；真正的助手需要几百对。",
            )
        )
    if TINY <= n and 0 < targets["test"] < FEW_TEST:
        notes.append(
            (
                f"The test split has only {targets['test']} question(s): its scores change a lot with one answer; "
                "raise the test ratio or add pairs before comparing models.",
                f"测试集只有 {targets['test']} 个问题：一个回答就能让分数大起大落；比较模型前请调高测试比例或增加问答对。",
            )
        )
    return notes


def split_pairs(
    pairs: list[Pair], ratios: tuple[float, float, float], seed: int = 42, threshold: float = DEFAULT_THRESHOLD
) -> SplitResult:
    """Seeded, exact-count, group-aware split (a near-duplicate group never straddles two splits)."""
    n = len(pairs)
    targets = dict(zip(SPLITS, split_counts(n, ratios), strict=True))
    if n == 0:
        raise DatasetError(
            "There are no valid pairs to split; fix the input (see the problems listed) and run again.",
            zh="没有可划分的有效问答对；请按列出的问题修正输入后重试。",
        )
    notes: list[tuple[str, str]] = size_warnings(n, targets)
    rng = random.Random(seed)
    groups = sibling_groups(pairs, threshold)  # near-duplicates, paraphrases and unanswerable siblings
    multi = [g for g in groups if len(g) > 1]
    singles = [g[0] for g in groups if len(g) == 1]
    rng.shuffle(multi)
    multi.sort(key=len, reverse=True)  # stable: equal sizes keep their shuffled order
    room = dict(targets)
    assign: dict[str, list[int]] = {s: [] for s in SPLITS}
    group_split: list[str] = []
    for g in multi:
        fits = [s for s in SPLITS if room[s] >= len(g)]
        if fits:
            weights = [room[s] for s in fits]
            choice = rng.choices(fits, weights=weights)[0]
        else:
            choice = max(SPLITS, key=lambda s: room[s])
            example = pairs[g[0]].question  # whole: a cut question is neither readable nor findable in the table
            notes.append(
                (
                    f"A group of {len(g)} near-duplicate questions (e.g. '{example}') is larger "
                    f"than the room left in any split; it went to {choice}, so the counts differ from the targets.",
                    f"一组 {len(g)} 个近似重复的问题（如“{example}”）比任何集合剩余的名额都多；"
                    f"它被放进了 {choice}，所以数量与目标不同。",
                )
            )
        assign[choice].extend(g)
        room[choice] -= len(g)
        group_split.append(choice)
    rng.shuffle(singles)
    pos = 0
    for s in SPLITS:
        take = max(0, room[s])
        assign[s].extend(singles[pos : pos + take])
        pos += take
    if pos < len(singles):  # only after a forced oversize group: the rest goes to train
        assign["train"].extend(singles[pos:])
    splits = {}
    for s in SPLITS:
        idx = assign[s]
        rng.shuffle(idx)
        splits[s] = [pairs[i] for i in idx]
    return SplitResult(splits, targets, multi, group_split, [e for e, _ in notes], [z for _, z in notes])


# ---- output formats ---------------------------------------------------------------------------------------------
def to_record(pair: Pair, fmt: str = "glm4", system_prompt: str | None = None) -> dict:
    """One pair in the chosen format (the pair's own system prompt wins over ``system_prompt``)."""
    check_setting("format", fmt)
    system = pair.system or (system_prompt or None)
    turns = [*pair.history, [pair.question, pair.answer]]
    if fmt == "glm4":
        msgs = [{"role": "system", "content": system}] if system else []
        for q, a in turns:
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        return {"messages": msgs}
    if fmt == "sharegpt":
        conv = []
        for q, a in turns:
            conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
        rec: dict = {"conversations": conv}
        if system:
            rec["system"] = system
        return rec
    rec = {"instruction": pair.question, "input": "", "output": pair.answer}  # alpaca
    if system:
        rec["system"] = system
    if pair.history:
        rec["history"] = pair.history
    return rec


def dataset_info(fmt: str, prefix: str = "umtcds") -> dict:
    """LLaMA-Factory ``dataset_info.json`` entries for the three split files."""
    if fmt == "sharegpt":
        spec = {
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "system": "system"},
            "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"},
        }
    elif fmt == "alpaca":
        spec = {
            "formatting": "alpaca",
            "columns": {
                "prompt": "instruction",
                "query": "input",
                "response": "output",
                "system": "system",
                "history": "history",
            },
        }
    else:
        raise DatasetError(
            f"LLaMA-Factory reads sharegpt or alpaca, not '{fmt}'.",
            zh=f"LLaMA-Factory 只读取 sharegpt 或 alpaca 格式，不支持“{fmt}”。",
        )
    return {f"{prefix}_{s}": {"file_name": f"{s}.jsonl", **spec} for s in SPLITS}


def write_dataset(
    result: SplitResult,
    out_dir: str | Path,
    fmt: str = "glm4",
    system_prompt: str | None = None,
    context: tuple[dict[str, list[Pair]], dict[str, list[dict]]] | None = None,
) -> dict:
    """Write the three split files (+ ``dataset_info.json`` for sharegpt/alpaca); return ``{split: path}``.

    Test records also carry a ``meta`` object (:func:`record_meta`) that evaluation reads; ``context`` (from
    :func:`add_context`) replaces each split's pairs by their grounded form."""
    check_setting("format", fmt)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DatasetError(
            f"{out} is a file; --out must be a folder.",
            zh=f"{out} 是一个文件；--out 必须是文件夹。",
        )
    paths = {}
    for s in SPLITS:
        shown = context[0][s] if context else result.splits[s]
        records = [to_record(p, fmt, system_prompt) for p in shown]
        if s == "test":
            metas = context[1][s] if context else [record_meta(p, system_prompt) for p in result.splits[s]]
            records = [{**r, "meta": m} for r, m in zip(records, metas, strict=True)]
        paths[s] = str(write_jsonl_atomic(out / f"{s}.jsonl", records))
    info = out / "dataset_info.json"
    if fmt in ("sharegpt", "alpaca"):
        write_json_atomic(info, dataset_info(fmt))
        paths["dataset_info"] = str(info)
    elif info.exists():
        info.unlink()  # a stale one would describe the wrong format
    return paths


def build_dataset(
    inp: str | Path | list[Path],
    out_dir: str | Path,
    split: str | tuple[float, float, float] = DEFAULT_SPLIT,
    seed: int = 42,
    fmt: str = "glm4",
    system_prompt: str | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    pairs: list[Pair] | None = None,
    include_stale: bool = False,
    context: str = "none",
    index: str | Path | None = None,
    context_k: int = 5,
    oracle_share: float = 0.8,
    context_copies: int = 1,
) -> dict:
    """Read, validate, group, split and write; returns the split report (also saved as ``split_report.json``).

    ``pairs`` given (the dashboard's edited table) replaces reading ``inp``; ``inp`` is then only named in the report.
    ``context="retrieved"`` writes grounded records over ``index`` (:func:`add_context`), every split alike.
    """
    check_setting("format", fmt)
    check_setting("context", context)
    problems_ = _context_needs_index({"context": context, "index": index})
    if problems_:
        raise DatasetError(f"{problems_[0][0]}.", zh=f"{problems_[0][1]}。")
    ratios = parse_split(split) if isinstance(split, str) else tuple(split)
    check_setting("dedup_threshold", threshold)
    if pairs is None:
        loaded = load_pairs(inp)
    else:
        loaded = LoadResult(list(pairs), [], [str(inp)] if not isinstance(inp, list) else [str(p) for p in inp])
    # pairs of a page that changed or was removed since (step 2 marks them after a crawl refresh): out unless asked
    stale = [] if include_stale else [p for p in loaded.pairs if p.extra.get("stale") is True]
    fresh = [p for p in loaded.pairs if include_stale or p.extra.get("stale") is not True]
    kept, dups = drop_exact_duplicates(fresh)
    problems = loaded.problems + dups
    if not kept and stale:
        raise DatasetError(
            f"All {len(stale)} pairs in {inp} are stale (their pages changed or were removed); run the generate step "
            "again for the new pages, or keep them with --include-stale.",
            zh=f"{inp} 里的 {len(stale)} 对问答都已过期（网页已修改或已删除）；请重新运行生成步骤，或选择保留过期的问答对。",
        )
    if not kept:
        first = f" (first: {problems[0]})" if problems else ""
        first_zh = f"（第一条：{problems[0]}）" if problems else ""
        raise DatasetError(
            f"No valid question-answer pairs in {inp}: {len(problems)} broken record(s){first}; fix them and run again.",
            zh=f"{inp} 里没有有效的问答对：{len(problems)} 条记录有问题{first_zh}；请修正后重新运行。",
        )
    result = split_pairs(kept, ratios, seed, threshold)
    ctx_report: dict = {"mode": "none"}
    ctx = None
    if context == "retrieved":
        grounded, metas, ctx_report = add_context(
            result.splits, index, context_k, oracle_share, seed, system_prompt, copies=context_copies
        )
        ctx = (grounded, metas)
    files = write_dataset(result, out_dir, fmt, system_prompt, ctx)
    counts = {s: len(result.splits[s]) for s in SPLITS}
    warnings, warnings_zh = list(result.warnings), list(result.warnings_zh)
    if dups:
        warnings.append(f"{len(dups)} exact duplicate pair(s) dropped.")
        warnings_zh.append(f"去掉了 {len(dups)} 对完全重复的问答。")
    skipped = sum(1 for p in loaded.problems if p.skipped)
    if skipped:
        warnings.append(f"{skipped} broken record(s) skipped; see 'problems' for file and line.")
        warnings_zh.append(f"跳过了 {skipped} 条有问题的记录；文件和行号见 problems。")
    if stale:
        warnings.append(
            f"{len(stale)} stale pair(s) left out (their page changed or was removed); see 'stale', "
            "or keep them with --include-stale."
        )
        warnings_zh.append(f"{len(stale)} 对过期的问答（网页已修改或已删除）没有放进数据集；列表见 stale。")
    if ctx is not None:
        lost = sum(c["no-source"] for c in ctx_report["counts"].values())
        if lost:
            warnings.append(
                f"{lost} pair(s) name a page that is not in the index {index}, so their prompts show other pages and "
                "they are answered with the refusal; rebuild the index over the same crawl (`umtcds index`)."
            )
            warnings_zh.append(
                f"{lost} 对问答的来源网页不在索引 {index} 里，只能配无关资料并以拒答句作答；请用同一次爬取重建索引。"
            )
        need = ctx_report["prompt_tokens_max"]
        warnings.append(
            f"Prompts with context are up to about {need} tokens: set max_input_length to at least {need} in the "
            "training config, or the sources are cut off."
        )
        warnings_zh.append(
            f"附带资料的提示最长约 {need} 个 token：请在训练配置里把 max_input_length 设为至少 {need}，否则资料会被截断。"
        )
    report = {
        "input": loaded.files,
        "out_dir": str(Path(out_dir)),
        "format": fmt,
        "split": ":".join(f"{r:g}" for r in ratios),
        "seed": seed,
        "rounding": "largest remainder: floor(n*ratio), leftovers to the largest fractions (ties: train, dev, test); "
        "each split with a non-zero ratio gets >= 1 pair when n >= 3",
        "system_prompt": system_prompt,
        "pairs_read": len(loaded.pairs),
        "pairs": len(kept),
        "targets": result.targets,
        "counts": counts,
        "exact_counts": counts == result.targets,
        "dedup_threshold": threshold,
        "groups": {
            "count": len(result.groups),
            "pairs_in_groups": sum(len(g) for g in result.groups),
            "list": [
                {"split": s, "questions": [kept[i].question for i in g]}
                for g, s in zip(result.groups, result.group_split, strict=True)
            ][:500],
        },
        "warnings": warnings,
        "warnings_zh": warnings_zh,
        "problems": [asdict(p) for p in problems],
        "stale": [{"question": p.question, "source": p.source, "origin": p.origin} for p in stale][:500],
        "stale_count": len(stale),
        "unanswerable": {s: sum(is_unanswerable(p) for p in result.splits[s]) for s in SPLITS},
        "paraphrases": {s: sum(bool(p.extra.get("paraphrase")) for p in result.splits[s]) for s in SPLITS},
        "context": ctx_report,
        "files": files,
    }
    write_json_atomic(Path(out_dir) / "split_report.json", report)
    return report


def describe(report: dict) -> str:
    """A short human summary of a split report (CLI output)."""
    c, t = report["counts"], report["targets"]
    lines = [
        f"{report['pairs']} pairs → train {c['train']} / dev {c['dev']} / test {c['test']} "
        f"(split {report['split']}, seed {report['seed']}, format {report['format']})"
        + ("" if report["exact_counts"] else f"; targets were {t['train']}/{t['dev']}/{t['test']}"),
        f"{report['groups']['count']} near-duplicate group(s) covering {report['groups']['pairs_in_groups']} pairs, "
        "each kept inside one split.",
    ]
    refused = report.get("unanswerable") or {}
    if any(refused.values()):
        paraphrased = report.get("paraphrases") or {}
        lines.append(
            "Unanswerable questions (answer: the refusal) per split: "
            + " / ".join(f"{s} {refused.get(s, 0)}" for s in SPLITS)
            + "; paraphrases (evaluation only, never trained): "
            + " / ".join(f"{s} {paraphrased.get(s, 0)}" for s in SPLITS)
            + "."
        )
    for p in report["problems"]:
        lines.append(str(Problem(**p)))
    lines += [f"Warning: {w}" for w in report["warnings"]]
    lines.append(f"Wrote {', '.join(report['files'].values())} and split_report.json")
    return "\n".join(lines)


# ---- training with context (retrieval-augmented fine-tuning) ------------------------------------------------------
CONTEXT_BUDGET = 1500
"""Prompt tokens a context record may use (estimated; the same cap grounded chat uses, chat.RAG_BUDGET_MAX)."""
_POOL = 10
"""Chunks retrieved beyond ``k``: room to find the source chunk and enough distractors once it is left out."""


def is_unanswerable(pair: Pair) -> bool:
    """A question the site does not answer (step 2's ``"kind": "unanswerable"``): its target is always the refusal."""
    return str(pair.extra.get("kind") or "").lower() == "unanswerable"


def matches_source(item: dict, source: str, file: str = "") -> bool:
    """Whether a chunk, hit or shown source (``url``/``page``) is the pair's own page: its URL equals the pair's
    ``source``, or its page file is the pair's ``file`` (or the file ``source`` names when it is not a URL)."""
    url, page = str(item.get("url") or ""), str(item.get("page") or "")
    if source and url and url == source:
        return True
    names = {Path(f).name for f in (file, "" if "://" in (source or "") else source) if f}
    return bool(page) and page in names


def _source_of(pair: Pair) -> tuple[str, str]:
    return pair.source or "", str(pair.extra.get("file") or "")


def _best_source_chunk(index, pair: Pair) -> dict | None:
    """The source page's chunk sharing the most words with the question and answer (when retrieval missed it)."""
    from .index import tokenize

    source, file = _source_of(pair)
    mine = [c for c in index.chunks if matches_source(c, source, file)]
    if not mine:
        return None
    words = set(tokenize(f"{pair.question} {pair.answer}"))
    best = max(mine, key=lambda c: len(words & set(tokenize(c.get("text", "")))))
    return {**best, "score": 0.0}


def _slim(chunk: dict) -> dict:
    return {k: chunk.get(k) for k in ("chunk_id", "page", "url", "title", "heading", "text", "score")}


def context_pair(pair: Pair, index, k: int, oracle: bool, rng: random.Random, system_prompt: str | None) -> tuple:
    """``(pair as the model sees it, how, chunks shown)``: the question becomes the grounded prompt
    (:func:`umtcds_core.grounding.build_grounded_messages`, the one builder chat and evaluate use too) and the answer
    its target. ``how`` is ``oracle`` (the source chunk is shown; the answer ends with its citation ``[n]``),
    ``distractors`` (only other pages' chunks; the target is the refusal sentence), ``unanswerable`` (the top chunks;
    refusal) or ``no-source`` (the pair's page is not in the index: only distractors can be shown; refusal)."""
    from .grounding import build_grounded_messages, refusal_for

    source, file = _source_of(pair)
    hits = index.search(pair.question, min(100, k + _POOL))
    how = "unanswerable" if is_unanswerable(pair) else "oracle" if oracle else "distractors"
    if how == "unanswerable":
        chunks = hits[:k]
    elif how == "distractors":
        chunks = [h for h in hits if not matches_source(h, source, file)][:k]
    else:
        chunks = hits[:k]
        if not any(matches_source(h, source, file) for h in chunks):
            own = next((h for h in hits if matches_source(h, source, file)), None) or _best_source_chunk(index, pair)
            if own is None:
                how, chunks = "no-source", [h for h in hits if not matches_source(h, source, file)][:k]
            else:
                others = chunks[: k - 1]
                others.insert(rng.randrange(len(others) + 1), own)
                chunks = others
    system = pair.system or system_prompt
    messages, shown = build_grounded_messages(pair.question, chunks, system, CONTEXT_BUDGET)
    if how == "oracle":
        n = next((s["n"] for s in shown if matches_source(s, source, file)), None)
        if n is None:  # the budget left the source out: show it first instead
            own = next(c for c in chunks if matches_source(c, source, file))
            chunks = [own] + [c for c in chunks if c is not own]
            messages, shown = build_grounded_messages(pair.question, chunks, system, CONTEXT_BUDGET)
            n = next(s["n"] for s in shown if matches_source(s, source, file))
        target = f"{pair.answer.rstrip()} [{n}]"
    else:
        target = refusal_for(pair.question)
    grounded = Pair(
        messages[1]["content"],
        target,
        pair.source,
        pair.score,
        messages[0]["content"],
        [],
        pair.origin,
        dict(pair.extra),
    )
    return grounded, how, chunks


def record_meta(
    pair: Pair, system_prompt: str | None, how: str | None = None, chunks: list[dict] | None = None
) -> dict:
    """What evaluation needs beside a test record's messages: the bare question (for closed-book and live-retrieval
    prompts), the pair's own answer, its source page, kind and paraphrase, and the context shown, if any."""
    meta = {
        "question": pair.question,
        "answer": pair.answer,
        "source": pair.source,
        "file": str(pair.extra.get("file") or ""),
        "title": str(pair.extra.get("title") or ""),
        "kind": str(pair.extra.get("kind") or "answerable"),
        "paraphrase": pair.extra.get("paraphrase") or None,
        "system": pair.system or system_prompt or None,
    }
    if how is not None:
        meta["context"] = how
        meta["chunks"] = [_slim(c) for c in chunks or []]
    return meta


def add_context(
    splits: dict[str, list[Pair]],
    index_dir: str | Path,
    k: int = 5,
    share: float = 0.8,
    seed: int = 42,
    system_prompt: str | None = None,
    copies: int = 1,
) -> tuple[dict[str, list[Pair]], dict[str, list[dict]], dict]:
    """Every split's pairs as grounded records: ``(pairs, test metas, report)``.

    In each split exactly ``round(share × answerable pairs whose page is indexed)`` pairs, chosen with ``seed``, show
    their source chunk; the other answerable ones show distractors only and are refused — so the model learns to
    answer from the sources and to say "the website does not say" instead of guessing. Same seed, same records.

    ``copies`` ≥ 2 (train split only): each indexed answerable pair gives ``copies`` records, ``share × copies`` of
    them with the source (the fraction drawn with ``seed``) and the rest with distractors. Why: with one record per
    question, whether to refuse is also a property of the question, which a small model can memorise; with both
    views of the same question, only the sources tell them apart."""
    from .grounding import estimate_tokens
    from .index import Index

    check_setting("context_k", k)
    check_setting("oracle_share", share)
    check_setting("context_copies", copies)
    index = Index.load(index_dir)  # missing or stale: one sentence that says how to rebuild it
    out: dict[str, list[Pair]] = {}
    metas: dict[str, list[dict]] = {}
    counts: dict[str, dict[str, int]] = {}
    longest = 0
    for split in SPLITS:
        pairs = splits.get(split, [])
        rng = random.Random(f"{seed}:{split}")
        indexed = [
            i
            for i, p in enumerate(pairs)
            if not is_unanswerable(p) and any(matches_source(c, *_source_of(p)) for c in index.chunks)
        ]
        oracle = set(rng.sample(indexed, round(share * len(indexed))))
        views = {i: [i in oracle] for i in range(len(pairs))}  # per pair: one record, with its source or not
        if split == "train" and copies > 1:
            whole, part = divmod(share * copies, 1)  # records with the source per question: whole, +1 at odds part
            for i in indexed:
                n = int(whole) + (rng.random() < part)
                views[i] = [True] * n + [False] * (copies - n)
        out[split], metas[split] = [], []
        tally = {"oracle": 0, "distractors": 0, "unanswerable": 0, "no-source": 0}
        for i, p in enumerate(pairs):
            for shows_source in views[i]:
                grounded, how, chunks = context_pair(p, index, k, shows_source, rng, system_prompt)
                if how == "distractors" and i not in indexed:
                    how = "no-source"
                tally[how] += 1
                out[split].append(grounded)
                metas[split].append(record_meta(p, system_prompt, how, chunks))
                longest = max(longest, estimate_tokens(grounded.system or "") + estimate_tokens(grounded.question))
        counts[split] = tally
    report = {
        "mode": "retrieved",
        "index": str(index_dir),
        "k": k,
        "oracle_share": share,
        "copies": copies,
        "counts": counts,
        "prompt_tokens_max": longest,
    }
    return out, metas, report


# ---- CLI --------------------------------------------------------------------------------------------------------
def build_from_settings(values: dict, pairs: list[Pair] | None = None) -> dict:
    """:func:`build_dataset` on validated :data:`DATASET` values — what ``umtcds dataset`` and the Dataset page run.

    ``pairs`` (the page's edited table) replaces reading ``values["input"]``, which is then only named in the report.
    """
    if not values.get("input"):
        raise DatasetError(
            "No input: give IN (a qa.jsonl, a folder of them, or your own JSONL/JSON/CSV), or input: in the --config "
            "file.",
            zh="没有输入：请给出 IN（qa.jsonl、存放它们的文件夹，或你自己的 JSONL/JSON/CSV），或在 --config 设置文件里写 "
            "input:。",
        )
    if not values.get("out"):
        raise DatasetError(
            "No output folder: give --out DATA_DIR, or out: in the --config file.",
            zh="没有输出文件夹：请用 --out DATA_DIR 指定，或在 --config 设置文件里写 out:。",
        )
    return build_dataset(
        values["input"],
        values["out"],
        split=values["split"],
        seed=values["seed"],
        fmt=values["format"],
        system_prompt=values["system_prompt"],
        threshold=values["dedup_threshold"],
        pairs=pairs,
        include_stale=values["include_stale"],
        context=values["context"],
        index=values["index"],
        context_k=values["context_k"],
        oracle_share=values["oracle_share"],
        context_copies=values["context_copies"],
    )


def add_arguments(parser) -> None:
    """IN by hand (a positional, optional when ``--config`` names it); every other flag (and ``--config``) from
    :data:`DATASET`."""
    parser.add_argument(
        "input",
        metavar="IN",
        nargs="?",
        help="qa.jsonl, a folder of them, or your own JSONL/JSON/CSV of pairs (may come from --config instead)",
    )
    DATASET.add_arguments(parser)


def run(args) -> int:
    print(describe(build_from_settings(DATASET.from_args(args))))
    return 0


def record_to_messages(rec: dict) -> list[dict]:
    """One split record (GLM-4 messages | ShareGPT | Alpaca, as :func:`write_splits` writes them) → ``{"role", "content"}``
    messages; ``ValueError`` for anything else. Training and evaluation both read split files through this."""
    if isinstance(rec.get("messages"), list):
        return [{"role": m.get("role"), "content": m.get("content") or ""} for m in rec["messages"]]
    if isinstance(rec.get("conversations"), list):
        roles = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
        msgs = [{"role": "system", "content": rec["system"]}] if rec.get("system") else []
        for turn in rec["conversations"]:
            role = roles.get(str(turn.get("from", turn.get("role", ""))).lower())
            if role is None:
                raise ValueError(f"unknown ShareGPT speaker {turn.get('from')!r}")
            msgs.append({"role": role, "content": turn.get("value", turn.get("content")) or ""})
        return msgs
    if "instruction" in rec and "output" in rec:
        prompt = rec["instruction"] + (("\n" + rec["input"]) if rec.get("input") else "")
        msgs = [{"role": "system", "content": rec["system"]}] if rec.get("system") else []
        return msgs + [{"role": "user", "content": prompt}, {"role": "assistant", "content": rec["output"]}]
    raise ValueError("expected 'messages', 'conversations' or 'instruction'/'output'")
