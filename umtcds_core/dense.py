"""Optional dense retrieval: chunk embeddings from a local embedding-model folder, fused with the lexical ranking.

Usage::

    umtcds index pages/ --out index/ --embed-model models/bge-small-zh-v1.5 [--embed-batch-size 32]
    umtcds retrieve index/ "图书馆周末几点开门？"      # uses the model the index remembers

Why optional: the lexical index (:mod:`umtcds_core.index`) works offline on any machine in milliseconds, and a campus
question usually shares words with its page. An embedding model adds the questions that share *meaning* but not
words (宿舍费 vs 住宿费用), at the price of a model folder and a forward pass per chunk. Without ``--embed-model``
nothing here is imported, loaded or written.

Why no sentence-transformers: it is one more large dependency for three small things it does on top of
``transformers``. A sentence-transformers folder says them in JSON, read here:

- ``modules.json`` — the pipeline: Transformer → Pooling → (Normalize); other modules (Dense, …) are refused with a
  sentence, since running them half would give vectors the model was not trained to give;
- ``1_Pooling/config.json`` — how token vectors become one vector: cls, mean, max, mean_sqrt_len, weightedmean or
  lasttoken (several: concatenated, in sentence-transformers' order);
- ``config_sentence_transformers.json`` — the prompts put before queries and documents, and the similarity;
- ``sentence_bert_config.json`` — the longest input and whether to lower-case it.

A plain Hugging Face encoder folder (no ``modules.json``) is embedded by mean pooling — the common choice for an
encoder trained without a pooling head — and the build says so.

Files written next to the index: ``dense.npy`` (float32, one row per chunk of ``chunks.jsonl``, in its order) and
``dense.json`` (the model folder, its name and fingerprint, the recipe, and one key per row: a hash of the text
embedded, so a re-run embeds only chunks whose text is new — an unchanged page never loads the model at all).

Fusion is reciprocal rank fusion (:func:`rrf`): ranks, not scores, are combined, because a BM25 score is unbounded
and depends on the collection while a cosine lies in [-1, 1] — no fixed weight mixes the two fairly. ``k = 60`` is
the constant of Cormack, Clarke and Büttcher (SIGIR 2009), who found it best and robust across collections: it
flattens the gap between rank 1 and rank 10, so a chunk both rankers like beats one that a single ranker puts first.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError
from .fileio import write_bytes_atomic, write_json_atomic

if TYPE_CHECKING:
    import numpy as np

DENSE_FILE = "dense.npy"
DENSE_META = "dense.json"
RRF_K = 60
"""Reciprocal-rank-fusion constant (see the module docstring for why 60)."""
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len", "weightedmean", "lasttoken")
"""sentence-transformers' pooling modes, in the order it concatenates them."""
_POOLING_KEYS = {
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
    "mean": "pooling_mode_mean_tokens",
    "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
    "weightedmean": "pooling_mode_weightedmean_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}
_FINGERPRINT_SUFFIXES = (".json", ".txt", ".model", ".safetensors", ".bin", ".pt", ".pth")
_HEAD_BYTES = 1 << 20
LOG_EVERY_S = 5.0
"""Seconds between the embedding's progress lines."""


class DenseError(UserError, ValueError):
    """An embedding-model folder or dense index that cannot be used; the sentence says what to do."""


# ---- the model folder, read without torch ---------------------------------------------------------------------------
@dataclass
class Recipe:
    """What an embedding-model folder says about turning a text into a vector."""

    folder: Path
    transformer_dir: Path
    pooling: tuple[str, ...] = ("mean",)
    normalize: bool = False
    include_prompt: bool = True
    query_prompt: str = ""
    document_prompt: str = ""
    max_length: int | None = None
    lowercase: bool = False
    similarity: str = "cosine"
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.folder.name

    def describe(self) -> dict:
        return {
            "pooling": list(self.pooling),
            "normalize": self.normalize,
            "include_prompt": self.include_prompt,
            "query_prompt": self.query_prompt,
            "document_prompt": self.document_prompt,
            "max_length": self.max_length,
            "similarity": self.similarity,
        }


def _read_json(path: Path, folder: Path) -> dict | list:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise DenseError(
            f"{path} is not valid JSON, so the embedding model in {folder} cannot be read; download the folder again.",
            zh=f"{path} 不是有效的 JSON，无法读取 {folder} 里的向量模型；请重新下载这个文件夹。",
        ) from None


def _pooling_of(cfg: dict) -> tuple[str, ...]:
    """The pooling modes a config names: sentence-transformers 6 writes ``"pooling_mode": "cls"`` (or a list of
    modes), earlier versions one ``pooling_mode_*`` flag per mode; unknown names make the result empty."""
    mode = cfg.get("pooling_mode")
    if isinstance(mode, (str, list)):
        names = [mode] if isinstance(mode, str) else mode
        aliases = {
            "mean_tokens": "mean",
            "cls_token": "cls",
            "max_tokens": "max",
            "mean_sqrt_len_tokens": "mean_sqrt_len",
        }
        modes = [aliases.get(str(n), str(n)) for n in names]
        return tuple(dict.fromkeys(modes)) if set(modes) <= set(POOLING_MODES) else ()
    return tuple(m for m in POOLING_MODES if cfg.get(_POOLING_KEYS[m]))


def read_recipe(folder: str | Path) -> Recipe:
    """Read an embedding-model folder's JSON (no torch); raise one sentence when it cannot be an embedding model."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DenseError(
            f"The embedding model folder {folder} does not exist; give a local folder such as bge-small-zh-v1.5 "
            "(`umtcds models pull BAAI/bge-small-zh-v1.5 --to DIR`).",
            zh=f"向量模型文件夹 {folder} 不存在；请给出本地文件夹，例如 bge-small-zh-v1.5"
            "（`umtcds models pull BAAI/bge-small-zh-v1.5 --to 文件夹`）。",
        )
    folder = folder.resolve()
    modules_file = folder / "modules.json"
    recipe = Recipe(folder=folder, transformer_dir=folder)
    if not modules_file.is_file():
        recipe.notes.append(f"{folder.name} has no modules.json: a plain encoder, embedded by mean pooling")
    else:
        modules = _read_json(modules_file, folder)
        if not isinstance(modules, list):
            modules = []
        pooling_dir = None
        for mod in sorted((m for m in modules if isinstance(m, dict)), key=lambda m: m.get("idx", 0)):
            kind = str(mod.get("type", "")).rsplit(".", 1)[-1]
            path = folder / str(mod.get("path") or "")
            if kind == "Transformer":
                recipe.transformer_dir = path
            elif kind == "Pooling":
                pooling_dir = path
            elif kind == "Normalize":
                recipe.normalize = True
            else:
                raise DenseError(
                    f"{folder.name}'s modules.json lists a {kind or 'nameless'} module, which UMTCDS cannot run "
                    "without sentence-transformers; choose a model made of Transformer, Pooling and Normalize only "
                    "(e.g. bge-small-zh-v1.5).",
                    zh=f"{folder.name} 的 modules.json 含有 {kind or '无名'} 模块，UMTCDS 不借助 sentence-transformers "
                    "无法运行它；请换一个只由 Transformer、Pooling、Normalize 组成的模型（例如 bge-small-zh-v1.5）。",
                )
        if pooling_dir is not None and (pooling_dir / "config.json").is_file():
            cfg = _read_json(pooling_dir / "config.json", folder)
            cfg = cfg if isinstance(cfg, dict) else {}
            recipe.pooling = _pooling_of(cfg)
            recipe.include_prompt = bool(cfg.get("include_prompt", True))
            if not recipe.pooling:
                raise DenseError(
                    f"{pooling_dir / 'config.json'} names no pooling UMTCDS knows ({', '.join(POOLING_MODES)}); "
                    "choose another embedding model.",
                    zh=f"{pooling_dir / 'config.json'} 没有 UMTCDS 认识的池化方式（{', '.join(POOLING_MODES)}）；"
                    "请换一个向量模型。",
                )
        else:
            recipe.notes.append(f"{folder.name} lists no pooling config: mean pooling")
    if not (recipe.transformer_dir / "config.json").is_file():
        raise DenseError(
            f"{recipe.transformer_dir} has no config.json, so it is not a transformers model folder; give the "
            "embedding model's folder (the one with config.json and the weights).",
            zh=f"{recipe.transformer_dir} 里没有 config.json，不是 transformers 模型文件夹；"
            "请给出向量模型所在的文件夹（含 config.json 和权重文件）。",
        )
    st_cfg = folder / "config_sentence_transformers.json"
    if st_cfg.is_file():
        cfg = _read_json(st_cfg, folder)
        cfg = cfg if isinstance(cfg, dict) else {}
        prompts = cfg.get("prompts") if isinstance(cfg.get("prompts"), dict) else {}
        default = prompts.get(cfg.get("default_prompt_name") or "", "")
        recipe.query_prompt = str(prompts.get("query", default) or "")
        doc = next((prompts[n] for n in ("document", "passage", "corpus") if n in prompts), default)
        recipe.document_prompt = str(doc or "")
        recipe.similarity = "dot" if cfg.get("similarity_fn_name") == "dot" else "cosine"
    sb_cfg = recipe.transformer_dir / "sentence_bert_config.json"
    if sb_cfg.is_file():
        cfg = _read_json(sb_cfg, folder)
        cfg = cfg if isinstance(cfg, dict) else {}
        if isinstance(cfg.get("max_seq_length"), int) and cfg["max_seq_length"] > 0:
            recipe.max_length = cfg["max_seq_length"]
        recipe.lowercase = bool(cfg.get("do_lower_case", False))
    return recipe


def fingerprint(recipe: Recipe) -> str:
    """A cheap identity of the model folder: every config/tokenizer/weight file's name and size, the small files'
    bytes and the first MiB of the large ones — so swapped weights are noticed without hashing gigabytes."""
    h = hashlib.sha1(json.dumps(recipe.describe(), sort_keys=True).encode())
    for path in sorted(recipe.folder.rglob("*")):
        rel = path.relative_to(recipe.folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if path.suffix.lower() not in _FINGERPRINT_SUFFIXES:
            continue
        size = path.stat().st_size
        h.update(f"{rel.as_posix()}\0{size}\0".encode())
        with path.open("rb") as fh:
            h.update(fh.read(_HEAD_BYTES))
    return h.hexdigest()


# ---- the model, loaded with plain transformers -----------------------------------------------------------------------
class Embedder:
    """A loaded embedding model: ``Embedder(recipe).encode(texts)`` → float32 rows (normalised for cosine)."""

    def __init__(self, recipe: Recipe, device: str | None = None, batch_size: int = 32):
        import torch
        from transformers import AutoModel, AutoTokenizer

        from .models import best_device, best_dtype

        self.recipe = recipe
        self.device = device or best_device()
        self.batch_size = max(1, int(batch_size))
        dtype = torch.float32 if self.device == "cpu" else best_dtype(self.device)
        from transformers.utils import logging as hf_logging

        quiet = hf_logging.is_progress_bar_enabled()  # its "Loading weights" bar would sit between our lines
        try:
            if quiet:
                hf_logging.disable_progress_bar()
            self.tokenizer = AutoTokenizer.from_pretrained(str(recipe.transformer_dir))
            self.model = AutoModel.from_pretrained(str(recipe.transformer_dir), dtype=dtype)
        except (OSError, ValueError, KeyError, ImportError) as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise DenseError(
                f"transformers cannot load the embedding model in {recipe.transformer_dir} ({first}); give a model "
                "folder transformers supports without remote code (e.g. bge-small-zh-v1.5).",
                zh=f"transformers 无法加载 {recipe.transformer_dir} 里的向量模型（{first}）；"
                "请换一个 transformers 原生支持、无需远程代码的模型文件夹（例如 bge-small-zh-v1.5）。",
            ) from None
        finally:
            if quiet:
                hf_logging.enable_progress_bar()
        self.tokenizer.padding_side = "right"  # prompt tokens then sit at the start of every row
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        limits = [recipe.max_length, getattr(self.model.config, "max_position_embeddings", None)]
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        limits.append(tok_max if isinstance(tok_max, int) and tok_max < 1_000_000 else None)
        self.max_length = min([n for n in limits if n] or [512])
        try:
            self.model.to(self.device).eval()
        except (RuntimeError, AssertionError) as exc:
            raise DenseError(
                f"The embedding model cannot run on {self.device} ({str(exc).splitlines()[0][:160]}); "
                "use --embed-device cpu or another device.",
                zh=f"向量模型无法在 {self.device} 上运行（{str(exc).splitlines()[0][:160]}）；请用 --embed-device cpu 或其他设备。",
            ) from None

    def _prompt_length(self, prompt: str) -> int:
        """Tokens of ``prompt`` at the start of a row (its special start token included, its end token not), as
        sentence-transformers counts them when a pooling config says ``include_prompt: false``."""
        if not prompt or self.recipe.include_prompt:
            return 0
        return max(0, len(self.tokenizer(prompt)["input_ids"]) - 1)

    def _pool(self, hidden, mask, prompt_len: int):
        import torch

        hidden = hidden.float()
        full = mask.clone()
        if prompt_len:
            mask = mask.clone()
            mask[:, :prompt_len] = 0
        m = mask.unsqueeze(-1).float()
        parts = []
        for mode in self.recipe.pooling:
            if mode == "cls":
                parts.append(hidden[:, 0])
            elif mode == "max":
                parts.append(hidden.masked_fill(m == 0, -1e9).max(dim=1).values)
            elif mode in ("mean", "mean_sqrt_len"):
                total, count = (hidden * m).sum(1), m.sum(1).clamp(min=1e-9)
                parts.append(total / (count if mode == "mean" else count.sqrt()))
            elif mode == "weightedmean":
                w = torch.arange(1, hidden.shape[1] + 1, device=hidden.device).view(1, -1, 1).float() * m
                parts.append((hidden * w).sum(1) / w.sum(1).clamp(min=1e-9))
            elif mode == "lasttoken":  # the last real token, wherever the padding is
                last = full.shape[1] - 1 - full.flip(1).argmax(1)
                parts.append(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])
        return torch.cat(parts, dim=-1)

    def encode(
        self, texts: Sequence[str], prompt: str = "", on_batch: Callable[[int, int], None] | None = None
    ) -> np.ndarray:
        """Vectors for ``texts`` (float32, one row each), in batches of similar length so little is padding."""
        import numpy as np
        import torch

        texts = [(prompt + t).lower() if self.recipe.lowercase else prompt + t for t in texts]
        prompt_len = self._prompt_length(prompt)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out: np.ndarray | None = None
        done = 0
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                result = self.model(**batch)
                hidden = getattr(result, "last_hidden_state", None)
                hidden = result[0] if hidden is None else hidden
                vecs = self._pool(hidden, batch["attention_mask"], prompt_len)
                if self.recipe.normalize or self.recipe.similarity == "cosine":
                    vecs = torch.nn.functional.normalize(vecs, p=2, dim=-1)
                vecs = vecs.float().cpu().numpy()
                if out is None:
                    out = np.zeros((len(texts), vecs.shape[1]), dtype=np.float32)
                out[idx] = vecs
                done += len(idx)
                if on_batch is not None:
                    on_batch(done, len(texts))
        return out if out is not None else np.zeros((0, 0), dtype=np.float32)

    def encode_documents(self, texts: Sequence[str], on_batch=None):
        return self.encode(texts, self.recipe.document_prompt, on_batch)

    def encode_query(self, question: str):
        return self.encode([question], self.recipe.query_prompt)[0]


# ---- building the dense part of an index -----------------------------------------------------------------------------
def document_text(record: dict) -> str:
    """What is embedded for a chunk: its page title, then its text (which opens with its heading)."""
    title = (record.get("title") or "").strip()
    text = record.get("text") or ""
    return f"{title}\n{text}" if title and not text.startswith(title) else text


def _key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


@dataclass
class DenseReport:
    """What the dense part of one ``umtcds index`` run did."""

    model: str = ""
    embedded: int = 0
    reused: int = 0
    device: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def sentence(self) -> str:
        where = f" on {self.device}" if self.device else ""
        notes = "".join(f"; {n}" for n in self.notes)
        return (
            f"Dense vectors ({self.model}): {self.embedded} chunk{'' if self.embedded == 1 else 's'} embedded{where}, "
            f"{self.reused} reused "
            f"({self.seconds:.1f} s){notes}."
        )


def _load_previous(index_dir: Path, fp: str) -> dict[str, object]:
    """The previous build's vectors by text key, when they came from the same model (else nothing)."""
    import numpy as np

    try:
        info = json.loads((index_dir / DENSE_META).read_text(encoding="utf-8"))
        vectors = np.load(index_dir / DENSE_FILE, allow_pickle=False)
    except (OSError, ValueError):
        return {}
    keys = info.get("keys") or []
    if info.get("fingerprint") != fp or len(keys) != len(vectors):
        return {}
    return {k: vectors[i] for i, k in enumerate(keys)}


def build_dense(
    records: list[dict],
    index_dir: str | Path,
    model_dir: str | Path,
    device: str | None = None,
    batch_size: int = 32,
    on_batch: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[dict, DenseReport]:
    """Write ``dense.npy``/``dense.json`` for ``records`` (the index's chunks, in order), embedding only texts the
    previous build did not have; returns what ``meta.json`` remembers and a report."""
    import numpy as np

    t0 = time.perf_counter()
    index_dir = Path(index_dir)
    recipe = read_recipe(model_dir)
    fp = fingerprint(recipe)
    report = DenseReport(model=recipe.name, notes=list(recipe.notes))
    texts = [document_text(r) for r in records]
    keys = [_key(t) for t in texts]
    cached = _load_previous(index_dir, fp)
    todo: dict[str, str] = {}
    for k, t in zip(keys, texts, strict=True):
        if k not in cached:
            todo.setdefault(k, t)
    report.reused = sum(1 for k in keys if k in cached)
    fresh: dict[str, object] = {}
    if todo:
        embedder = Embedder(recipe, device=device, batch_size=batch_size)
        report.device = embedder.device
        last = [0.0]

        def tick(done: int, total: int) -> None:
            if on_batch is not None:
                on_batch(done, total)
            now = time.perf_counter()
            if log is not None and (now - last[0] >= LOG_EVERY_S or done == total):
                last[0] = now
                log(f"embedding chunks: {done}/{total} ({recipe.name} on {embedder.device})")

        vectors = embedder.encode_documents(list(todo.values()), on_batch=tick)
        fresh = dict(zip(todo, vectors, strict=True))
        report.embedded = len(todo)
        del embedder
    rows = [fresh[k] if k in fresh else cached[k] for k in keys]
    dim = int(len(rows[0])) if rows else 0
    matrix = np.stack(rows).astype(np.float32) if rows else np.zeros((0, dim), dtype=np.float32)
    buf = io.BytesIO()
    np.save(buf, matrix, allow_pickle=False)
    write_bytes_atomic(index_dir / DENSE_FILE, buf.getvalue())
    remembered = {"model": recipe.name, "path": str(recipe.folder), "fingerprint": fp, "dim": dim, **recipe.describe()}
    write_json_atomic(index_dir / DENSE_META, {**remembered, "keys": keys}, indent=None)
    report.seconds = time.perf_counter() - t0
    return remembered, report


def remove_dense(index_dir: str | Path) -> bool:
    """Drop a previous build's dense files (an index rebuilt without ``--embed-model`` is lexical only)."""
    removed = False
    for name in (DENSE_FILE, DENSE_META):
        path = Path(index_dir) / name
        if path.exists():
            path.unlink()
            removed = True
    return removed


# ---- searching ------------------------------------------------------------------------------------------------------
def rrf(rankings: Sequence[Sequence[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: each item scores ``sum(1 / (k + rank))`` over the rankings it appears in (rank 1 is
    best); ``[(item, score)]`` best first, ties in order of first appearance."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])


def _rebuild_command(index_dir: Path, pages_dir: str) -> str:
    return f"umtcds index {pages_dir or 'PAGES_DIR'} --out {index_dir}"


class DenseIndex:
    """The dense part of a loaded index: the chunk vectors, and the embedding model loaded at the first question."""

    def __init__(self, vectors, info: dict, device: str | None = None):
        self.vectors = vectors
        self.info = info
        self.device = device
        self._embedder: Embedder | None = None
        self._recipe: Recipe | None = None

    @classmethod
    def open(cls, index_dir: str | Path, meta: dict, n_chunks: int, device: str | None = None) -> DenseIndex:
        """Check the remembered model folder is there and unchanged and the vectors match the chunks; one sentence
        when not (nothing heavy is loaded here: the model waits for the first question)."""
        import numpy as np

        index_dir = Path(index_dir)
        info = meta["embed"]
        folder = Path(info.get("path") or "")
        cmd = _rebuild_command(index_dir, meta.get("pages_dir", ""))
        if not info.get("path") or not folder.is_dir():
            raise DenseError(
                f"The index in {index_dir} was built with the embedding model folder {folder}, which is gone; restore "
                f"that folder or rebuild the index without --embed-model (`{cmd}`).",
                zh=f"{index_dir} 里的索引是用向量模型文件夹 {folder} 建立的，但这个文件夹已不存在；"
                f"请恢复该文件夹，或不带 --embed-model 重建索引（`{cmd}`）。",
            )
        recipe = read_recipe(folder)
        if fingerprint(recipe) != info.get("fingerprint"):
            raise DenseError(
                f"The embedding model in {folder} changed since the index in {index_dir} was built; rebuild the index "
                f"with it (`{cmd} --embed-model {folder}`).",
                zh=f"{folder} 里的向量模型在建立 {index_dir} 的索引后有变化；请用它重建索引（`{cmd} --embed-model {folder}`）。",
            )
        try:
            vectors = np.load(index_dir / DENSE_FILE, allow_pickle=False)
        except (OSError, ValueError):
            vectors = None
        if vectors is None or vectors.ndim != 2 or len(vectors) != n_chunks:
            raise DenseError(
                f"The dense vectors in {index_dir} are missing or do not match its chunks; rebuild the index "
                f"(`{cmd} --embed-model {folder}`).",
                zh=f"{index_dir} 里的向量缺失或与文本块不一致；请重建索引（`{cmd} --embed-model {folder}`）。",
            )
        dense = cls(vectors, info, device)
        dense._recipe = recipe
        return dense

    @property
    def model(self) -> str:
        return str(self.info.get("model", ""))

    def ranking(self, question: str, n: int) -> list[int]:
        """The ``n`` chunks nearest to ``question``, best first (row numbers of ``chunks.jsonl``)."""
        import numpy as np

        if self._embedder is None:
            self._embedder = Embedder(self._recipe or read_recipe(self.info["path"]), device=self.device)
        if not len(self.vectors):
            return []
        q = self._embedder.encode_query(question)
        sims = self.vectors @ q
        n = min(n, len(sims))
        top = np.argpartition(-sims, n - 1)[:n]
        return [int(i) for i in top[np.argsort(-sims[top], kind="stable")]]
