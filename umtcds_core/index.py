"""A search index over the crawled pages (``umtcds index``), read by ``umtcds retrieve``, grounded chat and evaluate.

Usage::

    umtcds index pages/ --out index/ [--chunk-chars 600] [--overlap-chars 100] [--title-weight 1]
    umtcds retrieve index/ "图书馆周末几点开门？" [--k 5] [--json]

Why a lexical index first: it works offline, in milliseconds, on any machine, and a question about a campus page
usually shares words with it. Chinese has no spaces, so each text is tokenised three ways at once:

- **jieba words** (``图书馆``, ``借书证``) — precise matches;
- **character bigrams** of every Chinese run (``借书``, ``书证``) — a question need not be cut the way jieba cut the
  page;
- **single characters** — so ``借书`` still meets ``借阅书籍``-style wording (``借`` + ``书``); BM25's IDF keeps
  common characters cheap;
- English and digits as lower-cased words with a light plural fold (``books`` = ``book``).

The title (and the section heading a chunk sits under) is added ``--title-weight`` times, so a page *about* the
library beats a page that mentions it. Scoring is ``bm25s`` (Lucene BM25), not hand-written.

Chunks follow paragraphs and headings: paragraphs are packed up to ``--chunk-chars`` (a Chinese character counts
double, so a chunk holds about as much meaning in either language), a long paragraph is cut at sentence ends, and
each chunk after the first starts with up to ``--overlap-chars`` of the previous one's end, so a fact cut in half is
whole in one of the two.

Files in INDEX_DIR: ``meta.json`` (settings, the pages folder, each page's content hash, url, title and chunk
count), ``chunks.jsonl`` (one object per chunk: ``chunk_id, page, url, title, heading, text``), ``tokens.jsonl``
(each chunk's tokens, so an unchanged page is never re-chunked or re-tokenised) and ``bm25/`` (bm25s' score
matrix). Re-running re-chunks only new and changed pages; the score matrix is always rebuilt from the cached tokens
(BM25's IDF depends on every document, and rebuilding 1,000 pages takes about a second).

Optional dense retrieval (``--embed-model DIR``, a local sentence-transformers-style folder): each chunk is also
embedded (``dense.npy``, only new text is embedded on a re-run), the index remembers the model, and a search fuses
the lexical and the dense rankings by reciprocal rank fusion — see :mod:`umtcds_core.dense`. Without the flag nothing
of it is loaded; an index rebuilt without it is lexical again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import schema as S
from .errors import UserError
from .fileio import iter_jsonl, write_json_atomic, write_jsonl_atomic
from .model_settings import device_setting
from .text import HAN

setting = S.setting
optional_text = S.optional_text

INDEX_VERSION = 1
MANIFEST = "manifest.jsonl"  # the crawl's (crawl.MANIFEST; not imported: crawl pulls in the fetcher)
META = "meta.json"
CHUNKS = "chunks.jsonl"
TOKENS = "tokens.jsonl"
BM25_DIR = "bm25"
BM25_TITLE_DIR = "bm25_title"


class IndexError_(UserError, ValueError):
    """A missing, stale or unusable index or pages folder; the sentence says which command fixes it."""


# ---- settings -------------------------------------------------------------------------------------------------------
@dataclass
class IndexSettings:
    """How pages are cut and weighted (``umtcds index`` flags, a settings YAML, the Crawl page's index job)."""

    pages_dir: str | None = optional_text(
        ("网页文件夹", "Pages folder"),
        "the crawl's output folder (*.txt + manifest.jsonl); the PAGES_DIR argument",
        flag="",
        widget="hidden",
    )
    out_dir: str | None = optional_text(
        ("索引文件夹", "Index folder"),
        "folder the index is written to (re-running updates it)",
        flag="--out",
        widget="hidden",
    )
    chunk_chars: int = setting(
        600,
        ("每段长度（字符）", "Chunk size (characters)"),
        "longest chunk in characters, a Chinese character counting 2; smaller: sharper hits, less context each",
        min=100,
        max=20000,
        typical=(200, 2000),
        range_msg=("must be between 100 and 20000 (600 is a good start)", "必须在 100 到 20000 之间（建议先用 600）"),
    )
    overlap_chars: int = setting(
        100,
        ("重叠长度（字符）", "Overlap (characters)"),
        "characters a chunk repeats from the end of the previous one, so a fact cut in two is whole in one",
        min=0,
        max=5000,
        range_msg=("must be between 0 and 5000", "必须在 0 到 5000 之间"),
    )
    title_weight: float = setting(
        1.0,
        ("标题权重", "Title weight"),
        "weight of a match in the page title or section heading, added to the text's; higher favours pages about "
        "the topic",
        min=0,
        max=10,
        step=0.5,
        range_msg=(
            "must be between 0 and 10 (0 = titles count as text only)",
            "必须在 0 到 10 之间（0 表示标题只按正文计）",
        ),
    )
    embed_model: str | None = optional_text(
        ("向量模型文件夹（可选）", "Embedding model folder (optional)"),
        "a local sentence-transformers folder (e.g. bge-small-zh-v1.5) whose vectors are fused with the lexical "
        "ranking; null: lexical only, nothing loaded",
        help=(
            "可选：本地向量模型文件夹（例如 bge-small-zh-v1.5），让意思相近但用词不同的问题也能找到网页；留空则只用关键词检索。",
            "Optional: a local embedding-model folder (e.g. bge-small-zh-v1.5), so a question that means the same "
            "with other words still finds its page; empty: keyword search only.",
        ),
        widget="text",
        example="models/bge-small-zh-v1.5",
    )
    embed_batch_size: int = setting(
        32,
        ("向量批大小", "Embedding batch size"),
        "chunks embedded per forward pass; higher: faster on a GPU, more memory",
        min=1,
        max=4096,
        typical=(1, 256),
        range_msg=("must be between 1 and 4096 (32 is a good start)", "必须在 1 到 4096 之间（建议先用 32）"),
        show=lambda v: bool(v.get("embed_model")),
    )
    embed_device: str | None = device_setting(
        flag="--embed-device", comment="where the embedding model runs: cpu | cuda | cuda:N | mps (null: the best)"
    )


def _overlap_fits(values: dict) -> list[S.Pair]:
    if values.get("overlap_chars", 0) >= values.get("chunk_chars", 1) // 2:
        return [
            (
                "overlap_chars: must be less than half of chunk_chars; lower --overlap-chars or raise --chunk-chars",
                "overlap_chars：必须小于 chunk_chars 的一半；请调小 --overlap-chars 或调大 --chunk-chars",
            )
        ]
    return []


INDEX = S.from_dataclass(
    IndexSettings,
    "index",
    rules=(_overlap_fits,),
    title="UMTCDS index settings — run with `umtcds index --config`",
)
"""The index step's schema: the CLI flags, the settings YAML and the checks."""

CHUNK_SETTINGS = ("chunk_chars", "overlap_chars")
"""The settings a chunk's text and tokens depend on: when one changes, every page is re-chunked."""


@dataclass
class RetrieveSettings:
    """What ``umtcds retrieve`` (and grounded chat) asks of the index."""

    k: int = setting(
        5,
        ("返回段数", "Chunks returned"),
        "how many chunks to return, best first; more: more context, longer prompts",
        flag="--k",
        min=1,
        max=100,
        range_msg=("must be between 1 and 100", "必须在 1 到 100 之间"),
    )


RETRIEVE = S.from_dataclass(RetrieveSettings, "retrieve", title="UMTCDS retrieve settings")


# ---- tokenising -----------------------------------------------------------------------------------------------------
_CJK = HAN  # the Han ranges of text.py
_RUN_RE = re.compile(rf"[{_CJK}]+|[A-Za-z0-9]+(?:['’][A-Za-z]+)?")
_CJK_RE = re.compile(rf"[{_CJK}]")
EN_STOPWORDS = frozenset(
    "a an the of to in on at for and or is are was were be been do does did i you we my your our it its this that "
    "there what which who whom how when where why can could should would will shall may might me us he she they "
    "them his her their with by from as about into than then so if not no any some have has had".split()
)
ZH_STOP_CHARS = frozenset("的了吗呢吧啊么是在和与及或也都就")

_jieba = None


def _jieba_module():
    """jieba, imported once and quietly (its first use prints a dictionary-loading banner to stderr)."""
    global _jieba
    if _jieba is None:
        import jieba

        jieba.setLogLevel(logging.WARNING)
        _jieba = jieba
    return _jieba


def _fold_en(word: str) -> str:
    """Lower-case and fold a regular plural (libraries → library, books → book): no stemmer library is needed."""
    w = word.lower().replace("’", "'")
    if w.endswith("'s"):
        w = w[:-2]
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def tokenize(text: str) -> list[str]:
    """A text's index tokens: jieba words, character bigrams and characters for Chinese; folded words otherwise."""
    out: list[str] = []
    for m in _RUN_RE.finditer(text):
        run = m.group()
        if not _CJK_RE.match(run):
            w = _fold_en(run)
            if w and w not in EN_STOPWORDS and run.lower() not in EN_STOPWORDS:  # "does" folds to "doe"
                out.append(w)
            continue
        out.extend(w for w in _jieba_module().lcut(run, HMM=False) if len(w) > 1)
        out.extend(run[i : i + 2] for i in range(len(run) - 1))
        out.extend(c for c in run if c not in ZH_STOP_CHARS)
    return out


def text_size(text: str) -> int:
    """A text's length for chunking: a Chinese character counts 2 (it carries about as much as two English letters
    and costs about one token, where English averages four letters per token)."""
    return len(text) + len(_CJK_RE.findall(text))


# ---- chunking -------------------------------------------------------------------------------------------------------
_SENTENCE_END_RE = re.compile(r"(?<=[。！？；!?;])|(?<=\.)\s+|(?<=\n)")
_HEADING_END = tuple("。！？；，、,.;:：!?)）")


def _is_heading(block: str) -> bool:
    """A short single line without closing punctuation, such as "Opening hours" or "开放时间" — the start of a
    section rather than a sentence."""
    line = block.strip()
    return "\n" not in line and 0 < text_size(line) <= 60 and not line.endswith(_HEADING_END)


def _sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END_RE.split(text) if s and s.strip()]


def _cut(text: str, limit: int) -> list[str]:
    """A paragraph longer than ``limit`` as pieces cut at sentence ends (a sentence longer still, by size)."""
    pieces: list[str] = []
    cur = ""
    for sent in _sentences(text):
        while text_size(sent) > limit:  # one enormous sentence: cut it by size
            head, sent = _split_at_size(sent, limit)
            if cur:
                pieces.append(cur)
                cur = ""
            pieces.append(head)
        if cur and text_size(cur) + text_size(sent) > limit:
            pieces.append(cur)
            cur = ""
        cur += sent
    if cur.strip():
        pieces.append(cur)
    return [p.strip() for p in pieces if p.strip()]


def _split_at_size(text: str, limit: int) -> tuple[str, str]:
    size = 0
    for i, ch in enumerate(text):
        size += 2 if _CJK_RE.match(ch) else 1
        if size > limit:
            cut = text.rfind(" ", 0, i)
            cut = cut if cut > i // 2 else i
            return text[:cut], text[cut:].lstrip()
    return text, ""


def _tail(text: str, size: int) -> str:
    """The end of ``text`` worth at most ``size``, starting at a sentence (or word) boundary where possible."""
    if size <= 0 or not text:
        return ""
    sents = _sentences(text)
    tail = ""
    for s in reversed(sents):
        if text_size(s + tail) > size:
            break
        tail = s + tail
    if not tail:  # the last sentence alone is too long: its last words
        cut = text[-size:]
        space = cut.find(" ")
        tail = cut[space + 1 :] if 0 <= space < len(cut) // 2 else cut
    return tail.strip()


def chunk_text(body: str, chunk_chars: int = 600, overlap_chars: int = 100) -> list[tuple[str, str]]:
    """``body`` as ``(heading, text)`` chunks: paragraphs packed up to ``chunk_chars``, a heading starting a new
    chunk (and remembered as the chunk's heading), each chunk after the first opening with the previous one's tail."""
    blocks = [b.strip() for b in re.split(r"\n\s*\n", body) if b.strip()]
    if len(blocks) == 1 and "\n" in blocks[0]:  # one paragraph per line (extraction without blank lines)
        blocks = [b.strip() for b in blocks[0].split("\n") if b.strip()]
    chunks: list[tuple[str, str]] = []
    heading, parts, size = "", [], 0
    limit = max(50, chunk_chars - overlap_chars)

    def flush():
        nonlocal parts, size
        if parts:
            chunks.append((heading, "\n".join(parts)))
        parts, size = [], 0

    for i, block in enumerate(blocks):
        if _is_heading(block) and i + 1 < len(blocks) and not _is_heading(blocks[i + 1]):
            flush()
            heading = block
            parts, size = [block], text_size(block)
            continue
        for piece in _cut(block, limit) if text_size(block) > limit else [block]:
            s = text_size(piece)
            if parts and size + s > limit and not (len(parts) == 1 and parts[0] == heading):
                flush()
            parts.append(piece)
            size += s + 2
    flush()
    if overlap_chars <= 0 or len(chunks) < 2:
        return chunks
    out = [chunks[0]]
    for (_, prev), (head, text) in zip(chunks, chunks[1:], strict=False):
        tail = _tail(prev, overlap_chars)
        out.append((head, f"{tail}\n{text}" if tail and not text.startswith(tail) else text))
    return out


# ---- pages ----------------------------------------------------------------------------------------------------------
@dataclass
class PageFile:
    """One crawled page as the index sees it: the file, where it came from, and a hash of everything indexed."""

    page: str  # file name relative to the pages folder
    url: str
    title: str
    body: str
    sha: str


def read_manifest(pages_dir: Path) -> dict[str, dict]:
    """The crawl manifest's newest record per saved file (``path`` → record); empty when there is none."""
    path = pages_dir / MANIFEST
    out: dict[str, dict] = {}
    if path.exists():
        for rec in iter_jsonl(path, errors=[]):
            if rec.get("path"):
                out[rec["path"]] = rec
    return out


def page_files(pages_dir: Path) -> list[Path]:
    return sorted(p for p in pages_dir.glob("*.txt") if not p.name.startswith("."))


def _check_pages_dir(pages_dir: Path, out_dir: Path | None = None) -> list[Path]:
    if not pages_dir.is_dir():
        raise IndexError_(
            f"The pages folder {pages_dir} does not exist; crawl a site first (`umtcds crawl URL --out {pages_dir}`).",
            zh=f"网页文件夹 {pages_dir} 不存在；请先爬取网站（`umtcds crawl URL --out {pages_dir}`）。",
        )
    files = page_files(pages_dir)
    if not files:
        raise IndexError_(
            f"The pages folder {pages_dir} has no .txt pages; crawl a site into it first "
            f"(`umtcds crawl URL --out {pages_dir}`).",
            zh=f"网页文件夹 {pages_dir} 里没有 .txt 网页；请先把网站爬取到这里（`umtcds crawl URL --out {pages_dir}`）。",
        )
    if out_dir is not None and out_dir.resolve() == pages_dir.resolve():
        raise IndexError_(
            "The index folder cannot be the pages folder; give another --out (e.g. the project's index/).",
            zh="索引文件夹不能是网页文件夹本身；请换一个 --out（例如项目的 index/）。",
        )
    return files


def read_page(path: Path, record: dict | None) -> PageFile:
    """A page file with its manifest record: the title is the file's first line unless the manifest has one."""
    raw = path.read_bytes()
    text = raw.decode("utf-8", errors="replace").replace("\r\n", "\n")
    first, _, rest = text.strip().partition("\n")
    record = record or {}
    title = (record.get("title") or "").strip() or first.strip()
    body = rest if first.strip() == title or not record.get("title") else text
    url = record.get("final_url") or record.get("url") or ""
    sha = hashlib.sha1(raw + b"\0" + url.encode() + b"\0" + title.encode()).hexdigest()
    return PageFile(page=path.name, url=url, title=title, body=body.strip(), sha=sha)


def chunk_page(page: PageFile, settings: dict) -> tuple[list[dict], list[dict]]:
    """A page's chunk records and each chunk's tokens: ``{"text": title + heading + text, "title": title +
    heading}`` — the title field is scored on its own too, so a page *about* the topic wins (BM25F-style)."""
    stem = Path(page.page).stem
    records, tokens = [], []
    pieces = chunk_text(page.body, settings["chunk_chars"], settings["overlap_chars"]) or [("", page.title)]
    title_tokens = tokenize(page.title)
    for n, (heading, text) in enumerate(pieces):
        records.append(
            {
                "chunk_id": f"{stem}#{n}",
                "page": page.page,
                "url": page.url,
                "title": page.title,
                "heading": heading,
                "text": text,
            }
        )
        head = title_tokens + (tokenize(heading) if heading and heading != page.title else [])
        tokens.append({"text": head + tokenize(text), "title": head})
    return records, tokens


# ---- building -------------------------------------------------------------------------------------------------------
@dataclass
class IndexReport:
    """What one ``umtcds index`` run did."""

    new: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0
    pages: int = 0
    chunks: int = 0
    seconds: float = 0.0
    rebuilt_all: bool = False  # the chunk settings changed, so every page was re-chunked
    dense: str = ""  # the dense part's sentence (embedded, reused, or dropped); "" when there was none

    def sentence(self, out_dir: Path) -> str:
        why = " (chunk settings changed: every page re-chunked)" if self.rebuilt_all else ""
        return (
            f"Indexed {self.pages} pages as {self.chunks} chunks in {out_dir}: {self.new} new, {self.changed} changed, "
            f"{self.unchanged} unchanged, {self.removed} removed{why} ({self.seconds:.1f} s)."
        ) + (f" {self.dense}" if self.dense else "")


def _load_previous(out_dir: Path) -> tuple[dict, dict[str, list[tuple[dict, dict]]]]:
    """The previous build's meta and, per page, its chunk records with their cached tokens (empty when unusable)."""
    meta_path = out_dir / META
    if not meta_path.exists():
        return {}, {}
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        chunks = list(iter_jsonl(out_dir / CHUNKS))
        tokens = list(iter_jsonl(out_dir / TOKENS))
    except (OSError, ValueError):
        return {}, {}
    if meta.get("version") != INDEX_VERSION or len(chunks) != len(tokens):
        return {}, {}
    by_page: dict[str, list[tuple[dict, dict]]] = {}
    for rec, tok in zip(chunks, tokens, strict=True):
        by_page.setdefault(rec["page"], []).append((rec, tok))
    return meta, by_page


def build_index(
    pages_dir: str | Path, out_dir: str | Path, settings: dict | None = None, progress=None, log=None
) -> IndexReport:
    """Build or update the index of ``pages_dir`` in ``out_dir``; only new and changed pages are re-chunked."""
    import bm25s

    t0 = time.perf_counter()
    pages_dir, out_dir = Path(pages_dir), Path(out_dir)
    values = INDEX.check({k: v for k, v in (settings or {}).items() if k in INDEX.by_name})
    chunk_settings = {k: values[k] for k in CHUNK_SETTINGS}
    files = _check_pages_dir(pages_dir, out_dir)
    if values.get("embed_model"):  # a wrong folder is said before anything is read or written
        from .dense import read_recipe

        read_recipe(values["embed_model"])
    manifest = read_manifest(pages_dir)
    old_meta, old = _load_previous(out_dir)
    report = IndexReport(rebuilt_all=bool(old_meta) and old_meta.get("settings") != chunk_settings)
    old_pages = {} if report.rebuilt_all else old_meta.get("pages", {})
    if progress is not None:
        progress.set_total(len(files))
    all_records: list[dict] = []
    all_tokens: list[dict] = []
    pages_meta: dict[str, dict] = {}
    for path in files:
        page = read_page(path, manifest.get(path.name))
        before = old_pages.get(page.page)
        if before is not None and before.get("sha") == page.sha and page.page in old:
            cached = old[page.page]
            records, tokens = [r for r, _ in cached], [t for _, t in cached]
            report.unchanged += 1
            state = "unchanged"
        else:
            records, tokens = chunk_page(page, chunk_settings)
            if before is None and not (report.rebuilt_all and page.page in old_meta.get("pages", {})):
                report.new += 1
                state = "new"
            else:
                report.changed += 1
                state = "changed"
        stat = path.stat()
        pages_meta[page.page] = {
            "sha": page.sha,
            "url": page.url,
            "title": page.title,
            "chunks": len(records),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
        }
        all_records += records
        all_tokens += tokens
        if log is not None and state != "unchanged":
            log(f"[{state}] {page.page} -> {len(records)} chunks")
        if progress is not None:  # counter names are shown in the dashboard's language (i18n.PROGRESS_WORDS)
            progress.update(1, new=report.new, changed=report.changed, unchanged=report.unchanged)
    report.removed = len(set(old_meta.get("pages", {})) - set(pages_meta))
    report.pages, report.chunks = len(pages_meta), len(all_records)

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, field in ((BM25_DIR, "text"), (BM25_TITLE_DIR, "title")):
        retriever = bm25s.BM25()
        retriever.index([t[field] for t in all_tokens], show_progress=False)
        tmp = out_dir / (name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        retriever.save(str(tmp))
        shutil.rmtree(out_dir / name, ignore_errors=True)
        tmp.rename(out_dir / name)
    write_jsonl_atomic(out_dir / CHUNKS, all_records)
    write_jsonl_atomic(out_dir / TOKENS, all_tokens)
    embed = _build_dense(all_records, out_dir, values, report, progress, log) if values.get("embed_model") else None
    report.seconds = time.perf_counter() - t0
    write_json_atomic(  # last: a crash before this leaves the old meta, and the next run redoes the changed pages
        out_dir / META,
        {
            "version": INDEX_VERSION,
            "pages_dir": str(pages_dir.resolve()),
            "settings": chunk_settings,
            "title_weight": values["title_weight"],
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "report": asdict(report),
            "pages": pages_meta,
            **({"embed": embed} if embed else {}),
        },
    )
    if embed is None and old_meta.get("embed"):  # rebuilt without --embed-model: lexical only again
        from .dense import remove_dense

        remove_dense(out_dir)
        report.dense = f"Dense vectors ({old_meta['embed'].get('model')}) dropped: give --embed-model to keep them."
    return report


def _build_dense(records: list[dict], out_dir: Path, values: dict, report: IndexReport, progress, log) -> dict:
    """Embed the chunks (only new text) with ``--embed-model``; what ``meta.json`` remembers of the model."""
    from .dense import build_dense

    def on_batch(done: int, total: int) -> None:
        if progress is not None:  # "chunks 96/300" under the page counters, in the dashboard's language
            progress.update(0, chunks=f"{done}/{total}")

    embed, dense_report = build_dense(
        records,
        out_dir,
        values["embed_model"],
        device=values.get("embed_device"),
        batch_size=values["embed_batch_size"],
        on_batch=on_batch,
        log=log,
    )
    report.dense = dense_report.sentence()
    return embed


# ---- searching ------------------------------------------------------------------------------------------------------
def _missing_index(index_dir: Path) -> IndexError_:
    return IndexError_(
        f"There is no index in {index_dir}; build it with `umtcds index PAGES_DIR --out {index_dir}`.",
        zh=f"{index_dir} 里没有索引；请先用 `umtcds index PAGES_DIR --out {index_dir}` 建立索引。",
    )


def stale_pages(meta: dict) -> list[str]:
    """Pages added, removed or edited in the indexed folder since the build (empty when the folder is gone: an index
    copied elsewhere still answers). Size and mtime first; a file is hashed only when they differ."""
    pages_dir = Path(meta.get("pages_dir") or "")
    if not meta.get("pages_dir") or not pages_dir.is_dir():
        return []
    known: dict[str, dict] = meta.get("pages", {})
    on_disk = {p.name: p for p in page_files(pages_dir)}
    changed = sorted(set(on_disk) ^ set(known))
    manifest = None
    for name, path in on_disk.items():
        info = known.get(name)
        if info is None:
            continue
        stat = path.stat()
        if stat.st_size == info.get("size") and stat.st_mtime_ns == info.get("mtime_ns"):
            continue
        manifest = read_manifest(pages_dir) if manifest is None else manifest
        if read_page(path, manifest.get(name)).sha != info.get("sha"):
            changed.append(name)
    return changed


class Index:
    """A built index, loaded: ``Index.load(dir).search("question", k=5)`` → hits, best first."""

    def __init__(self, index_dir: Path, meta: dict, chunks: list[dict], retriever, title_retriever, dense=None):
        self.dir = index_dir
        self.meta = meta
        self.chunks = chunks
        self.retriever = retriever
        self.title_retriever = title_retriever
        self.title_weight = float(meta.get("title_weight", 1.0))
        self.dense = dense  # a dense.DenseIndex when the index was built with --embed-model
        self._rows: dict[str, int] | None = None  # chunk_id → row, for fusing (built at the first dense search)

    @classmethod
    def load(cls, index_dir: str | Path, check_stale: bool = True) -> Index:
        """Load ``index_dir``; raise one sentence when it is missing, broken, or older than its pages."""
        import bm25s

        index_dir = Path(index_dir)
        if not has_index(index_dir):
            raise _missing_index(index_dir)
        try:
            meta = json.loads((index_dir / META).read_text(encoding="utf-8"))
            chunks = list(iter_jsonl(index_dir / CHUNKS))
            retriever = bm25s.BM25.load(str(index_dir / BM25_DIR))
            title_retriever = bm25s.BM25.load(str(index_dir / BM25_TITLE_DIR))
        except (OSError, ValueError, KeyError) as exc:
            raise IndexError_(
                f"The index in {index_dir} cannot be read ({type(exc).__name__}); rebuild it with "
                f"`umtcds index PAGES_DIR --out {index_dir}`.",
                zh=f"{index_dir} 里的索引无法读取（{type(exc).__name__}）；请用 `umtcds index PAGES_DIR --out {index_dir}` 重建。",
            ) from None
        if meta.get("version") != INDEX_VERSION or len(chunks) != int(retriever.scores["num_docs"]):
            raise IndexError_(
                f"The index in {index_dir} is from another version or incomplete; rebuild it with "
                f"`umtcds index PAGES_DIR --out {index_dir}`.",
                zh=f"{index_dir} 里的索引版本不同或不完整；请用 `umtcds index PAGES_DIR --out {index_dir}` 重建。",
            )
        if check_stale:
            changed = stale_pages(meta)
            if changed:
                pages = meta["pages_dir"]
                more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
                raise IndexError_(
                    f"The pages in {pages} changed since the index was built ({changed[0]}{more}); rebuild it with "
                    f"`umtcds index {pages} --out {index_dir}`.",
                    zh=f"{pages} 里的网页在建立索引后有变化（{changed[0]}{'等 ' + str(len(changed)) + ' 个' if len(changed) > 1 else ''}）；"
                    f"请用 `umtcds index {pages} --out {index_dir}` 重建索引。",
                )
        dense = None
        if meta.get("embed"):  # built with --embed-model: its vectors, the model itself waits for a question
            from .dense import DenseIndex

            dense = DenseIndex.open(index_dir, meta, len(chunks))
        return cls(index_dir, meta, chunks, retriever, title_retriever, dense)

    def search(self, question: str, k: int = 5) -> list[dict]:
        """The ``k`` best chunks for ``question``: chunk records plus ``score`` and ``rank``, best first. Lexical:
        chunks that share no word with the question are not returned. With dense vectors: the two rankings fused by
        reciprocal rank fusion (``score`` is the fused score; ``lexical_rank``/``dense_rank`` say where each came
        from, ``None`` when that ranking did not have it)."""
        if not question or not question.strip():
            raise IndexError_("The question is empty; type a question.", zh="问题是空的；请输入一个问题。")
        S.check_value(RETRIEVE, "k", k)
        if self.dense is None:
            return self._lexical(question, k)
        from .dense import rrf

        pool = max(50, 2 * k)  # each ranking's candidates: RRF needs a chunk's rank in both to reward agreement
        lexical = self._lexical(question, pool)
        lex_rank = {h["chunk_id"]: h["rank"] for h in lexical}
        dense_ids = self.dense.ranking(question, pool) if self.chunks else []
        if self._rows is None:
            self._rows = {c["chunk_id"]: i for i, c in enumerate(self.chunks)}
        by_id = self._rows
        dense_rank = {self.chunks[i]["chunk_id"]: r for r, i in enumerate(dense_ids, start=1)}
        fused = rrf([[by_id[h["chunk_id"]] for h in lexical], dense_ids])[:k]
        hits = []
        for rank, (i, score) in enumerate(fused, start=1):
            chunk = self.chunks[i]
            cid = chunk["chunk_id"]
            hits.append(
                {
                    **chunk,
                    "score": round(score, 6),
                    "rank": rank,
                    "lexical_rank": lex_rank.get(cid),
                    "dense_rank": dense_rank.get(cid),
                }
            )
        return hits

    def _lexical(self, question: str, k: int) -> list[dict]:
        """The BM25 ranking (text plus weighted title field): up to ``k`` chunks sharing a word with ``question``."""
        import numpy as np

        terms = list(dict.fromkeys(tokenize(question)))
        text_terms = [t for t in terms if t in self.retriever.vocab_dict]
        if not text_terms or not self.chunks:
            return []
        scores = self.retriever.get_scores(text_terms)
        title_terms = [t for t in terms if t in self.title_retriever.vocab_dict and t != ""]
        if title_terms and self.title_weight > 0:
            scores = scores + self.title_weight * self.title_retriever.get_scores(title_terms)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        hits = []
        for rank, i in enumerate(top, start=1):
            if scores[i] <= 0:
                break
            hits.append({**self.chunks[int(i)], "score": round(float(scores[i]), 4), "rank": rank})
        return hits


def snippet(text: str, limit: int = 240) -> str:
    """The start of a chunk to show under a hit: whole lines up to about ``limit`` characters (a line is cut only
    when the first one alone is far longer), joined by spaces."""
    lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    out: list[str] = []
    for line in lines:
        if out and sum(len(x) + 1 for x in out) + len(line) > limit:
            return " ".join(out) + " …"
        out.append(line)
    joined = " ".join(out)
    return joined if len(joined) <= 3 * limit else joined[: 3 * limit] + "…"


def retrieve(index_dir: str | Path, question: str, k: int = 5) -> list[dict]:
    """Load ``index_dir`` and search it once (the CLI's path; a chat keeps an :class:`Index` loaded instead)."""
    if not question or not question.strip():
        raise IndexError_("The question is empty; type a question.", zh="问题是空的；请输入一个问题。")
    return Index.load(index_dir).search(question, k)


def index_dir_of(ws) -> Path:
    """A project's index folder (``<workspace>/index``, next to ``pages/``)."""
    return Path(ws.root) / "index"


@dataclass
class IndexStatus:
    """What a page shows about an index folder: built?, its size, when, and which pages changed since."""

    built: bool
    pages: int = 0
    chunks: int = 0
    built_at: str = ""
    stale: tuple[str, ...] = ()
    embed_model: str = ""  # the embedding-model folder the index was built with ("" : lexical only)


def index_status(index_dir: str | Path) -> IndexStatus:
    """The index's state from its files alone (no bm25s load): cheap enough for every page render."""
    index_dir = Path(index_dir)
    if not has_index(index_dir):
        return IndexStatus(False)
    try:
        meta = json.loads((index_dir / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return IndexStatus(False)
    report = meta.get("report") or {}
    return IndexStatus(
        True,
        pages=len(meta.get("pages", {})),
        chunks=int(report.get("chunks", 0)),
        built_at=str(meta.get("built_at", "")),
        stale=tuple(stale_pages(meta)),
        embed_model=str((meta.get("embed") or {}).get("path", "")),
    )


def has_index(index_dir: str | Path) -> bool:
    index_dir = Path(index_dir)
    return (index_dir / META).is_file() and all((index_dir / d).is_dir() for d in (BM25_DIR, BM25_TITLE_DIR))


# ---- CLI ------------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "pages_dir", metavar="PAGES_DIR", nargs="?", help="the crawl's output folder (may come from --config instead)"
    )
    INDEX.add_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no per-page lines, only the summary")


def run(args: argparse.Namespace) -> int:
    from .progress import Progress

    values = INDEX.from_args(args)
    if not values.get("pages_dir"):
        raise IndexError_(
            "No pages folder: give PAGES_DIR (the crawl's --out folder).",
            zh="没有网页文件夹：请给出 PAGES_DIR（爬取时的 --out 文件夹）。",
        )
    if not values.get("out_dir"):
        raise IndexError_(
            "No index folder: give --out INDEX_DIR (e.g. the project's index/).",
            zh="没有索引文件夹：请用 --out INDEX_DIR 指定（例如项目的 index/）。",
        )

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr)

    with Progress(None, unit="pages", desc="index") as progress:
        report = build_index(values["pages_dir"], values["out_dir"], values, progress=progress, log=log)
    print(report.sentence(Path(values["out_dir"])))
    return 0
