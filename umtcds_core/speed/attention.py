"""Per-sample attention for packed rows: PyTorch's FlashAttention varlen kernel as a transformers attention
implementation, and the same kernel behind an op of our own that Inductor's C++ wrapper can call.

SDPA's packed path builds a dense T×T block-diagonal mask and computes the full square; varlen computes only each
sample's causal triangle, and no mask is built. Off CUDA (or on an old torch) everything falls back to SDPA with an
explicit per-sample mask, which is also what the CPU tests check against.
"""

from __future__ import annotations

from .model import causal_lm_of

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
    return _causal_varlen(q, k, v, cu, cu, max_len, max_len, scale)


def _causal_varlen(q, k, v, cu_q, cu_k, max_q: int, max_k: int, scale=None):
    """``torch.nn.attention.varlen`` causal over the segments ``cu_q``/``cu_k``; grouped KV heads natively where this
    torch can, else repeated."""
    kernel, causal, gqa = _varlen_kernel()
    extra = {}
    if k.shape[1] != q.shape[1]:
        if gqa:
            extra["enable_gqa"] = True
        else:
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    return kernel(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, **causal, **extra)


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


def _paths_agree(shapes, paths) -> bool:
    """Whether each of ``paths`` (callables of the leaf tensors and the segments ``[0, 17, 40]``) gives the same
    output and input gradients on the same random bf16 inputs of ``shapes`` (the first: the queries, 40 × 8 × 64),
    within bf16 noise (:func:`_close_in_bf16`)."""
    import torch

    g = torch.Generator(device="cuda").manual_seed(0)
    base = [torch.randn(*s, device="cuda", dtype=torch.bfloat16, generator=g) for s in shapes]
    cu = torch.tensor([0, 17, 40], device="cuda", dtype=torch.int32)
    grad = torch.randn(40, 8, 64, device="cuda", dtype=torch.bfloat16, generator=g)
    results = []
    for path in paths:
        leaves = [t.clone().requires_grad_(True) for t in base]
        out = path(leaves, cu)
        out.backward(grad)
        results.append([out, *(t.grad for t in leaves)])
    return _close_in_bf16(*results)


def _close_in_bf16(got: list, want: list) -> bool:
    """Every tensor of ``got`` equals its ``want`` within bf16 noise (relative to the largest value, plus 1e-2)."""
    return all(
        bool(((a.float() - b.float()).abs() <= 2e-2 * b.float().abs().max() + 1e-2).all())
        for a, b in zip(got, want, strict=True)
    )


def varlen_op_usable() -> bool:
    """True when :func:`varlen_op` gives the public ``torch.nn.attention.varlen`` path's output and gradients on
    this GPU (checked once: two causal segments, grouped KV heads, relative tolerance for bf16)."""

    if "ok" not in _OPS:
        _OPS["ok"] = False
        try:
            _OPS["ok"] = _paths_agree(
                ((40, 8, 64), (40, 2, 64), (40, 2, 64)),
                [lambda t, cu, op=op: flash_varlen(*t, cu, 23, 0.125, use_op=op) for op in (True, False)],
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


# ---- P-tuning v2's prefix attention on packed rows ------------------------------------------------------------------
PREFIX_VARLEN_ATTN = "umtcds_prefix_varlen"
"""The ``attn_implementation`` name of :func:`prefix_varlen_attention_forward` (it starts with the prefix path's
own name, :data:`umtcds_core.prefix.PREFIX_ATTN`, so code that undoes the prefix path recognises it)."""
_PREFIX_OK: dict = {}


def _prefix_keys_index(cu, prefix_len: int, total: int):
    """Row indices into ``[prefix (T rows); packed keys (N rows)]`` that lay out ``[prefix; sample i]`` for every
    packed sample in turn (``total`` = N + n·T rows), and the matching ``cu_seqlens`` of the keys. Tensor ops only:
    no host sync, traceable under torch.compile."""
    import torch

    n = cu.numel() - 1
    cu_k = cu + prefix_len * torch.arange(n + 1, device=cu.device, dtype=cu.dtype)
    p = torch.arange(total, device=cu.device, dtype=cu.dtype)
    seg = torch.searchsorted(cu_k, p, right=True) - 1
    off = p - cu_k[seg]
    idx = torch.where(off < prefix_len, off, prefix_len + cu[seg] + off - prefix_len)
    return idx.long(), cu_k


def prefix_varlen(q, k, v, pk, pv, cu, max_len: int, scale=None):
    """Each packed sample of ``q/k/v`` (total_tokens, heads, dim) attends to the whole prefix ``pk/pv``
    (kv_heads, T, dim) and causally to itself, through FlashAttention's varlen kernel with keys ``[prefix; sample]``
    per sample (causal masks of unequal query/key lengths align at the end: query i sees T + i keys)."""
    import torch

    prefix_len = pk.shape[1]
    keys = torch.cat([pk.transpose(0, 1).to(k.dtype), k])
    values = torch.cat([pv.transpose(0, 1).to(v.dtype), v])
    idx, cu_k = _prefix_keys_index(cu, prefix_len, k.shape[0] + (cu.numel() - 1) * prefix_len)
    k2, v2 = keys.index_select(0, idx), values.index_select(0, idx)
    return _causal_varlen(q, k2, v2, cu, cu_k, max_len, max_len + prefix_len, scale)


def prefix_varlen_usable() -> bool:
    """True when :func:`prefix_varlen` gives the explicit-mask SDPA result, gradients included, on this GPU
    (checked once: a prefix of 5, two segments, grouped KV heads)."""
    import torch

    if "ok" in _PREFIX_OK:
        return _PREFIX_OK["ok"]
    _PREFIX_OK["ok"] = False
    if not varlen_usable("cuda"):
        return False

    def reference(t, cu):  # per segment: SDPA over [prefix; segment] with the prefix always visible
        q, k, v, pk, pv = t
        parts = []
        for a, b in ((0, 17), (17, 40)):
            kk = torch.cat([pk, k[a:b].transpose(0, 1)], 1).repeat_interleave(4, 0)
            vv = torch.cat([pv, v[a:b].transpose(0, 1)], 1).repeat_interleave(4, 0)
            mask = torch.ones(b - a, b - a + 5, dtype=torch.bool, device="cuda").tril(5)
            parts.append(torch.nn.functional.scaled_dot_product_attention(
                q[a:b].transpose(0, 1), kk, vv, attn_mask=mask, scale=0.125).transpose(0, 1))  # fmt: skip
        return torch.cat(parts)

    try:
        _PREFIX_OK["ok"] = _paths_agree(
            ((40, 8, 64), (40, 2, 64), (40, 2, 64), (2, 5, 64), (2, 5, 64)),
            [lambda t, cu: prefix_varlen(*t, cu, 23, 0.125), reference],
        )
    except Exception:  # noqa: BLE001 - a kernel without unequal lengths: keep the explicit mask
        _PREFIX_OK["ok"] = False
    return _PREFIX_OK["ok"]


def prefix_varlen_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """P-tuning v2's prefix attention (:func:`umtcds_core.prefix.prefix_attention_forward`) with packed rows on
    CUDA through :func:`prefix_varlen`: the cost of each sample's own triangle plus the prefix instead of the whole
    packed row's square with a dense mask. Anything else — a padding mask, a cache, CPU, fp32 — takes the prefix
    path's SDPA, with the per-sample mask built here for packed rows (the mask builder skipped it)."""
    import torch

    from ..prefix import PREFIX_KW, prefix_attention_forward

    pair = kwargs.get(PREFIX_KW)
    batch, heads, length, dim = query.shape
    packed = isinstance(pair, tuple) and attention_mask is None and key.shape[2] == length
    if not packed:
        return prefix_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    cu, max_len = kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q")
    if cu is None or batch != 1:
        cu, max_len = _segments(kwargs.get("position_ids"), batch, length, query.device)
    cu = cu.to(device=query.device, dtype=torch.int32)
    if query.is_cuda and dropout == 0.0 and query.dtype in (torch.bfloat16, torch.float16):
        pk, pv = pair
        q = query.transpose(1, 2).reshape(batch * length, heads, dim)
        k = key.transpose(1, 2).reshape(batch * length, key.shape[1], dim)
        v = value.transpose(1, 2).reshape(batch * length, value.shape[1], dim)
        out = prefix_varlen(q, k, v, pk, pv, cu, int(max_len), scaling)
        return out.view(batch, length, heads, dim), None
    seg = _segment_ids(cu, batch * length, query.device).view(batch, length)
    pos = torch.arange(length, device=query.device)
    mask = (seg[:, :, None] == seg[:, None, :]) & (pos[None, :, None] >= pos[None, None, :])
    return prefix_attention_forward(module, query, key, value, mask[:, None], dropout, scaling, **kwargs)


def enable_prefix_varlen(model, force: bool = False) -> bool:
    """Switch a model on P-tuning v2's explicit prefix path to :func:`prefix_varlen_attention_forward` when
    :func:`prefix_varlen_usable` (or ``force``: tests, through the SDPA fallback); True when switched."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    lm = causal_lm_of(model) or model
    if not (force or prefix_varlen_usable()):
        return False
    AttentionInterface.register(PREFIX_VARLEN_ATTN, prefix_varlen_attention_forward)
    AttentionMaskInterface.register(PREFIX_VARLEN_ATTN, _varlen_mask)
    lm.set_attn_implementation(PREFIX_VARLEN_ATTN)
    return True
