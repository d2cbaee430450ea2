"""Liger's fused RMSNorm and SwiGLU Triton kernels on a model *instance* (CUDA + liger-kernel only; architectures
whose norm/MLP math matches Liger's exactly). Instance-level, so other models in the process are untouched."""

from __future__ import annotations

import importlib.util
import types

from .model import causal_lm_of

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
