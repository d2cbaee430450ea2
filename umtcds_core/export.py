"""Hand a tuned model to the engines that serve it at scale: ``umtcds export RUN --format {hf,gguf,ollama,vllm}``.

Usage::

    umtcds export runs/run-1 --format hf --out exported/run-1-hf          # merged Hugging Face folder
    umtcds export runs/run-1 --format gguf --out exported/run-1-gguf      # f16 + q8_0 GGUF, checked against the merge
    umtcds export runs/run-1 --format ollama --out exported/run-1-ollama  # GGUF + Modelfile; prints `ollama create …`
    umtcds export runs/run-1 --format vllm --out exported/run-1-vllm      # model (or base + adapter) + serve.sh

Why each format:

* ``hf`` — the adapter merged into its base and saved as a standard folder (``config.json``, safetensors, tokenizer
  with its chat template): what transformers, vLLM, TGI or SGLang load, and itself a valid ``--model`` for every
  ``umtcds`` command. Also what ``umtcds chat --merge-to`` writes (:func:`merge_adapter`).
* ``gguf`` — llama.cpp's file format, written by our own converter on the ``gguf`` library (no llama.cpp checkout
  needed). Architectures: :data:`GGUF_ARCHS` (Llama family — SmolLM2, Llama 2/3 without rope scaling, TinyLlama —
  and Qwen2/Qwen2.5); any other says to use llama.cpp's ``convert_hf_to_gguf.py`` on the ``hf`` export. Each file is
  loaded back with transformers and its next-token logits compared with the merged model's on a few prompts; the
  figures go to ``umtcds_export.json`` and a file that disagrees beyond tolerance fails the export.
* ``ollama`` — the GGUF plus a ``Modelfile`` (TEMPLATE in Ollama's Go-template syntax matching the chat template,
  the training system prompt, stop tokens, temperature, context length) and the ``ollama create`` command.
* ``vllm`` — the merged folder, or — where it fits (a plain LoRA of a rank vLLM supports on a base that is an HF
  folder, see :func:`vllm_lora_problem`) — the base plus the adapter served with ``--enable-lora``; a ``serve.sh`` and
  a ``README.txt`` with the ready ``vllm serve …`` command.

Only LoRA-style adapters merge: P-tuning v2 (prefix tuning) adds per-layer key/value prefixes, not weight deltas, so
there is nothing to fold into the weights — serve such a checkpoint with ``umtcds serve --adapter`` instead. A full
fine-tune run (a model folder, no adapter) exports as it is.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from . import schema as S
from .errors import UserError
from .fileio import write_json_atomic, write_text_atomic
from .model_settings import adapter_setting, device_setting, model_setting
from .runs import adapter_base_ref, adapter_config, adapter_type, find_adapter, is_full_model, run_dir_of, train_info

setting = S.setting
optional_text = S.optional_text


class ExportError(UserError, ValueError):
    """An adapter that cannot be merged or an unusable target folder."""


MERGEABLE = {"LORA", "LOHA", "LOKR", "ADALORA", "IA3"}
FORMATS = ("hf", "gguf", "ollama", "vllm")
GGUF_TYPES = ("f16", "q8_0")
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The ``--max-lora-rank`` values vLLM accepts (its ``MaxLoRARanks``); an adapter's rank must fit under one."""
GGUF_ARCHS = {"llama": "llama", "qwen2": "qwen2"}
"""HF ``model_type`` → GGUF architecture our converter writes (and transformers reads back, so it is checked)."""
INFO_FILE = "umtcds_export.json"

# The check: next-token logits of each GGUF file vs the merged model, on these prompts (chat-formatted).
CHECK_PROMPTS = (
    "Where is the library?",
    "How do I apply for a scholarship?",
    "请问新生什么时候报到？",
)
TOLERANCE = {"f16": 0.02, "q8_0": 0.08}
"""Largest allowed max-abs logit difference, as a fraction of the merged logits' range (max − min) on the prompt.
f16 rounding leaves ~0.1–0.5% of the range, q8_0 ~1–3%; a wrong tensor layout is tens of percent."""


# ---- settings: declared once (schema.py); the CLI flags, a --config YAML and the Chat page read them --------------
def _vllm_mode_label():
    return {
        "auto": ("自动（适配时用 基座 + LoRA）", "auto (base + LoRA where it fits)"),
        "merged": ("合并后的模型", "merged model"),
        "lora": ("基座 + LoRA（--enable-lora）", "base + LoRA (--enable-lora)"),
    }


@dataclass
class ExportSettings:
    """What ``umtcds export`` runs with: the RUN argument and flags, a ``--config`` YAML, or both (flags win)."""

    adapter: str | None = adapter_setting(
        flag="",
        label=("要导出的训练输出", "Run to export"),
        comment="the run folder or checkpoint-N folder to export (the RUN argument)",
    )
    format: str = setting(
        "hf",
        ("导出格式", "Format"),
        "hf: merged HF folder; gguf: f16 + q8_0 GGUF; ollama: GGUF + Modelfile; vllm: model + vllm serve command",
        choices=FORMATS,
        choice_labels={
            "hf": ("Hugging Face 文件夹", "Hugging Face folder"),
            "gguf": ("GGUF（llama.cpp）", "GGUF (llama.cpp)"),
            "ollama": ("Ollama", "Ollama"),
            "vllm": ("vLLM", "vLLM"),
        },
        widget="radio",
    )
    out: str | None = optional_text(
        ("导出文件夹", "Export folder"),
        "folder to write; must be new or empty (or give --force)",
        widget="text",
        example="exported/run-1",
    )
    model: str | None = model_setting()
    force: bool = setting(
        False,
        ("覆盖已有文件夹", "Replace an existing folder"),
        "replace the export folder when it is not empty (its old contents are deleted once the export succeeds)",
    )
    gguf_types: list = setting(
        list(GGUF_TYPES),
        ("GGUF 精度", "GGUF types"),
        "GGUF files to write: f16 (lossless for bf16/fp16 weights), q8_0 (half the size, near-lossless)",
        kind=list,
        widget="list",
        example="[f16, q8_0]",
    )
    check: bool = setting(
        True,
        ("回读校验 GGUF", "Check the GGUF"),
        "load each GGUF back with transformers and compare next-token logits with the merged model",
    )
    vllm_mode: str = setting(
        "auto",
        ("vLLM 部署方式", "vLLM layout"),
        "auto: base + adapter with --enable-lora where it fits, else merged; merged; lora",
        choices=("auto", "merged", "lora"),
        choice_labels=_vllm_mode_label(),
        widget="radio",
    )
    device: str | None = device_setting()


def _needs_run_and_out(values: dict) -> list[S.Pair]:
    out: list[S.Pair] = []
    if not values.get("adapter"):
        out.append(
            (
                "RUN: give the run folder (or checkpoint-N folder) to export, e.g. `umtcds export runs/run-1 …`",
                "RUN：请给出要导出的训练输出文件夹（或 checkpoint-N），例如 `umtcds export runs/run-1 …`",
            )
        )
    if not values.get("out"):
        out.append(("out: give the folder to write with --out DIR", "out：请用 --out DIR 指定导出文件夹"))
    bad = [t for t in values.get("gguf_types") or [] if t not in GGUF_TYPES]
    if bad:
        out.append(
            (
                f"gguf_types: {', '.join(bad)} is not one of {', '.join(GGUF_TYPES)}; pick from those",
                f"gguf_types：{', '.join(bad)} 不是 {', '.join(GGUF_TYPES)} 之一；请从中选择",
            )
        )
    return out


EXPORT = S.from_dataclass(
    ExportSettings, "export", rules=(_needs_run_and_out,), title="UMTCDS export settings — run with `umtcds export`"
)
"""The export step's schema: CLI flags and the settings YAML come from it."""


# ---- the merge ----------------------------------------------------------------------------------------------------
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


def _refuse_unmergeable(adapter_dir: Path, kind: str) -> None:
    if kind and kind not in MERGEABLE:
        raise ExportError(
            f"{adapter_dir} is a {kind} adapter, which cannot be merged into the weights; "
            "serve it with `umtcds serve --adapter` instead.",
            zh=f"{adapter_dir} 是 {kind} 适配器，无法合并进模型权重；请改用 `umtcds serve --adapter` 来部署它。",
        )


def _source(adapter: str | Path) -> tuple[Path, str]:
    """``(folder, kind)``: the adapter folder and its peft type, or a full fine-tune's model folder and ``"FULL"``."""
    p = Path(adapter).expanduser()
    if p.is_dir() and is_full_model(p):
        return p, "FULL"
    adapter_dir = find_adapter(p)
    kind = adapter_type(adapter_dir)
    _refuse_unmergeable(adapter_dir, kind)
    return adapter_dir, kind


def _merged(source: Path, kind: str, base_ref: str | None, device: str | None):
    """``(model, tokenizer, base_ref)``: the adapter folded into its base (or the full fine-tune as it is)."""
    from . import models

    device = device or models.best_device()
    dtype = models.best_dtype(device)  # fp32 on CPU, bf16/fp16 on a GPU: the dtype the model is served in anyway
    if kind == "FULL":
        spec = models.resolve(str(source))
        return models.load_model(spec, device=device, dtype=dtype), models.load_tokenizer(spec), str(source)
    from peft import PeftModel

    base_ref = base_ref or adapter_base_ref(source)
    spec = models.resolve(base_ref)
    tok = models.load_tokenizer(spec)
    base = models.load_model(spec, device=device, dtype=dtype)
    _untie_if_adapted(base, source)
    try:
        peft_model = PeftModel.from_pretrained(base, str(source))
    except (ValueError, RuntimeError, KeyError, OSError) as exc:
        models.unload(base)
        raise ExportError(
            f"The adapter {source} does not fit {base_ref} ({type(exc).__name__}); pass its base with --model.",
            zh=f"适配器 {source} 与 {base_ref} 不匹配（{type(exc).__name__}）；请用 --model 指定它的基础模型。",
        ) from exc
    merged = peft_model.merge_and_unload()
    merged.config.use_cache = True
    # The adapter folder's tokenizer is what training used (chat template, pad token); fall back to the base one.
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError):
        pass
    return merged, tok, base_ref


def _save_hf(model, tok, folder: Path) -> None:
    model.save_pretrained(str(folder), safe_serialization=True)
    tok.save_pretrained(str(folder))


def check_out(out: Path, force: bool) -> None:
    """Refuse a target that is a file, or a non-empty folder without ``force`` (the page asks before starting a job)."""
    if out.exists() and not out.is_dir():
        raise ExportError(
            f"{out} is a file, not a folder; choose a folder for --out.",
            zh=f"{out} 是一个文件而不是文件夹；请为 --out 选择一个文件夹。",
        )
    if out.exists() and any(out.iterdir()) and not force:
        raise ExportError(
            f"{out} already exists and is not empty; choose a new folder, delete it first, or add --force.",
            zh=f"{out} 已存在且不是空的；请换一个新文件夹、先删除它，或加上 --force。",
        )


def _finish(tmp: Path, out: Path) -> Path:
    """Move the finished export into place: a crash or a failed check never leaves half an export at ``out``."""
    if out.exists():
        shutil.rmtree(out)  # empty, or --force
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
    return out


def merge_adapter(
    adapter: str | Path, out_dir: str | Path, model: str | None = None, device: str | None = None
) -> Path:
    """Merge ``adapter`` (run or checkpoint folder) into its base (``model`` or the recorded one); save at ``out_dir``."""
    return Path(export(adapter, out_dir, "hf", model=model, device=device)["out"])


# ---- GGUF ---------------------------------------------------------------------------------------------------------
def _rope_theta(cfg) -> float:
    params = getattr(cfg, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    scaling = getattr(cfg, "rope_scaling", None)
    if rope_type not in ("default", None) or (scaling and scaling.get("rope_type", scaling.get("type")) != "default"):
        raise ExportError(
            f"This model uses '{rope_type}' rope scaling, which our GGUF converter does not write; export --format hf "
            "and convert that folder with llama.cpp's convert_hf_to_gguf.py.",
            zh=f"该模型使用“{rope_type}”RoPE 缩放，我们的 GGUF 转换器不支持；请先 --format hf 导出，"
            "再用 llama.cpp 的 convert_hf_to_gguf.py 转换那个文件夹。",
        )
    return float(params.get("rope_theta") or getattr(cfg, "rope_theta", 10000.0))


def _gguf_arch(cfg) -> str:
    arch = GGUF_ARCHS.get(getattr(cfg, "model_type", ""))
    if arch is None:
        supported = ", ".join(GGUF_ARCHS)
        raise ExportError(
            f"Our GGUF converter supports {supported} models, not '{cfg.model_type}'; export --format hf and convert "
            "that folder with llama.cpp's convert_hf_to_gguf.py (or serve it with vLLM: --format vllm).",
            zh=f"我们的 GGUF 转换器只支持 {supported} 架构，不支持“{cfg.model_type}”；请先 --format hf 导出，"
            "再用 llama.cpp 的 convert_hf_to_gguf.py 转换（或用 vLLM 部署：--format vllm）。",
        )
    return arch


def _pre_tokenizer(tok) -> str:
    """llama.cpp's name for how the tokenizer splits text before BPE (``tokenizer.ggml.pre``), read from the HF
    tokenizer itself; llama.cpp refuses a name it does not know, so an unrecognised split is an error here."""
    state = json.loads(tok.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    parts = state.get("pretokenizers", [state]) if state.get("type") == "Sequence" else [state]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"
    if kinds and kinds[0] == "Split":
        pattern = (parts[0].get("pattern") or {}).get("Regex")
        try:  # transformers' own table of llama.cpp's split names (the first name of each regex is llama.cpp's)
            from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
        except ImportError:
            GGUF_PRE_TOKENIZER_SPLITS = {}
        for name, regex in GGUF_PRE_TOKENIZER_SPLITS.items():
            if regex == pattern:
                return name
    raise ExportError(
        "This tokenizer splits text in a way our GGUF converter does not recognise; export --format hf and convert "
        "that folder with llama.cpp's convert_hf_to_gguf.py.",
        zh="该分词器的预切分方式我们的 GGUF 转换器无法识别；请先 --format hf 导出，再用 llama.cpp 的 "
        "convert_hf_to_gguf.py 转换那个文件夹。",
    )


def _token_table(tok, n_vocab: int):
    """``(tokens, types)`` for ids 0..n_vocab-1: BPE tokens NORMAL, special added tokens CONTROL, other added tokens
    USER_DEFINED, and padding ids the tokenizer does not use UNUSED (llama.cpp's convention)."""
    import gguf

    by_id = {i: t for t, i in tok.get_vocab().items()}
    added = getattr(tok, "added_tokens_decoder", {}) or {}
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _permute(w, n_head: int):
    """HF's rotate-half Q/K rows → llama.cpp's interleaved rope layout (transformers undoes this when it reads)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model, tok, path: Path, qtype: str, name: str) -> Path:
    """Write ``model`` (a merged HF causal LM) and ``tok`` as one GGUF file of ``qtype`` ("f16" | "q8_0").

    Streams tensor by tensor (header and tensor table first, then each tensor converted and written), so memory holds
    the model plus one converted tensor, not a second copy of the model."""
    import gguf
    import numpy as np

    cfg = model.config
    arch = _gguf_arch(cfg)
    rope_theta = _rope_theta(cfg)
    pre = _pre_tokenizer(tok)
    n_layer, n_head = cfg.num_hidden_layers, cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_head
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], n_layer)
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    q8 = gguf.GGMLQuantizationType.Q8_0

    plan = []  # (gguf name, tensor, target ggml type)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and tied:
            continue  # llama.cpp reuses token_embd when output.weight is absent (and transformers ties it back)
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        g_name = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if g_name is None:
            raise ExportError(
                f"The tensor {hf_name} has no GGUF name in our converter; export --format hf and convert that folder "
                "with llama.cpp's convert_hf_to_gguf.py.",
                zh=f"张量 {hf_name} 在我们的 GGUF 转换器里没有对应名称；请先 --format hf 导出，再用 llama.cpp 的 "
                "convert_hf_to_gguf.py 转换。",
            )
        if arch == "llama" and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            kind = ("permute", n_head)
        elif arch == "llama" and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            kind = ("permute", n_kv)
        else:
            kind = None
        if tensor.ndim < 2:
            target = gguf.GGMLQuantizationType.F32  # norms and biases stay f32, as llama.cpp writes them
        elif qtype == "q8_0" and tensor.shape[-1] % gguf.GGML_QUANT_SIZES[q8][0] == 0:
            target = q8
        else:
            target = gguf.GGMLQuantizationType.F16
        plan.append((g_name, hf_name, tensor, target, kind))

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_type("model")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if qtype == "q8_0" else gguf.LlamaFileType.MOSTLY_F16)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(rope_theta)
    writer.add_vocab_size(cfg.vocab_size)
    if arch == "llama":
        writer.add_rope_dimension_count(head_dim)
    if head_dim != cfg.hidden_size // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    tokens, types = _token_table(tok, cfg.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with _saved_tokenizer(tok) as folder:
        special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=cfg.vocab_size)
    if not special.merges:
        raise ExportError(
            "This tokenizer is not a byte-level BPE (no merges); our GGUF converter writes only those — export "
            "--format hf and convert with llama.cpp's convert_hf_to_gguf.py.",
            zh="该分词器不是字节级 BPE（没有 merges）；我们的 GGUF 转换器只支持这种——请先 --format hf 导出，"
            "再用 llama.cpp 的 convert_hf_to_gguf.py 转换。",
        )
    special.chat_template = tok.chat_template or None
    special.add_to_gguf(writer, quiet=True)

    def converted(tensor, target, kind):
        data = tensor.detach().float().cpu().numpy()
        if kind is not None:
            data = _permute(data, kind[1])
        if target == q8:
            return gguf.quants.quantize(data, q8)
        return data.astype(np.float32 if target == gguf.GGMLQuantizationType.F32 else np.float16)

    for g_name, _, tensor, target, _ in plan:
        shape = tuple(tensor.shape)
        if target == q8:
            byte_shape = gguf.quant_shape_to_byte_shape(shape, q8)
            writer.add_tensor_info(g_name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=q8)
        else:
            dt = np.dtype(np.float32 if target == gguf.GGMLQuantizationType.F32 else np.float16)
            writer.add_tensor_info(g_name, shape, dt, int(np.prod(shape)) * dt.itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, _, tensor, target, kind in plan:
        writer.write_tensor_data(converted(tensor, target, kind))
    writer.close()
    return path


class _saved_tokenizer:
    """A temporary folder holding ``tok`` as saved files (what ``gguf.SpecialVocab`` reads merges and ids from)."""

    def __init__(self, tok):
        self.tok = tok

    def __enter__(self) -> Path:
        import tempfile

        self._tmp = tempfile.TemporaryDirectory(prefix="umtcds-tok-")
        self.tok.save_pretrained(self._tmp.name)
        return Path(self._tmp.name)

    def __exit__(self, *exc) -> None:
        self._tmp.cleanup()


def reference_logits(model, tok) -> list[tuple[str, list[int], object]]:
    """``(text, token ids, next-token logits on the CPU)`` of the merged model for each check prompt (chat-formatted).

    Taken before the GGUF files are loaded, so the merged model can be freed first: a 9B model and its reloaded copy
    do not fit one GPU together."""
    import torch

    device = next(model.parameters()).device
    out = []
    for prompt in CHECK_PROMPTS:
        msgs = [{"role": "user", "content": prompt}]
        text = (
            tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) if tok.chat_template else prompt
        )
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids], device=device)).logits[0, -1].float().cpu()
        out.append((text, ids, logits))
    return out


def check_gguf(refs, folder: Path, filename: str, qtype: str, device: str, dtype) -> dict:
    """Load ``folder/filename`` back with transformers and compare its next-token logits with the merged model's
    (``refs`` from :func:`reference_logits`).

    Both get the same token ids (the merged model's tokenizer), so the figures measure the weights alone; whether the
    GGUF's own tokenizer splits the prompts the same way is reported beside them. The copy is loaded in the merged
    model's dtype; in bf16/fp16 the two forward passes round differently, so the tolerance is wider there."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=filename, dtype=dtype)
    loaded.to(device).eval()
    try:
        gguf_tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=filename)
    except Exception:  # noqa: BLE001 - reported as "not compared", the logits decide
        gguf_tok = None
    worst, agree, same_ids, per_prompt = 0.0, 0, 0, []
    for text, ids, ref in refs:
        if gguf_tok is not None:
            same_ids += int(gguf_tok(text, add_special_tokens=False)["input_ids"] == ids)
        with torch.no_grad():
            got = loaded(input_ids=torch.tensor([ids], device=device)).logits[0, -1].float().cpu()
        diff = float((ref - got).abs().max())
        worst = max(worst, diff / (float(ref.max() - ref.min()) or 1.0))
        agree += int(int(ref.argmax()) == int(got.argmax()))
        per_prompt.append(round(diff, 5))
    from . import models

    models.unload(loaded)
    del loaded
    n = len(refs)
    exact = dtype == torch.float32
    tolerance = TOLERANCE[qtype] if exact else max(TOLERANCE[qtype], 0.05)
    return {
        "file": filename,
        "max_abs_diff": max(per_prompt),
        "max_abs_diff_per_prompt": per_prompt,
        "max_rel_diff": round(worst, 5),
        "tolerance_rel": tolerance,
        "top1_agreement": round(agree / n, 4),
        "tokenizer_same_ids": None if gguf_tok is None else round(same_ids / n, 4),
        "prompts": n,
        "dtype": str(dtype).replace("torch.", ""),
        "ok": worst <= tolerance and (qtype != "f16" or agree >= (n if exact else n - 1)),
    }


# ---- Ollama -------------------------------------------------------------------------------------------------------
OLLAMA_TEMPLATES = {
    # ChatML (SmolLM2, Qwen2/2.5): Ollama puts the Modelfile's SYSTEM into .Messages as the first message.
    "chatml": (
        "<|im_start|>",
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n",
        ["<|im_end|>", "<|im_start|>"],
    ),
    "llama3": (
        "<|start_header_id|>",
        "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
        "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n",
        ["<|eot_id|>", "<|start_header_id|>"],
    ),
}


def ollama_template(chat_template: str | None) -> tuple[str | None, list[str]]:
    """``(Go template, stop tokens)`` equivalent to the model's Jinja chat template; ``(None, [])`` when the family is
    not one we know (Ollama then reads the template from the GGUF's own ``tokenizer.chat_template``)."""
    for marker, go, stops in OLLAMA_TEMPLATES.values():
        if chat_template and marker in chat_template:
            return go, stops
    return None, []


def _go_string(text: str) -> str:
    return '"""' + text.replace('"""', '" " "') + '"""'


def write_modelfile(folder: Path, gguf_name: str, tok, system: str | None, ctx: int, model_name: str) -> str:
    """The Modelfile next to the GGUF; returns the ``ollama create`` command."""
    template, stops = ollama_template(tok.chat_template)
    command = f"ollama create {model_name} -f Modelfile"
    lines = [
        f"# Made by `umtcds export`. In this folder run:  {command}",
        f"# then:  ollama run {model_name}",
        f"FROM ./{gguf_name}",
    ]
    if template:
        lines.append(f"TEMPLATE {_go_string(template)}")
    else:
        lines.append("# No TEMPLATE: Ollama uses the chat template stored in the GGUF file.")
    if system:
        lines.append(f"SYSTEM {_go_string(system)}")
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines += ["PARAMETER temperature 0.7", f"PARAMETER num_ctx {ctx}"]
    write_text_atomic(folder / "Modelfile", "\n".join(lines) + "\n")
    return command


# ---- vLLM ---------------------------------------------------------------------------------------------------------
def vllm_lora_problem(adapter_dir: Path, kind: str, base_ref: str) -> tuple[str, str] | None:
    """Why vLLM cannot serve this adapter on its base with ``--enable-lora`` (``(en, zh)``), or None when it can."""
    from . import models

    cfg = adapter_config(adapter_dir)
    targets = cfg.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    rank = int(cfg.get("r") or 0)
    if kind != "LORA":
        return (f"vLLM serves plain LoRA adapters, not {kind or 'this kind'}", f"vLLM 只支持普通 LoRA，不支持 {kind}")
    if cfg.get("use_dora"):
        return ("vLLM does not serve DoRA adapters", "vLLM 不支持 DoRA 适配器")
    if cfg.get("modules_to_save") or any(t in ("lm_head", "embed_tokens") for t in targets):
        return (
            "the adapter changes lm_head/embeddings, which vLLM's LoRA does not load",
            "该适配器修改了 lm_head/词嵌入，vLLM 的 LoRA 不支持加载",
        )
    if rank > VLLM_LORA_RANKS[-1]:
        return (f"rank {rank} is above vLLM's largest ({VLLM_LORA_RANKS[-1]})", f"秩 {rank} 超过 vLLM 的上限")
    try:
        spec = models.resolve(base_ref)
    except UserError:
        return (f"the base {base_ref} is not found here", f"在这里找不到基座 {base_ref}")
    if spec.kind != "hf":
        return (
            f"the base {base_ref} is a GGUF file, not a Hugging Face folder vLLM can load with LoRA",
            f"基座 {base_ref} 是 GGUF 文件，不是 vLLM 能加载 LoRA 的 Hugging Face 文件夹",
        )
    return None


def _write_vllm_files(folder: Path, model_arg: str, name: str, ctx: int, lora: tuple[str, int] | None) -> str:
    """``serve.sh`` and ``README.txt``; returns the ``vllm serve`` command (run from ``folder``)."""
    args = [f"vllm serve {model_arg}", f"--served-model-name {name if lora is None else 'base'}"]
    if lora is not None:
        path, rank = lora
        args += ["--enable-lora", f"--lora-modules {name}={path}", f"--max-lora-rank {rank}"]
    args += [f"--max-model-len {ctx}", "--host 0.0.0.0", "--port 8000"]
    command = " ".join(args)
    wrapped = " \\\n    ".join(args)
    write_text_atomic(
        folder / "serve.sh",
        "#!/bin/sh\n# Made by `umtcds export`: serve this model with vLLM (OpenAI-compatible API on port 8000).\n"
        f'cd "$(dirname "$0")" || exit 1\nexec {wrapped} "$@"\n',
    )
    (folder / "serve.sh").chmod(0o755)
    write_text_atomic(
        folder / "README.txt",
        f"Serve {name} with vLLM (pip install vllm, on a Linux machine with an NVIDIA GPU):\n\n"
        f"    cd {folder.name} && {command}\n\n(or ./serve.sh). Then any OpenAI client works:\n\n"
        f"    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\\n"
        f'      -d \'{{"model": "{name}", "messages": [{{"role": "user", "content": "Hello"}}]}}\'\n\n'
        "Several replicas behind a load balancer: see the project README, section Export.\n",
    )
    return command


def _copy_adapter(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and (f.name.startswith("adapter_") or f.suffix in (".json", ".jinja", ".txt", ".model")):
            shutil.copy2(f, dst / f.name)


# ---- the export ---------------------------------------------------------------------------------------------------
def _refuse_mismatch(checks: list[dict]) -> None:
    bad = [c for c in checks if not c["ok"]]
    if not bad:
        return
    c = bad[0]
    raise ExportError(
        f"{c['file']} does not match the merged model (largest logit difference {c['max_abs_diff']}, "
        f"{c['max_rel_diff']:.1%} of the range, top-1 agreement {c['top1_agreement']:.0%}); "
        "export --format hf and convert it with llama.cpp's convert_hf_to_gguf.py instead.",
        zh=f"{c['file']} 与合并后的模型不一致（最大 logit 差 {c['max_abs_diff']}，占范围的 {c['max_rel_diff']:.1%}，"
        f"top-1 一致率 {c['top1_agreement']:.0%}）；请改为 --format hf 导出，再用 llama.cpp 的 convert_hf_to_gguf.py 转换。",
    )


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower() or "model"


def export(
    adapter: str | Path,
    out: str | Path,
    fmt: str = "hf",
    model: str | None = None,
    device: str | None = None,
    force: bool = False,
    gguf_types: list[str] | tuple[str, ...] = GGUF_TYPES,
    check: bool = True,
    vllm_mode: str = "auto",
    log=None,
) -> dict:
    """Export ``adapter`` (run, checkpoint or full-model folder) as ``fmt`` into ``out``; returns what
    ``umtcds_export.json`` records (paths, commands, check figures). Everything is built in ``out.partial`` and moved
    into place at the end, so a failure leaves ``out`` as it was."""
    from . import models

    say = log or (lambda _msg: None)
    if fmt not in FORMATS:
        raise ExportError(
            f"Unknown export format '{fmt}'; use one of {', '.join(FORMATS)}.",
            zh=f"未知的导出格式“{fmt}”；请使用 {', '.join(FORMATS)} 之一。",
        )
    source, kind = _source(adapter)
    out = Path(out).expanduser()
    check_out(out, force)
    base_ref = model or (str(source) if kind == "FULL" else adapter_base_ref(source))
    run_name = _safe_name(run_dir_of(source).name if kind != "FULL" else source.name)
    info = train_info(source)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    record: dict = {
        "format": fmt,
        "base_model": base_ref,
        "adapter": str(source.resolve()),
        "adapter_kind": kind,
        "method": info.get("method"),
        "system_prompt": info.get("system_prompt"),
    }

    lora = None
    if fmt == "vllm" and vllm_mode != "merged" and kind != "FULL":
        problem = vllm_lora_problem(source, kind, base_ref)
        if problem is None:
            rank = int(adapter_config(source).get("r") or 0)
            lora = ("./adapter", next(r for r in VLLM_LORA_RANKS if r >= rank))
        elif vllm_mode == "lora":
            shutil.rmtree(tmp, ignore_errors=True)
            raise ExportError(
                f"This adapter cannot be served with vLLM's --enable-lora: {problem[0]}; use --vllm-mode merged.",
                zh=f"该适配器无法用 vLLM 的 --enable-lora 部署：{problem[1]}；请改用 --vllm-mode merged。",
            )
        else:
            record["vllm_note"] = f"merged, because {problem[0]}"

    try:
        if lora is not None:  # base + adapter: no merge, nothing to load
            _copy_adapter(source, tmp / "adapter")
            spec = models.resolve(base_ref)
            ctx = _context_length(spec.path)
            record["vllm_command"] = _write_vllm_files(tmp, str(spec.path), run_name, ctx, lora)
            record["vllm_layout"] = "base + LoRA"
        else:
            say(f"Merging {source} into {base_ref}…")
            merged, tok, base_ref = _merged(source, kind, model, device)
            ctx = min(int(getattr(merged.config, "max_position_embeddings", 4096) or 4096), 4096)
            try:
                if fmt == "hf":
                    _save_hf(merged, tok, tmp)
                elif fmt == "vllm":
                    _save_hf(merged, tok, tmp / "model")
                    record["vllm_command"] = _write_vllm_files(tmp, "./model", run_name, ctx, None)
                    record["vllm_layout"] = "merged"
                else:
                    types = list(gguf_types) or list(GGUF_TYPES)
                    files = []
                    for qtype in types:
                        filename = f"{run_name}-{qtype}.gguf"
                        say(f"Writing {filename}…")
                        write_gguf(merged, tok, tmp / filename, qtype, run_name)
                        files.append(filename)
                    record["gguf_files"] = files
                    if check:
                        refs = reference_logits(merged, tok)
                        where, dtype = next(merged.parameters()).device, merged.dtype
                        models.unload(merged)  # the reloaded copies take its place on the device
                        record["gguf_check"] = []
                        for filename, qtype in zip(files, types, strict=True):
                            say(f"Checking {filename} against the merged model…")
                            record["gguf_check"].append(check_gguf(refs, tmp, filename, qtype, where, dtype))
                        _refuse_mismatch(record["gguf_check"])
                    if fmt == "ollama":
                        pick = files[-1]  # the smallest written: q8_0 when asked for (near-lossless, half of f16)
                        record["ollama_command"] = write_modelfile(
                            tmp, pick, tok, info.get("system_prompt"), ctx, run_name
                        )
            finally:
                models.unload(merged)
                del merged
        record["base_model"] = base_ref
        record["exported"] = time.time()
        record["out"] = str(out.resolve())
        write_json_atomic(tmp / INFO_FILE, record)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _finish(tmp, out)
    return record


def _context_length(folder: Path) -> int:
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 4096
    return min(int(cfg.get("max_position_embeddings") or 4096), 4096)


# ---- CLI ----------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """RUN by hand (a positional); every other flag (and ``--config``) from :data:`EXPORT`."""
    parser.add_argument(
        "adapter", metavar="RUN", nargs="?", help="the run or checkpoint-N folder to export (may come from --config)"
    )
    EXPORT.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    v = EXPORT.from_args(args)
    record = export(
        v["adapter"],
        v["out"],
        v["format"],
        model=v["model"],
        device=v["device"],
        force=v["force"],
        gguf_types=v["gguf_types"],
        check=v["check"],
        vllm_mode=v["vllm_mode"],
        log=lambda msg: print(msg, flush=True),
    )
    out = record["out"]
    print(f"Exported {record['adapter']} as {v['format']} to {out}")
    for c in record.get("gguf_check", []):
        tok_note = "" if c["tokenizer_same_ids"] is None else f", tokenizer same ids {c['tokenizer_same_ids']:.0%}"
        print(
            f"  {c['file']}: max |logit diff| {c['max_abs_diff']} ({c['max_rel_diff']:.2%} of the range, "
            f"tolerance {c['tolerance_rel']:.0%}), top-1 agreement {c['top1_agreement']:.0%} on {c['prompts']} "
            f"prompts{tok_note}"
        )
    if record.get("ollama_command"):
        print(f"Create the Ollama model:  cd {out} && {record['ollama_command']}")
    if record.get("vllm_command"):
        if record.get("vllm_note"):
            print(f"vLLM layout: {record['vllm_note']}")
        print(f"Serve with vLLM:  cd {out} && {record['vllm_command']}   (or {out}/serve.sh)")
    return 0
