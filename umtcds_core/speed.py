"""Speed and memory pieces of the training path, shared by ``umtcds train`` and ``bench/train_bench.py``.

Why each exists (GLM-4-9B, LoRA, bf16, one GPU; figures in ``bench/results/train_*.json``):

* :func:`make_collator` — padding-free packing: one row of concatenated samples with ``position_ids`` restarting per
  sample (transformers' ``DataCollatorWithFlattening``). transformers turns restarting positions into a per-sample
  (block-diagonal) causal mask for SDPA/eager/flex, or varlen kwargs for FlashAttention, so no compute is spent on
  padding and samples never see each other. Falls back to padding to the longest sample.
* :func:`enable_varlen_attention` — per-sample attention for packed rows through PyTorch's FlashAttention varlen
  kernel (``torch.nn.attention.varlen``), registered as a transformers attention implementation. SDPA's packed path
  builds a dense T×T block-diagonal mask and computes the full square (8 samples of ~350 tokens: ~17× the needed
  attention FLOPs, in the slower masked kernel); varlen computes only each sample's causal triangle.
* :func:`enable_fused_loss` — the loss without materialising ``tokens × vocab`` logits (GLM-4: 151,552 columns, GBs
  per step in fp32): only positions that carry a label go through the LM head, through Liger's fused
  linear+cross-entropy Triton kernel on CUDA, or a chunked, recomputed PyTorch version elsewhere (CPU, MPS, no
  Triton). Same value as the Hugging Face loss (sum over labelled tokens / their count or ``num_items_in_batch``).
* :func:`apply_kernels` — Liger's fused RMSNorm and SwiGLU kernels on the model *instance* (CUDA + liger-kernel
  only; architectures whose norm/MLP match Liger's exactly). Instance-level so other models in the process are
  untouched.
* :func:`prepare_kbit_lean` — QLoRA preparation that freezes the base without upcasting the frozen embeddings, norms
  and LM head to fp32 (peft's ``prepare_model_for_kbit_training`` does: +2.5 B params × 2 bytes for GLM-4-9B).
* :func:`packed_rebalance_sampler` — on several GPUs, each step's samples are dealt so every rank gets about the
  same number of tokens (DDP waits for the slowest rank).
* :func:`set_checkpointing` — per-layer activation checkpointing; ``skip_last`` leaves the last layers
  un-checkpointed when memory allows (selective checkpointing).
* :func:`varlen_op` — the same FlashAttention varlen kernel behind an op of our own whose arguments Inductor's C++
  wrapper can pass (torch's has a ``list[int]``); packed rows use it once a start-up check has matched it to torch's.
* :func:`compile_layers` — ``torch.compile`` of the decoder layers (one shared compiled function, dynamic shapes,
  two layers per call inside reentrant checkpointing, the last run of layers not checkpointed, adapters under 16-bit
  autocast, one LoRA dropout mask per attention — :func:`share_lora_dropout`): eager LoRA on a 9B model is
  launch-bound, the GPU idled ~45% of each step; compiled, with Liger's loss in larger chunks, it trains 2.06× as fast
  as the Hugging Face default on an H200 in steady rounds (``bench/results/train_h200.json``).

Every function degrades to plain PyTorch when there is no GPU, Triton or liger-kernel, and says which path it took.
"""

from __future__ import annotations

import functools
import importlib.util
import types
from typing import Any

IGNORE_INDEX = -100

# Norm / MLP classes whose math is exactly Liger's RMSNorm (llama casting, offset 0) / SiLU-gated MLP.
_LLAMA_STYLE_NORMS = {
    "GlmRMSNorm",
    "Glm4RMSNorm",
    "LlamaRMSNorm",
    "Qwen2RMSNorm",
    "Qwen3RMSNorm",
    "MistralRMSNorm",
    "Phi3RMSNorm",
}
_FUSED_GATE_UP_MLPS = {"GlmMLP", "Glm4MLP", "Phi3MLP"}  # gate_up_proj -> chunk -> silu(gate) * up -> down_proj
_SPLIT_GATE_UP_MLPS = {"LlamaMLP", "Qwen2MLP", "Qwen3MLP", "MistralMLP"}  # gate_proj, up_proj, down_proj


def liger_usable(device: str | None = None) -> bool:
    """True on CUDA when liger-kernel (and so Triton) can be imported."""
    import torch

    if device is not None and not str(device).startswith("cuda"):
        return False
    if not torch.cuda.is_available() or importlib.util.find_spec("liger_kernel") is None:
        return False
    try:
        import liger_kernel.transformers  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken Triton/liger install means: use the PyTorch path
        return False
    return True


def causal_lm_of(model):
    """The ``*ForCausalLM`` inside DDP / peft wrappers (or the model itself): the module holding ``lm_head``.

    Looks at real submodules only (``_modules``): peft forwards unknown attributes to the wrapped model, so
    ``hasattr`` would mistake the wrapper for the model.
    """
    inner = model
    for _ in range(4):
        if "lm_head" in inner._modules and "model" in inner._modules:
            return inner
        if hasattr(inner, "get_base_model"):
            inner = inner.get_base_model()
        elif "module" in inner._modules:  # DistributedDataParallel
            inner = inner._modules["module"]
        else:
            return None
    return None


# ---- collator ---------------------------------------------------------------------------------------------------
def make_collator(tokenizer, packing: bool, attn_implementation: str = "sdpa", device: str = "cpu"):
    """Padding-free packing collator, or padding to the longest sample (labels padded with -100).

    With FlashAttention or :data:`VARLEN_ATTN` the packed batch also carries ``cu_seq_lens_*``/``max_length_*``, so
    the attention kernels need not derive the sample boundaries from ``position_ids`` (a GPU→CPU sync per layer).
    """
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    if packing:
        return DataCollatorWithFlattening(
            return_position_ids=True,
            separator_id=IGNORE_INDEX,
            return_flash_attn_kwargs=attn_implementation.startswith("flash_attention")
            or attn_implementation == VARLEN_ATTN,
        )
    return DataCollatorForSeq2Seq(
        tokenizer,
        padding="longest",
        label_pad_token_id=IGNORE_INDEX,
        pad_to_multiple_of=8 if str(device).startswith("cuda") else None,
    )


# ---- variable-length (per-sample) attention for packed rows -----------------------------------------------------
VARLEN_ATTN = "umtcds_varlen"
_SEGMENTS: dict = {}  # id of the position_ids tensor of the current forward -> (tensor, cu_seqlens, max_len)


_KERNEL: list = []


def _varlen_kernel():
    """PyTorch's FlashAttention varlen op and the keyword that makes it causal (2.10: is_causal; later: window).

    Looked up once (``inspect`` does not trace under torch.compile; the first call is ``varlen_usable``'s check).
    """
    if _KERNEL:
        return _KERNEL[0]
    import inspect

    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    causal = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    _KERNEL.append((varlen_attn, causal, "enable_gqa" in params))
    return _KERNEL[0]


def flash_varlen(q, k, v, cu, max_len: int, scale=None, use_op: bool | None = None):
    """Causal FlashAttention over the packed segments ``cu`` of ``q/k/v`` (total_tokens, heads, dim), GQA included,
    through :func:`varlen_op` once :func:`enable_varlen_attention` has checked it (``use_op``), else through
    ``torch.nn.attention.varlen`` (both have their own autograd and trace under torch.compile)."""
    if use_op is None:
        use_op = _OPS.get("ok", False)
    if use_op:
        return varlen_op()(q, k, v, cu, max_len, float(q.shape[-1] ** -0.5 if scale is None else scale))[0]
    kernel, causal, gqa = _varlen_kernel()
    extra = {}
    if k.shape[1] != q.shape[1]:
        if gqa:
            extra["enable_gqa"] = True
        else:
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    return kernel(q, k, v, cu, cu, max_len, max_len, scale=scale, **causal, **extra)


# ---- our own varlen op: the same FlashAttention kernel, callable from Inductor's C++ wrapper ----------------------
VARLEN_OP = "umtcds::varlen_attn"
_OPS: dict = {}


def _segment_ids(cu, total: int, device):
    """The packed segment each of ``total`` tokens belongs to (0, 1, …), from the ``cu_seqlens`` boundaries."""
    import torch

    starts = torch.zeros(total, dtype=torch.int32, device=device)
    starts[cu[1:-1].long()] = 1
    return torch.cumsum(starts, 0)


def _varlen_reference(q, k, v, cu, scale: float, grad=None):
    """Per-segment causal attention in fp32, the op's implementation off CUDA (CPU tests): ``(out, lse)`` with lse
    shaped ``(heads, tokens)`` as FlashAttention's; with ``grad`` (d out), ``(dq, dk, dv)`` instead, written out
    (a custom op's implementation runs below autograd)."""
    import torch

    total, heads, dim = q.shape
    group = heads // k.shape[1]
    kf = k.float().repeat_interleave(group, dim=1)
    vf = v.float().repeat_interleave(group, dim=1)
    seg = _segment_ids(cu, total, q.device)
    pos = torch.arange(total, device=q.device)
    allowed = (seg[:, None] == seg[None, :]) & (pos[:, None] >= pos[None, :])
    scores = (torch.einsum("thd,shd->hts", q.float(), kf) * scale).masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.einsum("hts,shd->thd", probs, vf)
    if grad is None:
        return out.to(q.dtype).contiguous(), torch.logsumexp(scores, dim=-1).contiguous()
    g = grad.float()
    dv = torch.einsum("hts,thd->shd", probs, g)
    dp = torch.einsum("thd,shd->hts", g, vf)
    ds = probs * (dp - (g * out).sum(-1).transpose(0, 1)[:, :, None]) * scale
    dq = torch.einsum("hts,shd->thd", ds, kf)
    dk = torch.einsum("hts,thd->shd", ds, q.float())

    def fold(t):  # grouped query heads share one KV head: sum their gradients
        return t.view(total, k.shape[1], group, dim).sum(2)

    return (dq.to(q.dtype).contiguous(), fold(dk).to(k.dtype).contiguous(), fold(dv).to(v.dtype).contiguous())


def _torch_varlen_call(op, values: dict):
    """Call one of ``torch.nn.attention.varlen``'s private ops by argument name: its schema moved between releases
    (2.10: ``is_causal``; later also ``window_size``, ``enable_gqa``); names it lacks are dropped, a required one we
    do not know raises (and the start-up check then keeps the public path)."""
    args = {}
    for arg in op.default._schema.arguments:
        if arg.name in values:
            args[arg.name] = values[arg.name]
        elif not arg.has_default_value():
            raise TypeError(f"{op} needs {arg.name}")
    return op(**args)


def varlen_op():
    """``torch.ops.umtcds.varlen_attn(q, k, v, cu_seqlens, max_len, scale) -> (out, lse, rng_state)``: causal
    per-segment attention (GQA included) with its own backward op, defined once per process.

    On CUDA it runs PyTorch's FlashAttention varlen kernel (through ``torch.nn.attention.varlen``'s private ops, so
    the result is the public path's); elsewhere the fp32 reference. Why a second op: torch's has a ``list[int]``
    argument that Inductor's C++ wrapper cannot pass, and the C++ wrapper is what takes the per-kernel Python
    launch cost off a host-bound LoRA step. Only tensors, an int and a float cross this op's boundary.
    """
    if "fwd" in _OPS:
        return _OPS["fwd"]
    import torch

    def causal_kwargs(q, k, v, cu, max_len, scale):
        return {
            "query": q, "key": k, "value": v, "cu_seq_q": cu, "cu_seq_k": cu, "max_q": max_len, "max_k": max_len,
            "is_causal": True, "scale": scale, "window_size": [-1, 0], "enable_gqa": k.shape[1] != q.shape[1],
        }  # fmt: skip

    @torch.library.custom_op(
        VARLEN_OP,
        mutates_args=(),
        schema="(Tensor q, Tensor k, Tensor v, Tensor cu, SymInt max_len, float scale) -> (Tensor, Tensor, Tensor)",
    )
    def fwd(q, k, v, cu, max_len, scale):
        if q.is_cuda:
            from torch.nn.attention import varlen  # noqa: F401 - registers torch_attn ops

            out, lse, rng = _torch_varlen_call(
                torch.ops.torch_attn._varlen_attn, causal_kwargs(q, k, v, cu, max_len, scale)
            )
            return out, lse, rng
        out, lse = _varlen_reference(q, k, v, cu, scale)
        return out, lse, torch.zeros(2, dtype=torch.int64, device=q.device)

    @fwd.register_fake
    def _(q, k, v, cu, max_len, scale):
        rng_dtype = torch.uint64 if q.is_cuda else torch.int64
        return (
            torch.empty_like(q),
            q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32),
            q.new_empty((2,), dtype=rng_dtype),
        )

    @torch.library.custom_op(
        VARLEN_OP + "_backward",
        mutates_args=(),
        schema="(Tensor grad, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor rng, Tensor cu, "
        "SymInt max_len, float scale) -> (Tensor, Tensor, Tensor)",
    )
    def bwd(grad, q, k, v, out, lse, rng, cu, max_len, scale):
        if q.is_cuda:
            values = causal_kwargs(q, k, v, cu, max_len, scale) | {
                "grad_out": grad, "out": out, "lse": lse, "rng_state": rng,
            }  # fmt: skip
            dq, dk, dv = _torch_varlen_call(torch.ops.torch_attn._varlen_attn_backward, values)
            return dq, dk, dv
        return _varlen_reference(q, k, v, cu, scale, grad=grad)

    @bwd.register_fake
    def _(grad, q, k, v, out, lse, rng, cu, max_len, scale):
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def setup_context(ctx, inputs, output):
        q, k, v, cu, max_len, scale = inputs
        out, lse, rng = output
        ctx.save_for_backward(q, k, v, out, lse, rng, cu)
        ctx.max_len, ctx.scale = max_len, scale

    def backward(ctx, grad, _grad_lse, _grad_rng):
        q, k, v, out, lse, rng, cu = ctx.saved_tensors
        dq, dk, dv = bwd(grad.contiguous(), q, k, v, out, lse, rng, cu, ctx.max_len, ctx.scale)
        return dq, dk, dv, None, None, None

    fwd.register_autograd(backward, setup_context=setup_context)
    _OPS["fwd"] = torch.ops.umtcds.varlen_attn
    return _OPS["fwd"]


def varlen_op_usable() -> bool:
    """True when :func:`varlen_op` gives the public ``torch.nn.attention.varlen`` path's output and gradients on
    this GPU (checked once: two causal segments, grouped KV heads, relative tolerance for bf16)."""
    import torch

    if "ok" not in _OPS:
        _OPS["ok"] = False
        try:
            g = torch.Generator(device="cuda").manual_seed(0)
            shapes = ((40, 8, 64), (40, 2, 64), (40, 2, 64))
            base = [torch.randn(*s, device="cuda", dtype=torch.bfloat16, generator=g) for s in shapes]
            cu = torch.tensor([0, 17, 40], device="cuda", dtype=torch.int32)
            grad = torch.randn(40, 8, 64, device="cuda", dtype=torch.bfloat16, generator=g)
            results = []
            for use_op in (True, False):
                leaves = [t.clone().requires_grad_(True) for t in base]
                out = flash_varlen(*leaves, cu, 23, 0.125, use_op=use_op)
                out.backward(grad)
                results.append([out, *(t.grad for t in leaves)])
            _OPS["ok"] = all(
                bool(((a.float() - b.float()).abs() <= 2e-2 * b.float().abs().max() + 1e-2).all())
                for a, b in zip(*results, strict=True)
            )
        except Exception:  # noqa: BLE001 - an op schema or kernel we do not know: the public path
            _OPS["ok"] = False
    return _OPS["ok"]


def _segments(position_ids, batch: int, length: int, device):
    """``cu_seqlens`` (int32) and the longest segment of a packed row, from ``position_ids`` (cached per forward)."""
    import torch

    if position_ids is None:
        cu = torch.arange(0, (batch + 1) * length, length, dtype=torch.int32, device=device)
        return cu, length
    hit = _SEGMENTS.get(id(position_ids))
    if hit is not None and hit[0] is position_ids:
        return hit[1], hit[2]
    flat = position_ids.expand(batch, -1).reshape(-1).to(device)
    first = torch.ones(1, dtype=torch.bool, device=device)
    starts = torch.nonzero(torch.cat([first, flat[1:] - flat[:-1] != 1])).flatten()
    # a new row of the batch always starts a new segment
    row_starts = torch.arange(0, batch * length, length, device=device)
    starts = torch.unique(torch.cat([starts, row_starts]))
    cu = torch.cat([starts, torch.tensor([batch * length], device=device)]).to(torch.int32)
    max_len = int((cu[1:] - cu[:-1]).max())
    _SEGMENTS.clear()
    _SEGMENTS[id(position_ids)] = (position_ids, cu, max_len)
    return cu, max_len


def varlen_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Attention for transformers' ``AttentionInterface``: each packed sample attends only to itself, causally.

    Packed rows (no 2-D mask, no cache) go through PyTorch's FlashAttention varlen kernel on CUDA: cost grows with
    the sum of squared sample lengths instead of the square of the row length, and no T×T mask is built. The segment
    boundaries come from the collator's ``cu_seq_lens_q`` or from restarting ``position_ids``. Anything else (padding
    masks, KV caches, CPU) goes to SDPA, with an explicit per-sample mask where the row is packed.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, length, dim = query.shape
    kwargs.pop("is_causal", None)
    packed = attention_mask is None and key.shape[2] == length
    if not packed:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    cu, max_len = kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q")
    if cu is None or batch != 1:
        cu, max_len = _segments(kwargs.get("position_ids"), batch, length, query.device)
    cu = cu.to(device=query.device, dtype=torch.int32)
    if query.is_cuda and dropout == 0.0 and query.dtype in (torch.bfloat16, torch.float16):
        q = query.transpose(1, 2).reshape(batch * length, heads, dim)
        k = key.transpose(1, 2).reshape(batch * length, key.shape[1], dim)
        v = value.transpose(1, 2).reshape(batch * length, value.shape[1], dim)
        out = flash_varlen(q, k, v, cu, int(max_len), scaling)
        return out.view(batch, length, heads, dim), None
    # portable fallback: an explicit block-diagonal causal mask (CPU tests, fp32); static shapes, so it also traces
    # under torch.compile
    seg = _segment_ids(cu, batch * length, query.device).view(batch, length)
    pos = torch.arange(length, device=query.device)
    mask = (seg[:, :, None] == seg[:, None, :]) & (pos[None, :, None] >= pos[None, None, :])
    return sdpa_attention_forward(
        module, query, key, value, mask[:, None], dropout=dropout, scaling=scaling, is_causal=False, **kwargs
    )


def _varlen_mask(*args, **kwargs):
    """Mask builder paired with :func:`varlen_attention_forward`: none for packed rows, SDPA's otherwise."""
    from transformers.masking_utils import sdpa_mask

    if (
        kwargs.get("attention_mask") is None
        and kwargs.get("q_length") == kwargs.get("kv_length")
        and not kwargs.get("kv_offset")
    ):
        return None
    return sdpa_mask(*args, **kwargs)


_VARLEN_OK: dict = {}


def varlen_usable(device: str | None = None) -> bool:
    """True on CUDA when this PyTorch has the FlashAttention varlen op (torch >= 2.10) and it gives SDPA's result.

    Checked once per process on two small causal segments against SDPA, so a broken or missing kernel means SDPA.
    """
    import torch

    if device is not None and not str(device).startswith("cuda"):
        return False
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8:
        return False
    if "ok" not in _VARLEN_OK:
        try:
            g = torch.Generator(device="cuda").manual_seed(0)
            q, k, v = (torch.randn(24, 4, 64, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
            cu = torch.tensor([0, 10, 24], device="cuda", dtype=torch.int32)
            out = flash_varlen(q, k, v, cu, 14, use_op=False)
            ref = torch.cat(
                [
                    torch.nn.functional.scaled_dot_product_attention(
                        *(t[a:b].transpose(0, 1) for t in (q, k, v)), is_causal=True
                    ).transpose(0, 1)
                    for a, b in ((0, 10), (10, 24))
                ]
            )
            _VARLEN_OK["ok"] = bool((out.float() - ref.float()).abs().max() < 2e-2)
        except Exception:  # noqa: BLE001 - older torch or no kernel for this GPU: keep SDPA's mask
            _VARLEN_OK["ok"] = False
    return _VARLEN_OK["ok"]


def enable_varlen_attention(model, device: str | None = None, force: bool = False) -> str:
    """Switch ``model`` to :func:`varlen_attention_forward` (for packed training); returns the implementation used.

    On CPU (or an old torch) the model keeps its attention unless ``force`` (tests), since the fallback builds the
    same dense mask SDPA would. Call ``model.set_attn_implementation("sdpa")`` before generating with the model.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    lm = causal_lm_of(model) or model
    if not (force or varlen_usable(device)):
        return lm.config._attn_implementation
    if not force:
        varlen_op_usable()  # packed rows then go through our op (same kernel; C++-wrapper friendly)
    AttentionInterface.register(VARLEN_ATTN, varlen_attention_forward)
    AttentionMaskInterface.register(VARLEN_ATTN, _varlen_mask)
    lm.set_attn_implementation(VARLEN_ATTN)
    return VARLEN_ATTN


def varlen_path() -> str:
    """Which op packed rows go through after :func:`enable_varlen_attention` (for run notes and the bench)."""
    return VARLEN_OP if _OPS.get("ok") else "torch.nn.attention.varlen"


# ---- fused / chunked linear + cross-entropy -----------------------------------------------------------------------
def _ce_sum(hidden, weight, bias, targets):
    import torch.nn.functional as F

    logits = F.linear(hidden, weight, bias).float()
    return F.cross_entropy(logits, targets, reduction="sum", ignore_index=IGNORE_INDEX)


def chunked_linear_cross_entropy(hidden, weight, targets, bias=None, chunk_tokens: int | None = None):
    """Sum of the cross-entropy of ``hidden @ weight.T`` against ``targets`` without holding all logits at once.

    Each chunk's logits are recomputed in backward (``torch.utils.checkpoint``), so memory holds one chunk of
    ``chunk_tokens × vocab`` fp32 logits (default: about 256 MiB of them) instead of all of them.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    n = hidden.shape[0]
    if chunk_tokens is None:
        chunk_tokens = max(64, (1 << 26) // max(1, weight.shape[0]))
    total = hidden.new_zeros((), dtype=torch.float32)
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    for start in range(0, n, chunk_tokens):
        h, y = hidden[start : start + chunk_tokens], targets[start : start + chunk_tokens]
        if needs_grad:
            total = total + checkpoint(_ce_sum, h, weight, bias, y, use_reentrant=False)
        else:
            total = total + _ce_sum(h, weight, bias, y)
    return total


LIGER_LOGITS_BUDGET = 128 << 20  # bytes of transient 16-bit logits per chunk in Liger's fused loss
_LIGER_ARGS: dict = {}


def _liger_chunking(fn, tokens: int, hidden: int, vocab: int, budget: int = LIGER_LOGITS_BUDGET) -> dict:
    """``chunk_mem_const`` for Liger's fused linear+cross-entropy: chunks of about ``budget`` bytes of logits.

    Liger's default budget is ``tokens × hidden`` logits, which for a 151,552-word vocabulary means chunks of 64
    tokens: each chunk re-reads the whole 1.2 GB LM head twice (logits, input gradient), so the loss becomes
    memory-bound (~26 chunks per 8-sample step). Chunks of a few hundred tokens keep the matmuls compute-bound
    for a transient buffer of ~128 MiB. Empty where this Liger has no such argument.
    """
    if "ok" not in _LIGER_ARGS:
        import inspect

        _LIGER_ARGS["ok"] = "chunk_mem_const" in inspect.signature(fn).parameters
    if not _LIGER_ARGS["ok"] or tokens <= 0:
        return {}
    target = max(1, budget // (vocab * 2))  # tokens per chunk within the budget (bf16/fp16 logits)
    return {"chunk_mem_const": max(1, (vocab * target) // (hidden * tokens))}


def causal_lm_loss(hidden_states, lm_head, labels, num_items_in_batch=None, shift_labels=None, use_liger=False):
    """The Hugging Face causal-LM loss (shifted labels, -100 ignored, sum/num_items or mean) without full logits."""
    import torch.nn.functional as F

    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])
    targets = shift_labels.reshape(-1).to(hidden.device)
    # only labelled positions need the LM head at all; one host sync for their count (a boolean-mask index on
    # each of the two tensors would wait for the GPU twice)
    keep = (targets != IGNORE_INDEX).nonzero().squeeze(1)
    hidden, targets = hidden.index_select(0, keep), targets.index_select(0, keep)
    count = targets.numel()
    if count == 0:
        return hidden_states.sum() * 0.0  # keeps the graph (and DDP) happy on a batch without labels
    weight, bias = lm_head.weight, getattr(lm_head, "bias", None)
    if use_liger and hidden.is_cuda:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        total = liger_fused_linear_cross_entropy(
            hidden,
            weight,
            targets,
            bias=bias,
            ignore_index=IGNORE_INDEX,
            reduction="sum",
            **_liger_chunking(liger_fused_linear_cross_entropy, count, weight.shape[1], weight.shape[0]),
        )
        if isinstance(total, tuple):
            total = total[0]
    else:
        total = chunked_linear_cross_entropy(hidden, weight, targets, bias=bias)
    denom = num_items_in_batch if num_items_in_batch is not None else count
    if hasattr(denom, "to"):
        denom = denom.to(total.device)
    return total / denom


def enable_fused_loss(model, device: str | None = None, use_liger: bool | None = None) -> str:
    """Make ``model(..., labels=...)`` compute its loss without full logits; returns "liger", "chunked" or "".

    Patches the forward of the ``*ForCausalLM`` instance (inside any peft wrapper): with labels it runs the decoder,
    then :func:`causal_lm_loss` on the final hidden states and returns ``logits=None``; without labels (generation)
    it is the original forward. Models without ``.model``/``.lm_head`` (or with a logit soft-cap) are left alone ("").
    """
    import torch
    from transformers.modeling_outputs import CausalLMOutputWithPast

    lm = causal_lm_of(model)
    if lm is None or getattr(lm.config, "final_logit_softcapping", None):
        return ""
    if type(getattr(lm, "lm_head", None)) is not torch.nn.Linear:
        # a LoRA/modules_to_save-wrapped LM head: its adapter would be bypassed by a loss that reads lm_head.weight
        return ""
    if getattr(lm, "_umtcds_fused_loss", ""):
        return lm._umtcds_fused_loss
    use_liger = liger_usable(device) if use_liger is None else use_liger and liger_usable(device)
    original = lm.forward

    def forward(self, *args, labels=None, logits_to_keep=0, **kwargs):
        shift_labels = kwargs.pop("shift_labels", None)
        if (labels is None and shift_labels is None) or args:
            return original(*args, labels=labels, logits_to_keep=logits_to_keep, **kwargs)
        num_items = kwargs.pop("num_items_in_batch", None)
        kwargs.pop("return_dict", None)
        outputs = self.model(**kwargs)
        hidden = outputs[0]
        loss = causal_lm_loss(
            hidden,
            self.lm_head,
            labels,
            num_items_in_batch=num_items,
            shift_labels=shift_labels,
            use_liger=use_liger and hidden.is_cuda and self.training,
        )
        return CausalLMOutputWithPast(loss=loss, logits=None)

    lm.forward = types.MethodType(forward, lm)
    lm._umtcds_fused_loss = "liger" if use_liger else "chunked"
    return lm._umtcds_fused_loss


# ---- Liger kernels on an instance ---------------------------------------------------------------------------------
def apply_kernels(model, device: str | None = None) -> list[str]:
    """Swap RMSNorm and SwiGLU forwards of ``model``'s layers for Liger's Triton kernels; returns what was patched."""
    if not liger_usable(device):
        return []
    from liger_kernel.transformers.rms_norm import LigerRMSNorm
    from liger_kernel.transformers.swiglu import LigerPhi3SwiGLUMLP, LigerSwiGLUMLP

    lm = causal_lm_of(model)
    if lm is None:
        return []
    hidden_act = getattr(lm.config, "hidden_act", "silu")
    done: dict[str, int] = {}
    for module in lm.modules():
        name = type(module).__name__
        if name in _LLAMA_STYLE_NORMS and hasattr(module, "weight"):
            module.offset = 0.0
            module.casting_mode = "llama"
            module.variance_epsilon = getattr(module, "variance_epsilon", None) or getattr(module, "eps", 1e-6)
            module.in_place = False
            module.row_mode = None
            module.forward = types.MethodType(LigerRMSNorm.forward, module)
            done["rms_norm"] = done.get("rms_norm", 0) + 1
        elif hidden_act in ("silu", "swish") and name in _FUSED_GATE_UP_MLPS and hasattr(module, "gate_up_proj"):
            module.forward = types.MethodType(LigerPhi3SwiGLUMLP.forward, module)
            done["swiglu"] = done.get("swiglu", 0) + 1
        elif hidden_act in ("silu", "swish") and name in _SPLIT_GATE_UP_MLPS and hasattr(module, "gate_proj"):
            module.forward = types.MethodType(LigerSwiGLUMLP.forward, module)
            done["swiglu"] = done.get("swiglu", 0) + 1
    return [f"{k} x{v}" for k, v in done.items()]


# ---- torch.compile of the repeated decoder layer ------------------------------------------------------------------
_COMPILE_OK: dict = {}


def compile_usable(device: str | None = None) -> bool:
    """True on CUDA when torch.compile's GPU back end (Inductor + Triton) is importable.

    Compiling pays on a GPU, where eager LoRA training of a 9B model is bound by Python and kernel launches (dozens
    of small elementwise kernels per layer: LoRA casts/scales/adds, RoPE, norms); on CPU the compile costs more
    than it saves for the small models people train there.
    """
    import torch

    if device is not None and not str(device).startswith("cuda"):
        return False
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 7:
        return False
    if "ok" not in _COMPILE_OK:
        _COMPILE_OK["ok"] = importlib.util.find_spec("triton") is not None and hasattr(torch, "compile")
    return _COMPILE_OK["ok"]


# what ``umtcds train`` uses (bench/results/train_*.json: measured against the alternatives on an H200)
COMPILE_DEFAULTS = {
    "reentrant": True,
    "skip_module_guards": True,
    "group": 2,
    "adapter_autocast": True,
    "keep_last": True,
    "shared_dropout": True,
}


def compile_options(method: str = "lora") -> dict:
    """:data:`COMPILE_DEFAULTS` for a training method. QLoRA compiles one layer per call: its compiled path was
    measured that way (runs of two were measured for LoRA only), and autocast is skipped for k-bit models anyway."""
    opts = dict(COMPILE_DEFAULTS)
    if method == "qlora":
        opts["group"] = 1
    return opts


def is_kbit(model) -> bool:
    """True for a quantised model (bitsandbytes 4/8-bit, or any transformers quantiser): its layers keep their own
    compute-dtype handling, and their matmuls round differently for different batch shapes."""
    return any(getattr(model, a, False) for a in ("is_loaded_in_4bit", "is_loaded_in_8bit", "is_quantized"))


def uncompile_layers(model) -> None:
    """Undo :func:`compile_layers`: the layers' class forward (eager) again, compiled code dropped."""
    import torch

    for layer in decoder_layers(causal_lm_of(model) or model):
        layer.__dict__.pop("forward", None)
        layer.__dict__.pop("_umtcds_passthrough", None)
    unshare_lora_dropout(model)
    torch._dynamo.reset()


def compile_layers(
    model,
    device: str | None = None,
    force: bool = False,
    cpp_wrapper: bool = False,
    reentrant: bool = False,
    skip_module_guards: bool = False,
    group: int = 1,
    skip_guard_eval: bool = False,
    adapter_autocast: bool = False,
    keep_last: bool = False,
    shared_dropout: bool = False,
) -> int:
    """``torch.compile`` each decoder layer (regional compilation); returns how many layers were compiled.

    All layers share one compiled function (same code, the layers passed as an argument), so the compile is paid
    once (1-2 minutes for GLM-4-9B), with dynamic shapes so packed rows of any length reuse it. Activation
    checkpointing stays PyTorch's eager ``checkpoint`` *around* the compiled layer (tracing the checkpoint inside
    the graph trips Inductor's partitioner on these layers), so the recompute in backward runs the compiled code
    too. Inductor fuses each layer's elementwise work (LoRA dropout/scale/add and dtype casts,
    RoPE, RMSNorm, SwiGLU, residual adds) into a few kernels, which removes the launch-bound gaps of eager mode.
    On CPU (or without Triton) nothing changes unless ``force`` (tests: the same code through Inductor's C++
    back end).

    ``cpp_wrapper``: Inductor's C++ wrapper launches the layer's kernels instead of generated Python (set
    process-wide: backward graphs compile lazily, after a scoped option would have ended). Measured, not used: with
    :func:`varlen_op` it compiles and runs, at the same speed (9,840 vs 9,859 tok/s on the H200,
    ``train_h200_s4_run1_own_op_cpp.json``): the idle GPU time is not the wrapper's kernel launches.
    ``reentrant``: the checkpointed forward runs without autograd (a cheaper inference graph) and the layer is re-run
    with autograd in backward, instead of recording and discarding the forward's saved tensors (else: the layer's
    own non-reentrant checkpointing). ``skip_module_guards``: the training function does not re-check every module
    attribute and parameter on each call (all decoder layers have the same structure, and training never changes
    it). ``group``: in training, each run of ``group`` consecutive layers is one compiled call and one checkpoint
    (the first layer of the run computes them all, the others pass its output through): fewer Python/Dynamo calls
    per step, the same arithmetic; the recompute then holds a group's activations at once. ``skip_guard_eval``:
    once a kind of call (grad mode × layers per call) has compiled its graph, later calls of that kind evaluate only
    the guards that tell cached graphs apart (``torch.compiler.set_stance(skip_guard_eval_unsafe=True)``; measured,
    not used: no gain on the H200).
    ``adapter_autocast``: training layers of a 16-bit model run under autocast to that dtype, so the fp32 adapters
    (peft keeps LoRA weights in fp32) compute in 16-bit with fp32 accumulation, as mixed-precision training does,
    instead of TF32 matmuls on fp32 copies of every adapter input; evaluation is unchanged.
    ``keep_last``: the last run of layers is not checkpointed. Backward would recompute it first, holding the same
    activations the forward now keeps, so the peak does not grow (measured: 19.21 vs 19.24 GiB) and one run's
    recompute per step is saved. ``shared_dropout``: :func:`share_lora_dropout`.
    """
    if not (force or compile_usable(device)):
        return 0
    import torch

    if cpp_wrapper:
        torch._inductor.config.cpp_wrapper = True
    if reentrant and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()  # reentrant checkpointing needs an input that requires grad

    layers = decoder_layers(causal_lm_of(model) or model)
    if shared_dropout:
        share_lora_dropout(model)
    # one graph for training, one for evaluation (no grad), a few for shape changes: stay well below the limit
    name = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 32))
    options = {}
    if skip_module_guards and hasattr(torch.compiler, "skip_guard_on_all_nn_modules_unsafe"):
        options["guard_filter_fn"] = torch.compiler.skip_guard_on_all_nn_modules_unsafe
    # training and evaluation/generation get separate compiled functions (separate code objects, separate caches),
    # so skipping module guards for training can never reuse a training graph (dropout on) in eval mode
    # k-bit layers keep their own compute-dtype handling (bitsandbytes casts per layer)
    kbit = is_kbit(model)
    train_fn = torch.compile(
        _layers_train_autocast if adapter_autocast and not kbit else _layers_train,
        dynamic=True,
        options=options or None,
    )
    if skip_guard_eval and hasattr(torch.compiler, "set_stance"):
        train_fn = _GuardSkipping(train_fn)
    eval_fn = torch.compile(_layer_eval, dynamic=True)
    group = max(1, int(group))
    # transformers wraps the class's forward in its checkpointing shim; compile what it wraps
    inner = getattr(type(layers[0]).forward, "__wrapped__", type(layers[0]).forward) if layers else None
    for i, layer in enumerate(layers):
        run = tuple(layers[i : i + group]) if i % group == 0 else None
        last = keep_last and run is not None and layers[-1] in run
        layer.forward = types.MethodType(_checkpointed(inner, train_fn, eval_fn, reentrant, run, last), layer)
        layer._umtcds_passthrough = False
    return len(layers)


_QKV = ("q_proj", "k_proj", "v_proj")


_SHARED_DROPOUT: list = []


def _shared_dropout_class():
    if _SHARED_DROPOUT:
        return _SHARED_DROPOUT[0]
    import torch

    class SharedLoraDropout(torch.nn.Module):
        """One dropout mask for the LoRA inputs of a layer's q/k/v projections (see :func:`share_lora_dropout`).

        The attention calls q, k and v in turn on the same hidden states: the first call draws the mask, the next
        ``users - 1`` calls of the same shape reuse it, and the last one drops it. Anything else (another shape, a
        call sequence cut short) draws a fresh mask, so the result is always a valid dropout.
        """

        def __init__(self, p: float, users: int):
            super().__init__()
            self.p, self.users = float(p), int(users)
            self._mask = None
            self._left = 0
            self._hook = None

        def reset(self, *_args) -> None:
            """Forget a held mask (a forward pre-hook of the attention)."""
            self._mask = None
            self._left = 0

        def forward(self, x):
            if not self.training or self.p == 0.0:
                return x
            mask = self._mask
            if mask is None or mask.shape != x.shape or mask.device != x.device:  # None once its users are done
                mask = torch.rand_like(x, dtype=torch.float32) >= self.p
                self._left = self.users
            self._left -= 1
            self._mask = mask if self._left > 0 else None
            return x * mask.to(x.dtype) * (1.0 / (1.0 - self.p))

        def extra_repr(self) -> str:
            return f"p={self.p}, shared by {self.users} projections"

    _SHARED_DROPOUT.append(SharedLoraDropout)
    return SharedLoraDropout


def share_lora_dropout(model) -> int:
    """Give each attention's q/k/v LoRA adapters one dropout mask per forward instead of three; returns the
    attentions changed.

    GLM-4's own checkpoint has one fused ``query_key_value`` projection, so LoRA there drops the same input units
    for q, k and v; transformers' GLM splits it in three and peft then draws three masks of ``tokens × hidden``
    random numbers per layer and pass. Measured on the H200 (GLM-4-9B shape, ``ours+nodrop``), LoRA dropout costs
    ~3% of the step, almost all of it random-number generation in the fused RMSNorm+dropout kernels; one mask
    instead of three gave +2% (10,401–10,412 vs 10,180–10,224 tok/s, ``train_h200.json``, ``ours+nosd``). It
    applies where the layers are compiled (``umtcds train`` on one GPU). Only plain single-adapter LoRA with the same
    dropout on all three is changed. transformers' decoder attentions call q, k and v in turn on one input; a call of
    another shape draws a fresh mask, and the attention's forward pre-hook starts every call afresh.
    """
    import torch

    cls = _shared_dropout_class()
    changed = 0
    for module in (causal_lm_of(model) or model).modules():
        projs = [getattr(module, n, None) for n in _QKV]
        dicts = [getattr(p, "lora_dropout", None) for p in projs]
        if not all(isinstance(d, torch.nn.ModuleDict) and len(d) == 1 for d in dicts):
            continue
        keys = {next(iter(d)) for d in dicts}
        if len(keys) != 1 or any(getattr(p, "lora_variant", {}) for p in projs):
            continue
        key = keys.pop()
        drops = [d[key] for d in dicts]
        if all(isinstance(d, cls) for d in drops) or not all(type(d) is torch.nn.Dropout for d in drops):
            continue
        if len({d.p for d in drops}) != 1 or drops[0].p == 0.0:
            continue
        shared = cls(drops[0].p, len(drops))
        shared.train(drops[0].training)
        for d in dicts:
            d[key] = shared
        # each attention call starts a new mask, whatever an interrupted call (an exception mid-layer) left behind
        shared._hook = module.register_forward_pre_hook(shared.reset)
        changed += 1
    return changed


def unshare_lora_dropout(model) -> None:
    """Undo :func:`share_lora_dropout`: each projection its own ``nn.Dropout`` again."""
    import torch

    for module in (causal_lm_of(model) or model).modules():
        for d in (getattr(getattr(module, n, None), "lora_dropout", None) for n in _QKV):
            if isinstance(d, torch.nn.ModuleDict):
                for key, drop in list(d.items()):
                    if _SHARED_DROPOUT and isinstance(drop, _SHARED_DROPOUT[0]):
                        if drop._hook is not None:
                            drop._hook.remove()
                            drop._hook = None
                        d[key] = torch.nn.Dropout(drop.p)
                        d[key].train(drop.training)


def _layers_train(inner, layers, hidden, *args, **kwargs):
    for layer in layers:
        hidden = inner(layer, hidden, *args, **kwargs)
    return hidden


def _layers_train_autocast(inner, layers, hidden, *args, **kwargs):
    import torch

    if hidden.dtype not in (torch.bfloat16, torch.float16):
        return _layers_train(inner, layers, hidden, *args, **kwargs)
    with torch.autocast(hidden.device.type, dtype=hidden.dtype):
        return _layers_train(inner, layers, hidden, *args, **kwargs)


def _layer_eval(inner, layer, *args, **kwargs):
    return inner(layer, *args, **kwargs)


class _GuardSkipping:
    """Calls a compiled layer function under ``skip_guard_eval_unsafe`` (only the guards that tell its cached graphs
    apart are evaluated) for call kinds it has compiled before: grad mode × layers per call. A first call of a kind
    runs with all guards and compiles; a recompile the stance refuses (PyTorch raises rather than guess) is retried
    the same way, so a new shape class costs one exception, never a wrong graph."""

    def __init__(self, fn):
        self.fn = fn
        self.seen: set = set()

    def __call__(self, inner, layers, *args, **kwargs):
        import torch

        key = (torch.is_grad_enabled(), len(layers))
        if key in self.seen:
            try:
                with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                    return self.fn(inner, layers, *args, **kwargs)
            except RuntimeError as exc:
                if "skip_guard_eval_unsafe" not in str(exc):
                    raise
        out = self.fn(inner, layers, *args, **kwargs)
        self.seen.add(key)
        return out


def _checkpointed(inner, train_fn, eval_fn, reentrant: bool = False, run: tuple | None = None, last: bool = False):
    """A layer forward running the compiled layer, inside the layer's own checkpointing when that is on.

    ``run``: the layers this one computes in training (itself and the rest of its group); None for a layer that
    another one computed, which passes its input through. ``last``: the model's last run, never checkpointed
    (``keep_last`` of :func:`compile_layers`).
    """

    def forward(self, *args, **kwargs):
        import torch

        if not self.training:
            return eval_fn(inner, self, *args, **kwargs)
        if self._umtcds_passthrough:  # the group's first layer already ran this one
            self._umtcds_passthrough = False
            return args[0] if args else kwargs["hidden_states"]
        layers = run or (self,)
        if args:
            hidden, args = args[0], args[1:]
        else:
            hidden = kwargs.pop("hidden_states")
        if getattr(self, "gradient_checkpointing", False) and torch.is_grad_enabled() and not last:
            for key in ("past_key_values", "past_key_value", "cache", "layer_past"):
                if kwargs.get(key) is not None:
                    kwargs[key] = None  # as transformers' shim: a cache is not replayed under checkpointing
            call = functools.partial(train_fn, inner, layers, **kwargs)
            if reentrant:
                from torch.utils.checkpoint import checkpoint

                out = checkpoint(call, hidden, *args, use_reentrant=True)
            else:
                out = self._gradient_checkpointing_func(call, hidden, *args)
        else:
            out = train_fn(inner, layers, hidden, *args, **kwargs)
        for other in layers[1:]:  # set only once the group's output exists
            other._umtcds_passthrough = True
        return out

    return forward


# ---- balanced work across data-parallel ranks ----------------------------------------------------------------------
_SAMPLER_CLASS: list = []


def packed_rebalance_sampler(
    lengths: list[int],
    batch_size: int,
    world: int,
    rank: int,
    grad_accum: int = 1,
    seed: int = 42,
    drop_last: bool = False,
):
    """A rank-aware batch sampler giving every rank about the same number of *tokens* per step (packed batches).

    With DDP every step waits for the slowest rank; random batches of 8 QA samples differ by ~13% in tokens, so the
    ranks idle. transformers' ``BatchRebalanceSampler`` fixes this for padded batches (its cost is
    ``samples × longest``); here the cost of a packed micro-batch is its token count, and each optimizer step's
    ``batch_size × grad_accum × world`` shuffled samples are dealt longest-first to the cheapest micro-batch. It
    subclasses transformers' sampler, so the Trainer treats it as rank-aware (no re-sharding) and the shuffle,
    epochs and tail handling are the library's.
    """
    if not _SAMPLER_CLASS:
        from transformers.trainer_pt_utils import BatchRebalanceSampler

        class PackedRebalanceSampler(BatchRebalanceSampler):
            def _assign(self, indices, lengths):
                k = self.dp_size * self.grad_accum
                groups: list[list[int]] = [[] for _ in range(k)]
                cost = [0] * k
                for idx, n in sorted(zip(indices, lengths, strict=True), key=lambda x: x[1], reverse=True):
                    g = min(range(k), key=lambda j: (cost[j], len(groups[j])))
                    groups[g].append(idx)
                    cost[g] += n
                order = sorted(range(k), key=lambda j: cost[j], reverse=True)
                rank_mbs = [[[] for _ in range(self.grad_accum)] for _ in range(self.dp_size)]
                for slot in range(self.grad_accum):
                    for r in range(self.dp_size):
                        rank_mbs[r][slot] = groups[order[slot * self.dp_size + r]]
                return rank_mbs

        _SAMPLER_CLASS.append(PackedRebalanceSampler)
    return _SAMPLER_CLASS[0](
        lengths=lengths,
        effective_batch_size=batch_size * grad_accum * world,
        dp_size=world,
        grad_accum=grad_accum,
        seed=seed,
        rank=rank,
        drop_last=drop_last,
    )


# ---- checkpointing and k-bit preparation --------------------------------------------------------------------------
def decoder_layers(model) -> list:
    """The model's checkpointable decoder layers, in order."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def set_checkpointing(model, enabled: bool = True, skip_last: int = 0) -> int:
    """Non-reentrant activation checkpointing on every decoder layer but the last ``skip_last``; returns how many."""
    base = causal_lm_of(model) or model
    if not enabled:
        if getattr(base, "is_gradient_checkpointing", False):
            base.gradient_checkpointing_disable()
        return 0
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2x name
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = decoder_layers(base)
    for layer in layers[len(layers) - skip_last :] if skip_last > 0 else []:
        layer.gradient_checkpointing = False
    return len(layers) - max(0, min(skip_last, len(layers)))


def prepare_kbit_lean(model):
    """Freeze a k-bit model for adapter training without upcasting its frozen 16-bit weights to fp32.

    Matches what peft's ``prepare_model_for_kbit_training`` does for correctness (frozen base, input embeddings
    that pass gradients into checkpointed layers) minus the fp32 copy of embeddings, norms and the LM head, which
    costs ~4.6 GiB on GLM-4-9B and is not needed in bf16 (RMSNorm already computes in fp32).
    """
    for p in model.parameters():
        p.requires_grad_(False)
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    return model


def describe(parts: dict[str, Any]) -> str:
    """One log line of the speed set-up (``{"packing": True, "loss": "liger", ...}``)."""
    return ", ".join(f"{k}={v}" for k, v in parts.items())
