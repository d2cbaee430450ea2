"""Score base vs tuned answers on the test split: ``umtcds evaluate --model NAME|PATH [--adapter DIR] --data test.jsonl``.

Usage::

    umtcds evaluate --adapter runs/run-1 --data dataset/test.jsonl            # writes runs/run-1/eval/
    umtcds evaluate --model smollm2-135m --data test.jsonl --out eval/metrics.json --limit 20
    umtcds evaluate --config settings.yaml [any flag above, which wins over the file]

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
from .model_settings import adapter_setting, device_setting, model_setting, need_model
from .text import has_han

setting = S.setting

METRICS = ("bleu-4", "rouge-1", "rouge-2", "rouge-l", "key-fact")


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
    data: str | None = setting(
        None,
        ("测试集文件", "Test file"),
        "the test split (JSONL), e.g. dataset/test.jsonl",
        kind=str,
        nullable=True,
        widget="text",
        example="dataset/test.jsonl",
    )
    out: str | None = setting(
        None,
        ("结果文件", "Results file"),
        "metrics.json path; examples.jsonl/.csv go beside it (null: <run>/eval/metrics.json, or eval/metrics.json)",
        kind=str,
        nullable=True,
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
        examples.append({"id": i, "prompt": prompt, "question": question, "reference": reference})
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


# ---- the evaluation -------------------------------------------------------------------------------------------------
def default_out(adapter: str | None) -> Path:
    """Scores of a tuned model go into its run folder (where the dashboard looks); others into ``./eval/``."""
    if adapter:
        return runs.eval_metrics_path(runs.eval_run_dir(adapter))
    return runs.eval_metrics_path(".")


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
) -> dict:
    """Generate, score and write ``metrics.json`` + ``examples.jsonl``/``.csv``; returns the metrics dict.

    ``chat_model`` (a loaded :class:`~umtcds_core.chat.ChatModel`) skips loading, e.g. from the dashboard.
    """
    from .chat import GenOptions, load_chat_model
    from .progress import Progress

    # the same bounds (and sentences) as the CLI and the page, for callers that come straight here
    numbers = {"max_new_tokens": max_new_tokens, "batch_size": batch_size}
    S.raise_problems("The settings", [p for k, v in numbers.items() for p in EVALUATE.field_problems(EVALUATE[k], v)])
    examples = load_examples(data, limit)
    out_path = Path(out) if out else default_out(adapter)
    if out_path.suffix.lower() != ".json":
        out_path = out_path / "metrics.json"
    started = time.time()
    cm = chat_model or load_chat_model(model, adapter, device=device)
    variants = ["base", "tuned"] if cm.has_adapter else ["base"]
    options = GenOptions(max_new_tokens=max_new_tokens, temperature=0.0)
    convs = [ex["prompt"] for ex in examples]
    answers: dict[str, list[str]] = {}
    with Progress(len(examples) * len(variants), unit="answers", desc="evaluate") as prog:
        for variant in variants:
            prog.update(0, model=variant)  # the dashboard shows "generating: tuned" in its language
            answers[variant] = cm.answer_batch(
                convs,
                options,
                use_adapter=variant == "tuned",
                batch_size=batch_size,
                on_batch=lambda n, v=variant: prog.update(n, model=v),
            )
    rows = []
    per_variant: dict[str, list[dict]] = {v: [] for v in variants}
    for i, ex in enumerate(examples):
        facts = key_facts(ex["reference"])
        row = {"id": ex["id"], "question": ex["question"], "reference": ex["reference"], "key_facts": facts}
        for v in variants:
            s = score(answers[v][i], ex["reference"], facts)
            per_variant[v].append(s)
            row[f"{v}_answer"] = answers[v][i]
            row.update({f"{v}_{k}": val for k, val in s.items()})
        rows.append(row)
    metrics = {
        "model": cm.base_ref,
        "adapter": str(cm.adapter_dir) if cm.adapter_dir else None,
        "adapter_kind": cm.adapter_kind or None,
        "data": str(Path(data)),
        "n": len(examples),
        "max_new_tokens": max_new_tokens,
        "seconds": round(time.time() - started, 2),
        "metrics": {v: mean_scores(per_variant[v]) for v in variants},
        "notes": {
            "bleu-4": "nltk sentence_bleu, SmoothingFunction().method3, 0-1",
            "rouge": "rouge_chinese F1 x 100 on jieba tokens",
            "key-fact": "share of reference numbers/dates/codes/names found in the answer, x 100",
        },
    }
    if cm.has_adapter:
        metrics["delta"] = {
            k: (None if b is None or t is None else round(t - b, 4))
            for k, b, t in ((k, metrics["metrics"]["base"][k], metrics["metrics"]["tuned"][k]) for k in METRICS)
        }
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
    fields = list(rows[0].keys()) if rows else []
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("; ".join(v) if isinstance(v, list) else v) for k, v in r.items()})
    write_text_atomic(path, buf.getvalue())


def format_report(metrics: dict) -> str:
    """A small text table: metric, base, tuned, delta."""
    m = metrics["metrics"]
    variants = list(m)
    lines = [
        f"{'metric':<10}" + "".join(f"{v:>10}" for v in variants) + (f"{'delta':>10}" if "delta" in metrics else "")
    ]
    for k in METRICS:
        cells = "".join(f"{'—' if m[v][k] is None else f'{m[v][k]:.4g}':>10}" for v in variants)
        if "delta" in metrics:
            d = metrics["delta"][k]
            cells += f"{'—' if d is None else f'{d:+.4g}':>10}"
        lines.append(f"{k:<10}{cells}")
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
    metrics = evaluate(
        values["model"],
        values["data"],
        adapter=values["adapter"],
        out=values["out"],
        max_new_tokens=values["max_new_tokens"],
        batch_size=values["batch_size"],
        limit=values["limit"] or None,
        device=values["device"],
    )
    print(format_report(metrics))
    out = Path(values["out"]) if values["out"] else default_out(values["adapter"])
    print(f"Wrote {out} and examples.jsonl/.csv beside it ({metrics['n']} examples).")
    return 0
