"""The causal-LM loss without materialising ``tokens × vocab`` logits (GLM-4: 151,552 columns, GBs per step in fp32).

Only positions that carry a label go through the LM head: through Liger's fused linear+cross-entropy Triton kernel on
CUDA, or a chunked, recomputed PyTorch version elsewhere (CPU, MPS, no Triton). Same value as the Hugging Face loss
(sum over labelled tokens / their count or ``num_items_in_batch``).
"""

from __future__ import annotations

import types

from .kernels import liger_usable
from .model import IGNORE_INDEX, causal_lm_of


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
