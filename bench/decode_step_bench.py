"""Host cost of one decoding step for a single row: ``umtcds_core.decode.Decoding`` against plain ``generate``.

On the H200 one client of ``umtcds serve`` (step engine, GLM-4-9B shape) got 18 tokens/s, 55 ms a token
(``bench/results/serve_step_h200.json``): far above the card's time for a 9B step at batch 1. This bench asks whether
the step engine's own loop is the cost, with a model whose arithmetic is negligible — a narrow GLM with the 9B's 40
layers (``--layers``), float32, greedy, one prompt — so that what is timed is the per-token host work: transformers'
eager forward through every layer, plus each loop's own bookkeeping. The same prompt, the same number of new tokens
(``min_new_tokens``), rounds in turn after a warm-up round, median per token; the greedy tokens of both must agree.

Usage::

    python bench/decode_step_bench.py [--layers 40] [--tokens 64] [--rounds 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import emit  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=40, help="decoder layers (GLM-4-9B has 40)")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per answer")
    ap.add_argument("--prompt", type=int, default=200, help="prompt tokens")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    args = ap.parse_args(argv)

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, GlmConfig

    from umtcds_core.decode import Decoding

    torch.set_num_threads(args.threads)
    transformers.set_seed(0)
    cfg = GlmConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=4096,
        pad_token_id=0,
        eos_token_id=1,
    )
    model = AutoModelForCausalLM.from_config(cfg).eval()
    prompt = [list(range(100, 100 + args.prompt))]
    n = args.tokens

    def plain() -> list[int]:
        out = model.generate(torch.tensor(prompt), max_new_tokens=n, min_new_tokens=n, do_sample=False)
        return out[0, len(prompt[0]) :].tolist()

    run = Decoding(model, 0)

    def steps() -> list[int]:  # the serve engine's core: prefill, join, then one step per token
        run.clear()
        _, logits, state = run.prefill(model, prompt)
        first = logits.argmax(-1)
        run.join([None], state, first)
        tokens = first.tolist()
        for _ in range(n - 1):
            _, logits = run.step(model)
            run.next = logits.argmax(-1)
            tokens += run.next.tolist()  # the host reads each token, as serve streams it
        return tokens

    per_token: dict[str, list[float]] = {"generate": [], "decoding": []}
    outputs = {}
    with torch.inference_mode():
        for r in range(args.rounds + 1):  # round 0 warms up
            for name, fn in (("generate", plain), ("decoding", steps)):
                t0 = time.perf_counter()
                outputs[name] = fn()
                if r:
                    per_token[name].append(round(1000 * (time.perf_counter() - t0) / n, 3))
    med = {k: statistics.median(v) for k, v in per_token.items()}
    result = {
        "bench": "decode_step",
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads},
        "settings": {k: getattr(args, k) for k in ("layers", "tokens", "prompt", "rounds")}
        | {"model": "GlmConfig, hidden 64, float32, random init (arithmetic negligible: host cost per step)"},
        "ms_per_token": per_token,
        "median_ms_per_token": med,
        "decoding_vs_generate": round(med["decoding"] / med["generate"], 3),
        "same_greedy_tokens": outputs["generate"] == outputs["decoding"],
    }
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
