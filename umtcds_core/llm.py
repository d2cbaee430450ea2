"""One protocol for every LLM: ``chat(messages, **options) -> str``, plus ``chat_batch`` for many conversations.

Backends: ``LocalBackend`` (transformers, batched, via :mod:`umtcds_core.models`), ``ZhipuBackend`` (the ``zhipuai``
SDK, GLM-4-flash by default) and ``OpenAIBackend`` (the ``openai`` SDK against any OpenAI-compatible server: vLLM,
Ollama, DeepSeek, SiliconFlow…). They share the same protocol, so Q&A generation, judging and evaluation never care
which one they talk to. :func:`make_backend` builds one from what the CLI/dashboard know.

Remote calls go through ONE retry helper, :func:`call_with_retries`: exponential backoff with jitter on 429, 5xx,
timeouts and connection errors, honouring ``Retry-After``; the SDKs' own retries are switched off so the policy is
ours alone. A rejected key (401/403) raises :class:`AuthError` at once — a run must stop on it instead of failing every
page. API keys live only in memory and in the environment; error messages are passed through ``secrets.redact``.
"""

from __future__ import annotations

import copy
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from .errors import UserError
from .retry import RetryPolicy, parse_retry_after
from .secrets import get_secret, mask, redact
from .text import CJK_PUNCT, HAN

Message = dict[str, str]
T = TypeVar("T")

BACKENDS = ("local", "zhipuai", "openai")
DEFAULT_MODELS = {"local": "smollm2-135m", "zhipuai": "glm-4-flash", "openai": ""}
DEFAULT_KEY_ENV = {"zhipuai": "ZHIPUAI_API_KEY", "openai": "OPENAI_API_KEY"}
ZHIPU_BASE_URL = "https://open.bigmodel.cn/api/paas/v4"


@runtime_checkable
class ChatBackend(Protocol):
    name: str

    def chat(self, messages: list[Message], *, max_tokens: int = 512, temperature: float = 0.0) -> str: ...

    def chat_batch(
        self, conversations: list[list[Message]], *, max_tokens: int = 512, temperature: float = 0.0
    ) -> list[str]: ...


# ---- errors -------------------------------------------------------------------------------------------------------
class LLMError(UserError):
    """One request failed for good (after retries, or a 4xx that retrying cannot fix): that page fails, the run goes on."""


class AuthError(UserError):
    """The server rejected the API key (401/403) or the account cannot be used: stop the whole run at once."""


class BackendConfigError(UserError):
    """The endpoint or model does not exist (404), so every request would fail the same way: stop the run."""


FATAL_ERRORS = (AuthError, BackendConfigError)

_NETWORK_ERROR_NAMES = {
    "APITimeoutError",
    "APIConnectionError",
    "TimeoutException",
    "ConnectError",
    "ConnectTimeout",
    "ReadTimeout",
    "ReadError",
    "WriteError",
    "RemoteProtocolError",
    "NetworkError",
    "PoolTimeout",
}


def _status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _headers_of(exc: BaseException) -> Any:
    response = getattr(exc, "response", None)
    return getattr(response, "headers", None) or {}


def _is_network_error(exc: BaseException) -> bool:
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    return any(cls.__name__ in _NETWORK_ERROR_NAMES for cls in type(exc).__mro__)


def classify_error(exc: BaseException) -> str:
    """``auth`` | ``config`` | ``transient`` | ``permanent`` for an exception raised by an SDK call."""
    status = _status_of(exc)
    if status is None:
        return "transient" if _is_network_error(exc) else "permanent"
    text = str(exc)
    if status in (401, 403):
        return "auth"
    if status == 429 and ("1113" in text or "余额不足" in text or "insufficient_quota" in text):
        return "auth"  # Zhipu 1113 / OpenAI insufficient_quota: no balance; waiting will not help
    if status == 404:
        return "config"
    if status in (408, 409, 425, 429) or status >= 500:
        return "transient"
    return "permanent"


def call_with_retries(
    fn: Callable[[], T],
    *,
    policy: RetryPolicy | None = None,
    what: str = "the LLM request",
    secrets: list[str | None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[int, float, BaseException], None] | None = None,
) -> T:
    """Run ``fn`` and retry it on transient failures; the ONE retry/backoff helper of the project.

    Raises :class:`AuthError` (401/403) and :class:`BackendConfigError` (404) at once, :class:`LLMError` when the
    attempts are used up or the error is permanent. Messages are redacted of ``secrets``.
    """
    policy = policy or RetryPolicy()
    for attempt in range(policy.max_attempts):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - SDKs raise many types; classify_error sorts them
            kind = classify_error(exc)
            status = _status_of(exc)
            detail = redact(f"{type(exc).__name__}: {exc}", list(secrets or []))[:500]
            if kind == "auth":
                raise AuthError(
                    f"The server refused the API key (HTTP {status}): {detail}; check the key (or its balance) and run again.",
                    zh=f"服务器拒绝了 API 密钥（HTTP {status}）：{detail}；请检查密钥（或账户余额）后重试。",
                ) from None
            if kind == "config":
                raise BackendConfigError(
                    f"The server has no such endpoint or model (HTTP 404): {detail}; check --base-url and --model.",
                    zh=f"服务器上没有这个接口或模型（HTTP 404）：{detail}；请检查服务地址（base URL）和模型名。",
                ) from None
            last = attempt == policy.max_attempts - 1
            if kind == "permanent" or last:
                tries = f" after {attempt + 1} attempts" if attempt else ""
                zh_tries = f"（已尝试 {attempt + 1} 次）" if attempt else ""
                raise LLMError(f"{what} failed{tries}: {detail}", zh=f"{what} 失败{zh_tries}：{detail}") from None
            wait = policy.delay(attempt, parse_retry_after(_headers_of(exc)))
            if on_retry is not None:
                on_retry(attempt + 1, wait, exc)
            sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


# ---- token estimates ----------------------------------------------------------------------------------------------
_ONE_TOKEN_RE = re.compile(f"[{HAN}{CJK_PUNCT}]")  # characters a tokenizer rarely merges: about one token each


def estimate_tokens(text: str) -> int:
    """A tokenizer-free upper-ish estimate for remote models: one token per CJK character, one per ~3.5 others."""
    cjk = len(_ONE_TOKEN_RE.findall(text))
    return cjk + int((len(text) - cjk) / 3.5) + 1


# ---- local --------------------------------------------------------------------------------------------------------
COMPUTE_STEPS = frozenset({"train", "generate", "evaluate", "refresh", "demo", "index"})
"""Job steps that keep CPU cores busy while they run (``serve`` waits for questions most of the time)."""


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity: a container or ``taskset`` may give it fewer than the
    machine has)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def other_compute_jobs() -> int:
    """Running compute jobs of this process's workspace other than its own (0 outside a dashboard job).

    A job knows its folder from the progress file it was given; its siblings are the workspace's other jobs
    (:mod:`jobs` says which still run)."""
    from .jobs import RUNNING, Job
    from .progress import ENV_VAR

    own = os.environ.get(ENV_VAR)
    if not own:
        return 0
    own_dir = Path(own).parent
    count = 0
    try:
        siblings = [d for d in own_dir.parent.iterdir() if d.is_dir() and d != own_dir]
    except OSError:
        return 0
    for d in siblings:
        if (d / "job.json").exists() and not (d / "exit.json").exists():
            job = Job(d)
            if job.step in COMPUTE_STEPS and job.status() == RUNNING:
                count += 1
    return count


def cpu_threads(cores: int | None = None, others: int | None = None) -> int:
    """torch threads for CPU generation: this process's share of its usable cores, ``cores // (1 + others)``.

    Why: torch starts one thread per core in every process, so a generation and a LoRA run on 2 cores run 4 busy
    threads and each waits on the other (issue 19: ~60 s a LoRA step while generation ran). An override:
    ``UMTCDS_CPU_THREADS``."""
    forced = os.environ.get("UMTCDS_CPU_THREADS", "").strip()
    if forced.isdigit() and int(forced) > 0:
        return int(forced)
    cores = usable_cores() if cores is None else cores
    others = other_compute_jobs() if others is None else others
    return max(1, cores // (1 + max(0, others)))


SHARED_MIN = 16
"""Prompt tokens all prompts of a call must share before :class:`LocalBackend`'s step engine reads them once."""
ENGINES = ("auto", "step", "generate")
"""How :class:`LocalBackend` decodes a batch (its ``engine``)."""


class LocalBackend:
    """A local transformers chat model with batched generation (left padding, the model's own chat template).

    The model is loaded on first use on the best device; :meth:`close` frees it (and the GPU). ``gen_kwargs`` are
    passed to ``generate`` (e.g. ``min_new_tokens`` for a benchmark with a fixed output length). ``tokens_out``
    counts generated tokens, for tokens-per-second.
    """

    name = "local"

    def __init__(
        self,
        model: str | None = None,
        batch_size: int | None = None,
        device: str | None = None,
        gen_kwargs: dict | None = None,
        engine: str = "auto",
    ):
        self.model_ref = model
        self.batch_size = None if batch_size is None else max(1, int(batch_size))  # None: auto, see auto_batch_size
        self.device = device
        self.gen_kwargs = dict(gen_kwargs or {})
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
        self.engine = engine
        """``step``: a running batch whose finished rows are replaced at once (:mod:`decode`); ``generate``: one
        static ``generate`` per batch; ``auto``: step wherever it reproduces the call (see :meth:`engine_for`)."""
        self.tokens_out = 0
        self.stats: dict[str, int] = {}
        """``checks``/``early_stops``: how often ``done`` was asked and how many rows it stopped (benchmarks)."""
        self.on_tokens: Callable[[int], None] | None = None
        """Called with the number of sequences that got a new token, at each step of a generate() call: a batch on a
        CPU takes minutes, and progress counted only in finished pages would show nothing for that long."""
        self.on_batch_end: Callable[[], None] | None = None
        """Called after each generate() call, once ``tokens_out`` holds its exact count."""
        self._tok = None
        self._model = None

    @classmethod
    def from_loaded(
        cls, tokenizer, model, batch_size: int | None = None, gen_kwargs: dict | None = None
    ) -> LocalBackend:
        """Wrap an already-loaded tokenizer and model (benchmarks with a model built from a config)."""
        backend = cls(getattr(model, "name_or_path", None), batch_size=batch_size, gen_kwargs=gen_kwargs)
        backend._tok, backend._model = tokenizer, model
        return backend

    def _ensure(self):
        if self._model is None:
            from .models import load

            self._tok, self._model = load(self.model_ref, device=self.device)
        return self._tok, self._model

    @property
    def tokenizer(self):
        return self._ensure()[0]

    @property
    def context_tokens(self) -> int:
        cfg = self._ensure()[1].config
        return int(getattr(cfg, "max_position_embeddings", 0) or 4096)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def chat(self, messages: list[Message], *, max_tokens: int = 512, temperature: float = 0.0) -> str:
        return self.chat_batch([messages], max_tokens=max_tokens, temperature=temperature)[0]

    def auto_batch_size(self, seq_tokens: int, cap: int = 256) -> int:
        """How many sequences of ``seq_tokens`` to generate at once: 8 on CPU; on a GPU as many as the KV cache fits
        in 80% of the free memory (minus fp32 last-position logits), up to ``cap``.

        Why: static batching is what makes local generation fast (one prompt at a time: ~10 tok/s for a 9B model on
        an H200; 256 at once: ~1,700 tok/s, bench/results/generate_long_b256_h200.json), and the best size depends
        on the card, the model and the page length.
        """
        import torch

        model = self._ensure()[1]
        if model.device.type != "cuda":
            return 8
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        heads = getattr(cfg, "num_attention_heads", 1)
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        elem = torch.finfo(model.dtype).bits // 8 if model.dtype.is_floating_point else 2
        kv_per_seq = 2 * cfg.num_hidden_layers * kv_heads * head_dim * elem * seq_tokens
        per_seq = kv_per_seq + 2 * 4 * cfg.vocab_size  # + logits of the last position (fp32, with a copy)
        free, _ = torch.cuda.mem_get_info(model.device)
        return max(1, min(cap, int(free * 0.8) // max(1, per_seq)))

    def chat_batch(
        self,
        conversations: list[list[Message]],
        *,
        max_tokens: int = 512,
        temperature: float = 0.0,
        done: Callable[[str], bool] | None = None,
    ) -> list[str]:
        """Replies to ``conversations``, in batches of ``batch_size`` (left-padded, sorted by length).

        ``done(text_so_far)``: a row whose reply already says all that was asked (e.g. the N pairs a Q&A prompt asks
        for) stops there, while the other rows of its batch go on — a small model on a CPU otherwise rambles on to
        ``max_tokens``. The text kept is exactly the greedy prefix a longer run would have produced.
        """
        import torch

        tok, model = self._ensure()
        if model.device.type == "cpu":  # this job's share of the cores; never more than the process was set to
            before = torch.get_num_threads()
            forced = os.environ.get("UMTCDS_CPU_THREADS", "").strip().isdigit()
            torch.set_num_threads(cpu_threads() if forced else min(before, cpu_threads()))
            try:
                return self._chat_batch(tok, model, conversations, max_tokens, temperature, done)
            finally:
                torch.set_num_threads(before)
        return self._chat_batch(tok, model, conversations, max_tokens, temperature, done)

    def engine_for(self, model, gen_kwargs: dict) -> str:
        """The engine a call uses: ``step`` (``auto`` included) where :mod:`decode` reproduces the call exactly, else
        ``generate``.

        Why step by default: a static batch waits for its longest reply and reads every prompt's shared head (the
        system prompt, the few-shot example) again; the step engine refills a finished row at once and reads the
        head once. Measured: on a 2-core CPU 2.10× static batches on the demo's pages (bench/generate_cpu_bench.py);
        on an H200 with the GLM-4-9B shape at batch 256, 5,004 and 5,099 tok/s against plain ``generate``'s 4,061
        and 4,318 in the same runs (1.23× and 1.18×; texts identical to ``generate``'s in float32,
        bench/results/generate_step_h200*.json)."""
        from .decode import Unsupported, blocker, processors

        if self.engine == "generate" or blocker(model) or "logits_processor" in gen_kwargs:
            return "generate"  # a caller's processor may count on generate's steps (one fixed batch per call)
        try:
            processors(model, _without_floor(gen_kwargs))
        except Unsupported:
            return "generate"
        return "step"

    def _chat_batch(self, tok, model, conversations, max_tokens, temperature, done) -> list[str]:
        import torch

        gen_kwargs = {"max_new_tokens": max_tokens, "pad_token_id": tok.pad_token_id, **self.gen_kwargs}
        if temperature > 0:
            gen_kwargs.update(do_sample=True, temperature=temperature, top_p=0.9)
        else:
            gen_kwargs.update(do_sample=False)
        if conversations and self.engine_for(model, gen_kwargs) == "step":
            return self._chat_steps(tok, model, conversations, gen_kwargs, done)

        prompts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
        # Sort by length so each batch pads little; restore order at the end.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[str] = [""] * len(prompts)
        batch_size = self.batch_size
        if batch_size is None and prompts:
            longest = len(tok(prompts[order[-1]], add_special_tokens=False)["input_ids"])
            batch_size = self.auto_batch_size(longest + max_tokens)
        for start in range(0, len(order), batch_size or 1):
            idx = order[start : start + batch_size]
            enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(
                model.device
            )
            extra = {}
            if self.on_tokens is not None or done is not None:
                extra["stopping_criteria"] = _step_watch(
                    self.on_tokens, tok, enc["input_ids"].shape[1], done, self.stats
                )
            with torch.inference_mode():
                gen = model.generate(**enc, **gen_kwargs, **extra)
            new = gen[:, enc["input_ids"].shape[1] :]
            if tok.pad_token_id is not None:
                self.tokens_out += int((new != tok.pad_token_id).sum())
            else:
                self.tokens_out += int(new.numel())
            if self.on_batch_end is not None:
                self.on_batch_end()
            for i, row in zip(idx, new, strict=True):
                out[i] = tok.decode(row, skip_special_tokens=True).strip()
        return out

    def _chat_steps(self, tok, model, conversations, gen_kwargs: dict, done) -> list[str]:
        """Replies decoded in a running batch of ``batch_size`` rows (:class:`decode.Decoding`): a row leaves the
        step its reply ends (end of sequence, ``max_new_tokens``, ``done``) and the next prompt takes its place, so no
        row waits for the batch's longest reply. Prompts enter shortest first (as the static path sorts them).

        Greedy replies are ``generate``'s up to floating-point noise from different padding; ``done``, ``on_tokens``,
        ``on_batch_end``, ``tokens_out`` and ``stats`` behave as in the static path (``on_batch_end`` once, at the end)."""
        import torch

        from .decode import Decoding, choose, eos_ids, processors

        procs, sample = processors(model, _without_floor(gen_kwargs))
        limit = int(gen_kwargs["max_new_tokens"])
        floor = int(gen_kwargs.get("min_new_tokens") or 0)
        prompts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
        ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        waiting = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        shared = len(os.path.commonprefix(ids)) if len(ids) > 1 else 0  # the system prompt, a few-shot example
        shared = shared if shared >= SHARED_MIN else 0
        self.stats["shared_prompt_tokens"] = shared
        slots = self.batch_size or self.auto_batch_size(max(len(x) for x in ids) + limit)
        ends, out = eos_ids(model, tok), [""] * len(ids)
        run = Decoding(model, tok.pad_token_id)
        made: dict[int, list[int]] = {}  # row (prompt index) -> its reply's tokens so far
        count = [0]  # reply tokens made (an end-of-sequence id is not one)
        end_ids = torch.tensor(sorted(ends), dtype=torch.long, device=model.device)

        def pick(rows: list[int], fed, logits):
            """The rows' next tokens; a reply shorter than ``min_new_tokens`` cannot end yet (as generate's
            MinNewTokensLogitsProcessor, per row: rows here start at different steps)."""
            if floor:
                short = [pos for pos, row in enumerate(rows) if len(made[row]) < floor]
                if short:
                    logits[torch.tensor(short, device=logits.device)[:, None], end_ids] = float("-inf")
            return choose(procs, sample, fed, logits)

        def took(rows: list[int], tokens: list[int]) -> list[int]:
            """Each row's new token; the positions (in ``rows``) of rows that go on."""
            going = []
            real = 0
            for pos, (row, token) in enumerate(zip(rows, tokens, strict=True)):
                reply = made[row]
                ended = token in ends
                if not ended:
                    reply.append(token)
                    real += 1
                    ended = len(reply) >= limit
                if not ended and done is not None:
                    piece = tok.decode([token], skip_special_tokens=True)
                    if any(c in piece for c in DONE_CHARS):
                        self.stats["checks"] = self.stats.get("checks", 0) + 1
                        if done(tok.decode(reply, skip_special_tokens=True)):
                            self.stats["early_stops"] = self.stats.get("early_stops", 0) + 1
                            ended = True
                if ended:
                    out[row] = tok.decode(reply, skip_special_tokens=True).strip()
                else:
                    going.append(pos)
            count[0] += real
            if self.on_tokens is not None:
                self.on_tokens(real)
            return going

        with torch.inference_mode():
            while waiting or run.rows:
                if waiting and len(run.rows) < slots:
                    new, waiting = waiting[: slots - len(run.rows)], waiting[slots - len(run.rows) :]
                    for row in new:
                        made[row] = []
                    fed, logits, state = run.prefill(model, [ids[i] for i in new], shared=shared)
                    tokens = pick(new, fed, logits)
                    going = took(new, tokens.tolist())
                    run.join(new, state, tokens)
                    base = len(run.rows) - len(new)
                    run.keep(list(range(base)) + [base + pos for pos in going])
                    continue
                fed, logits = run.step(model)
                run.next = pick(run.rows, fed, logits)
                run.keep(took(run.rows, run.next.tolist()))
        self.tokens_out += count[0]  # added once, like the static path's per batch: on_tokens reported them live
        if self.on_batch_end is not None:
            self.on_batch_end()
        return out

    def close(self) -> None:
        from .models import unload

        model, self._model, self._tok = self._model, None, None
        if model is not None:
            unload(model)


def _without_floor(gen_kwargs: dict) -> dict:
    """``gen_kwargs`` less ``min_new_tokens``, which the step engine applies per row itself."""
    return {k: v for k, v in gen_kwargs.items() if k != "min_new_tokens"}


def _step_watch(report: Callable[[int], None] | None, tok, prompt_len: int, done, stats: dict):
    """A stopping criterion run after each generated token: it hands ``report`` the number of sequences that got a
    real token (finished ones are padded) — the only hook ``generate`` offers inside one batched call — and, with
    ``done``, stops each row whose text so far satisfies it (``generate`` takes per-row booleans and pads the rows
    it stopped, so the other rows' tokens are unchanged).

    Why check only after some tokens: decoding a row and parsing it costs ~1 ms, a CPU step of a small model tens
    of ms; a reply can only become complete on a token holding a closing character (see ``DONE_CHARS``)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    pad_id = tok.pad_token_id

    class _Watch(StoppingCriteria):
        def __init__(self):
            self.stopped: torch.Tensor | None = None

        def __call__(self, input_ids, scores, **kwargs):
            last = input_ids[:, -1]
            if report is not None:
                report(int((last != pad_id).sum()) if pad_id is not None else int(last.numel()))
            if self.stopped is None:
                self.stopped = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            if done is None:
                return self.stopped.clone()
            pieces = tok.batch_decode(last[:, None], skip_special_tokens=True)
            for row, piece in enumerate(pieces):
                if self.stopped[row] or (pad_id is not None and int(last[row]) == pad_id):
                    continue
                if not any(c in piece for c in DONE_CHARS):
                    continue
                stats["checks"] = stats.get("checks", 0) + 1
                if done(tok.decode(input_ids[row, prompt_len:], skip_special_tokens=True)):
                    self.stopped[row] = True
                    stats["early_stops"] = stats.get("early_stops", 0) + 1
            return self.stopped.clone()

    return StoppingCriteriaList([_Watch()])


DONE_CHARS = frozenset('}]"\n:：.。?？!！`\ufffd')
"""Characters on which a reply can become complete (a JSON object or string closed, a new ``Q:`` line, a sentence
ended): ``done`` is asked only after a token holding one of them (or part of a character split across tokens)."""


# ---- remote -------------------------------------------------------------------------------------------------------
class _RemoteBackend:
    """Shared part of the HTTP backends: retries, a thread pool for ``chat_batch``, token accounting."""

    name = "remote"
    context_tokens = 32_768

    def __init__(
        self,
        model: str,
        api_key: str,
        base_url: str | None = None,
        *,
        timeout: float = 120.0,
        concurrency: int = 4,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.model = model
        self.base_url = base_url
        self.timeout = timeout
        self.concurrency = max(1, int(concurrency))
        self.retry = retry or RetryPolicy()
        self.tokens_out = 0
        self.retries = 0
        self._sleep = sleep
        self._key = api_key
        self._lock = threading.Lock()
        self._client = self._make_client()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r}, key={mask(self._key)!r})"

    def _make_client(self):  # pragma: no cover - overridden
        raise NotImplementedError

    def _complete(self, messages: list[Message], max_tokens: int, temperature: float) -> tuple[str, int]:
        raise NotImplementedError  # pragma: no cover

    def _count_retry(self, attempt: int, wait: float, exc: BaseException) -> None:
        with self._lock:
            self.retries += 1

    def count_tokens(self, text: str) -> int:
        return estimate_tokens(text)

    def chat(self, messages: list[Message], *, max_tokens: int = 512, temperature: float = 0.0) -> str:
        text, used = call_with_retries(
            lambda: self._complete(copy.deepcopy(messages), max_tokens, temperature),
            policy=self.retry,
            what=f"The request to {self.name} ({self.model})",
            secrets=[self._key],
            sleep=self._sleep,
            on_retry=self._count_retry,
        )
        with self._lock:
            self.tokens_out += used
        return text

    def chat_batch(
        self, conversations: list[list[Message]], *, max_tokens: int = 512, temperature: float = 0.0
    ) -> list[str]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda c: self.chat(c, max_tokens=max_tokens, temperature=temperature), conversations))

    @staticmethod
    def _reply(resp: Any) -> tuple[str, int]:
        choices = getattr(resp, "choices", None) or []
        if not choices:
            raise LLMError(
                "The server answered without any choice; is it a chat-completions endpoint?",
                zh="服务器的回复里没有任何 choice；请确认它是一个 chat-completions 接口。",
            )
        text = getattr(choices[0].message, "content", None) or ""
        usage = getattr(resp, "usage", None)
        used = getattr(usage, "completion_tokens", None)
        return text, int(used) if isinstance(used, int) else estimate_tokens(text)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and hasattr(client, "close"):
            client.close()


class ZhipuBackend(_RemoteBackend):
    """Zhipu's chat-completions API through the official ``zhipuai`` SDK (default model GLM-4-flash, free tier)."""

    name = "zhipuai"
    context_tokens = 128_000

    def _make_client(self):
        import httpx
        import zhipuai

        return zhipuai.ZhipuAI(
            api_key=self._key,
            base_url=self.base_url or ZHIPU_BASE_URL,
            max_retries=0,  # our call_with_retries is the only retry policy
            timeout=httpx.Timeout(self.timeout, connect=min(10.0, self.timeout)),
        )

    def _complete(self, messages: list[Message], max_tokens: int, temperature: float) -> tuple[str, int]:
        resp = self._client.chat.completions.create(
            model=self.model, messages=messages, max_tokens=max_tokens, temperature=temperature
        )
        return self._reply(resp)


class OpenAIBackend(_RemoteBackend):
    """Any OpenAI-compatible chat-completions server through the ``openai`` SDK (vLLM, Ollama, DeepSeek…)."""

    name = "openai"

    def _make_client(self):
        import openai

        return openai.OpenAI(
            api_key=self._key, base_url=self.base_url or None, max_retries=0, timeout=self.timeout
        )  # our call_with_retries is the only retry policy

    def served_models(self) -> list[str]:
        """Model names the server lists (``GET /models``), for picking a default."""
        page = call_with_retries(
            lambda: self._client.models.list(), policy=self.retry, secrets=[self._key], sleep=self._sleep
        )
        return [m.id for m in getattr(page, "data", [])]

    def _complete(self, messages: list[Message], max_tokens: int, temperature: float) -> tuple[str, int]:
        resp = self._client.chat.completions.create(
            model=self.model, messages=messages, max_tokens=max_tokens, temperature=temperature
        )
        return self._reply(resp)


# ---- construction -------------------------------------------------------------------------------------------------
def resolve_api_key(kind: str, api_key_env: str | None = None) -> tuple[str | None, str]:
    """``(key or None, the variable name looked up)``: from the environment, then ``.streamlit/secrets.toml``."""
    env = api_key_env or DEFAULT_KEY_ENV.get(kind, "")
    return (get_secret(env) if env else None), env


def make_backend(
    kind: str,
    model: str | None = None,
    base_url: str | None = None,
    api_key_env: str | None = None,
    *,
    api_key: str | None = None,
    concurrency: int = 4,
    batch_size: int | None = None,
    device: str | None = None,
    timeout: float = 120.0,
    retry: RetryPolicy | None = None,
) -> ChatBackend:
    """Build the backend ``kind`` (``local`` | ``zhipuai`` | ``openai``).

    The key comes from ``api_key`` (in memory, e.g. typed into the dashboard) or from the variable ``api_key_env``
    (default ``ZHIPUAI_API_KEY`` / ``OPENAI_API_KEY``) in the environment or ``.streamlit/secrets.toml``.
    """
    if kind not in BACKENDS:
        raise UserError(
            f"Unknown backend '{kind}'; choose one of {', '.join(BACKENDS)}.",
            zh=f"未知的后端“{kind}”；请从 {', '.join(BACKENDS)} 中选择。",
        )
    if kind == "local":
        return LocalBackend(model or DEFAULT_MODELS["local"], batch_size=batch_size, device=device)
    key, env = (api_key, api_key_env or DEFAULT_KEY_ENV[kind]) if api_key else resolve_api_key(kind, api_key_env)
    common = {"timeout": timeout, "concurrency": concurrency, "retry": retry}
    if kind == "zhipuai":
        if not key:
            raise AuthError(
                f"No Zhipu API key: set {env} (or name another variable with --api-key-env, or put it in "
                ".streamlit/secrets.toml); get a free key at https://bigmodel.cn/.",
                zh=f"没有智谱 API 密钥：请设置环境变量 {env}（或写入 .streamlit/secrets.toml，或在页面上输入）；"
                "可在 https://bigmodel.cn/ 免费申请。",
            )
        return ZhipuBackend(model or DEFAULT_MODELS["zhipuai"], key, base_url, **common)
    if not key:
        if not base_url:
            raise AuthError(
                f"No API key for the OpenAI-compatible backend: set {env} (or --api-key-env VAR), or give --base-url "
                "of a server that needs none (vLLM, Ollama).",
                zh=f"OpenAI 兼容后端没有 API 密钥：请设置环境变量 {env}，或填写不需要密钥的服务地址（vLLM、Ollama）。",
            )
        key = "EMPTY"  # local servers (vLLM, Ollama) accept any key
    backend = OpenAIBackend(model or "", key, base_url, **common)
    if not backend.model:
        names = backend.served_models()
        if not names:
            raise BackendConfigError(
                "The server lists no models; give the model name with --model.",
                zh="服务器没有列出任何模型；请填写模型名。",
            )
        backend.model = names[0]
    return backend


def ping(backend: ChatBackend) -> tuple[str, float]:
    """A tiny request to check that the backend answers: ``(reply, seconds)``; raises the backend's errors."""
    start = time.time()
    reply = backend.chat([{"role": "user", "content": "Reply with the single word OK."}], max_tokens=8)
    return reply, time.time() - start
