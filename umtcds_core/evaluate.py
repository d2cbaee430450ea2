"""Score base vs tuned answers on the test split: ``umtcds evaluate --model NAME|PATH [--adapter DIR] --data test.jsonl``.

Usage::

    umtcds evaluate --adapter runs/run-1 --data dataset/test.jsonl            # writes runs/run-1/eval/
    umtcds evaluate --model smollm2-135m --data test.jsonl --out eval/metrics.json --limit 20
    umtcds evaluate --adapter runs/run-1 --data dataset/test.jsonl --rag index [--rag-k 5]     # four systems
    umtcds evaluate … --judge openai --judge-base-url http://host/v1 [--judge-model M] [--judge-prompt TEXT]
    umtcds evaluate --config settings.yaml [any flag above, which wins over the file]

Which setup to ship: up to four systems answer the same test questions (and their paraphrases, from the test
records' ``meta``): ``base`` and ``tuned`` closed book, ``base+retrieval`` and ``tuned+retrieval`` over the grounded
prompt (:mod:`umtcds_core.grounding`) — from ``--rag INDEX_DIR`` live, or, without it, the context a split built with
``umtcds dataset --context retrieved`` stored, so evaluation matches training. Beside the text metrics below each
system gets refusal accuracy (unanswerable questions refused), false refusals (answerable ones refused), citation
accuracy (an answered question cites its source page), attribution accuracy (it cites its source page or, citing
none, its words were matched to it: ``grounding.matched``), recall@k (its page among the sources shown; no LLM) and,
with ``--judge``, an LLM's 1–5 grade against the reference (prompt editable, raw replies kept in the table).
``metrics.json`` has one entry per system and a one-sentence verdict (``best``).

Every setting is declared once in :class:`EvaluateSettings` (type, default, bounds, labels, help, YAML comment, flag);
the flags, the settings YAML the Evaluate page saves in its job folder and the page's widgets come from it.

For every test record the last assistant message is the reference and the turns before it are the prompt (glm4
``messages`` format; sharegpt ``conversations`` and alpaca ``instruction/input/output`` records are read too). The
model is loaded once; with an adapter, the base answers are generated with the adapter disabled (peft's
``disable_adapter()``), so one report holds base and tuned side by side.

Metrics (means over examples, as the GLM-4 fine-tuning demo reports them):

* ``rouge-1`` / ``rouge-2`` / ``rouge-l``: ``rouge_chinese`` F1 × 100 on jieba tokens (whitespace tokens dropped, so
  English text is scored on words);
* ``bleu-4``: nltk ``sentence_bleu`` on the same tokens with ``SmoothingFunction().method3``, a fraction in 0–1;
* ``key-fact``: the share of the reference's *key facts* found in the answer, × 100. Key facts are what a campus
  answer must get right and n-gram overlap blurs: numbers, dates and times (``23:30``, ``2024-09-01``, ``8.5``,
  ``2024年9月1日``), codes and capitalised names in Latin script (``B204``, ``ZV-Air-7731``, ``Marsh``; a capitalised
  word that only starts a sentence does not count), and Chinese proper nouns and numerals of two or more characters
  tagged by jieba.posseg (person/place/organisation/other proper noun ``nr ns nt nz``, numerals ``m``). Matching is a
  case-insensitive substring test on the answer; thousands separators are ignored. Examples whose reference holds no
  key fact are left out of this mean (``key_facts`` is then empty in the table).

Output, next to ``--out`` (default ``<run>/eval/metrics.json`` for an adapter, else ``eval/metrics.json``):
``metrics.json`` (means, per model), ``examples.jsonl`` and ``examples.csv`` (question, reference, base answer, tuned
answer and per-example scores).
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import runs
from . import schema as S
from .dataset import record_to_messages
from .errors import UserError
from .fileio import read_jsonl, write_json_atomic, write_jsonl_atomic, write_text_atomic
from .grounding import build_grounded_messages, cited_sources, is_refusal, matched, strip_citations
from .llm import BACKENDS
from .model_settings import adapter_setting, device_setting, model_setting, need_model
from .text import has_han

setting = S.setting
optional_text = S.optional_text

METRICS = ("bleu-4", "rouge-1", "rouge-2", "rouge-l", "key-fact")
"""The text metrics of every system (today's keys of ``metrics.json``)."""
TRUST_METRICS = ("refusal-acc", "false-refusal", "citation-acc", "attribution-acc", "recall@k", "judge")
"""Whether an answer can be trusted: refusals, citations, retrieval and the optional LLM judge."""
ALL_METRICS = METRICS + TRUST_METRICS
SYSTEMS = ("base", "tuned", "base+retrieval", "tuned+retrieval")
SYSTEM_LABELS = {
    "base": ("基座模型", "base"),
    "tuned": ("微调模型", "tuned"),
    "base+retrieval": ("基座模型 + 检索", "base+retrieval"),
    "tuned+retrieval": ("微调模型 + 检索", "tuned+retrieval"),
}
"""``(Chinese, English)`` names of the systems, in the argument order of ``i18n.tr``."""


def _zh(system: str) -> str:
    return SYSTEM_LABELS.get(system, (system, system))[0]


FEW_TO_COMPARE = 5
"""Fewer test questions than this and a difference between systems is noise."""


class EvalError(UserError, ValueError):
    """An unusable test file or option."""


# ---- settings: each declared once (schema.py); the CLI flags, the Evaluate page and its job's YAML read them ------
@dataclass
class EvaluateSettings:
    """What ``umtcds evaluate`` runs with: flags, a ``--config`` YAML (the Evaluate page saves one per job), or both."""

    model: str | None = model_setting()
    adapter: str | None = adapter_setting(
        comment="a run folder or one of its checkpoint-N folders; base and tuned are both scored (null: base only)"
    )
    data: str | None = optional_text(
        ("测试集文件", "Test file"),
        "the test split (JSONL), e.g. dataset/test.jsonl",
        widget="text",
        example="dataset/test.jsonl",
    )
    out: str | None = optional_text(
        ("结果文件", "Results file"),
        "metrics.json path; examples.jsonl/.csv go beside it (null: <run>/eval/metrics.json, or eval/metrics.json)",
        widget="hidden",
        example="eval/metrics.json",
    )
    max_new_tokens: int = setting(
        128,
        ("最大生成长度", "Max new tokens"),
        "longest answer in tokens; too short cuts long answers off (and their scores), longer is slower",
        help=(
            "每个回答最多生成的 token 数；太短会截断长答案，太长评测更慢。",
            "The longest answer in tokens; too short cuts long answers, too long is slower.",
        ),
        min=1,
        typical=(8, 4096),
        step=16,
        range_msg=("must be at least 1 (128 suits campus answers)", "至少为 1（校园问答用 128 比较合适）"),
    )
    batch_size: int = setting(
        8,
        ("批大小", "Batch size"),
        "answers generated together; more: faster on a GPU, more memory",
        help=(
            "同时生成的回答数；在 GPU 上越大越快，显存越多。",
            "Answers generated together; more: faster, more memory.",
        ),
        min=1,
        typical=(1, 256),
        range_msg=("must be at least 1", "至少为 1"),
    )
    limit: int = setting(
        0,
        ("最多样本数（0 = 全部）", "Max examples (0 = all)"),
        "score only the first N examples; 0 = all of them",
        help=("只评测前 N 条（快速试跑）；0 表示全部。", "Score only the first N (a quick try); 0 means all."),
        min=0,
        step=10,
        range_msg=("must be 0 (all examples) or more", "必须大于或等于 0（0 表示全部）"),
    )
    device: str | None = device_setting()
    rag: str | None = optional_text(
        ("检索索引（可选）", "Retrieval index (optional)"),
        "an index folder (`umtcds index`): base and tuned are also scored answering from the retrieved pages "
        "(null: only when the test split was built with context)",
        flag="--rag",
        example="index",
    )
    rag_k: int = setting(
        5,
        ("检索段数", "Chunks retrieved"),
        "with --rag, chunks retrieved per question (recall@k is measured at this k)",
        min=1,
        max=100,
        typical=(2, 10),
        range_msg=("must be between 1 and 100 (5 is a good start)", "必须在 1 到 100 之间（可以先试 5）"),
    )
    judge: str | None = optional_text(
        ("LLM 评分（可选）", "LLM judge (optional)"),
        "grade each answer 1-5 against the reference with this backend (local, zhipuai, openai); null = no judge",
        help=(
            "用一个大模型按参考答案给每个回答打 1–5 分；留空则不评分。密钥从环境变量读取，不会保存。",
            "An LLM grades each answer 1–5 against the reference; empty = none. Keys come from the environment.",
        ),
        choices=BACKENDS,
    )
    judge_model: str | None = optional_text(
        ("评分模型", "Judge model"),
        "the judge's model name (null: smollm2-135m, glm-4-flash or the server's first model)",
    )
    judge_base_url: str | None = optional_text(
        ("评分接口地址", "Judge base URL"),
        "the judge's API endpoint (openai: the server URL; zhipuai: overrides the default)",
    )
    judge_api_key_env: str | None = optional_text(
        ("评分密钥环境变量名", "Judge key variable"),
        "environment variable holding the judge's key (null = ZHIPUAI_API_KEY / OPENAI_API_KEY); never saved",
    )
    judge_prompt: str | None = optional_text(
        ("评分提示", "Judge prompt"),
        "the judge's instructions with {question}, {reference} and {answer} (null: the built-in one)",
        widget="textarea",
        valid=lambda v: v is None or all(f"{{{k}}}" in v for k in ("question", "reference", "answer")),
        range_msg=(
            "must contain {{question}}, {{reference}} and {{answer}} (or leave it empty for the built-in prompt)",
            "必须包含 {{question}}、{{reference}} 和 {{answer}}（或留空使用内置提示）",
        ),
    )


EVALUATE = S.from_dataclass(
    EvaluateSettings,
    "evaluate",
    title="UMTCDS evaluate settings — written by the Evaluate page; run with `umtcds evaluate --config`",
)
"""The evaluate step's schema: CLI flags, the settings YAML and the Evaluate page's widgets come from it."""


# ---- reading the test split ---------------------------------------------------------------------------------------
def split_record(rec: dict) -> tuple[list[dict], str] | None:
    """``(prompt messages, reference)`` of one record, or None when it has no assistant answer to score."""
    try:
        msgs = record_to_messages(rec)
    except (ValueError, TypeError, AttributeError):
        return None
    last = max((i for i, m in enumerate(msgs) if m.get("role") == "assistant"), default=None)
    if last is None or not any(m.get("role") == "user" for m in msgs[:last]):
        return None
    prompt = [
        {"role": m["role"], "content": m["content"]}
        for m in msgs[:last]
        if m["role"] in ("system", "user", "assistant")
    ]
    return prompt, str(msgs[last]["content"]).strip()


def load_examples(path: str | Path, limit: int | None = None) -> list[dict]:
    """Test examples ``{"id", "prompt", "question", "reference"}``; broken lines are reported, not fatal."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(
            f"The test file {path} does not exist; build the dataset first (step 3) or give --data.",
            zh=f"测试文件 {path} 不存在；请先生成数据集（第 3 步），或用 --data 指定。",
        )
    errors: list = []
    records = read_jsonl(path, errors=errors)
    for bad in errors[:5]:
        print(f"Skipped broken line: {bad}", file=sys.stderr)
    examples = []
    for i, rec in enumerate(records):
        split = split_record(rec) if isinstance(rec, dict) else None
        if split is None:
            continue
        prompt, reference = split
        question = next(m["content"] for m in reversed(prompt) if m["role"] == "user")
        meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else None
        if meta and isinstance(meta.get("question"), str) and meta["question"].strip():
            question = meta["question"]  # a grounded record's user turn is the whole prompt; the question is here
        examples.append({"id": i, "prompt": prompt, "question": question, "reference": reference, "meta": meta})
        if limit and len(examples) >= limit:
            break
    if not examples:
        raise EvalError(
            f"{path} holds no record with a user question and an assistant answer; check that it is a dataset split.",
            zh=f"{path} 里没有同时包含用户问题和助手回答的记录；请确认它是数据集的划分文件。",
        )
    return examples


# ---- metrics --------------------------------------------------------------------------------------------------------
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return jieba


def tokens(text: str) -> list[str]:
    """jieba tokens without whitespace (Chinese words; English words and numbers stay whole)."""
    return [t for t in _jieba().cut(text or "") if t.strip()]


def text_scores(prediction: str, reference: str) -> dict[str, float]:
    """BLEU-4 (0–1) and ROUGE-1/2/L F1 (× 100) of one answer, on jieba tokens — the GLM-4 demo's recipe."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    hyp, ref = tokens(prediction), tokens(reference)
    scores = {"bleu-4": 0.0, "rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    if not hyp or not ref:
        return scores
    r = Rouge().get_scores(" ".join(hyp), " ".join(ref))[0]
    scores["rouge-1"] = round(r["rouge-1"]["f"] * 100, 4)
    scores["rouge-2"] = round(r["rouge-2"]["f"] * 100, 4)
    scores["rouge-l"] = round(r["rouge-l"]["f"] * 100, 4)
    scores["bleu-4"] = round(float(sentence_bleu([ref], hyp, smoothing_function=SmoothingFunction().method3)), 6)
    return scores


_NUMBER = re.compile(r"(?<![A-Za-z\d])\d+(?:[.:/\-]\d+)*")
_CN_DATE = re.compile(r"(?:\d{2,4}年)?\d{1,2}月(?:\d{1,2}[日号])?|\d{2,4}年")
_LATIN_TOKEN = re.compile(r"[A-Za-z0-9]+(?:[-_.][A-Za-z0-9]+)*")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_COMMON_CAPS = {
    "the", "a", "an", "it", "its", "this", "that", "these", "those", "there", "you", "your", "we", "our", "they",
    "he", "she", "his", "her", "i", "in", "on", "at", "for", "of", "to", "and", "or", "yes", "no", "please", "if",
    "when", "where", "what", "who", "which", "how", "students", "student", "all", "each", "every", "from", "by",
}  # fmt: skip
_CJK_FLAGS = ("nr", "ns", "nt", "nz", "m")


def _is_name_or_code(word: str, sentence_start: bool) -> bool:
    """Codes (letters with digits: B204, ZV-Air-7731) and capitalised names; a capitalised word that merely starts a
    sentence counts only when it has another capital (ZV-Air) or a digit."""
    if word.lower() in _COMMON_CAPS or _NUMBER.fullmatch(word) or len(word) < 2:
        return False
    has_digit = any(c.isdigit() for c in word)
    inner_caps = any(c.isupper() for c in word[1:])
    if has_digit or inner_caps:
        return True
    return word[0].isupper() and not sentence_start


def key_facts(reference: str) -> list[str]:
    """Numbers/dates/times, Latin codes and capitalised names, and Chinese proper nouns/numerals of ``reference``."""
    text = _THOUSANDS.sub("", reference or "")
    facts = [m.group(0) for m in _CN_DATE.finditer(text)]  # 2024年9月1日 as one fact, not 2024 / 9 / 1
    facts += [m.group(0) for m in _NUMBER.finditer(_CN_DATE.sub(" ", text))]
    for m in _LATIN_TOKEN.finditer(text):
        before = text[: m.start()].rstrip()
        if _is_name_or_code(m.group(0), sentence_start=not before or before[-1] in ".!?:;。！？："):
            facts.append(m.group(0))
    if has_han(text):
        import jieba.posseg as pseg

        _jieba()
        for w in pseg.cut(text):
            word = w.word.strip()
            if w.flag.startswith(_CJK_FLAGS) and len(word) >= 2 and has_han(word):
                facts.append(word)
    seen: set[str] = set()
    unique = []
    for f in facts:
        if f.lower() not in seen:
            seen.add(f.lower())
            unique.append(f)
    return unique


def key_fact_score(prediction: str, facts: list[str]) -> float | None:
    """Share (× 100) of ``facts`` that appear in ``prediction``; None when there are no facts to check."""
    if not facts:
        return None
    hay = _THOUSANDS.sub("", prediction or "").lower()
    found = sum(1 for f in facts if f.lower() in hay)
    return round(100.0 * found / len(facts), 4)


def score(prediction: str, reference: str, facts: list[str] | None = None) -> dict[str, float | None]:
    facts = key_facts(reference) if facts is None else facts
    return {**text_scores(prediction, reference), "key-fact": key_fact_score(prediction, facts)}


def mean_scores(rows: list[dict[str, float | None]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name in METRICS:
        vals = [r[name] for r in rows if r.get(name) is not None and not math.isnan(r[name])]
        out[name] = round(sum(vals) / len(vals), 4) if vals else None
    return out


JUDGE_SYSTEM = (
    "You rate the answers of a university campus assistant. Compare the answer with the reference answer and rate "
    "its correctness from 1 (wrong or made up) to 5 (fully correct; wording may differ). A refusal is correct only "
    'when the reference is a refusal too. Reply with "Score: N" only.'
)
JUDGE_PROMPT = "Question: {question}\nReference answer: {reference}\nAnswer to rate: {answer}\nScore (1-5):"
"""The judge's default user message (``--judge-prompt`` replaces it; the same three placeholders)."""


def expand_paraphrases(examples: list[dict]) -> list[dict]:
    """The test examples, then one more per example whose meta has a ``paraphrase`` (same reference and source):
    a paraphrase scores understanding rather than the exact wording the model was tuned on."""
    out = [{**ex, "variant": "test"} for ex in examples]
    for ex in examples:
        para = (ex.get("meta") or {}).get("paraphrase")
        if isinstance(para, str) and para.strip():
            out.append({**ex, "question": para.strip(), "variant": "paraphrase"})
    return out


def closed_book_prompt(ex: dict) -> list[dict]:
    """The prompt without sources: the record's own turns (its last question replaced by a paraphrase), except that a
    grounded record is asked as its bare question after the pair's own system prompt."""
    meta = ex.get("meta") or {}
    if "context" in meta:
        system = meta.get("system")
        return ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": ex["question"]}
        ]
    if ex.get("variant") == "paraphrase":
        return ex["prompt"][:-1] + [{"role": "user", "content": ex["question"]}]
    return ex["prompt"]


def _system_of(ex: dict) -> str | None:
    meta = ex.get("meta") or {}
    if "system" in meta:
        return meta.get("system")
    return next((m["content"] for m in ex["prompt"] if m["role"] == "system"), None)


class _Retrieval:
    """Sources for the +retrieval systems: ``live`` from an index (``--rag``), else ``stored`` — the chunks the
    dataset step showed each test record (a split built with ``--context retrieved``), so the score matches training."""

    def __init__(self, mode: str, index=None, k: int = 5, budget: int = 1500, tokenizer=None):
        self.mode, self.index, self.k, self.budget, self.tokenizer = mode, index, k, budget, tokenizer

    def prompt(self, ex: dict) -> tuple[list[dict], list[dict]]:
        question = ex["question"]
        if self.mode == "live":
            hits = self.index.search(question, self.k)
            return build_grounded_messages(question, hits, _system_of(ex), self.budget, tokenizer=self.tokenizer)
        from .dataset import CONTEXT_BUDGET

        chunks = (ex.get("meta") or {}).get("chunks") or []
        return build_grounded_messages(question, chunks, _system_of(ex), CONTEXT_BUDGET)


def _source_of(ex: dict) -> tuple[str, str]:
    meta = ex.get("meta") or {}
    return str(meta.get("source") or ""), str(meta.get("file") or "")


def _has_source(items: list[dict], ex: dict) -> bool | None:
    from .dataset import matches_source

    source, file = _source_of(ex)
    if not source and not file:
        return None
    return any(matches_source(it, source, file) for it in items)


def _should_refuse(ex: dict, reference: str) -> bool:
    return str((ex.get("meta") or {}).get("kind") or "") == "unanswerable" or is_refusal(reference)


def _references(ex: dict, system: str, mode: str | None) -> str:
    """What a system's answer is scored against: the pair's own answer, except on the stored context, whose target
    (the cited answer, or the refusal when only distractors were shown) is what the tuned model was taught there."""
    meta = ex.get("meta") or {}
    if system.endswith("+retrieval") and mode == "stored":
        return ex["reference"]
    return meta.get("answer") or ex["reference"]


def _pct(values: list[bool]) -> float | None:
    return round(100.0 * sum(values) / len(values), 4) if values else None


def summarize(rows: list[dict], system: str) -> dict:
    """One system's means over ``rows``: the text metrics, refusal accuracy (unanswerable refused), false refusals
    (answerable refused), citation accuracy (answered and cited its source page), attribution accuracy (cited or,
    citing none, matched to its source page), recall@k and the judge."""
    scored = [{k: r.get(f"{system}_{k}") for k in METRICS} for r in rows]
    out = mean_scores(scored)
    unans = [r for r in rows if r.get(f"{system}_should_refuse")]
    ans = [r for r in rows if r.get(f"{system}_should_refuse") is False]
    out["refusal-acc"] = _pct([bool(r[f"{system}_refused"]) for r in unans])
    out["false-refusal"] = _pct([bool(r[f"{system}_refused"]) for r in ans])
    answered = [r for r in ans if not r[f"{system}_refused"] and r.get(f"{system}_cites_source") is not None]
    out["citation-acc"] = _pct([bool(r[f"{system}_cites_source"]) for r in answered])
    out["attribution-acc"] = _pct(
        [bool(r[f"{system}_cites_source"] or r.get(f"{system}_matches_source")) for r in answered]
    )
    shown = [r for r in ans if r.get(f"{system}_source_shown") is not None]
    out["recall@k"] = _pct([bool(r[f"{system}_source_shown"]) for r in shown])
    judged = [r[f"{system}_judge"] for r in rows if r.get(f"{system}_judge") is not None]
    out["judge"] = round(sum(judged) / len(judged), 4) if judged else None
    return out


def verdict(metrics: dict, few: int = FEW_TO_COMPARE) -> tuple[str, str]:
    """One sentence ``(English, Chinese)`` naming the system that answered best — by the judge when every system was
    judged, else by key-fact accuracy — or saying why none can be named (too few questions, no scores, a tie)."""
    m = metrics.get("metrics") or {}
    n = int(metrics.get("n") or 0)
    if len(m) < 2:
        return ("Only one system was scored; there is nothing to compare.", "只评测了一个系统，没有可比较的对象。")
    if n < few:
        return (
            f"With only {n} test question{'s' if n != 1 else ''} no system can be named best; evaluate on at least "
            f"{few}.",
            f"只有 {n} 道测试题，无法判断哪个系统最好；请至少用 {few} 道题评测。",
        )
    metric = "judge" if all(v.get("judge") is not None for v in m.values()) else "key-fact"
    ranked = sorted(((v.get(metric), s) for s, v in m.items() if v.get(metric) is not None), reverse=True)
    if not ranked:
        return ("No system has a key-fact score (the references hold no facts to check).", "没有系统有关键事实得分。")
    (best, name), rest = ranked[0], ranked[1:]
    if rest and rest[0][0] == best:
        return (
            f"{name} and {rest[0][1]} tie on {metric} ({best:.4g}); no single system answered best.",
            f"{_zh(name)} 与 {_zh(rest[0][1])} 的 {metric} 相同（{best:.4g}），没有唯一最好的系统。",
        )
    unit = "/5" if metric == "judge" else "%"
    extra_en = extra_zh = ""
    refusal = m[name].get("refusal-acc")
    if refusal is not None:
        extra_en, extra_zh = (
            f", refusing {refusal:.0f}% of unanswerable questions",
            f"，拒答了 {refusal:.0f}% 的无法回答的问题",
        )
    second = f" (next: {rest[0][1]}, {rest[0][0]:.4g}{unit})" if rest else ""
    second_zh = f"（其次：{_zh(rest[0][1])}，{rest[0][0]:.4g}{unit}）" if rest else ""
    return (
        f"{name} answered best: {metric} {best:.4g}{unit}{second}{extra_en}.",
        f"{_zh(name)} 回答得最好：{metric} {best:.4g}{unit}{second_zh}{extra_zh}。",
    )


# ---- the evaluation -------------------------------------------------------------------------------------------------
def default_out(adapter: str | None) -> Path:
    """Scores of a tuned model go into its run folder (where the dashboard looks); others into ``./eval/``."""
    if adapter:
        return runs.eval_metrics_path(runs.eval_run_dir(adapter))
    return runs.eval_metrics_path(".")


def make_judge(values: dict):
    """The judge backend named in the settings, or None; built before any answer is generated so that a missing key
    is said at once (one sentence, from :func:`umtcds_core.llm.make_backend`)."""
    if not values.get("judge"):
        return None
    from .llm import make_backend

    return make_backend(
        values["judge"], values.get("judge_model"), values.get("judge_base_url"), values.get("judge_api_key_env")
    )


def judge_answers(judge, items: list[tuple[str, str, str]], prompt: str | None = None) -> list[tuple[int | None, str]]:
    """``(score 1-5 or None, raw reply)`` for each ``(question, reference, answer)``."""
    from .qa import parse_score

    template = prompt or JUDGE_PROMPT
    convs = [
        [
            {"role": "system", "content": JUDGE_SYSTEM},
            {
                "role": "user",
                "content": template.replace("{question}", q).replace("{reference}", r).replace("{answer}", a),
            },
        ]
        for q, r, a in items
    ]
    replies = judge.chat_batch(convs, max_tokens=16, temperature=0.0) if convs else []
    return [(parse_score(reply), reply) for reply in replies]


def evaluate(
    model: str | None,
    data: str | Path,
    adapter: str | None = None,
    out: str | Path | None = None,
    max_new_tokens: int = EVALUATE["max_new_tokens"].default,
    batch_size: int = EVALUATE["batch_size"].default,
    limit: int | None = None,
    device: str | None = None,
    chat_model=None,
    rag: str | Path | None = None,
    rag_k: int = EVALUATE["rag_k"].default,
    judge=None,
    judge_prompt: str | None = None,
) -> dict:
    """Generate, score and write ``metrics.json`` + ``examples.jsonl``/``.csv``; returns the metrics dict.

    Up to four systems: ``base`` and ``tuned`` (closed book), and ``base+retrieval`` / ``tuned+retrieval`` when
    ``rag`` names an index or the test split carries the context it was built with. ``judge`` is a backend from
    :func:`make_judge`. ``chat_model`` (a loaded :class:`~umtcds_core.chat.ChatModel`) skips loading, e.g. from the
    dashboard.
    """
    from .chat import GenOptions, context_budget, load_chat_model
    from .progress import Progress

    # the same bounds (and sentences) as the CLI and the page, for callers that come straight here
    numbers = {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "rag_k": rag_k}
    S.raise_problems("The settings", [p for k, v in numbers.items() for p in EVALUATE.field_problems(EVALUATE[k], v)])
    examples = load_examples(data, limit)
    index = None
    if rag:
        from .index import Index

        index = Index.load(rag)  # missing or stale: one sentence, before the model is loaded
    mode = "live" if index is not None else "stored" if any("chunks" in (e["meta"] or {}) for e in examples) else None
    if mode == "stored":
        examples = [e for e in examples if "chunks" in (e["meta"] or {})] or examples
    examples = expand_paraphrases(examples)
    out_path = Path(out) if out else default_out(adapter)
    if out_path.suffix.lower() != ".json":
        out_path = out_path / "metrics.json"
    started = time.time()
    cm = chat_model or load_chat_model(model, adapter, device=device)
    systems = ["base", "tuned"] if cm.has_adapter else ["base"]
    if mode:
        systems += [f"{s}+retrieval" for s in list(systems)]
    options = GenOptions(max_new_tokens=max_new_tokens, temperature=0.0)
    retrieval = _Retrieval(mode or "", index, rag_k, context_budget(cm, max_new_tokens), cm.tokenizer) if mode else None
    closed = [closed_book_prompt(ex) for ex in examples]
    grounded = [retrieval.prompt(ex) for ex in examples] if retrieval else []
    answers: dict[str, list[str]] = {}
    with Progress(len(examples) * len(systems), unit="answers", desc="evaluate") as prog:
        for system in systems:
            prog.update(0, model=system)  # the dashboard shows "generating: tuned" in its language
            convs = [g[0] for g in grounded] if system.endswith("+retrieval") else closed
            answers[system] = cm.answer_batch(
                convs,
                options,
                use_adapter=system.startswith("tuned"),
                batch_size=batch_size,
                on_batch=lambda n, v=system: prog.update(n, model=v),
            )
    rows = []
    for i, ex in enumerate(examples):
        meta = ex.get("meta") or {}
        row = {
            "id": ex["id"],
            "variant": ex["variant"],
            "kind": meta.get("kind") or ("unanswerable" if is_refusal(ex["reference"]) else "answerable"),
            "source": meta.get("source") or "",
            "question": ex["question"],
            "reference": strip_citations(_references(ex, "base", mode)),
        }
        row["key_facts"] = key_facts(row["reference"])
        for system in systems:
            answer = answers[system][i]
            ref = strip_citations(_references(ex, system, mode))
            facts = row["key_facts"] if ref == row["reference"] else key_facts(ref)
            row[f"{system}_answer"] = answer
            row.update({f"{system}_{k}": v for k, v in score(strip_citations(answer), ref, facts).items()})
            row[f"{system}_refused"] = is_refusal(answer)
            row[f"{system}_should_refuse"] = _should_refuse(ex, ref)
            if system.endswith("+retrieval"):
                shown = grounded[i][1]
                row[f"{system}_sources"] = [s.get("url") or s.get("page") for s in shown]
                row[f"{system}_source_shown"] = _has_source(shown, ex)
                row[f"{system}_cites_source"] = _has_source(cited_sources(answer, shown), ex)
                found = set(matched(answer, shown))
                row[f"{system}_matches_source"] = _has_source([s for s in shown if s["n"] in found], ex)
        rows.append(row)
    judge_info = None
    if judge is not None:
        items, where = [], []
        for i, row in enumerate(rows):
            for system in systems:
                items.append((row["question"], strip_citations(_references(examples[i], system, mode)),
                              row[f"{system}_answer"]))  # fmt: skip
                where.append((i, system))
        graded = judge_answers(judge, items, judge_prompt)
        for (i, system), (value, reply) in zip(where, graded, strict=True):
            rows[i][f"{system}_judge"] = value
            rows[i][f"{system}_judge_reply"] = reply
        judge_info = {
            "backend": getattr(judge, "name", ""),
            "model": getattr(judge, "model", None) or getattr(judge, "model_ref", None),
            "system": JUDGE_SYSTEM,
            "prompt": judge_prompt or JUDGE_PROMPT,
            "unparsed": sum(1 for v, _ in graded if v is None),
        }
    tests = [r for r in rows if r["variant"] == "test"]
    paras = [r for r in rows if r["variant"] == "paraphrase"]
    metrics = {
        "model": cm.base_ref,
        "adapter": str(cm.adapter_dir) if cm.adapter_dir else None,
        "adapter_kind": cm.adapter_kind or None,
        "data": str(Path(data)),
        "n": len(tests),
        "n_paraphrase": len(paras),
        "max_new_tokens": max_new_tokens,
        "seconds": round(time.time() - started, 2),
        "systems": systems,
        "metrics": {s: summarize(tests, s) for s in systems},
        "retrieval": {"mode": mode, "index": str(rag) if rag else None, "k": rag_k if mode == "live" else None},
        "judge": judge_info,
        "notes": {
            "bleu-4": "nltk sentence_bleu, SmoothingFunction().method3, 0-1",
            "rouge": "rouge_chinese F1 x 100 on jieba tokens",
            "key-fact": "share of reference numbers/dates/codes/names found in the answer, x 100",
            "refusal-acc": "share of unanswerable questions answered with the refusal sentence, x 100",
            "false-refusal": "share of answerable questions refused, x 100",
            "citation-acc": "share of answered answerable questions that cite their source page, x 100",
            "attribution-acc": "share of answered answerable questions that cite their source page or, citing none, "
            "were matched to it by their words (grounding.matched, shown as ≈), x 100",
            "recall@k": "share of answerable questions whose source page is among the sources shown, x 100",
            "judge": "mean 1-5 grade of the LLM judge against the reference",
        },
    }
    if paras:
        metrics["paraphrase"] = {s: summarize(paras, s) for s in systems}
    if cm.has_adapter:
        metrics["delta"] = {
            k: (None if b is None or t is None else round(t - b, 4))
            for k, b, t in ((k, metrics["metrics"]["base"][k], metrics["metrics"]["tuned"][k]) for k in METRICS)
        }
    en, zh = verdict(metrics)
    metrics["best"] = {"en": en, "zh": zh}
    eval_dir = out_path.parent
    write_jsonl_atomic(eval_dir / "examples.jsonl", rows)
    _write_csv(eval_dir / "examples.csv", rows)
    write_json_atomic(out_path, metrics)
    if chat_model is None:
        cm.unload()
    return metrics


def _write_csv(path: Path, rows: list[dict]) -> None:
    import io

    buf = io.StringIO()
    fields = list(dict.fromkeys(k for r in rows for k in r))
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("; ".join(map(str, v)) if isinstance(v, list) else v) for k, v in r.items()})
    write_text_atomic(path, buf.getvalue())


def format_report(metrics: dict) -> str:
    """A small text table: one column per system (base, tuned, +retrieval), then tuned − base."""
    m = metrics["metrics"]
    systems = list(m)
    width = max(10, *(len(s) + 2 for s in systems))
    names = [k for k in ALL_METRICS if any(m[s].get(k) is not None for s in systems) or k in METRICS]
    lines = [
        f"{'metric':<16}" + "".join(f"{s:>{width}}" for s in systems) + (f"{'delta':>10}" if "delta" in metrics else "")
    ]
    for k in names:
        cells = "".join(f"{'—' if m[s].get(k) is None else f'{m[s][k]:.4g}':>{width}}" for s in systems)
        if "delta" in metrics:
            d = metrics["delta"].get(k)
            cells += f"{'—' if d is None else f'{d:+.4g}':>10}" if k in METRICS else f"{'':>10}"
        lines.append(f"{k:<16}{cells}")
    if metrics.get("best"):
        lines.append(metrics["best"]["en"])
    return "\n".join(lines)


# ---- CLI ------------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag (and ``--config``) from :data:`EVALUATE`."""
    EVALUATE.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    values = EVALUATE.from_args(args)
    need_model(values, EvalError, "evaluate")
    if not values["data"]:
        raise EvalError(
            "Give --data with the test split (e.g. dataset/test.jsonl), or data: in the --config file.",
            zh="请用 --data 指定测试集（例如 dataset/test.jsonl），或在 --config 设置文件里写 data:。",
        )
    judge = make_judge(values)  # a missing key is said before any model is loaded
    metrics = evaluate(
        values["model"],
        values["data"],
        adapter=values["adapter"],
        out=values["out"],
        max_new_tokens=values["max_new_tokens"],
        batch_size=values["batch_size"],
        limit=values["limit"] or None,
        device=values["device"],
        rag=values["rag"],
        rag_k=values["rag_k"],
        judge=judge,
        judge_prompt=values["judge_prompt"],
    )
    print(format_report(metrics))
    out = Path(values["out"]) if values["out"] else default_out(values["adapter"])
    print(f"Wrote {out} and examples.jsonl/.csv beside it ({metrics['n']} examples).")
    return 0
