"""Find English words on a page rendered in Chinese (issue 21 §6: one language per screen).

Every string a user can see is collected from the AppTest element tree — labels, help, placeholders, options,
alerts, captions, metrics, progress text, table column names, chart axis titles and trace names — then names, numbers,
URLs, code, file names and the workspace's own data (crawled text, Q&A pairs, model answers: content, not UI) are
removed, and any English word left is a leak.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

ALLOWED = {
    # product, model, library and format names
    "umtcds", "lora", "qlora", "ptuning", "p-tuning", "glm", "chatglm", "zhipu", "zhipuai", "openai", "qwen", "llama",
    "smollm", "smollm2", "instruct", "hugging", "face", "huggingface", "modelscope", "gguf", "yaml", "json", "jsonl",
    "csv", "pdf", "docx", "html", "http", "https", "url", "urls", "api", "key", "gpu", "gpus", "cpu", "cuda", "nvidia",
    "torch", "pytorch", "compile", "transformers", "peft", "vllm", "fastapi", "streamlit", "plotly", "autodl", "ssh",
    "robots", "txt", "sitemap", "gbk", "utf", "rouge", "bleu", "rouge-l", "bm25", "token", "tokens", "sft", "adam",
    "adamw", "flash", "sdpa", "mfu", "eta", "mib", "gib", "gb", "mb", "kb", "ram", "vram", "nan", "bf16", "fp16",
    "fp32", "nf4", "fp4", "int4", "int8", "sharegpt", "alpaca", "glm4", "rag", "ok", "logits", "dropout", "alpha",
    "zero", "deepspeed", "fsdp", "ddp", "nccl", "lan", "localhost", "chromium", "python", "linux", "make", "pip",
    "venv", "git", "github", "ampere", "hopper", "h100", "h200", "rtx", "a100", "tesla", "bit", "bits",
    # config values shown as the choices they are (the YAML's words)
    "auto", "on", "off", "cosine", "linear", "constant", "with", "warmup", "restarts", "polynomial", "min", "inverse",
    "sqrt", "local", "full", "none", "null", "true", "false", "eager", "seed", "generated", "demo", "qingshan",
    # the language switch names both languages on purpose; product and header names
    "english", "language", "user-agent", "crawl-delay", "word", "ollama", "deepseek", "jieba", "mozilla", "q&a",
    "factory",  # LLaMA-Factory
}  # fmt: skip

_URL = re.compile(r"(?:https?|file)://\S+|www\.\S+|\b[\w.-]+@[\w.-]+\b")
_CODE = re.compile(r"`[^`]*`")
_PATHISH = re.compile(
    r"(?:[\w.~-]*/)+[\w.-]*|\b[\w-]+\.(?:jsonl|json|yaml|yml|txt|py|html?|pdf|docx|gguf|safetensors|bin|log|png|csv|toml)\b"
)
_IDENT = re.compile(
    r"\b\w+(?:_\w+)+\b"  # snake_case keys
    r"|(?<![\w-])--?[a-z][\w-]*"  # flags
    r"|\{\w*\}"  # template placeholders: {text}
    r"|\S*[|\\*^$]\S*"  # regular expressions
    r"|\b\w*\d\w*(?:[.-]\w+)*\b"  # names with a digit: Qwen2.5-7B-Instruct, glm-4-9b, bf16
    r"|\b[a-z]+(?:-[a-z0-9]+)+\b"  # hyphenated lower-case codes: small-lora, my-campus
    r"|\b[\w-]+(?:\.[\w-]+)+\b"  # domains and dotted names: jwc.xxx.edu.cn
    r"|\.\w+\b"  # file extensions: .yml
    r"|\b\w*[A-Z]\w*[A-Z]\w*\b"  # CamelCase / acronyms: OpenAI, BLEU
)
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*[A-Za-z]|[A-Za-z]")
_SKIP_FIELDS = {
    "id", "form_id", "key", "data", "spec", "theme", "icon", "url", "page_script_hash", "page", "src", "language",
    "type", "autocomplete", "value", "default", "format", "raw_values", "query_param_key",
}  # fmt: skip
"""Proto fields that are not UI text: ids, data, styling, and the values of inputs (what the user typed)."""
_SKIP_TYPES = {"code", "json", "exception", "html", "iframe", "image", "imgs", "video", "audio", "empty"}


def _strings(msg, out: list[str]) -> None:
    for desc, value in msg.ListFields():
        if desc.name in _SKIP_FIELDS:
            continue
        many = isinstance(value, (list, tuple)) or (
            hasattr(value, "__len__") and not isinstance(value, (str, bytes)) and not hasattr(value, "ListFields")
        )
        if desc.type == desc.TYPE_STRING:
            out.extend(value if many else [value])
        elif desc.type == desc.TYPE_MESSAGE:
            for item in value if many else [value]:
                _strings(item, out)


def _plotly_texts(spec: str) -> list[str]:
    fig = json.loads(spec)
    out = [t.get("name") or "" for t in fig.get("data", [])]
    layout = fig.get("layout", {})
    for axis in layout.values():
        if isinstance(axis, dict) and isinstance(axis.get("title"), dict):
            out.append(axis["title"].get("text") or "")
    if isinstance(layout.get("title"), dict):
        out.append(layout["title"].get("text") or "")
    return out


def _arrow_columns(data: bytes) -> list[str]:
    import pyarrow as pa

    try:
        return [str(n) for n in pa.ipc.open_stream(data).schema.names if not str(n).startswith("__index_level")]
    except Exception:  # noqa: BLE001 - not an Arrow stream: nothing to read
        return []


def visible_strings(at) -> list[str]:
    """Every user-visible string of the rendered app (main area and sidebar)."""
    out: list[str] = []
    for node in at._tree:  # noqa: SLF001 - AppTest has no public "all nodes" iterator
        proto = getattr(node, "proto", None)
        kind = getattr(node, "type", "")
        if proto is None or kind in _SKIP_TYPES:
            continue
        if kind == "plotly_chart":
            out += _plotly_texts(proto.spec)
            continue
        if kind in ("arrow_data_frame", "arrow_table", "dataframe", "table"):
            out += _arrow_columns(getattr(getattr(proto, "data", None), "data", b"") or getattr(proto, "data", b""))
        _strings(proto, out)
    return [t for s in out if s and s.strip() for t in _json_labels(s)]


def _json_labels(s: str) -> list[str]:
    """A JSON string in a proto (a table's column config) shows only its labels and help; other text as it is."""
    if not s.lstrip().startswith(("{", "[")):
        return [s]
    try:
        value = json.loads(s)
    except ValueError:
        return [s]
    out: list[str] = []

    def walk(v) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                if k in ("label", "help", "title", "placeholder") and isinstance(x, str):
                    out.append(x)
                else:
                    walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(value)
    return out


CONTENT_KEYS = {
    "question", "answer", "content", "text", "title", "url", "final_url", "source", "prediction", "reference",
    "base", "tuned", "prompt", "response", "instruction", "output", "input", "system", "system_prompt", "name",
    "path", "file", "model", "adapter", "data", "out", "sample", "examples", "pages", "failed_url", "page",
    "referer", "content_type", "charset", "encoding",
}  # fmt: skip
"""Keys whose values are the workspace's content (crawled text, pairs, answers, names) — shown as data, in whatever
language the site is. Not among them: reasons, errors and statuses, which are UI text and must follow the language."""


def data_strings(root: Path) -> list[str]:
    """Strings that are the workspace's content (shown as data, in whatever language it is): longest first."""
    found: set[str] = {root.name}

    def add(text: str) -> None:
        for part in text.splitlines():
            if len(part.strip()) >= 3:
                found.add(part.strip())

    def walk(value, content: bool) -> None:
        if isinstance(value, str):
            if content:
                add(value)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, content or k in CONTENT_KEYS)
        elif isinstance(value, list):
            for v in value:
                walk(v, content)

    for path in root.rglob("*"):
        found.add(path.name)
        if not path.is_file() or path.stat().st_size > 5_000_000:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if path.suffix == ".txt":
            add(text)
        elif path.suffix == ".jsonl":
            for line in text.splitlines():
                try:
                    walk(json.loads(line), False)
                except ValueError:
                    pass
        elif path.suffix == ".json":
            try:
                walk(json.loads(text), False)
            except ValueError:
                pass
    return sorted(found, key=len, reverse=True)


def english_words(text: str, data: Iterable[str] = ()) -> list[str]:
    """English words in ``text`` after removing data, URLs, code, paths, identifiers and allowed names."""
    for item in data:
        if item in text:  # whole words only: a data string must not cut a UI word in half
            text = re.sub(rf"(?<![A-Za-z0-9_]){re.escape(item)}(?![A-Za-z0-9_])", " ", text)
    for pattern in (_URL, _CODE, _PATHISH, _IDENT):
        text = pattern.sub(" ", text)
    return [w for w in _WORD.findall(text) if w.lower() not in ALLOWED and len(w) > 1]


def leaks(at, workspace_root: Path | None = None) -> dict[str, list[str]]:
    """``{visible string: [its English words]}`` for each string with any."""
    data = data_strings(workspace_root) if workspace_root else []
    out: dict[str, list[str]] = {}
    for s in visible_strings(at):
        words = english_words(s, data)
        if words:
            out[s[:160]] = words
    return out
