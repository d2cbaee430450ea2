"""An OpenAI-compatible HTTP API and a students' chat page for a base or tuned model: ``umtcds serve``.

Usage::

    umtcds serve --adapter runs/run-1                       # http://127.0.0.1:8000/v1 and the page at /
    UMTCDS_SERVE_API_KEY=... umtcds serve --adapter runs/run-1 --host 0.0.0.0 --rate-limit 10/min \\
        --allow-origin https://www.example.edu
    umtcds serve --config serve.yaml [any flag above, which wins over the file]

Then any OpenAI client works::

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="...")
    client.chat.completions.create(model="run-1", messages=[{"role": "user", "content": "..."}], stream=True)

Endpoints (FastAPI on uvicorn):

* ``GET /v1/models``; ``POST /v1/chat/completions`` (``stream`` true → server-sent events ending with
  ``data: [DONE]``; ``max_tokens``/``max_completion_tokens``, ``temperature``, ``top_p``,
  ``stream_options.include_usage``). With an adapter, ``/v1/models`` lists the tuned model (the run's name) and the
  base model; asking for the base name answers with the adapter disabled — the same weights, no second load.
  ``GET /v1/stats``: requests, batches and their sizes. These need the key when one is set.
* ``GET /health`` (no key): ``{"status": "ok"}``, or ``503`` ``{"status": "warming"}`` with ``Retry-After`` while
  the start-up warm-up (``--warmup``, on by default) runs.
* The students' page (``--student-page``, on by default; no key, no admin powers): ``GET /`` the chat page,
  ``GET /widget.js`` (one ``<script src=…>`` line adds a chat bubble to any web page), ``GET /page.json`` (the
  builder's name, welcome text and example questions), ``POST /page/chat`` (one answer as server-sent events, the
  server's own system prompt and answer length), ``POST /v1/feedback`` (👍/👎 and a correction, appended to
  ``serve/feedback.jsonl``; no IP address is stored).
* ``--log-questions`` (off by default): every answered question — its answer, whether it was refused and the sources
  it was given — is appended to ``serve/questions.jsonl`` next to the feedback, again without IP addresses. The
  dashboard's Dataset page ("From students") turns thumbs-down answers, refusals and corrections into new pairs.

Serving many students with one model: one worker thread owns the model (:class:`BatchEngine`). Requests that arrive
together — within ``--batch-wait-ms`` of each other, up to ``--max-batch`` — are decoded together (left padding,
each row streamed and stopped on its own), which on a CPU or GPU costs little more than one answer. With ``--engine
step`` (the default) a request that arrives while others are being decoded joins them at the next decoding step
(at most ``--prefill-tokens`` prompt tokens per step); ``--engine batch`` (and any P-tuning v2 model) decodes each
batch with one ``generate``, so later requests wait for the whole batch. The waiting line is bounded (``--queue-size``): beyond it a request gets ``503`` with ``Retry-After``
instead of waiting forever; ``--rate-limit N/min`` caps each client address (``429``); ``--request-timeout`` ends
an answer that takes too long (``504``, or an error event mid-stream). A client that disconnects mid-stream stops
its own row; the batch goes on for the others.

Safety: binds 127.0.0.1 unless ``--host`` says otherwise, and warns when it listens beyond loopback without a key. The
key is read from the environment (``UMTCDS_SERVE_API_KEY``, or the variable named by ``--api-key-env``), never from
argv, and compared in constant time. Cross-origin requests and embedding the page in another site's frame are allowed
only for the ``--allow-origin`` hosts.
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations (``Request``) as objects.
import argparse
import asyncio
import collections
import contextlib
import hmac
import ipaddress
import json
import os
import re
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import schema as S
from .decode import Decoding, Unsupported, blocker, choose, eos_ids, generation_model, processors
from .errors import UserError
from .model_settings import adapter_setting, device_setting, model_setting, need_model

setting = S.setting

DEFAULT_KEY_ENV = "UMTCDS_SERVE_API_KEY"
MAX_BODY = 4 * 1024 * 1024
PAGE_HISTORY = 8
"""Most earlier messages the students' page sends with a question (a long conversation must not fill the context)."""
PAGE_TEXT_MAX = 2000
"""Longest question (or earlier message) the students' page accepts, in characters."""
FEEDBACK_TEXT_MAX = 4000
WARMUP_QUESTION = "你好 / Hello"
"""The warm-up's question: Chinese and English, so both paths of the tokenizer (and jieba with --rag) run once."""
WARMUP_TOKENS = 4
WARMUP_LIMIT_S = 900.0
STATIC = Path(__file__).resolve().parent / "static" / "serve"

_RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*(s|sec|second|min|minute|h|hour)\s*$")
_RATE_UNITS = {"s": 1, "sec": 1, "second": 1, "min": 60, "minute": 60, "h": 3600, "hour": 3600}
_ORIGIN_RE = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+$")
ENGINES = ("step", "batch")
"""How the model's worker decodes: ``step`` (requests join between decoding steps) or ``batch`` (one ``generate``
per batch); see :class:`BatchEngine`."""


class ServeError(UserError, ValueError):
    """A bad serve option."""


def parse_rate(text: str | None) -> tuple[int, float] | None:
    """``"10/min"`` → ``(10, 60.0)``: that many requests per that many seconds; None or "" → no limit."""
    if not text:
        return None
    m = _RATE_RE.match(text)
    if not m or int(m.group(1)) < 1:
        raise ServeError(
            f"--rate-limit '{text}' is not a rate; write it like 10/min (also N/s or N/h).",
            zh=f"--rate-limit “{text}”不是有效的频率；请写成 10/min 这样的形式（也可以用 N/s 或 N/h）。",
        )
    return int(m.group(1)), float(_RATE_UNITS[m.group(2)])


def _rate_ok(text) -> bool:
    try:
        return parse_rate(text) is not None
    except ServeError:
        return False


# ---- settings: each declared once (schema.py); the CLI flags and a --config YAML read them ------------------------
@dataclass
class ServeSettings:
    """What ``umtcds serve`` runs with: flags, a ``--config`` YAML, or both (flags win)."""

    model: str | None = model_setting()
    adapter: str | None = adapter_setting(
        comment="a run folder or one of its checkpoint-N folders; /v1/models then lists the tuned and the base model"
    )
    host: str = setting(
        "127.0.0.1",
        ("监听地址", "Host"),
        "address to bind; 127.0.0.1: this machine only, 0.0.0.0: every network (set an API key first)",
        help=(
            "127.0.0.1 只允许本机访问；0.0.0.0 对所有网络开放（请先设置 API 密钥）。",
            "127.0.0.1: this machine only; 0.0.0.0: every network (set an API key first).",
        ),
    )
    port: int = setting(
        8000,
        ("端口", "Port"),
        "TCP port; 0 = any free port (printed at start)",
        min=0,
        max=65535,
        range_msg=(
            "{value} is not a port; use 0–65535 (0 = any free port)",
            "{value} 不是端口号；请用 0–65535（0 表示任意空闲端口）",
        ),
    )
    api_key_env: str = setting(
        DEFAULT_KEY_ENV,
        ("API 密钥的环境变量名", "API key variable"),
        "environment variable holding the API key (never the key itself on the command line); unset: no key",
    )
    device: str | None = device_setting()
    max_tokens: int = setting(
        512,
        ("单个回答的最大 token 数", "Most tokens per answer"),
        "most tokens one answer may ask for; a request asking for more gets 400",
        min=1,
        max=32768,
    )
    answer_tokens: int = setting(
        256,
        ("默认回答长度（token）", "Default answer length (tokens)"),
        "answer length when a request does not say (always on the students' page); at most max_tokens",
        min=1,
        max=32768,
    )
    max_batch: int = setting(
        16,
        ("最大批大小", "Largest batch"),
        "most requests decoded together in one batch; higher: more throughput, more memory",
        min=1,
        max=1024,
    )
    batch_wait_ms: int = setting(
        50,
        ("凑批等待（毫秒）", "Batch wait (ms)"),
        "how long the first waiting request waits for others to join its batch; higher: bigger batches, later starts",
        min=0,
        max=5000,
    )
    engine: str = setting(
        "step",
        ("解码方式", "Decoding engine"),
        "step: a waiting request joins the answers being decoded at the next step (short waits in a rush); "
        "batch: one generate per batch, later requests wait for the whole batch (P-tuning v2 always uses it)",
        choices=ENGINES,
        help=(
            "step：新请求在下一个解码步就加入正在生成的回答（高峰时等待短）；batch：每批一次 generate，之后到的请求要等"
            "整批结束（P-tuning v2 模型总是用它）。",
            "step: a waiting request joins the answers being decoded at the next step (short waits in a rush); "
            "batch: one generate per batch, later requests wait for the whole batch (P-tuning v2 models always use it).",
        ),
    )
    prefill_tokens: int = setting(
        2048,
        ("每步加入的提示 token 上限", "Prompt tokens joining per step"),
        "with engine step: most prompt tokens (new rows × their longest prompt) read in between two decoding steps "
        "while other answers run; higher: a rush starts sooner, running answers pause longer",
        min=16,
        max=1_000_000,
    )
    queue_size: int = setting(
        64,
        ("排队上限", "Queue size"),
        "most requests waiting for the model; beyond it a request gets 503 with Retry-After",
        min=1,
        max=100000,
    )
    rate_limit: str | None = setting(
        None,
        ("每个客户端的频率限制", "Rate limit per client"),
        "requests per client address, like 10/min (N/s, N/h too); beyond it 429; null: no limit",
        kind=str,
        nullable=True,
        valid=_rate_ok,
        range_msg=(
            "'{value}' is not a rate; write it like 10/min",
            "“{value}”不是有效的频率；请写成 10/min 这样的形式",
        ),
        example="10/min",
    )
    request_timeout: float = setting(
        120.0,
        ("请求超时（秒）", "Request timeout (s)"),
        "seconds a request may take, waiting included; beyond it 504 (or an error event mid-stream)",
        min=0,
        min_open=True,
    )
    warmup: bool = setting(
        True,
        ("启动时预热", "Warm up at start"),
        "answer one short question through the batching queue before /health says ok, so the first student does "
        "not wait for the model's first-call costs (once ~83 s on a fresh GPU); off: ready at once",
        help=(
            "启动时先在批处理队列里生成一个很短的回答，完成后 /health 才显示正常；这样第一位学生不用等待模型首次调用的"
            "开销（在新启动的 GPU 上曾达 83 秒）。关闭：立即就绪。",
            "Generates one short answer through the batching queue before /health says ok, so the first student does "
            "not pay the model's first-call costs (once ~83 s on a fresh GPU). Off: ready at once.",
        ),
    )
    rag: str | None = setting(
        None,
        ("网站索引（根据网站回答）", "Website index (answers from the website)"),
        "an index built by `umtcds index`: each question is answered from its best chunks, with `sources` "
        "(url, title) on the reply and in the last stream chunk; null: answer from the model alone",
        kind=str,
        nullable=True,
        example="index",
    )
    rag_k: int = setting(
        5,
        ("每个问题的资料段数", "Chunks per question"),
        "with --rag, how many chunks each question is answered from",
        min=1,
        max=20,
        range_msg=("must be between 1 and 20 (5 is a good start)", "必须在 1 到 20 之间（可以先试 5）"),
    )
    student_page: bool = setting(
        True,
        ("学生页面", "Students' page"),
        "serve the students' chat page at / and the widget at /widget.js (no key needed; no admin powers)",
    )
    assistant_name: str | None = setting(
        None,
        ("助手名称", "Assistant name"),
        "the name the students' page shows; null: 校园助手 / Campus assistant",
        kind=str,
        nullable=True,
        example="Zorvale helper",
    )
    welcome: str | None = setting(
        None,
        ("欢迎语", "Welcome text"),
        "the first words the students' page shows; null: a short bilingual welcome",
        kind=str,
        nullable=True,
        widget="textarea",
        example="Ask me about admissions, the library or campus life.",
    )
    examples: list | None = setting(
        None,
        ("示例问题", "Example questions"),
        "questions offered as buttons on the students' page (a YAML list, or comma-separated on the command line)",
        kind=list,
        nullable=True,
        widget="list",
        example="[When does the library close?, How do I apply?]",
    )
    allow_origin: list | None = setting(
        None,
        ("允许嵌入的网站", "Allowed origins"),
        "websites (https://host) that may embed the widget and call the API from their pages; null: none",
        kind=list,
        nullable=True,
        widget="list",
        valid=lambda v: all(_ORIGIN_RE.match(o.strip().rstrip("/")) for o in v),
        range_msg=(
            "each origin must look like https://www.example.edu (scheme and host, no path)",
            "每个来源必须形如 https://www.example.edu（协议加主机名，不带路径）",
        ),
        example="[https://www.example.edu]",
    )
    feedback_dir: str | None = setting(
        None,
        ("反馈保存位置", "Feedback folder"),
        "where serve/feedback.jsonl goes; null: the adapter's project (workspace), else the current folder",
        kind=str,
        nullable=True,
        widget="text",
    )
    log_questions: bool = setting(
        False,
        ("记录学生的问题", "Log questions"),
        "append every question, its answer, whether it was refused and its sources to serve/questions.jsonl "
        "(next to feedback.jsonl; no IP address); off: only what students rate is kept",
        help=(
            "把每个问题、回答、是否拒答和引用的来源追加到 serve/questions.jsonl（不记录 IP 地址），"
            "用于在“数据集”页的“来自学生”中改进问答对。请先告知使用者。",
            "Appends each question, its answer, whether it was refused and its sources to serve/questions.jsonl "
            "(no IP address), to improve the pairs on the Dataset page's From students tab. Tell your users first.",
        ),
    )


SERVE = S.from_dataclass(ServeSettings, "serve", title="UMTCDS serve settings — run with `umtcds serve --config`")
"""The serve step's schema: CLI flags and the settings YAML come from it."""


class _BadRequest(Exception):
    def __init__(self, status: int, message: str, code: str = "invalid_request_error", zh: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.zh = status, message, code, zh
        self.headers: dict[str, str] = {}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, api_key: str | None, key_env: str = DEFAULT_KEY_ENV) -> str | None:
    """The warning to print when the API is reachable beyond this machine without a key (else None)."""
    if is_loopback(host) or api_key:
        return None
    return (
        f"Warning: listening on {host} without an API key — anyone who can reach this port can use the model. "
        f"Set {key_env} to require one."
    )


# ---- the batching engine: one worker thread owns the model ---------------------------------------------------------
class QueueFull(Exception):
    """The waiting line is full; the caller answers 503 with Retry-After."""


@dataclass(eq=False)
class Job:
    """One request's answer: what to generate, and a channel back to the request's event loop.

    The worker thread reports ``("piece", text)`` as the row grows and ``("end", None)`` or ``("error", exc)`` once;
    ``prompt_tokens``, ``completion_tokens``, ``text`` and ``finish`` are set before ``end``. ``finish`` is
    ``"stop"`` (the model ended, or began repeating itself), ``"length"``, ``"timeout"`` or ``"cancelled"``.
    """

    messages: list[dict]
    options: Any  # chat.GenOptions
    use_adapter: bool
    deadline: float
    loop: asyncio.AbstractEventLoop | None = None
    out: Any = None  # asyncio.Queue on ``loop``, or a queue.Queue when there is no loop (bench, tests)
    cancelled: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.monotonic)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    text: str = ""
    finish: str = ""
    prompt_ids: list[int] | None = None  # the prompt's token ids, encoded once by the step engine

    def emit(self, kind: str, value=None) -> None:
        if self.loop is None:
            self.out.put((kind, value))
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: the server is shutting down
            self.loop.call_soon_threadsafe(self.out.put_nowait, (kind, value))

    @property
    def batch_key(self) -> tuple:
        """Requests with the same key can share one ``generate`` call (the same adapter state and sampling)."""
        kw = self.options.kwargs()
        return (self.use_adapter, kw["do_sample"], kw.get("temperature"), kw.get("top_p"))


class _Row:
    """One request's row in a batch: its tokens so far and what of their text was already sent."""

    def __init__(self, job: Job, tokenizer):
        self.job, self.tok = job, tokenizer
        self.tokens: list[int] = []
        self.sent = 0
        self.done = False

    def add(self, token: int) -> None:
        from .chat import complete_text

        self.tokens.append(token)
        text = complete_text(self.tok.decode(self.tokens, skip_special_tokens=True))
        if len(text) > self.sent:
            self.job.emit("piece", text[self.sent :])
            self.sent = len(text)

    def take(self, token: int, eos_ids: set[int]) -> None:
        """The row's next token: an end-of-sequence id ends it ("stop"), any other is streamed."""
        if self.done:
            return
        if token in eos_ids:
            self.finish("stop")
        else:
            self.add(token)

    def check(self, looped: bool, now: float) -> None:
        """End the row when cancelled, past its deadline, looping or at its own token limit (in that order)."""
        job = self.job
        if self.done:
            return
        if job.cancelled.is_set():
            self.finish("cancelled")
        elif now > job.deadline:
            self.finish("timeout")
        elif looped:
            self.finish("stop")
        elif len(self.tokens) >= job.options.max_new_tokens:
            self.finish("length")

    def finish(self, reason: str) -> None:
        from .chat import final_text

        if self.done:
            return
        self.done = True
        job = self.job
        job.completion_tokens = len(self.tokens)
        job.text = final_text(self.tok.decode(self.tokens, skip_special_tokens=True))
        job.finish = reason
        job.emit("end")


def _eos_ids(cm) -> set[int]:
    """Every id that ends an answer: the model's generation config's and the tokenizer's."""
    return eos_ids(cm.model, cm.tokenizer)


class _BatchStreamer:
    """What ``generate`` calls with each step's new tokens (one per row): each row streams and ends on its own."""

    def __init__(self, rows: list[_Row], eos_ids: set[int]):
        self.rows, self.eos_ids, self.prompt_seen = rows, eos_ids, False

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate first hands over the prompt
            self.prompt_seen = True
            return
        for row, token in zip(self.rows, value.reshape(-1).tolist(), strict=True):
            row.take(token, self.eos_ids)

    def end(self) -> None:
        for row in self.rows:
            row.finish("length")


class _StopRows:
    """A per-row stopping criterion: a row ends at its own token limit, on a loop, when cancelled or past its deadline.

    ``generate`` pads a stopped row from then on; the row's request has its answer at once, not when the batch ends.
    """

    def __init__(self, rows: list[_Row], repetition):
        self.rows, self.repetition = rows, repetition

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        looped = self.repetition(input_ids, scores).tolist()
        now = time.monotonic()
        for row, loop in zip(self.rows, looped, strict=True):
            row.check(loop, now)
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)


# ---- the step engine's pieces: what generate would do, one decoding step at a time ---------------------------------
def _generation_model(cm):
    """The transformers model under a peft wrapper (its generation config and set-up helpers)."""
    return generation_model(cm.model)


def _step_processors(cm, options):
    """``(processors, do_sample)`` for a request's options: what ``generate`` builds (:func:`decode.processors`)."""
    return processors(_generation_model(cm), cm._gen_kwargs(options))


def step_engine_blocker(cm) -> str | None:
    """Why the step engine cannot serve ``cm`` exactly as ``generate`` would; None when it can.

    The one place the engine is chosen (:class:`BatchEngine` asks it once): what :func:`decode.blocker` finds in the
    model, or a sampling setting whose processors the step engine cannot reproduce."""
    from .chat import GenOptions

    if why := blocker(cm.model):
        return why
    try:
        for options in (GenOptions(temperature=0.0), GenOptions(temperature=0.7, top_p=0.9)):
            _step_processors(cm, options)
    except Unsupported as exc:
        return str(exc)
    return None


class BatchEngine:
    """The model's one worker: takes waiting requests and decodes them together, each row streamed and ended on its own.

    Why a worker and not a lock per request: with a lock, 16 students wait for 16 answers one after another; decoding
    them together answers all 16 in little more than the time of one, because a decoding step is bound by reading the
    weights, not by the number of rows. The first requests are batched by waiting ``wait_s`` after the first one (or
    until ``max_batch`` are there). Two engines (``engine``), chosen once by :func:`step_engine_blocker`:

    * ``step`` (default): an own decoding loop over the model's forward with a ``DynamicCache``. Between two decoding
      steps, waiting requests with the same adapter state are read in (left padded, one forward) and JOIN the running
      batch: their cache is concatenated along the batch, the shorter side left-padded, with the 2-D attention mask;
      position ids per row count the mask (as ``generate`` does). A finished row (stop, length, loop, cancelled,
      timeout) leaves at once (``index_select`` on the cache, mask and ids; columns no row needs any more are cut).
      Greedy and sampled rows may share a batch: each sampling setting gets the processors ``generate`` would build
      (:func:`_step_processors`). Admission: at most ``max_batch`` rows, and while other rows are decoding at most
      ``prefill_tokens`` prompt tokens (rows × longest prompt) per step, oldest first — reading a long prompt stalls
      every running answer for that forward, so a rush of long prompts enters over a few steps instead of freezing
      the stream for seconds; one request always fits, however long. When the oldest waiting request needs the other
      adapter state, nobody new joins: the batch drains and that request goes next (no starvation).
    * ``batch``: one batched ``generate`` per batch; later requests wait for the whole batch. Serves what the step
      engine cannot reproduce exactly (P-tuning v2 and other prompt-learning adapters, sliding-window caches, …).

    Uses :meth:`umtcds_core.chat.ChatModel.encode` (the prompts) and the same loop detection and text clean-up as
    :meth:`~umtcds_core.chat.ChatModel.answer_batch`. The model's lock is taken per decoding step (step) or per
    ``generate`` (batch).
    """

    def __init__(
        self,
        chat_model,
        max_batch: int = 16,
        wait_s: float = 0.02,
        queue_size: int = 64,
        engine: str = "step",
        prefill_tokens: int = 2048,
    ):
        self.cm = chat_model
        self.max_batch, self.wait_s, self.queue_size = max(1, max_batch), max(0.0, wait_s), max(1, queue_size)
        self.prefill_tokens = max(1, prefill_tokens)
        self.engine, self.engine_note = engine, None
        if engine == "step" and (why := step_engine_blocker(chat_model)):
            self.engine, self.engine_note = "batch", f"the step engine cannot serve this model exactly: {why}"
        self._pending: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self.running = 0
        self.stats = {"requests": 0, "answered": 0, "rejected_full": 0, "cancelled": 0, "timeouts": 0, "batches": 0,
                      "batch_sizes": {}, "max_batch_seen": 0, "output_tokens": 0, "joined": 0,
                      "steps": 0}  # fmt: skip
        target = self._step_loop if self.engine == "step" else self._batch_loop
        self._thread = threading.Thread(target=target, name="umtcds-serve-model", daemon=True)
        self._thread.start()

    # ---- called from request handlers
    def submit(self, job: Job) -> None:
        with self._cv:
            if self._closed or len(self._pending) >= self.queue_size:
                self.stats["rejected_full"] += 1
                raise QueueFull
            self._pending.append(job)
            self.stats["requests"] += 1
            self._cv.notify_all()

    def cancel(self, job: Job) -> None:
        """The request is gone (client left, timed out): drop it if still waiting, else stop its row."""
        job.cancelled.set()
        with self._cv, contextlib.suppress(ValueError):
            self._pending.remove(job)

    def snapshot(self) -> dict:
        """The stats; with the step engine a "batch" is one run of the loop from its first rows until it empties
        (``batch_sizes``: the most rows it held at once), ``joined`` counts rows that joined a running batch."""
        with self._cv:
            return {**self.stats, "batch_sizes": dict(self.stats["batch_sizes"]), "queued": len(self._pending),
                    "running": self.running, "max_batch": self.max_batch, "queue_size": self.queue_size,
                    "engine": self.engine, "engine_note": self.engine_note}  # fmt: skip

    def retry_after(self) -> int:
        """Seconds a rejected client should wait: a rough guess from the line ahead of it."""
        return max(1, min(60, len(self._pending) // self.max_batch + 1))

    def close(self) -> None:
        with self._cv:
            self._closed = True
            left = list(self._pending)
            self._pending.clear()
            self._cv.notify_all()
        for job in left:
            job.emit("error", ServeError("The server is shutting down; try again in a moment."))
        self._thread.join(timeout=30)

    # ---- the worker: shared
    def _take(self, key_of) -> list[Job]:
        """The next batch: the oldest waiting request and up to ``max_batch`` - 1 more with its ``key_of``."""
        with self._cv:
            while not self._pending and not self._closed:
                self._cv.wait()
            if self._closed:
                return []
            key = key_of(self._pending[0])
            until = time.monotonic() + self.wait_s
            while not self._closed:
                fits = sum(1 for j in self._pending if key_of(j) == key)
                left = until - time.monotonic()
                if fits >= self.max_batch or left <= 0:
                    break
                self._cv.wait(timeout=left)
            batch = [j for j in self._pending if key_of(j) == key][: self.max_batch]
            for job in batch:
                self._pending.remove(job)
            self.running = len(batch)
            return batch

    def _live(self, jobs: list[Job]) -> list[Job]:
        """``jobs`` without those cancelled or past their deadline while waiting (each answered and counted)."""
        live = []
        for job in jobs:
            if job.cancelled.is_set():
                self._count("cancelled")
            elif time.monotonic() > job.deadline:
                job.finish = "timeout"
                job.emit("end")
                self._count("timeouts")
            else:
                live.append(job)
        return live

    def _count(self, name: str, n: int = 1) -> None:
        with self._cv:
            self.stats[name] += n

    def _counted(self, rows: list[_Row]) -> None:
        """Rows that ended: their tokens and how they ended, in the stats."""
        with self._cv:
            for row in rows:
                self.stats["output_tokens"] += len(row.tokens)
                kind = {"cancelled": "cancelled", "timeout": "timeouts"}.get(row.job.finish, "answered")
                self.stats[kind] += 1

    def _batch_seen(self, size: int) -> None:
        with self._cv:
            self.stats["batches"] += 1
            sizes = self.stats["batch_sizes"]
            sizes[size] = sizes.get(size, 0) + 1
            self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], size)

    # ---- the batch engine: one generate per batch
    def _batch_loop(self) -> None:
        while True:
            batch = self._take(lambda j: j.batch_key)
            if not batch:
                return
            live = self._live(batch)
            try:
                if live:
                    self._generate(live)
            except Exception as exc:  # noqa: BLE001 - every waiting request hears about it; the worker goes on
                for job in live:
                    if not job.finish:
                        job.emit("error", exc)
            finally:
                with self._cv:
                    self.running = 0

    def _generate(self, jobs: list[Job]) -> None:
        import torch
        from transformers import StoppingCriteriaList

        from .chat import GenOptions, _StopOnRepetition

        cm, tok = self.cm, self.cm.tokenizer
        first = jobs[0].options
        longest = max(j.options.max_new_tokens for j in jobs)
        gen_kwargs = cm._gen_kwargs(
            GenOptions(max_new_tokens=longest, temperature=first.temperature, top_p=first.top_p)
        )
        enc = cm.encode([j.messages for j in jobs])
        prompt_len = int(enc["input_ids"].shape[1])
        for job, n in zip(jobs, enc["attention_mask"].sum(dim=1).tolist(), strict=True):
            job.prompt_tokens = int(n)
        rows = [_Row(job, tok) for job in jobs]
        streamer = _BatchStreamer(rows, _eos_ids(cm))
        stop = StoppingCriteriaList([_StopRows(rows, _StopOnRepetition(tok, prompt_len))])
        self._batch_seen(len(jobs))
        with cm.lock, cm._mode(jobs[0].use_adapter) as m, torch.inference_mode():
            m.generate(**enc, **gen_kwargs, streamer=streamer, stopping_criteria=stop)
        streamer.end()  # rows still open reached the batch's token limit
        self._counted(rows)

    # ---- the step engine: requests join between decoding steps
    def _step_loop(self) -> None:

        import torch

        from .chat import _StopOnRepetition  # looked up here, like _generate does (the serve bench replaces it)

        cm = self.cm
        self._eos = _eos_ids(cm)
        gm = _generation_model(cm)
        self._procs: dict[tuple, tuple] = {}
        while True:
            jobs = self._take(lambda j: j.use_adapter)
            if not jobs:
                return
            key, run, new = jobs[0].use_adapter, Decoding(gm, cm.tokenizer.pad_token_id), []
            self._repetition = _StopOnRepetition(cm.tokenizer, 0)
            try:
                for job in jobs:
                    self._prompt_ids(job)
                new = self._live(jobs)
                while new or run.rows:
                    with cm.lock, cm._mode(key) as m, torch.inference_mode():
                        if new:
                            self._join(m, run, new)
                            new = []
                            self._retire(run)
                        if run.rows:
                            self._step(m, run)
                            self._retire(run)
                    new = self._admit(key, run)
            except Exception as exc:  # noqa: BLE001 - every request of the batch hears about it; the worker goes on
                for job in [*(r.job for r in run.rows if not r.done), *new]:
                    if not job.finish:
                        job.emit("error", exc)
            finally:
                if run.most:
                    self._batch_seen(run.most)
                with self._cv:
                    self.running = 0

    def _prompt_ids(self, job: Job) -> list[int]:
        """The job's prompt as token ids, encoded once (:meth:`ChatModel.encode`, the one prompt encoder)."""
        if job.prompt_ids is None:
            job.prompt_ids = self.cm.encode([job.messages])["input_ids"][0].tolist()
        return job.prompt_ids

    def _admit(self, key, run: Decoding) -> list[Job]:
        """Waiting requests that join the running batch now (see the class doc for the rule)."""
        room = self.max_batch - len(run.rows)
        with self._cv:
            if self._closed or room <= 0 or not run.rows or not self._pending:
                return []
            if self._pending[0].use_adapter != key:
                return []  # drain: the oldest waiting request needs the other adapter state and goes next
            candidates = [j for j in self._pending if j.use_adapter == key][:room]
        chosen, longest = [], 0
        for job in candidates:  # tokenized outside the queue's lock: submitters never wait for the tokenizer
            longest = max(longest, len(self._prompt_ids(job)))
            if chosen and (len(chosen) + 1) * longest > self.prefill_tokens:
                break
            chosen.append(job)
        with self._cv:
            taken = []
            for job in chosen:
                with contextlib.suppress(ValueError):  # cancelled meanwhile: already gone from the queue
                    self._pending.remove(job)
                    taken.append(job)
            self.running = len(run.rows) + len(taken)
        return self._live(taken)

    def _join(self, m, run: Decoding, jobs: list[Job]) -> None:
        """Read the jobs' prompts in (left padded, one forward), choose their first tokens and add them to ``run``."""
        for job in jobs:
            job.prompt_tokens = len(job.prompt_ids)
        ids, logits, state = run.prefill(m, [job.prompt_ids for job in jobs])
        rows = [_Row(job, self.cm.tokenizer) for job in jobs]
        tokens = self._choose(ids, logits, rows)
        if run.rows:
            self._count("joined", len(rows))
        run.join(rows, state, tokens)
        with self._cv:
            self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], len(run.rows))
        self._took(rows, tokens.tolist())

    def _step(self, m, run: Decoding) -> None:
        """One decoding step for every row: feed each row's chosen token, choose the next."""
        ids, logits = run.step(m)
        run.next = self._choose(ids, logits, run.rows)
        self._count("steps")
        self._took(run.rows, run.next.tolist())

    def _took(self, rows: list[_Row], tokens: list[int]) -> None:
        """Each row's new token streamed (or its end), then the stop rules generate's criteria apply."""
        import torch

        for row, token in zip(rows, tokens, strict=True):
            row.take(token, self._eos)
        now, rep = time.monotonic(), self._repetition
        window = getattr(rep, "window", 256)
        for row in rows:
            if not row.done:
                looped = bool(rep(torch.tensor([row.tokens[-window:]]), None)[0])
                row.check(looped, now)

    def _choose(self, ids, logits, rows: list[_Row]):
        """Each row's next token: its sampling setting's processors, then argmax (greedy) or a draw (sampling)."""
        import torch

        groups: dict[tuple, list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(row.job.batch_key[1:], []).append(i)
        out = None
        for skey, idx in groups.items():
            if skey not in self._procs:
                self._procs[skey] = _step_processors(self.cm, rows[idx[0]].job.options)
            procs, sample = self._procs[skey]
            whole = len(idx) == len(rows)
            pick = None if whole else torch.tensor(idx, device=logits.device)
            chosen = choose(procs, sample, ids if whole else ids[pick], logits if whole else logits[pick])
            if whole:
                return chosen
            if out is None:
                out = torch.empty(len(rows), dtype=chosen.dtype, device=chosen.device)
            out[pick] = chosen
        return out

    def _retire(self, run: Decoding) -> None:
        """Finished rows leave the batch at once; cache columns that only they needed are cut."""
        keep = [i for i, row in enumerate(run.rows) if not row.done]
        if len(keep) == len(run.rows):
            return
        self._counted([row for row in run.rows if row.done])
        most = run.most
        run.keep(keep)
        if not keep:
            self._batch_seen(most)  # counted before running drops to 0: a snapshot never sees a half-ended run
            run.most = 0
        with self._cv:
            self.running = len(run.rows)


# ---- rate limit -----------------------------------------------------------------------------------------------------
class RateLimiter:
    """A sliding window per client address, in memory only (addresses are never written anywhere)."""

    def __init__(self, limit: int, per_s: float):
        self.limit, self.per_s = limit, per_s
        self._hits: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, client: str) -> float | None:
        """None when allowed (and counted); else seconds until the next request would be allowed."""
        now = time.monotonic()
        with self._lock:
            if len(self._hits) > 10_000:  # forget idle clients so the table stays small
                self._hits = {k: v for k, v in self._hits.items() if v and now - v[-1] < self.per_s}
            hits = self._hits.setdefault(client, collections.deque())
            while hits and now - hits[0] >= self.per_s:
                hits.popleft()
            if len(hits) >= self.limit:
                return self.per_s - (now - hits[0])
            hits.append(now)
            return None


# ---- request logic -------------------------------------------------------------------------------------------------
def default_page_settings() -> dict:
    return {k: SERVE[k].default for k in ("assistant_name", "welcome", "examples")}


class ChatAPI:
    """The request logic, separate from HTTP plumbing: validate a body, build the prompt, queue it, answer it."""

    def __init__(self, chat_model, api_key: str | None = None, settings: dict | None = None):
        values = SERVE.defaults()
        values.update(settings or {})
        self.settings = values
        self.cm = chat_model
        self.api_key = api_key or None
        self.max_tokens = int(values["max_tokens"])
        self.default_max_tokens = min(int(values["answer_tokens"]), self.max_tokens)
        self.timeout = float(values["request_timeout"])
        self.created = int(time.time())
        self.tuned_id = chat_model.name
        self.base_id = chat_model.base_name
        rate = parse_rate(values["rate_limit"])
        self.rate = RateLimiter(*rate) if rate else None
        self.engine = BatchEngine(
            chat_model,
            values["max_batch"],
            values["batch_wait_ms"] / 1000.0,
            values["queue_size"],
            engine=values["engine"],
            prefill_tokens=values["prefill_tokens"],
        )
        self.feedback_file = feedback_path(values)
        self.questions_file = questions_path(values) if values.get("log_questions") else None
        self._feedback_lock = threading.Lock()
        self.index = None
        if values.get("rag"):
            from .index import Index

            self.index = Index.load(values["rag"])  # a missing or stale index: one sentence, before serving
        self._answers: collections.OrderedDict[str, dict] = collections.OrderedDict()
        self.ready = threading.Event()
        """Set once the warm-up answered (or at once without ``--warmup``); ``/health`` says ``warming`` until then."""
        self.warmup_s: float | None = None
        self.warmup_error: str | None = None
        if not values.get("warmup", True):
            self.ready.set()

    def close(self) -> None:
        self.engine.close()

    def warm_up(self, tokens: int = WARMUP_TOKENS) -> float:
        """Answer one short question through the engine, like any request, and mark the server ready.

        Why: a fresh model pays one-off costs on its first ``generate`` (CUDA context and kernel selection, lazy
        imports, the tokenizer's and the index's first calls) — once ~83 s for the first student's question. Going
        through the same queue, prompt builder and batched ``generate`` as a request pays them here instead, while
        ``/health`` says ``warming``. Requests that arrive meanwhile wait in the queue as usual. A failure is
        recorded (``warmup_error``) and the server becomes ready anyway: each request then reports its own error.
        """
        import queue

        from .chat import GenOptions

        start = time.monotonic()
        try:
            messages, _ = self.build_messages([{"role": "user", "content": WARMUP_QUESTION}], page=True)
            options = GenOptions(max_new_tokens=tokens, temperature=0.0)
            # Not the request timeout: this is the slow first call itself, and no client is waiting on it.
            job = Job(messages, options, self.cm.has_adapter, deadline=start + WARMUP_LIMIT_S, out=queue.Queue())
            self.engine.submit(job)
            while True:
                kind, value = job.out.get(timeout=WARMUP_LIMIT_S + 30)
                if kind == "error":
                    raise value
                if kind == "end":
                    break
        except Exception as exc:  # noqa: BLE001 - reported on the start lines; serving goes on
            self.warmup_error = f"{type(exc).__name__}: {str(exc)[:200]}"
        self.warmup_s = time.monotonic() - start
        self.ready.set()
        return self.warmup_s

    def model_ids(self) -> list[str]:
        return [self.tuned_id, self.base_id] if self.cm.has_adapter else [self.base_id]

    def models_payload(self) -> dict:
        return {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": self.created, "owned_by": "umtcds"} for m in self.model_ids()
            ],
        }

    def authorized(self, header: str | None) -> bool:
        if not self.api_key:
            return True
        given = (header or "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(given.encode(), self.api_key.encode())

    def check_rate(self, client: str) -> None:
        if self.rate is None:
            return
        wait = self.rate.check(client)
        if wait is not None:
            err = _BadRequest(
                429,
                f"Too many requests from this address (limit {self.settings['rate_limit']}); "
                f"try again in {int(wait) + 1} s.",
                "rate_limit_exceeded",
                zh=f"请求太频繁（上限 {self.settings['rate_limit']}）；请 {int(wait) + 1} 秒后再试。",
            )
            err.headers["Retry-After"] = str(int(wait) + 1)
            raise err

    # ---- the one place a request's prompt is assembled
    def build_messages(self, messages: list[dict], *, page: bool) -> tuple[list[dict], list[dict]]:
        """The messages the model answers for one request, and the sources to show with the answer.

        Why one function: the API and the students' page must put the same prompt in front of the model, and
        retrieval (answers from the website, ``--rag``) belongs exactly here — it turns the question into a grounded
        prompt and returns the passages it used as sources. Without retrieval: the API's messages go as sent; the
        page's conversation gets the run's system prompt (the one training used), since students cannot send one.
        """
        if self.index is not None and messages and messages[-1]["role"] == "user":
            return self._grounded(messages)
        if page and self.cm.system_prompt and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": self.cm.system_prompt}, *messages]
        return messages, []

    def _grounded(self, messages: list[dict]) -> tuple[list[dict], list[dict]]:
        """The last question answered from the index's best chunks (grounding.py, the one builder): the grounded
        system turn replaces the client's own (its text goes in front of the instructions), earlier turns stay."""
        from .chat import context_budget
        from .grounding import build_grounded_messages

        question = messages[-1]["content"]
        system = next((m["content"] for m in messages if m["role"] == "system"), None) or self.cm.system_prompt
        hits = self.index.search(question, k=int(self.settings["rag_k"]))
        budget = context_budget(self.cm, self.default_max_tokens)
        grounded, shown = build_grounded_messages(question, hits, system, budget, tokenizer=self.cm.tokenizer)
        history = [m for m in messages[:-1] if m["role"] != "system"]
        sources = [{"n": s["n"], "url": s.get("url"), "title": s.get("title"), "text": s.get("text")} for s in shown]
        return [grounded[0], *history, grounded[-1]], sources

    @staticmethod
    def answered_sources(job: Job, sources: list[dict]) -> list[dict]:
        """The sources as a reply, log or feedback record carries them: ``n``, ``url``, ``title`` and whether the
        answer cites (``cited``) or, citing none, was matched to (``matched``) each (grounding.mark_sources); the
        passages' text stays on the server."""
        from .grounding import mark_sources

        return [{k: v for k, v in s.items() if k != "text"} for s in mark_sources(job.text, sources)]

    def parse(self, body: dict) -> tuple[list[dict], Any, bool, str, bool]:
        """``(messages, options, use_adapter, model id, stream)`` or :class:`_BadRequest`."""
        from .chat import GenOptions

        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise _BadRequest(400, "'messages' must be a non-empty list of {role, content} objects.")
        messages = []
        for m in msgs:
            if not isinstance(m, dict) or m.get("role") not in {"system", "user", "assistant", "developer"}:
                raise _BadRequest(400, "Each message needs a role of system, user or assistant.")
            content = m.get("content")
            if isinstance(content, list):  # content parts: keep the text ones
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
            if not isinstance(content, str):
                raise _BadRequest(400, "Each message needs a text 'content'.")
            messages.append({"role": "system" if m["role"] == "developer" else m["role"], "content": content})
        model_id = body.get("model") or self.model_ids()[0]
        if model_id not in self.model_ids():
            raise _BadRequest(404, f"Unknown model '{model_id}'; use one of {self.model_ids()}.", "model_not_found")
        use_adapter = self.cm.has_adapter and model_id == self.tuned_id
        try:
            asked = body.get("max_completion_tokens") or body.get("max_tokens")
            max_tokens = int(asked) if asked is not None else self.default_max_tokens
            temperature = float(body.get("temperature", 0.7) if body.get("temperature") is not None else 0.7)
            top_p = float(body.get("top_p", 1.0) if body.get("top_p") is not None else 1.0)
        except (TypeError, ValueError) as exc:
            raise _BadRequest(400, "max_tokens, temperature and top_p must be numbers.") from exc
        if max_tokens > self.max_tokens:
            raise _BadRequest(
                400,
                f"max_tokens {max_tokens} is more than this server allows; ask for at most {self.max_tokens}.",
            )
        if max_tokens < 1 or temperature < 0 or not 0 < top_p <= 1:
            raise _BadRequest(400, "Need max_tokens >= 1, temperature >= 0 and 0 < top_p <= 1.")
        options = GenOptions(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p)
        return messages, options, use_adapter, model_id, bool(body.get("stream"))

    def parse_page(self, body: dict) -> list[dict]:
        """The students' page sends ``{"messages": [...]}``: user/assistant turns only, short, the last one a question."""
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise _BadRequest(400, "Send the conversation as a non-empty 'messages' list.", zh="请发送非空的对话列表。")
        out = []
        for m in msgs[-PAGE_HISTORY:]:
            if (
                not isinstance(m, dict)
                or m.get("role") not in {"user", "assistant"}
                or not isinstance(m.get("content"), str)
            ):
                raise _BadRequest(400, "Each message needs a role (user or assistant) and a text content.",
                                  zh="每条消息都需要角色（user 或 assistant）和文本内容。")  # fmt: skip
            out.append({"role": m["role"], "content": m["content"][:PAGE_TEXT_MAX]})
        if out[-1]["role"] != "user" or not out[-1]["content"].strip():
            raise _BadRequest(400, "The question is empty; type a question.", zh="问题是空的；请输入一个问题。")
        if len(msgs[-1]["content"]) > PAGE_TEXT_MAX:
            raise _BadRequest(400, f"The question is too long; keep it under {PAGE_TEXT_MAX} characters.",
                              zh=f"问题太长了；请控制在 {PAGE_TEXT_MAX} 个字符以内。")  # fmt: skip
        return out

    # ---- queueing and answering
    def submit(self, messages: list[dict], options, use_adapter: bool) -> Job:
        job = Job(messages, options, use_adapter, deadline=time.monotonic() + self.timeout,
                  loop=asyncio.get_running_loop(), out=asyncio.Queue())  # fmt: skip
        try:
            self.engine.submit(job)
        except QueueFull:
            err = _BadRequest(
                503,
                "The assistant is busy answering others; try again in a few seconds.",
                "server_busy",
                zh="助手正忙着回答其他人；请几秒钟后再试。",
            )
            err.headers["Retry-After"] = str(self.engine.retry_after())
            raise err from None
        return job

    async def events(self, job: Job):
        """The job's ``("piece", text)`` events, then returns; raises :class:`_BadRequest` on timeout or failure."""
        while True:
            left = job.deadline - time.monotonic() + 2.0  # the worker ends a running row itself at the deadline
            try:
                kind, value = await asyncio.wait_for(job.out.get(), timeout=max(0.1, left))
            except TimeoutError:
                self.engine.cancel(job)
                raise self._timeout() from None
            if kind == "piece":
                yield value
            elif kind == "error":
                raise _BadRequest(
                    500 if not isinstance(value, UserError) else 503,
                    f"The model could not answer ({type(value).__name__}: {str(value)[:200]}).",
                    "server_error",
                    zh="模型无法回答这个请求。",
                )
            else:
                if job.finish == "timeout":
                    raise self._timeout()
                return

    def _timeout(self) -> _BadRequest:
        return _BadRequest(
            504,
            f"The answer took longer than the {self.timeout:g} s limit; ask for fewer tokens or try again later.",
            "timeout",
            zh=f"回答超过了 {self.timeout:g} 秒的时限；请稍后再试。",
        )

    def completion_payload(self, job: Job, model_id: str, sources: list[dict] | None = None) -> dict:
        message = {"role": "assistant", "content": job.text}
        if self.index is not None:  # an extra field OpenAI clients ignore (message.model_extra["sources"] in openai)
            message["sources"] = sources or []
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_id,
            "choices": [{"index": 0, "message": message, "finish_reason": _finish(job)}],
            "usage": _usage(job),
        }

    def remember_answer(self, question: str, answer: str, sources: list[dict]) -> str:
        """An id for an answer the page showed, so feedback can name the exact question and answer."""
        answer_id = uuid.uuid4().hex[:16]
        with self._feedback_lock:
            self._answers[answer_id] = {"question": question, "answer": answer, "sources": sources}
            while len(self._answers) > 2000:
                self._answers.popitem(last=False)
        return answer_id

    def feedback(self, body: dict) -> dict:
        """Append one rating (and maybe a correction) to ``serve/feedback.jsonl``; never an IP address."""
        rating = body.get("rating")
        if rating not in ("up", "down"):
            raise _BadRequest(400, '\'rating\' must be "up" or "down".', zh="rating 必须是 up 或 down。")
        correction = body.get("correction") or ""
        if not isinstance(correction, str) or len(correction) > FEEDBACK_TEXT_MAX:
            raise _BadRequest(400, f"The correction must be text of at most {FEEDBACK_TEXT_MAX} characters.",
                              zh=f"更正必须是不超过 {FEEDBACK_TEXT_MAX} 个字符的文本。")  # fmt: skip
        answer_id = str(body.get("answer_id") or "")[:64]
        with self._feedback_lock:
            known = self._answers.get(answer_id)
        verified = known is not None  # the server's own copy of the question and answer, not the client's
        if known is None:
            question, answer = body.get("question"), body.get("answer")
            if not isinstance(question, str) or not isinstance(answer, str):
                raise _BadRequest(400, "Name the answer: send its answer_id (or its question and answer as text).",
                                  zh="请指明是哪个回答：发送 answer_id（或问题和回答的文本）。")  # fmt: skip
            known = {"question": question[:FEEDBACK_TEXT_MAX], "answer": answer[:FEEDBACK_TEXT_MAX], "sources": []}
        lang = body.get("lang") if body.get("lang") in ("zh", "en") else None
        record = {
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "answer_id": answer_id or None,
            "model": self.tuned_id,
            "question": known["question"],
            "answer": known["answer"],
            "sources": known["sources"],
            "rating": rating,
            "correction": correction.strip() or None,
            "lang": lang,
            "verified": verified,
        }
        from .fileio import append_jsonl

        with self._feedback_lock:
            append_jsonl(self.feedback_file, record)
        return {"ok": True}

    def log_question(
        self, question: str, job: Job, sources: list[dict] | None, via: str, answer_id: str | None = None
    ) -> None:
        """With ``--log-questions``, one line in ``serve/questions.jsonl`` per answered question (no IP address).

        Why the refusal is decided here: it is the server that knows which sentence it refuses with
        (grounding.py); the Dataset page lists refused questions as the ones the site or the pairs are missing."""
        if self.questions_file is None or job.finish not in ("stop", "length"):
            return
        from .fileio import append_jsonl
        from .grounding import is_refusal

        record = {
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "answer_id": answer_id,
            "via": via,
            "model": self.tuned_id,
            "question": question[:FEEDBACK_TEXT_MAX],
            "answer": job.text,
            "refused": not job.text.strip() or is_refusal(job.text),
            "sources": sources or [],
            "finish": job.finish,
        }
        with self._feedback_lock:
            append_jsonl(self.questions_file, record)

    def page_payload(self) -> dict:
        s = self.settings
        return {"name": s["assistant_name"], "welcome": s["welcome"], "examples": s["examples"] or [],
                "model": self.tuned_id}  # fmt: skip


def _finish(job: Job) -> str:
    return "length" if job.finish == "length" else "stop"


def _usage(job: Job) -> dict:
    return {
        "prompt_tokens": job.prompt_tokens,
        "completion_tokens": job.completion_tokens,
        "total_tokens": job.prompt_tokens + job.completion_tokens,
    }


def feedback_path(values: dict) -> Path:
    """``<feedback_dir>/serve/feedback.jsonl``; without one, the project (workspace) the adapter lives in, else ``.``."""
    if values.get("feedback_dir"):
        return Path(values["feedback_dir"]).expanduser() / "serve" / "feedback.jsonl"
    adapter = values.get("adapter")
    if adapter:
        for parent in Path(adapter).expanduser().resolve().parents:
            if (parent / "workspace.json").is_file():
                return parent / "serve" / "feedback.jsonl"
    return Path.cwd() / "serve" / "feedback.jsonl"


def questions_path(values: dict) -> Path:
    """``serve/questions.jsonl`` next to :func:`feedback_path`'s file: one folder holds what students said."""
    return feedback_path(values).parent / "questions.jsonl"


def _sse(payload) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


# ---- the HTTP app ---------------------------------------------------------------------------------------------------
def make_app(api: ChatAPI):
    """The FastAPI app: routes, OpenAI-style error bodies, CORS and frame rules for ``--allow-origin``."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    origins = [o.strip().rstrip("/") for o in api.settings["allow_origin"] or []]
    app = FastAPI(title="umtcds serve", docs_url=None, redoc_url=None, openapi_url=None)
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )

    def error(exc: _BadRequest) -> JSONResponse:
        body = {"error": {"message": exc.message, "type": exc.code, "code": exc.code}}
        if exc.zh:
            body["error"]["message_zh"] = exc.zh
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(_BadRequest)
    async def _bad(request, exc: _BadRequest):
        return error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc):
        if exc.status_code == 404:
            msg = f"No route {request.url.path}; use /v1/models or /v1/chat/completions."
            return error(_BadRequest(404, msg, "not_found"))
        if exc.status_code == 405:
            return error(_BadRequest(405, f"{request.method} is not allowed on {request.url.path}.", "not_allowed"))
        return error(_BadRequest(exc.status_code, str(exc.detail), "http_error"))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):
        return error(_BadRequest(400, "The request is not valid; check its fields."))

    def need_key(request: Request) -> None:
        if not api.authorized(request.headers.get("authorization")):
            raise _BadRequest(401, "Missing or wrong API key; send it as 'Authorization: Bearer <key>'.",
                              "invalid_api_key")  # fmt: skip

    def client_of(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    async def json_body(request: Request) -> dict:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY:
            raise _BadRequest(413, "The body is too large; send at most 4 MiB.")
        raw = await request.body()
        if not raw:
            raise _BadRequest(400, "Send a JSON body (at most 4 MiB).")
        if len(raw) > MAX_BODY:
            raise _BadRequest(413, "The body is too large; send at most 4 MiB.")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _BadRequest(400, f"The body is not valid JSON ({exc}).", zh="请求内容不是有效的 JSON。") from exc
        if not isinstance(body, dict):
            raise _BadRequest(400, "The body must be a JSON object.")
        return body

    @app.get("/health")
    async def health():
        if not api.ready.is_set():
            return JSONResponse({"status": "warming"}, status_code=503, headers={"Retry-After": "2"})
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(request: Request):
        need_key(request)
        return api.models_payload()

    @app.get("/v1/stats")
    async def stats(request: Request):
        need_key(request)
        return {**api.engine.snapshot(), "ready": api.ready.is_set(), "warmup_s": api.warmup_s}

    @app.post("/v1/chat/completions")
    async def completions(request: Request):
        need_key(request)
        api.check_rate(client_of(request))
        body = await json_body(request)
        messages, options, use_adapter, model_id, stream = api.parse(body)
        question = messages[-1]["content"] if messages[-1]["role"] == "user" else ""
        messages, sources = api.build_messages(messages, page=False)
        job = api.submit(messages, options, use_adapter)
        if not stream:
            try:
                async for _ in api.events(job):
                    pass
            finally:
                api.engine.cancel(job)  # no-op once answered; frees the row when this request is abandoned
            sources = api.answered_sources(job, sources)
            if question:
                api.log_question(question, job, sources, "api")
            return api.completion_payload(job, model_id, sources)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(_completion_stream(api, job, model_id, include_usage, sources, question), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        api.check_rate(client_of(request))
        return api.feedback(await json_body(request))

    if not api.settings["student_page"]:
        return app

    frame = "frame-ancestors 'self'" + "".join(f" {o}" for o in origins)

    @app.get("/")
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html",
                            headers={"Content-Security-Policy": frame, "Cache-Control": "no-cache"})  # fmt: skip

    @app.get("/widget.js")
    async def widget():
        return FileResponse(STATIC / "widget.js", media_type="text/javascript", headers={"Cache-Control": "no-cache"})

    @app.get("/page.json")
    async def page_json():
        return api.page_payload()

    @app.get("/assets/{name}")
    async def asset(name: str):
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file() or name == "index.html":
            raise _BadRequest(404, f"No asset {name}.", "not_found")
        types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
        return FileResponse(path, media_type=types.get(path.suffix, "application/octet-stream"),
                            headers={"Cache-Control": "no-cache"})  # fmt: skip

    @app.post("/page/chat")
    async def page_chat(request: Request):
        from .chat import GenOptions

        api.check_rate(client_of(request))
        conversation = api.parse_page(await json_body(request))
        messages, sources = api.build_messages(conversation, page=True)
        options = GenOptions(max_new_tokens=api.default_max_tokens, temperature=0.0)
        job = api.submit(messages, options, api.cm.has_adapter)
        question = conversation[-1]["content"]
        return StreamingResponse(_page_stream(api, job, question, sources), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip

    return app


async def _completion_stream(
    api: ChatAPI, job: Job, model_id: str, include_usage: bool, sources: list[dict] | None = None, question: str = ""
):
    """OpenAI chat-completion chunks; an error after the headers went out is sent as an ``error`` event. With
    ``--rag`` the last chunk's delta carries ``sources``."""
    cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        return _sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_id,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})  # fmt: skip

    try:
        yield chunk({"role": "assistant", "content": ""})
        try:
            async for piece in api.events(job):
                yield chunk({"content": piece})
        except _BadRequest as exc:
            yield _sse({"error": {"message": exc.message, "type": exc.code, "code": exc.code}})
            yield b"data: [DONE]\n\n"
            return
        sources = api.answered_sources(job, sources or [])
        yield chunk({"sources": sources} if api.index is not None else {}, _finish(job))
        if question:
            api.log_question(question, job, sources, "api")
        if include_usage:
            yield _sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_id,
                        "choices": [], "usage": _usage(job)})  # fmt: skip
        yield b"data: [DONE]\n\n"
    finally:
        api.engine.cancel(job)  # the client left mid-stream: its row stops, the batch goes on


async def _page_stream(api: ChatAPI, job: Job, question: str, sources: list[dict]):
    """The students' page's events: ``delta`` pieces, then ``done`` (final text, sources, an id to rate it) or
    ``error`` (one sentence in both languages)."""
    from .grounding import is_refusal

    try:
        try:
            async for piece in api.events(job):
                yield _sse({"type": "delta", "text": piece})
        except _BadRequest as exc:
            yield _sse({"type": "error", "message": exc.message, "message_zh": exc.zh or exc.message})
            return
        sources = api.answered_sources(job, sources)
        answer_id = api.remember_answer(question, job.text, sources)
        api.log_question(question, job, sources, "page", answer_id)
        no_answer = not job.text.strip() or is_refusal(job.text)
        yield _sse({"type": "done", "text": job.text, "answer_id": answer_id, "sources": sources,
                    "no_answer": no_answer, "finish": _finish(job)})  # fmt: skip
    finally:
        api.engine.cancel(job)


class Server:
    """A bound socket + uvicorn, with the handful of methods the tests and the CLI use (``serve_forever`` in a
    thread, ``shutdown``, ``server_close``, ``server_port``) — the shape ``http.server`` had, so callers did not
    change when serving moved to FastAPI. ``serve_forever`` starts the warm-up (:meth:`ChatAPI.warm_up`) beside
    uvicorn, so ``/health`` answers ``warming`` during it; ``on_ready(api)`` is called when it is done."""

    def __init__(self, api: ChatAPI, sock: socket.socket, on_ready=None):
        import uvicorn

        self.api, self.sock = api, sock
        self.server_address = sock.getsockname()[:2]
        self.server_port = self.server_address[1]
        config = uvicorn.Config(make_app(api), log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=3)  # fmt: skip
        self._uv = uvicorn.Server(config)
        self._stopped = threading.Event()
        self.on_ready = on_ready

    def _warm(self) -> None:
        self.api.warm_up()
        if self.on_ready is not None:
            self.on_ready(self.api)

    def serve_forever(self) -> None:
        if not self.api.ready.is_set():
            threading.Thread(target=self._warm, name="umtcds-serve-warmup", daemon=True).start()
        try:
            self._uv.run(sockets=[self.sock])
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        self._uv.should_exit = True
        self._stopped.wait(timeout=30)

    def server_close(self) -> None:
        self.api.close()
        self.sock.close()


def make_server(
    chat_model,
    host: str = SERVE["host"].default,
    port: int = SERVE["port"].default,
    api_key: str | None = None,
    **settings,
) -> Server:
    """A ready (bound, not yet serving) :class:`Server`; ``port=0`` picks a free port (``server.server_port``).

    ``settings`` are :class:`ServeSettings` fields (``max_batch=8``, ``rate_limit="10/min"``, …), checked like a
    ``--config`` file."""
    values = SERVE.check({**SERVE.defaults(), **settings, "host": host, "port": port}, where="The serve settings")
    api = ChatAPI(chat_model, api_key=api_key, settings=values)
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(512)
    except OSError as exc:
        api.close()
        reason = exc.strerror or str(exc)
        raise ServeError(
            f"Cannot listen on {host}:{port} ({reason}); pick another --port or --host.",
            zh=f"无法监听 {host}:{port}（{reason}）；请换一个 --port 或 --host。",
        ) from exc
    sock.set_inheritable(True)
    return Server(api, sock)


# ---- CLI ------------------------------------------------------------------------------------------------------------
def _print_ready(api: ChatAPI) -> None:
    if api.warmup_error:
        print(f"Warning: the warm-up answer failed after {api.warmup_s:.1f} s ({api.warmup_error}); serving anyway — "
              "requests will report their own errors.", file=sys.stderr, flush=True)  # fmt: skip
    else:
        print(f"Warm-up done in {api.warmup_s:.1f} s; ready (/health says ok).", flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag (and ``--config``) from :data:`SERVE`."""
    SERVE.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from .chat import load_chat_model

    values = SERVE.from_args(args)
    need_model(values, ServeError, "serve")
    host, port, key_env = values["host"], values["port"], values["api_key_env"]
    api_key = os.environ.get(key_env) or None
    if warning := exposure_warning(host, api_key, key_env):
        print(warning, file=sys.stderr)
    if values["rag"]:
        from .index import Index

        Index.load(values["rag"])  # a missing or stale index is said before the model loads
    cm = load_chat_model(values["model"], values["adapter"], device=values["device"])
    settings = {k: v for k, v in values.items() if k not in ("host", "port")}
    server = make_server(cm, host, port, api_key=api_key, **settings)
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in host else host
    ids = ", ".join(server.api.model_ids())
    try:  # Ctrl+C from here on (even while the lines below print) is the normal way to stop: exit 0
        print(
            f"Serving {ids} at http://{shown}:{port}/v1 (key {'required' if api_key else 'not required'})", flush=True
        )
        if values["student_page"]:
            base = f"http://{shown}:{port}"
            print(f'Students\' page: {base}/  ·  widget: <script src="{base}/widget.js"></script>', flush=True)
            print(f"Feedback goes to {server.api.feedback_file}", flush=True)
        if server.api.questions_file is not None:
            print(f"Questions are logged to {server.api.questions_file} (no IP addresses)", flush=True)
        if not server.api.ready.is_set():
            print(
                'Warming up: one short answer through the queue; /health says "warming" until it is done…', flush=True
            )
            server.on_ready = _print_ready
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        cm.unload()
    return 0
