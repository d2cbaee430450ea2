"""Merge a LoRA adapter into its base model and save a standard Hugging Face folder (what vLLM or transformers serve).

Used by ``umtcds chat --adapter RUN --merge-to DIR`` and the Chat page's export button. The merged folder holds
``config.json``, safetensors weights, the tokenizer (with its chat template) and ``umtcds_export.json`` (where it came
from), so it is itself a valid ``--model`` for every ``umtcds`` command.

Only LoRA-style adapters merge: P-tuning v2 (prefix tuning) adds per-layer key/value prefixes, not weight deltas, so
there is nothing to fold into the weights — serve such a checkpoint with ``umtcds serve --adapter`` instead.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from .errors import UserError
from .fileio import write_json_atomic
from .runs import adapter_base_ref, adapter_config, adapter_type, find_adapter, train_info


class ExportError(UserError, ValueError):
    """An adapter that cannot be merged or an unusable target folder."""


MERGEABLE = {"LORA", "LOHA", "LOKR", "ADALORA", "IA3"}


def _untie_if_adapted(model, adapter_dir: Path) -> None:
    """Give the output layer its own weights when the adapter changes it but it shares them with the input embeddings.

    Merging a delta into a tied ``lm_head`` would also change the input embeddings (same tensor) and wreck the model.
    """
    cfg = adapter_config(adapter_dir)
    targets = cfg.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    out_layer = model.get_output_embeddings()
    in_layer = model.get_input_embeddings()
    if out_layer is None or in_layer is None or out_layer.weight is not in_layer.weight:
        return
    if not any("lm_head" in str(t) for t in targets) and not cfg.get("modules_to_save"):
        return
    import torch

    out_layer.weight = torch.nn.Parameter(in_layer.weight.detach().clone())
    model.config.tie_word_embeddings = False
    text_cfg = getattr(model.config, "get_text_config", lambda: None)()
    if text_cfg is not None:
        text_cfg.tie_word_embeddings = False


def merge_adapter(
    adapter: str | Path, out_dir: str | Path, model: str | None = None, device: str | None = None
) -> Path:
    """Merge ``adapter`` (run or checkpoint folder) into its base (``model`` or the recorded one); save at ``out_dir``."""
    from . import models

    adapter_dir = find_adapter(adapter)
    kind = adapter_type(adapter_dir)
    if kind and kind not in MERGEABLE:
        raise ExportError(
            f"{adapter_dir} is a {kind} adapter, which cannot be merged into the weights; "
            "serve it with `umtcds serve --adapter` instead.",
            zh=f"{adapter_dir} 是 {kind} 适配器，无法合并进模型权重；请改用 `umtcds serve --adapter` 来部署它。",
        )
    out = Path(out_dir).expanduser()
    if out.exists() and any(out.iterdir()):
        raise ExportError(
            f"{out} already exists and is not empty; choose a new folder or delete it first.",
            zh=f"{out} 已存在且不是空的；请换一个新文件夹，或先删除它。",
        )
    base_ref = model or adapter_base_ref(adapter_dir)
    spec = models.resolve(base_ref)
    # The best device and dtype (fp32 on CPU, bf16/fp16 on a GPU: the dtype the model is served in anyway).
    from peft import PeftModel

    device = device or models.best_device()
    dtype = models.best_dtype(device)
    tok = models.load_tokenizer(spec)
    base = models.load_model(spec, device=device, dtype=dtype)
    _untie_if_adapted(base, adapter_dir)
    try:
        peft_model = PeftModel.from_pretrained(base, str(adapter_dir))
    except (ValueError, RuntimeError, KeyError, OSError) as exc:
        raise ExportError(
            f"The adapter {adapter_dir} does not fit {base_ref} ({type(exc).__name__}); pass its base with --model.",
            zh=f"适配器 {adapter_dir} 与 {base_ref} 不匹配（{type(exc).__name__}）；请用 --model 指定它的基础模型。",
        ) from exc
    merged = peft_model.merge_and_unload()
    merged.config.use_cache = True
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(str(tmp), safe_serialization=True)
    # The adapter folder's tokenizer is what training used (chat template, pad token); fall back to the base one.
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(adapter_dir))
    except (OSError, ValueError):
        pass
    tok.save_pretrained(str(tmp))
    info = train_info(adapter_dir)
    write_json_atomic(
        tmp / "umtcds_export.json",
        {
            "base_model": base_ref,
            "adapter": str(adapter_dir.resolve()),
            "adapter_kind": kind,
            "method": info.get("method"),
            "system_prompt": info.get("system_prompt"),
            "exported": time.time(),
        },
    )
    if out.exists():
        out.rmdir()  # empty, checked above
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
    models.unload(merged, peft_model, base)
    return out
