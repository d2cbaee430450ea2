"""Where things are inside a (peft/DDP-wrapped) causal LM, activation checkpointing, and lean k-bit preparation."""

from __future__ import annotations

IGNORE_INDEX = -100


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


def decoder_layers(model) -> list:
    """The model's checkpointable decoder layers, in order."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def set_checkpointing(model, enabled: bool = True, skip_last: int = 0) -> int:
    """Non-reentrant activation checkpointing on every decoder layer but the last ``skip_last``; returns how many."""
    base = causal_lm_of(model) or model
    if not enabled:
        # transformers >= 5.2x: is_activation_checkpointing (the older name warns)
        on = getattr(base, "is_activation_checkpointing", None)
        if on is None:
            on = getattr(base, "is_gradient_checkpointing", False)
        if on:
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


def is_kbit(model) -> bool:
    """True for a quantised model (bitsandbytes 4/8-bit, or any transformers quantiser): its layers keep their own
    compute-dtype handling, and their matmuls round differently for different batch shapes."""
    return any(getattr(model, a, False) for a in ("is_loaded_in_4bit", "is_loaded_in_8bit", "is_quantized"))
