"""P-tuning v2 with the prefix passed into attention explicitly, so gradient checkpointing, packing and compile work.

peft's prefix tuning hands the learned per-layer keys/values to the model as a pre-filled KV cache. Training then
cannot checkpoint (transformers drops the cache in checkpointed layers, so the prefix would silently vanish), cannot
pack (packed-sample masks are only built without a cache) and recompiles compiled layers on every step (a cache object
per step). Here the peft model and its parameters stay exactly as peft made them — so the adapter saves, resumes and
loads for chat/evaluate in peft's own PrefixTuning format — but training and loss evaluation take another route:

* the peft wrapper's ``forward`` (replaced on the instance) passes the prefix weight as a keyword argument
  (:data:`PREFIX_KW`) and no cache, with positions shifted by the prefix length as peft's cache path shifts them
  (the learned keys were trained against queries at positions ``T…T+n-1``; chat through peft sees the same);
* a forward pre-hook on each decoder layer swaps that weight for the layer's own ``(key, value)`` slice — outside
  any compiled region, so one compiled layer function serves every layer (the layer index is never a traced
  constant) — and checkpointing recomputes from the same leaf parameter;
* the registered attention :data:`PREFIX_ATTN` prepends the slice (post-RoPE: prefixes carry no position) to the
  layer's keys/values and widens the mask so every query — every packed sample — sees the whole prefix, then runs
  SDPA. Without the keyword it is plain SDPA (peft's own cache path, e.g. ``generate``, still works).
"""

from __future__ import annotations

import types

PREFIX_ATTN = "umtcds_prefix"
"""The ``attn_implementation`` name of :func:`prefix_attention_forward`."""
PREFIX_KW = "umtcds_prefix_kv"
"""The keyword carrying the prefix: the whole ``(T, L·2·kv_heads·head_dim)`` weight into the model, one layer's
``(key, value)`` pair (each ``(kv_heads, T, head_dim)``) into its attention."""


def prefix_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """SDPA over ``[prefix; keys]`` for transformers' ``AttentionInterface``: every query sees all ``T`` prefix
    positions plus what the model's own (causal, padding or packed-sample) mask allows."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    pair = kwargs.pop(PREFIX_KW, None)
    kwargs.pop("is_causal", None)
    if pair is None or not isinstance(pair, tuple):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    pk, pv = pair
    batch, _, length, _ = query.shape
    if key.shape[2] != length:
        raise RuntimeError("the explicit prefix path runs without a KV cache; generate through peft's own forward")
    prefix_len = pk.shape[1]
    pk = pk.to(key.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
    pv = pv.to(value.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
    key = torch.cat([pk, key], dim=2)
    value = torch.cat([pv, value], dim=2)
    mask = attention_mask
    if mask is None:
        mask = torch.ones(length, length, dtype=torch.bool, device=query.device).tril()[None, None]
    elif mask.dtype != torch.bool:  # an additive float mask: 0 = attend
        mask = mask == 0
    mask = mask[..., -length:]
    seen = torch.ones(*mask.shape[:-1], prefix_len, dtype=torch.bool, device=mask.device)
    mask = torch.cat([seen, mask], dim=-1)
    return sdpa_attention_forward(
        module, query, key, value, mask, dropout=dropout, scaling=scaling, is_causal=False, **kwargs
    )


def _prefix_mask(*args, **kwargs):
    """Mask builder paired with :func:`prefix_attention_forward`: SDPA's boolean mask, never skipped for
    ``is_causal`` (the widened mask is not square, so the attention needs the explicit one)."""
    from transformers.masking_utils import sdpa_mask

    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


def layer_prefix(weight, index: int, kv_heads: int, head_dim: int):
    """Layer ``index``'s ``(key, value)``, each ``(kv_heads, T, head_dim)``, from peft's prefix weight
    ``(T, L·2·kv_heads·head_dim)`` (peft's layout: per virtual token, per layer a key then a value)."""
    t = weight.shape[0]
    kv = weight.view(t, -1, kv_heads, head_dim)
    return kv[:, 2 * index].transpose(0, 1), kv[:, 2 * index + 1].transpose(0, 1)


def _layer_hook(index: int, kv_heads: int, head_dim: int):
    def hook(module, args, kwargs):
        full = kwargs.get(PREFIX_KW)
        if full is not None and not isinstance(full, tuple):
            hidden = args[0] if args else kwargs.get("hidden_states")
            dtype = hidden.dtype if hidden is not None else full.dtype
            # fresh contiguous tensors in the compute dtype: every layer hands the compiled layer function inputs
            # of one layout (a view's storage offset differs per layer) — a few KB per layer
            kwargs = dict(kwargs)
            kwargs[PREFIX_KW] = tuple(t.to(dtype).contiguous() for t in layer_prefix(full, index, kv_heads, head_dim))
            return args, kwargs
        return None

    return hook


def _explicit_forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None, **kwargs):
    """The peft wrapper's forward for training and loss evaluation: the prefix weight as a keyword, no cache.

    A call carrying a cache (generation) goes to peft's own forward, which puts the prefix into that cache."""
    import torch

    if kwargs.get("past_key_values") is not None or kwargs.get("cache") is not None:
        return self._umtcds_peft_forward(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, labels=labels, **kwargs
        )
    for name in ("past_key_values", "cache", "task_ids"):
        kwargs.pop(name, None)
    cfg = self.active_peft_config
    ref = input_ids if input_ids is not None else inputs_embeds
    position_ids = kwargs.pop("position_ids", None)
    if position_ids is None:
        position_ids = torch.arange(ref.shape[1], device=ref.device).unsqueeze(0)
    # peft's cache path shifts positions by the prefix length; keep the same geometry
    kwargs["position_ids"] = position_ids + cfg.num_virtual_tokens
    kwargs["use_cache"] = False
    kwargs[PREFIX_KW] = self.prompt_encoder[self.active_adapter].embedding.weight
    return self.base_model(
        input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, labels=labels, **kwargs
    )


def explicit_prefix_supported(peft_model) -> str:
    """Why the explicit path cannot serve this peft model ("" when it can)."""
    from .speed.model import causal_lm_of, decoder_layers

    cfg = getattr(peft_model, "active_peft_config", None)
    if cfg is None or str(getattr(cfg, "peft_type", "")).rsplit(".", 1)[-1] != "PREFIX_TUNING":
        return "not a peft prefix-tuning model"
    if cfg.prefix_projection:
        return "prefix_projection (an MLP re-parametrisation) is not supported"
    if cfg.num_transformer_submodules != 1:
        return "encoder-decoder models are not supported"
    lm = causal_lm_of(peft_model)
    if lm is None:
        return "no causal LM inside the wrapper"
    layers = decoder_layers(lm)
    if len(layers) != cfg.num_layers:
        return f"{len(layers)} decoder layers for {cfg.num_layers} prefix layers"
    attn = getattr(layers[0], "self_attn", None)
    if attn is None or getattr(attn, "head_dim", None) is None:
        return "the decoder layers have no self_attn with a head_dim"
    if cfg.token_dim != cfg.num_attention_heads * attn.head_dim:
        return "the prefix width does not match the attention's key/value width"
    return ""


def enable_explicit_prefix(peft_model) -> str:
    """Switch a peft prefix-tuning model to the explicit path (see the module docstring); returns "" when done,
    else why not (the model is then left on peft's cache path)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    from .speed.model import causal_lm_of, decoder_layers

    if getattr(peft_model, "_umtcds_peft_forward", None) is not None:
        return ""
    why = explicit_prefix_supported(peft_model)
    if why:
        return why
    cfg = peft_model.active_peft_config
    lm = causal_lm_of(peft_model)
    AttentionInterface.register(PREFIX_ATTN, prefix_attention_forward)
    AttentionMaskInterface.register(PREFIX_ATTN, _prefix_mask)
    lm.set_attn_implementation(PREFIX_ATTN)
    head_dim = cfg.token_dim // cfg.num_attention_heads
    handles = []
    for i, layer in enumerate(decoder_layers(lm)):
        handles.append(
            layer.register_forward_pre_hook(_layer_hook(i, cfg.num_attention_heads, head_dim), with_kwargs=True)
        )
    peft_model._umtcds_prefix_hooks = handles
    peft_model._umtcds_peft_forward = peft_model.forward
    peft_model.forward = types.MethodType(_explicit_forward, peft_model)
    return ""


def disable_explicit_prefix(peft_model) -> None:
    """Back to peft's cache path (and SDPA) — what a model generating answers after training needs."""
    from .speed.model import causal_lm_of

    original = peft_model.__dict__.pop("_umtcds_peft_forward", None)
    if original is None:
        return
    peft_model.__dict__.pop("forward", None)
    for h in peft_model.__dict__.pop("_umtcds_prefix_hooks", []):
        h.remove()
    lm = causal_lm_of(peft_model)
    if lm is not None and str(lm.config._attn_implementation).startswith(PREFIX_ATTN):  # speed's varlen one too
        lm.set_attn_implementation("sdpa")


def is_explicit_prefix(model) -> bool:
    return getattr(model, "_umtcds_peft_forward", None) is not None
