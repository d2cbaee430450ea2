"""Can a signal outside the answer tell a question the website answers from one it does not (issue 15's refusals)?

The embedded 135M model refuses almost at random (``rag_demo_*.json``: tuned with context, unanswerable questions
refused 20 % while answerable ones were refused 42 %). A serving stack could refuse *before* asking the model when a
cheap signal says the sources cannot hold the answer. This bench measures three such signals on the demo's English
questions (the 40 seed questions, answered on the site, and the 18 unanswerable ones of ``rag_demo_bench.py``),
over the real crawl and index of the demo site:

- ``top_score``: the best chunk's retrieval score (low → refuse);
- ``coverage``: the IDF-weighted share of the question's index tokens (``index.tokenize``: folded words, stop words
  dropped) found in the top-k chunks (low → refuse);
- ``refusal_logprob``: the model's mean log-probability of the refusal sentence right after the grounded prompt
  (``grounding.build_grounded_messages``, the prompt chat and serve use), optionally with a tuned adapter
  (high → refuse).

For each: the AUC (the chance that an unanswerable question looks more refusable than an answerable one; 0.5 is a
coin) and two operating points — the answerable share refused by the threshold that refuses 80 % of the
unanswerable questions, and the unanswerable share refused when at most 20 % of the answerable ones are. Thresholds
are chosen on the same questions they are scored on, so the operating points are optimistic: a signal that misses
the issue's targets here misses them anywhere. Prints one JSON object.

Usage::

    python bench/refusal_signal_bench.py [--k 3] [--model smollm2-135m] [--adapter RUN_DIR] [--out FILE]
    python bench/refusal_signal_bench.py --no-model          # the two retrieval signals only (seconds)
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import emit  # noqa: E402

TARGET_UNANSWERABLE = 0.80  # refused at least
TARGET_ANSWERABLE = 0.20  # refused at most


def auc(refusable: list[float], answerable: list[float]) -> float:
    """P(an unanswerable question's signal > an answerable one's), ties counting half (the Mann-Whitney AUC)."""
    pairs = [(u > a) + 0.5 * (u == a) for u in refusable for a in answerable]
    return round(sum(pairs) / len(pairs), 4) if pairs else float("nan")


def operating_points(refusable: list[float], answerable: list[float]) -> dict:
    """Refuse when the signal is at least a threshold (higher = more refusable). The answerable share refused at
    the highest threshold that still refuses ≥ 80 % of the unanswerable questions, and the unanswerable share
    refused at the lowest threshold that refuses ≤ 20 % of the answerable ones; ``meets_both`` when one threshold
    does both."""

    def rates(t: float) -> tuple[float, float]:
        return (
            sum(u >= t for u in refusable) / len(refusable),
            sum(a >= t for a in answerable) / len(answerable),
        )

    grid = sorted(set(refusable) | set(answerable), reverse=True)
    at_80 = next(((t, *rates(t)) for t in grid if rates(t)[0] >= TARGET_UNANSWERABLE), None)
    at_20 = [(t, *rates(t)) for t in grid if rates(t)[1] <= TARGET_ANSWERABLE]
    at_20 = at_20[-1] if at_20 else None
    both = any(u >= TARGET_UNANSWERABLE and a <= TARGET_ANSWERABLE for u, a in map(rates, grid))
    pct = lambda x: round(100 * x, 1)  # noqa: E731
    return {
        "refusing_80pct_unanswerable": at_80
        and {"threshold": round(at_80[0], 4), "answerable_refused_pct": pct(at_80[2])},
        "refusing_le_20pct_answerable": at_20
        and {"threshold": round(at_20[0], 4), "unanswerable_refused_pct": pct(at_20[1])},
        "meets_both": both,
    }


def coverage(question_tokens: list[str], chunk_tokens: set[str], idf: dict) -> float:
    """IDF-weighted share of the question's distinct tokens that the chunks hold (1.0 for a question of no tokens);
    a token on no page weighs the most (``idf`` holds the indexed tokens and, under ``None``, the weight of none)."""
    qt = list(dict.fromkeys(question_tokens))
    weight = [idf.get(t, idf[None]) for t in qt]
    total = sum(weight)
    return sum(w for t, w in zip(qt, weight, strict=True) if t in chunk_tokens) / total if total else 1.0


def refusal_logprob_fn(model_ref: str, adapter: str | None):
    """``f(messages) -> mean log-probability of the refusal sentence`` after the chat-templated prompt."""
    import torch

    from umtcds_core import models
    from umtcds_core.grounding import REFUSAL_EN

    tok = models.load_tokenizer(model_ref)
    model = models.load_model(model_ref, device="cpu", dtype=torch.float32)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    refusal = tok(REFUSAL_EN, add_special_tokens=False)["input_ids"]

    def score(messages: list[dict]) -> float:
        prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        head = tok(prompt, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([head + refusal])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, len(head) - 1 : -1].float(), -1)
        return logp[torch.arange(len(refusal)), torch.tensor(refusal)].mean().item()

    return tok, score


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--k", type=int, default=3, help="chunks per question (the rag demo's 3)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--adapter", help="a tuned adapter folder (e.g. a rag_demo --work-dir run's checkpoint)")
    ap.add_argument("--no-model", action="store_true", help="the retrieval signals only")
    ap.add_argument("--out")
    args = ap.parse_args(argv)

    import rag_demo_bench

    from umtcds_core.grounding import build_grounded_messages
    from umtcds_core.index import Index, tokenize

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="refusal-signal-") as tmp:
        _, index_dir, base_url, report = rag_demo_bench.demo_index(Path(tmp))
        pairs, _ = rag_demo_bench.build_pairs(base_url)
        index = Index.load(index_dir)
        docs = {c["chunk_id"]: set(tokenize(c["text"])) for c in index.chunks}  # hits reuse these
        df = Counter(t for d in docs.values() for t in d)
        idf = {t: math.log((len(docs) + 1) / (n + 0.5)) for t, n in {**df, None: 0}.items()}
        tok, score = (None, None) if args.no_model else refusal_logprob_fn(args.model, args.adapter)
        rows = []
        for p in pairs:
            hits = index.search(p.question, args.k)
            held = set().union(*(docs[h["chunk_id"]] for h in hits))
            asked = tokenize(p.question)
            row = {
                "question": p.question,
                "unanswerable": (p.extra or {}).get("kind") == "unanswerable",
                "top_score": round(hits[0]["score"], 4) if hits else 0.0,
                "coverage": round(coverage(asked, held, idf), 4),
                "missing": [t for t in dict.fromkeys(asked) if t not in held],
            }
            if score is not None:
                messages, _ = build_grounded_messages(p.question, hits, tokenizer=tok)
                row["refusal_logprob"] = round(score(messages), 4)
            rows.append(row)
    signals = {"top_score": -1, "coverage": -1, **({} if score is None else {"refusal_logprob": 1})}
    result = {
        "bench": "refusal_signal",
        "settings": {"k": args.k, "model": None if args.no_model else args.model, "adapter": args.adapter},
        "questions": {
            "answerable": sum(not r["unanswerable"] for r in rows),
            "unanswerable": sum(r["unanswerable"] for r in rows),
        },
        "index": {"pages": report.pages, "chunks": report.chunks},
        "targets": {"unanswerable_refused_pct": ">= 80", "answerable_refused_pct": "<= 20"},
        "signals": {},
        "seconds": None,
        "rows": rows,
    }
    for name, sign in signals.items():  # sign: +1 when a higher value means "refuse"
        refusable = [sign * r[name] for r in rows if r["unanswerable"]]
        answerable = [sign * r[name] for r in rows if not r["unanswerable"]]
        points = operating_points(refusable, answerable)
        for point in (points["refusing_80pct_unanswerable"], points["refusing_le_20pct_answerable"]):
            if point:
                point["threshold"] = sign * point["threshold"]  # back to the signal's own scale
        result["signals"][name] = {
            "refuse_when": "higher" if sign > 0 else "lower",
            "auc": auc(refusable, answerable),
            **points,
        }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
