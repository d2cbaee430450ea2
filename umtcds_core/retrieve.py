"""``umtcds retrieve INDEX_DIR QUESTION [--k 5] [--json]``: the chunks of a built index that best match a question.

A command module of its own because the CLI gives each command one module (``add_arguments`` + ``run``); the index
itself, and all the knowledge of it, is :mod:`umtcds_core.index`. ``--json`` prints a JSON array, best first, of
objects with ``rank, score, url, title, text, page, chunk_id, heading`` — the shape tools and tests read. An index
built with ``--embed-model`` answers with the lexical and dense rankings fused (``score`` is the fused score; each hit
also says its ``lexical_rank`` and ``dense_rank``); the model it remembers is loaded without any flag here.
"""

from __future__ import annotations

import argparse
import json

from .index import RETRIEVE, retrieve
from .schema import check_value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("index_dir", metavar="INDEX_DIR", help="a folder built by `umtcds index`")
    parser.add_argument("question", metavar="QUESTION", help="the question to look up")
    RETRIEVE.add_arguments(parser, config=False)
    parser.add_argument("--json", action="store_true", help="print a JSON array of hits (url, title, text, score, …)")


def run(args: argparse.Namespace) -> int:
    k = RETRIEVE["k"].default if args.k is None else args.k
    check_value(RETRIEVE, "k", k)  # "--k must be between 1 and 100."
    hits = retrieve(args.index_dir, args.question, k=k)
    if args.json:
        print(json.dumps(hits, ensure_ascii=False, indent=2))
        return 0
    if not hits:
        print("No indexed chunk shares a word with the question; try other words.")
        return 0
    if "dense_rank" in hits[0]:  # an index built with --embed-model: fused scores are small (1/61 at most each)
        print("(keywords + embeddings, fused by reciprocal rank)")
    for h in hits:
        text = " ".join(h["text"].split())
        score = f"{h['score']:.4f}" if "dense_rank" in h else f"{h['score']:.2f}"
        print(f"[{h['rank']}] {score}  {h['title']}  {h['url'] or h['page']}")
        print(f"    {text[:300]}{'…' if len(text) > 300 else ''}")
    return 0
