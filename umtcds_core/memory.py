"""How much GPU memory a training run needs: the model's shape from its own config.json, its parameter count, and
the peak of one training step per method (:func:`estimate_memory`, whose docstring says how), with a verdict against
the GPUs present and common card sizes.

The per-method parts (trainable parameters, their optimizer state, extra activations) come from the method's row in
:mod:`umtcds_core.methods`; this module adds what every method shares (weights, activations, logits, overhead).
Torch is imported only to detect GPUs, so the config page can estimate on a machine without one.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from . import methods
from .errors import UserError
from .schema import ConfigError

if TYPE_CHECKING:
    from .config import TrainConfig


# ---- model shape --------------------------------------------------------------------------------------------------
def _pick(cfg: dict, *keys, default=None):
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return default


def shape_from_hf_config(cfg: dict) -> dict:
    """The numbers the estimate needs, from a transformers ``config.json`` dict (GLM, Llama, Qwen, …)."""
    if isinstance(cfg.get("text_config"), dict):  # multimodal wrappers keep the LM in text_config
        cfg = {**cfg["text_config"], "model_type": cfg.get("model_type")}
    h = _pick(cfg, "hidden_size", "n_embd", "d_model")
    layers = _pick(cfg, "num_hidden_layers", "num_layers", "n_layer")
    heads = _pick(cfg, "num_attention_heads", "n_head")
    vocab = _pick(cfg, "vocab_size", "padded_vocab_size")
    if not all(isinstance(x, int) and x > 0 for x in (h, layers, heads, vocab)):
        raise ConfigError(
            "The model's config.json lacks hidden_size/num_hidden_layers/vocab_size; is it a causal LM?",
            zh="模型的 config.json 缺少 hidden_size/num_hidden_layers/vocab_size；请确认它是因果语言模型（causal LM）。",
        )
    model_type = str(cfg.get("model_type") or "")
    return {
        "model_type": model_type,
        "hidden_size": h,
        "num_layers": layers,
        "num_heads": heads,
        "num_kv_heads": _pick(cfg, "num_key_value_heads", "multi_query_group_num", "num_kv_heads", default=heads),
        "head_dim": _pick(cfg, "head_dim", "kv_channels", default=h // heads),
        "intermediate_size": _pick(cfg, "intermediate_size", "ffn_hidden_size", "n_inner", default=4 * h),
        "vocab_size": vocab,
        "tie_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        "attention_bias": bool(_pick(cfg, "attention_bias", "add_qkv_bias", default=False)),
        "gated_mlp": model_type not in {"gpt2", "gpt_neox", "opt", "gptj", "bloom", "falcon", "phi"},
    }


def _shape_from_gguf(path: Path) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def get(key, default=None):
        f = reader.fields.get(key)
        if f is None:
            return default
        try:
            return f.contents()
        except Exception:  # noqa: BLE001 - odd field types: treat as missing
            return default

    arch = get("general.architecture", "llama")
    h = int(get(f"{arch}.embedding_length"))
    heads = int(get(f"{arch}.attention.head_count"))
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = get(f"{arch}.vocab_size") or (len(tokens.data) if tokens is not None else 0)
    names = {t.name for t in reader.tensors}
    return {
        "model_type": arch,
        "hidden_size": h,
        "num_layers": int(get(f"{arch}.block_count")),
        "num_heads": heads,
        "num_kv_heads": int(get(f"{arch}.attention.head_count_kv", heads)),
        "head_dim": int(get(f"{arch}.attention.key_length", h // heads)),
        "intermediate_size": int(get(f"{arch}.feed_forward_length", 4 * h)),
        "vocab_size": int(vocab),
        "tie_embeddings": "output.weight" not in names,
        "attention_bias": "blk.0.attn_q.bias" in names,
        "gated_mlp": "blk.0.ffn_gate.weight" in names,
    }


@lru_cache(maxsize=16)
def model_shape(ref: str) -> dict:
    """Shape of the model ``ref`` from its config.json (an embedded/GGUF model: its converted copy or the GGUF header)."""
    from .models import cache_dir, resolve

    spec = resolve(ref)
    if spec.kind == "hf":
        return shape_from_hf_config(json.loads((spec.path / "config.json").read_text(encoding="utf-8")))
    gguf = spec.path / (spec.gguf_file or "")
    converted = cache_dir() / "models" / f"{gguf.stem}-{gguf.stat().st_size}" / "config.json"
    if converted.exists():
        return shape_from_hf_config(json.loads(converted.read_text(encoding="utf-8")))
    return _shape_from_gguf(gguf)


def glm4_9b_shape() -> dict:
    """GLM-4-9B-chat's shape: ``transformers.GlmConfig()`` defaults (no download)."""
    from transformers import GlmConfig

    return shape_from_hf_config(GlmConfig().to_dict())


def count_params(shape: dict) -> dict:
    """Parameter counts from a shape: per layer (attention, MLP, norms), embeddings, head, linear-layer total."""
    h, hd = shape["hidden_size"], shape["head_dim"]
    q, kv = shape["num_heads"] * hd, shape["num_kv_heads"] * hd
    inter, L, V = shape["intermediate_size"], shape["num_layers"], shape["vocab_size"]
    attn = h * q + 2 * h * kv + q * h + ((q + 2 * kv) if shape["attention_bias"] else 0)
    mlp = (3 if shape["gated_mlp"] else 2) * h * inter
    norms = 2 * h
    layer = attn + mlp + norms
    embed = V * h
    head = 0 if shape["tie_embeddings"] else V * h
    total = L * layer + embed + head + h
    return {"layer": layer, "linear": L * (attn + mlp), "embed": embed, "head": head, "total": total}


# ---- memory estimate ----------------------------------------------------------------------------------------------
GIB = 1024**3
CARDS_GIB = (8, 12, 16, 24, 32, 40, 48, 80, 96, 141)


def _bytes(precision: str) -> int:
    return 4 if precision == "fp32" else 2


def kept_layer_bytes(shape: dict, a: int = 2) -> int:
    """Bytes per token a compiled decoder layer keeps for backward when it is not checkpointed (see
    :func:`estimate_memory`'s ``kept``)."""
    h, hd, inter = shape["hidden_size"], shape["head_dim"], shape["intermediate_size"]
    qd, kvd = shape["num_heads"] * hd, shape["num_kv_heads"] * hd
    return a * (2 * h + 2 * qd + 2 * kvd + 3 * inter) + h


def estimate_memory(
    cfg: TrainConfig,
    shape: dict | None = None,
    tokens: int | None = None,
    gpus: list[dict] | None = None,
    verdict: bool = True,
    fused_loss: bool = True,
    kept: int = 0,
    compiled: bool = False,
) -> dict:
    """Expected peak GPU memory of one training step of ``cfg`` on one GPU, in GiB, with a verdict.

    How it is computed (``N`` = tokens per micro-batch = batch × (max_input + max_output), the worst case — packing
    fills sequences to that length and padding never exceeds it; ``tokens`` overrides it to compare with a run whose
    batch geometry is known; ``a`` = 2 bytes in bf16/fp16, 4 in fp32; ``auto`` is taken as bf16, the GPU case):

    * **parameters** from the model's config.json (:func:`count_params`): per layer q/k/v/o (GQA-aware, with bias
      when ``attention_bias``), gated MLP ``3·h·I``, two norms; embeddings; the LM head unless tied.
    * **weights**: ``a·P`` — QLoRA: linear layers at ``bits/8`` bytes plus ~0.5 bit/param of quantisation scales, and
      embeddings/head/norms in fp32 because peft's ``prepare_model_for_kbit_training`` upcasts them.
    * **trainable state** (weights of the trainable part, its gradients, AdamW's two moments): LoRA/QLoRA/P-tuning
      adapters are fp32 (peft's default), 16 bytes per parameter; full fine-tuning in bf16 keeps everything in bf16
      (8 bytes/param, as the GLM-4 demo trains), in fp16 or fp32 it needs fp32 master weights (16 bytes/param).
      LoRA params = ``r·(in+out)`` per wrapped linear (default q/k/v); P-tuning v2 = ``T·L·2·kv_heads·head_dim``.
    * **activations** saved for backward, per token and layer: two RMSNorm inputs upcast to fp32 (``8h``); attention
      inputs, q/k/v after RoPE with K/V repeated to all heads, SDPA output (``a·(2h + 4q + 2kv)``, SDPA/flash, no
      score matrix); MLP ``a·(h + 4I)``; each LoRA-wrapped linear its fp32 input copy plus a dropout mask
      (``(4 + 1)·in``). Without gradient checkpointing all ``L`` layers are kept; with it, each layer's input
      (``a·h·L``) plus one layer recomputed during backward. ``kept`` layers at the end are not checkpointed
      (:func:`layers_to_keep`): each holds a whole layer's activations instead of its input. Compiled layers
      (``compiled``, what ``umtcds train`` runs on one GPU) keep less than the eager formula says — Inductor saves the
      16-bit inputs of the matmuls and attention (``a·(2h + 2q + 2kv + 3I)``) plus the shared LoRA dropout mask
      (``h``); measured on an H200 at 9B: 0.37 GiB per kept layer at 3,262 tokens, this formula 0.365. The first
      run of kept layers is free: backward begins with it, where it would otherwise recompute a layer anyway.
    * **logits**: a standard loss upcasts ``N × vocab`` logits to fp32 and keeps log-softmax and its gradient:
      ``12·V`` bytes per token (``16·V`` in fp32). ``umtcds train`` computes the loss in chunks of ``2**26 / V``
      tokens (``fused_loss=True``, the default), so only one chunk counts — unless ``lm_head`` is a LoRA target.
      ``fused_loss=False`` describes the Hugging Face default path (e.g. the benchmark's baseline).
    * QLoRA's non-quantised parts (embeddings, head, norms) stay 16-bit (``speed.prepare_kbit_lean``).
    * **peak**: the sum of the parts, minus ``overlap``: with checkpointing, the logits (end of forward) and the one
      layer recomputed in backward are never alive together, so only the larger of the two counts.
    * **overhead**: 5% allocator fragmentation + 0.5 GiB CUDA context; ``peak_allocated_gib`` leaves it out (compare
      it with ``torch.cuda.max_memory_allocated``), ``total_gib`` includes it (compare with nvidia-smi).

    The verdict compares ``total_gib`` with the GPUs present (``gpus``: ``[{"name", "total_gib"}]``, detected when
    None) and with common card sizes: "fits a 24 GB card", and when it does not fit the GPU present (or needs more
    than 24 GB) which change would ("switch to QLoRA", …); ``fit`` holds the same as data for the dashboard.
    """
    shape = shape or model_shape(cfg.model)
    pc = count_params(shape)
    P = pc["total"]
    L, h, V = shape["num_layers"], shape["hidden_size"], shape["vocab_size"]
    hd, inter = shape["head_dim"], shape["intermediate_size"]
    qd, kvd = shape["num_heads"] * hd, shape["num_kv_heads"] * hd
    precision = "bf16" if cfg.precision == "auto" else cfg.precision
    a = _bytes(precision)
    N = int(tokens) if tokens else cfg.per_device_batch_size * (cfg.max_input_length + cfg.max_output_length)
    method = cfg.method
    m = methods.get(method)

    # weights
    if m.quantised:
        rest = P - pc["linear"]
        # embeddings, head and norms stay 16-bit: speed.prepare_kbit_lean skips peft's fp32 upcast
        weights = pc["linear"] * (cfg.qlora_bits / 8 + (0.127 if cfg.qlora_double_quant else 0.5) / 8) + rest * a
    else:
        weights = P * a

    # trainable parameters and their state (the full model's own weights are counted above)
    trainable = m.trainable(cfg, shape, P)
    state = trainable * m.state_bytes(precision)

    # activations
    per_layer = 8 * h + a * (2 * h + 4 * qd + 2 * kvd) + a * (h + 4 * inter)
    per_layer += m.layer_extra(cfg, shape, a)
    if m.quantised:
        per_layer_transient = pc["layer"] * 2 / N if N else 0  # one layer's weights dequantised to bf16
    else:
        per_layer_transient = 0
    if cfg.gradient_checkpointing:
        recompute = (per_layer + per_layer_transient) * N  # alive only while backward recomputes one layer
        kept = max(0, min(int(kept), L))
        whole = kept_layer_bytes(shape, a) if compiled else per_layer
        # backward starts with the kept layers, so the first run of them stands in for the recompute it replaces
        # (compiled: keep_last already keeps the last run, one compile group; eager: one layer)
        free = min(kept, m.compile_group if compiled else 1)
        activations = a * h * (L - kept) * N + whole * (kept - free) * N + recompute
    else:
        recompute = kept = 0
        activations = (per_layer * L + per_layer_transient) * N
    activations += m.step_extra(cfg, shape, a)
    fp32_head = precision == "fp32"
    # umtcds train computes the loss chunk by chunk (speed.chunked_linear_cross_entropy / Liger's fused kernel on
    # CUDA): only one chunk of logits is alive at a time. A LoRA on lm_head falls back to full logits.
    head_targeted = "lm_head" in (cfg.lora_target_modules or [])
    logit_tokens = N if (head_targeted or not fused_loss) else min(N, max(64, (1 << 26) // V))
    logits = logit_tokens * V * (16 if fp32_head else 12)

    # With checkpointing, the loss's logits (end of forward; the fused loss computes its input gradient there and
    # frees them) and the one recomputed layer (during backward) are never alive together: only the larger counts.
    # Measured on an H200 (TRAIN_GPU_RUNS.md, 22 GiB cap runs): summing both overestimated every method by 0.7-1.2 GiB
    # (QLoRA +15.5 %).
    overlap = min(recompute, logits)
    peak = weights + state + activations + logits - overlap
    overhead = 0.05 * peak + 0.5 * GIB
    total = peak + overhead
    result = {
        "model": cfg.model,
        "method": method,
        "precision": precision,
        "params_total": P,
        "params_trainable": trainable,
        "tokens_per_step": N,
        "kept_layers": kept,
        "weights_gib": round(weights / GIB, 2),
        "trainable_state_gib": round(state / GIB, 2),
        "activations_gib": round(activations / GIB, 2),
        "logits_gib": round(logits / GIB, 2),
        "overlap_gib": round(overlap / GIB, 2),  # of the recomputed layer and the logits, the smaller: not both alive
        "overhead_gib": round(overhead / GIB, 2),
        "peak_allocated_gib": round(peak / GIB, 2),
        "total_gib": round(total / GIB, 2),
        "smallest_card_gib": next((c for c in CARDS_GIB if total / GIB <= c * 0.97), None),
        "shape": shape,
    }
    result["gpus"] = detect_gpus() if gpus is None else gpus
    if verdict:
        result["fit"] = _fit(cfg, result, shape, tokens)
        result["verdict"] = _verdict(result)
    return result


def layers_to_keep(
    cfg: TrainConfig, shape: dict, tokens: int, budget_gib: float, compiled: bool = True, group: int = 1
) -> tuple[int, float]:
    """``(kept, total_gib)``: how many decoder layers at the end may skip gradient checkpointing with the step of
    ``tokens`` positions staying within ``budget_gib`` (:func:`estimate_memory`'s total), in whole runs of ``group``
    layers (a compiled run is checkpointed as one); 0 when even the fully checkpointed step does not fit.

    Why: checkpointing recomputes each layer's forward during backward (about a quarter of a LoRA step); a card with
    memory to spare can keep some layers' activations instead. The default budget (20 GiB) keeps a 9B LoRA run on a
    24 GB card; a larger one turns memory into speed (bench/results/TRAIN_GPU_RUNS.md)."""
    if not cfg.gradient_checkpointing:
        return 0, estimate_memory(cfg, shape, tokens, gpus=[], verdict=False)["total_gib"]
    L = shape["num_layers"]
    group = max(1, int(group))
    best = (0, estimate_memory(cfg, shape, tokens, gpus=[], verdict=False, compiled=compiled)["total_gib"])
    for kept in range(group, L + 1, group):
        total = estimate_memory(cfg, shape, tokens, gpus=[], verdict=False, kept=kept, compiled=compiled)["total_gib"]
        if total > budget_gib:
            break
        best = (kept, total)
    return best


CARD_SHARE = 0.9
"""Of a card's memory, the most a memory budget may plan for (the rest: CUDA context, allocator slack)."""


def budget_use(
    cfg: TrainConfig, shape: dict, tokens: int, card_gib: float = 0.0, compiled: bool = True, group: int = 1
) -> dict:
    """What ``cfg.memory_budget_gib`` buys on a card of ``card_gib`` (0: unknown) for a step of ``tokens``:
    ``{"budget_gib", "kept", "layers", "total_gib"}`` — the budget in force (0 means the card, and no budget goes
    beyond :data:`CARD_SHARE` of it) and :func:`layers_to_keep`'s answer."""
    budget = float(getattr(cfg, "memory_budget_gib", 0) or 0)
    card = float(card_gib or 0) * CARD_SHARE
    if card and (budget <= 0 or budget > card):
        budget = card
    if budget <= 0:  # the whole card, and no card known: nothing to plan against
        total = estimate_memory(cfg, shape, tokens, gpus=[], verdict=False, compiled=compiled)["total_gib"]
        return {"budget_gib": 0.0, "kept": 0, "layers": shape["num_layers"], "total_gib": total}
    kept, total = layers_to_keep(cfg, shape, tokens, budget, compiled=compiled, group=group)
    return {"budget_gib": round(budget, 1), "kept": kept, "layers": shape["num_layers"], "total_gib": total}


def budget_of_estimate(cfg: TrainConfig, est: dict) -> dict | None:
    """:func:`budget_use` for the step :func:`estimate_memory` described (its shape, tokens and first GPU), with the
    method's compile settings as ``umtcds train`` applies them on one GPU; None without gradient checkpointing."""
    if not cfg.gradient_checkpointing:
        return None
    row = methods.get(cfg.method)
    card = float(est["gpus"][0]["total_gib"]) if est["gpus"] else 0.0
    return budget_use(cfg, est["shape"], est["tokens_per_step"], card, compiled=row.compile, group=row.compile_group)


FIXES = {
    "gradient_checkpointing": "gradient checkpointing",
    "qlora": "QLoRA",
    "batch_size_1": "batch size 1 (with more gradient accumulation)",
}


def _fit(cfg: TrainConfig, est: dict, shape: dict, tokens: int | None) -> dict:
    """Where the estimate fits: the first GPU present, the smallest common card, and changes that would make it fit
    the target (the GPU present when it is too small, else a 24 GB card when more is needed)."""
    total, card, gpus = est["total_gib"], est["smallest_card_gib"], est["gpus"]
    gpu = None
    if gpus:
        g = gpus[0]
        gpu = {"name": g["name"], "total_gib": g["total_gib"], "count": len(gpus)}
        gpu["fits"] = total <= g["total_gib"] * 0.97
    target = None
    if gpu is not None and not gpu["fits"]:
        target = gpu["total_gib"]
    elif gpu is None and (card is None or card > 24):
        target = 24
    fixes: list[str] = []
    if target is not None:
        limit = target * 0.97
        alts = []
        if not cfg.gradient_checkpointing:
            alts.append(("gradient_checkpointing", cfg.replace(gradient_checkpointing=True), tokens))
        if not methods.get(cfg.method).quantised:
            alts.append(("qlora", cfg.replace(method="qlora", precision="bf16"), tokens))
        if cfg.per_device_batch_size > 1 and not tokens:
            alts.append(("batch_size_1", cfg.replace(per_device_batch_size=1), None))
        for code, alt_cfg, alt_tokens in alts:
            if estimate_memory(alt_cfg, shape, alt_tokens, gpus=[], verdict=False)["total_gib"] <= limit:
                fixes.append(code)
    return {"gpu": gpu, "card_gib": card, "target_gib": target, "fixes": fixes}


def _verdict(est: dict) -> str:
    fit = est["fit"]
    parts = []
    gpu = fit["gpu"]
    if gpu is not None:
        count = f" × {gpu['count']}" if gpu["count"] > 1 else ""
        parts.append(
            f"{'fits' if gpu['fits'] else 'does not fit'} your {gpu['name']}{count} ({gpu['total_gib']:.0f} GiB)"
        )
    if fit["card_gib"] is not None:
        parts.append(f"fits a {fit['card_gib']} GB card")
    if fit["target_gib"] is not None:
        if fit["fixes"]:
            parts.append(f"needs {' or '.join(FIXES[f] for f in fit['fixes'])} to fit {fit['target_gib']:.0f} GB")
        else:
            parts.append("needs QLoRA plus shorter lengths, or several GPUs (ZeRO-3)")
    return f"~{est['total_gib']:.1f} GiB: " + "; ".join(parts)


def methods_fit(cfg: TrainConfig, shape: dict | None = None, gpus: list[dict] | None = None) -> dict:
    """Which training methods fit the detected card (or, without a GPU, the 24 GB card the original project names),
    each estimated with ``cfg``'s model, lengths and batch: ``{"card": {"name", "total_gib", "detected"}, "rows":
    [{"method", "label": (zh, en), "total_gib", "fits"}]}``.

    Why: the estimate above covers the method picked; a student renting a card wants the whole answer at once. The
    estimate is within ±10 % of the peak measured under a 22 GiB cap for LoRA, QLoRA and P-tuning v2 at 9B
    (bench/results/TRAIN_GPU_RUNS.md); "fits" keeps the verdict's 3 % margin.
    """
    shape = shape or model_shape(cfg.model)
    gpus = detect_gpus() if gpus is None else gpus
    if gpus:
        card = {"name": gpus[0]["name"], "total_gib": float(gpus[0]["total_gib"]), "detected": True}
    else:
        card = {"name": "24 GB", "total_gib": 24.0, "detected": False}  # as CARDS_GIB: the card's nominal size
    rows = []
    for name in methods.METHODS:
        m = methods.get(name)
        alt = cfg.replace(method=name, precision="bf16" if m.quantised else cfg.precision)
        try:
            total = estimate_memory(alt, shape, gpus=[], verdict=False)["total_gib"]
        except UserError:  # a method this model/config cannot use at all
            continue
        rows.append({"method": name, "label": m.label, "total_gib": total, "fits": total <= card["total_gib"] * 0.97})
    return {"card": card, "rows": rows}


def detect_gpus() -> list[dict]:
    """``[{"name", "total_gib"}]`` of the CUDA GPUs present (empty without torch/CUDA)."""
    if os.environ.get("UMTCDS_NO_GPU_DETECT"):
        return []
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        out = []
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            out.append({"name": props.name, "total_gib": round(props.total_memory / GIB, 1)})
        return out
    except Exception:  # noqa: BLE001 - no usable CUDA: no GPUs
        return []


def describe_estimate(est: dict) -> str:
    return (
        f"Memory estimate ({est['method']}, {est['precision']}, {est['tokens_per_step']} tokens/step, "
        f"{est['params_total'] / 1e9:.2f}B params, {est['params_trainable'] / 1e6:.2f}M trainable): "
        f"weights {est['weights_gib']} + trainable state {est['trainable_state_gib']} + activations "
        f"{est['activations_gib']} + logits {est['logits_gib']} + overhead {est['overhead_gib']} GiB. {est['verdict']}"
    )
