"""The step registry: every wizard step and CLI command, declared once.

Why one list: the steps used to be written four times (the workspace's status list, Home's page table, the CLI's
command table, the demo's order) plus the page file names, and they drifted. Everything that needs "the steps" —
``workspace.statuses()``, Home's navigation and status table, the page headers and "next step" links, ``umtcds
--help``, the demo — reads :data:`STEPS` here.

Each :class:`Step` says what the user sees (page file, icon, zh/en title), what the CLI runs (command, module,
one-line help), which workspace files it reads and writes, and how its status is read from those files. A command
without a page (``serve``, ``demo``, ``doctor``) is a step with ``page=None``.

No Streamlit, no torch and no package imports here: ``workspace``, ``cli`` and ``ui`` import this module, so it must
stay a leaf (the status readers get the workspace as an argument).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .workspace import Workspace


@dataclass(frozen=True)
class Step:
    name: str
    """The step's id: the job name, the status key and (for every step today) the CLI command."""
    module: str
    """The module that implements ``umtcds <command>``: it defines ``add_arguments(parser)`` and ``run(args)``."""
    help: str
    """The command's one-line help in ``umtcds --help`` (English: the CLI's language)."""
    title: tuple[str, str] = ("", "")
    """(zh, en) — the page header, shown as "N · title"."""
    nav_title: tuple[str, str] | None = None
    """(zh, en) — a shorter label for the sidebar and Home's table; the title when None."""
    page: str | None = None
    """The page file relative to the project root; None for a command without a page."""
    icon: str = ""
    inputs: tuple[str, ...] = ()
    """Workspace paths the step reads (documentation and the registry test; ``<run>`` is a folder in ``runs/``)."""
    outputs: tuple[str, ...] = ()
    """Workspace paths the step writes."""
    done: Callable[[Workspace], bool] | None = None
    """True when the step's outputs are in the workspace; None when the status is another step's (or none)."""
    status_of: str | None = None
    """The step whose status this step shows (chat is ready exactly when training has produced a model)."""

    @property
    def command(self) -> str:
        return self.name

    @property
    def has_status(self) -> bool:
        return self.done is not None or self.status_of is not None


def _pages_saved(ws: Workspace) -> bool:
    return any(ws.pages_dir.glob("*.txt"))


def _pairs_written(ws: Workspace) -> bool:
    return ws.qa_file.exists() and ws.qa_file.stat().st_size > 0


def _split_written(ws: Workspace) -> bool:
    return (ws.dataset_dir / "train.jsonl").exists()


def _config_saved(ws: Workspace) -> bool:
    return ws.config_file.exists()


def _model_trained(ws: Workspace) -> bool:
    return bool(ws.trained_runs())


def _evaluated(ws: Workspace) -> bool:
    return bool(ws.evaluated_runs())


STEPS: tuple[Step, ...] = (
    Step(
        "crawl",
        "umtcds_core.crawl",
        "Crawl a site (same host, depth-limited) into one text file per page.",
        title=("爬取网页", "Crawl"),
        page="pages/1_crawl.py",
        icon="🕸️",
        inputs=("workspace.json",),
        outputs=("pages/*.txt", "pages/manifest.jsonl"),
        done=_pages_saved,
    ),
    Step(
        "generate",
        "umtcds_core.qa",
        "Clean pages and write question-answer pairs with an LLM.",
        title=("生成问答", "Generate Q&A"),
        page="pages/2_generate.py",
        icon="💬",
        inputs=("pages/*.txt",),
        outputs=("qa/qa.jsonl", "qa/failures.jsonl"),
        done=_pairs_written,
    ),
    Step(
        "dataset",
        "umtcds_core.dataset",
        "Validate, deduplicate and split Q&A pairs into train/dev/test JSONL.",
        title=("数据集", "Dataset"),
        page="pages/3_dataset.py",
        icon="🗂️",
        inputs=("qa/qa.jsonl",),
        outputs=("dataset/train.jsonl", "dataset/dev.jsonl", "dataset/test.jsonl"),
        done=_split_written,
    ),
    Step(
        "config",
        "umtcds_core.config",
        "Write a fine-tuning config (LoRA, QLoRA, P-tuning v2, full) as YAML.",
        title=("训练配置", "Training config"),
        nav_title=("训练配置", "Config"),
        page="pages/4_config.py",
        icon="⚙️",
        inputs=("dataset/train.jsonl",),
        outputs=("config.yaml",),
        done=_config_saved,
    ),
    Step(
        "train",
        "umtcds_core.train",
        "Fine-tune from a config; resumable; writes metrics.jsonl.",
        title=("训练", "Train"),
        page="pages/5_train.py",
        icon="📈",
        inputs=("config.yaml", "dataset/train.jsonl"),
        outputs=("runs/<run>/metrics.jsonl", "runs/<run>/adapter_config.json"),
        done=_model_trained,
    ),
    Step(
        "chat",
        "umtcds_core.chat",
        "Chat with a base model or a tuned checkpoint.",
        title=("对话", "Chat"),
        page="pages/6_chat.py",
        icon="🤖",
        inputs=("runs/<run>/",),
        status_of="train",
    ),
    Step(
        "evaluate",
        "umtcds_core.evaluate",
        "Score base vs tuned answers on the test split (BLEU-4, ROUGE).",
        title=("评测", "Evaluate"),
        page="pages/7_evaluate.py",
        icon="📊",
        inputs=("runs/<run>/", "dataset/test.jsonl"),
        outputs=("runs/<run>/eval/metrics.json", "runs/<run>/eval/examples.jsonl"),
        done=_evaluated,
    ),
    Step(
        "index",
        "umtcds_core.index",
        "Chunk crawled pages into a search index (BM25, Chinese-aware).",
        inputs=("pages/*.txt", "pages/manifest.jsonl"),
        outputs=("index/meta.json", "index/chunks.jsonl", "index/bm25/"),
    ),
    Step(
        "retrieve", "umtcds_core.retrieve", "Print the indexed chunks that best match a question.", inputs=("index/",)
    ),
    Step(
        "refresh",
        "umtcds_core.refresh",
        "Update a project from its site: crawl --refresh, index, generate what changed.",
        inputs=("pages/manifest.jsonl", "jobs/"),
        outputs=("pages/", "index/", "qa/qa.jsonl"),
    ),
    Step("models", "umtcds_core.pull", "`models pull NAME --to DIR`: download a chat model (HF or ModelScope)."),
    Step("export", "umtcds_core.export", "Export a tuned model: HF, GGUF, Ollama or vLLM.", inputs=("runs/<run>/",)),
    Step("serve", "umtcds_core.serve", "Serve a model over an OpenAI-compatible HTTP API.", inputs=("runs/<run>/",)),
    Step("demo", "umtcds_core.demo", "Run the whole pipeline on the bundled demo campus site."),
    Step("doctor", "umtcds_core.doctor", "Print what this machine has (Python, torch, CUDA, disk, packages, model)."),
)

BY_NAME: dict[str, Step] = {s.name: s for s in STEPS}
PAGE_STEPS: tuple[Step, ...] = tuple(s for s in STEPS if s.page)
"""The wizard, in page order: the dashboard's navigation and the "N" of "N · title"."""
STATUS_STEPS: tuple[str, ...] = tuple(s.name for s in STEPS if s.has_status)
"""The steps whose status the workspace reports."""


def get(name: str) -> Step:
    """The step called ``name``; a KeyError names the known steps."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown step {name!r}; known: {', '.join(BY_NAME)}") from None


def number(name: str) -> int:
    """The step's place in the wizard, from 1 (its page file starts with it)."""
    return [s.name for s in PAGE_STEPS].index(name) + 1


def next_step(name: str) -> Step | None:
    """The page step after ``name`` in the wizard, or None after the last."""
    i = number(name)
    return PAGE_STEPS[i] if i < len(PAGE_STEPS) else None


def title(name: str, lang: str, short: bool = False) -> str:
    """ "N · title" in ``lang`` ("zh" | "en") — the one style of every page header and navigation label."""
    step = get(name)
    zh, en = (step.nav_title or step.title) if short else step.title
    return f"{number(name)} · {en if lang == 'en' else zh}"
