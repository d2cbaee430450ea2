"""Chat with a base model or a tuned checkpoint: ``umtcds chat --model NAME|PATH [--adapter DIR] [--prompt TEXT]``.

Usage::

    umtcds chat --adapter runs/run-1 --prompt "When does the library open?"        # one answer, then exit
    umtcds chat --model smollm2-135m --adapter runs/run-1/checkpoint-40 --compare   # base and tuned, side by side
    umtcds chat --model smollm2-135m                                               # interactive loop (/clear, /quit)
    umtcds chat --adapter runs/run-1 --merge-to exported/                          # merge LoRA, save an HF folder

What it loads (:func:`load_chat_model`):

* the base model through :mod:`umtcds_core.models` (embedded name, HF folder or .gguf);
* optionally a peft adapter — LoRA/QLoRA or P-tuning v2 (prefix tuning) — from a run folder (its final adapter, else
  its newest ``checkpoint-N``) or a ``checkpoint-N`` folder, found by :mod:`umtcds_core.runs`. Without ``--model`` the base comes from the run's
  ``train_info.json``, else from the adapter's ``adapter_config.json``. A full fine-tune folder given as ``--adapter``
  is simply loaded as the model.

Base vs tuned uses the *same* weights: the base answer is generated inside peft's ``disable_adapter()`` context, so the
comparison costs no second load. Streaming uses a ``TextIteratorStreamer``: ``generate`` runs in a worker thread and
the caller iterates over text pieces as they come — every complete character at once, never half of one ("�").
Generation stops early when the answer falls into a loop ("；；；…", a line again and again; :func:`find_repetition`)
and the loop is cut to one copy (:func:`final_text`). One generation at a time per model (a lock), because the adapter
switch changes shared state.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError
from .runs import adapter_base_ref, adapter_type, find_adapter, is_full_model_run, run_dir_of, train_info

Message = dict[str, str]


class ChatError(UserError, ValueError):
    """An unusable chat request or model/adapter pairing; one sentence saying what to do.

    A missing or empty adapter folder raises :class:`umtcds_core.runs.RunError`: finding adapters is run-folder
    knowledge, shared with evaluate, serve and export."""


# ---- the loaded model ---------------------------------------------------------------------------------------------
@dataclass
class GenOptions:
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9

    def kwargs(self) -> dict[str, Any]:
        if self.max_new_tokens < 1:
            raise ChatError(
                "max_new_tokens must be at least 1; raise --max-new-tokens.",
                zh="max_new_tokens 至少为 1；请调大 --max-new-tokens。",
            )
        if self.temperature and self.temperature > 0:
            if not 0 < self.top_p <= 1:
                raise ChatError(
                    "top_p must be in (0, 1]; set --top-p to e.g. 0.9.",
                    zh="top_p 必须在 (0, 1] 之内；请把 --top-p 设为 0.9 之类的值。",
                )
            return {
                "max_new_tokens": self.max_new_tokens,
                "do_sample": True,
                "temperature": self.temperature,
                "top_p": self.top_p,
            }
        # Greedy: clear the sampling knobs a model's generation_config may carry, so transformers does not warn.
        return {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": False,
            "temperature": None,
            "top_p": None,
            "top_k": None,
        }


class _StopOnEvent:
    """A stopping criterion that ends generation when ``event`` is set (client gone, Stop pressed)."""

    def __init__(self, event: threading.Event):
        self.event = event
        self.fired = False

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        self.fired = self.fired or self.event.is_set()
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


# ---- clean text: loops and half characters -----------------------------------------------------------------------
REPEAT_MAX_UNIT = 64  # longest repeating unit looked for, in characters (a sentence said again and again)
REPEAT_MIN_SPAN = 20  # the repeats must cover at least this many characters ("；" × 20, "好的" × 10)
REPEAT_MIN_COUNT = 3  # … and the unit occur at least this often back to back
REPEAT_SAME_LINES = 3  # the same non-empty line this often in a row
# Units made only of these are markdown rules and tables ("|---|---|", "====="), not a model stuck in a loop.
_RULE_CHARS = frozenset("-=_*|:~+# \t")


def _is_rule(unit: str) -> bool:
    return set(unit) <= _RULE_CHARS and not unit.isspace()  # blank runs are loops too


def find_repetition(text: str) -> int | None:
    """How much of ``text`` to keep when its end is the model repeating itself; None when it is not.

    Small models, the base model above all, fall into loops — "；；；；…", one phrase or one line again and again —
    until the token limit, which on a CPU means minutes of nothing useful. A loop is a unit of 1–64 characters
    repeated back to back at the very end (at least 3 times, covering at least 20 characters), or the same non-empty
    line 3 times in a row. The length returned keeps the text before the loop and one copy of the unit, so the
    answer still shows what was being repeated.
    """
    n = len(text)
    for size in range(1, min(REPEAT_MAX_UNIT, n // REPEAT_MIN_COUNT) + 1):
        unit = text[n - size :]
        count = 1
        while (count + 1) * size <= n and text[n - (count + 1) * size : n - count * size] == unit:
            count += 1
        if count >= REPEAT_MIN_COUNT and count * size >= REPEAT_MIN_SPAN and not _is_rule(unit):
            return n - (count - 1) * size
    complete = text[: text.rfind("\n") + 1]  # the unfinished last line does not count yet
    lines = [(m.group().strip(), m.end()) for m in re.finditer(r"[^\n]+", complete) if m.group().strip()]
    if len(lines) < REPEAT_SAME_LINES or _is_rule(lines[-1][0]):
        return None
    first = len(lines) - 1
    while first > 0 and lines[first - 1][0] == lines[-1][0]:
        first -= 1
    return lines[first][1] if len(lines) - first >= REPEAT_SAME_LINES else None


def complete_text(text: str) -> str:
    """``text`` without a trailing half character.

    Byte-level tokenizers split one Chinese character into 2–3 tokens; decoding after the first of them gives
    U+FFFD ("�"). The next token usually completes it, so a stream holds that tail back, and an answer cut by the
    token limit drops it rather than show "�".
    """
    return text.rstrip("\ufffd")


def final_text(text: str) -> str:
    """The answer as shown and remembered: no half character, a loop cut to one copy, no outer whitespace."""
    text = complete_text(text)
    keep = find_repetition(text)
    return (text if keep is None else text[:keep]).strip()


class _StopOnRepetition:
    """A stopping criterion that ends a row once its generated text ends in a loop (:func:`find_repetition`).

    Only the newest ``window`` generated tokens are decoded each step, which covers the longest loop looked for
    (3 × 64 characters) at well under a millisecond per row — small next to one decoding step of any model.
    """

    def __init__(self, tokenizer, prompt_len: int, window: int = 256):
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.window = window
        self.fired = False

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        new = input_ids[:, self.prompt_len :][:, -self.window :]
        flags = [find_repetition(complete_text(self.tokenizer.decode(row, skip_special_tokens=True))) is not None
                 for row in new.tolist()]  # fmt: skip
        self.fired = self.fired or any(flags)
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)


def _text_streamer_class():
    """``TextIteratorStreamer`` that shows every complete character at once and never a half one (imported lazily).

    transformers' own streamer waits for a space after punctuation — so "；；；" or Chinese with full-width
    punctuation shows nothing until the end — and flushes a half UTF-8 character as "�" when generation stops
    mid-character. This one decodes the tokens so far, holds back only a trailing U+FFFD (the next token completes
    it) and drops it at the end.
    """
    from transformers import TextIteratorStreamer

    class SafeTextStreamer(TextIteratorStreamer):
        def put(self, value):
            if len(value.shape) > 1:
                value = value[0]
            if self.skip_prompt and self.next_tokens_are_prompt:
                self.next_tokens_are_prompt = False
                return
            self.token_cache.extend(value.tolist())
            text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
            printable = complete_text(text)[self.print_len :]
            self.print_len += len(printable)
            if text.endswith("\n"):  # a finished line: restart the cache (keeps decoding cheap), as transformers does
                self.token_cache = self.token_cache[-1:]
                self.print_len = len(self.tokenizer.decode(self.token_cache, **self.decode_kwargs))
            if printable:
                self.on_finalized_text(printable)

        def end(self):
            text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs) if self.token_cache else ""
            self.token_cache, rest, self.print_len = [], complete_text(text)[self.print_len :], 0
            self.next_tokens_are_prompt = True
            self.on_finalized_text(rest, stream_end=True)

    return SafeTextStreamer


@dataclass
class ChatModel:
    """A tokenizer + model (maybe a peft model) that can answer as *tuned* or, with the adapter disabled, as *base*."""

    tokenizer: Any
    model: Any
    base_ref: str
    adapter_dir: Path | None = None
    adapter_kind: str = ""
    system_prompt: str | None = None  # the one training used (train_info.json), a sensible default for chat
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def has_adapter(self) -> bool:
        return self.adapter_dir is not None

    @property
    def name(self) -> str:
        """A short id: the run/checkpoint name for a tuned model, else the base reference."""
        if self.adapter_dir is None:
            return Path(self.base_ref).name if "/" in self.base_ref else self.base_ref
        rd = run_dir_of(self.adapter_dir)
        return rd.name if rd == self.adapter_dir else f"{rd.name}/{self.adapter_dir.name}"

    @property
    def base_name(self) -> str:
        return Path(self.base_ref).name if "/" in self.base_ref else self.base_ref

    @contextlib.contextmanager
    def _mode(self, use_adapter: bool):
        """Yield the object whose ``generate`` gives tuned (adapter on) or base (adapter off) answers."""
        if not self.has_adapter:
            yield self.model
        elif use_adapter:
            yield self.model
        else:
            # LoRA: disable_adapter() switches the LoRA layers off. Prompt learning: it swaps the wrapper's forward;
            # calling the inner model directly bypasses the prefix as well.
            with self.model.disable_adapter():
                yield self.model.get_base_model()

    def encode(self, conversations: list[list[Message]]):
        tok = self.tokenizer
        prompts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
        return tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)

    def _gen_kwargs(self, options: GenOptions) -> dict[str, Any]:
        tok = self.tokenizer
        return {**options.kwargs(), "pad_token_id": tok.pad_token_id}

    def stream(
        self,
        messages: list[Message],
        options: GenOptions | None = None,
        *,
        use_adapter: bool = True,
        stop_event: threading.Event | None = None,
        usage: dict | None = None,
    ) -> Iterator[str]:
        """Yield the answer to ``messages`` piece by piece (generation runs in a worker thread).

        Pieces are whole characters (never a half one) and generation stops early when the answer falls into a loop
        (:func:`find_repetition`). ``usage`` (a dict the caller passes) receives, when done, ``prompt_tokens``,
        ``completion_tokens``, ``text`` (the answer as it should be shown and remembered: :func:`final_text`, which
        may be shorter than the pieces when a loop was cut) and ``stop_reason``: ``"end"`` (the model finished),
        ``"length"`` (the token limit), ``"repetition"`` or ``"stopped"`` (``stop_event``). Closing the iterator
        early stops the generation.
        """
        import torch
        from transformers import StoppingCriteriaList

        options = options or GenOptions()
        gen_kwargs = self._gen_kwargs(options)
        stop_event = stop_event or threading.Event()
        tok = self.tokenizer
        enc = self.encode([messages])
        prompt_len = int(enc["input_ids"].shape[1])
        streamer = _text_streamer_class()(tok, skip_prompt=True, skip_special_tokens=True)
        on_event, on_repeat = _StopOnEvent(stop_event), _StopOnRepetition(tok, prompt_len)
        errors: list[BaseException] = []
        result: dict[str, Any] = {}

        def work():
            try:
                with self.lock, self._mode(use_adapter) as m, torch.inference_mode():
                    out = m.generate(
                        **enc,
                        **gen_kwargs,
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([on_event, on_repeat]),
                    )
                    result["completion_tokens"] = int(out.shape[1] - prompt_len)
                    result["text"] = tok.decode(out[0, prompt_len:], skip_special_tokens=True)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread below
                errors.append(exc)
                streamer.end()

        worker = threading.Thread(target=work, name="umtcds-generate", daemon=True)
        worker.start()
        try:
            for piece in streamer:
                if piece:
                    yield piece
        finally:
            stop_event.set()  # no-op when finished; stops the worker when the consumer left early
            worker.join()
        if errors:
            raise errors[0]
        if usage is not None:
            completion = result.get("completion_tokens", 0)
            usage["prompt_tokens"] = prompt_len
            usage["completion_tokens"] = completion
            usage["text"] = final_text(result.get("text", ""))
            usage["stop_reason"] = (
                "repetition"
                if on_repeat.fired
                else "stopped"
                if on_event.fired
                else "length"
                if completion >= options.max_new_tokens
                else "end"
            )

    def answer(self, messages: list[Message], options: GenOptions | None = None, *, use_adapter: bool = True) -> str:
        usage: dict = {}
        for _ in self.stream(messages, options, use_adapter=use_adapter, usage=usage):
            pass
        return usage["text"]

    def answer_batch(
        self,
        conversations: list[list[Message]],
        options: GenOptions | None = None,
        *,
        use_adapter: bool = True,
        batch_size: int = 8,
        on_batch=None,
    ) -> list[str]:
        """Answers for many conversations, batched (left padding), sorted by length so batches pad little.

        A row that falls into a loop stops there (the batch goes on for the others) and is cut to one copy, as in
        :meth:`stream`, so a rambling base model neither burns the token limit nor skews the scores with junk.
        """
        import torch
        from transformers import StoppingCriteriaList

        options = options or GenOptions(temperature=0.0)
        gen_kwargs = self._gen_kwargs(options)
        tok = self.tokenizer
        lengths = [len(tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False)) for c in conversations]
        order = sorted(range(len(conversations)), key=lambda i: lengths[i])
        out = [""] * len(conversations)
        for start in range(0, len(order), max(1, batch_size)):
            idx = order[start : start + max(1, batch_size)]
            enc = self.encode([conversations[i] for i in idx])
            prompt_len = int(enc["input_ids"].shape[1])
            stop = StoppingCriteriaList([_StopOnRepetition(tok, prompt_len)])
            with self.lock, self._mode(use_adapter) as m, torch.inference_mode():
                gen = m.generate(**enc, **gen_kwargs, stopping_criteria=stop)
            new = gen[:, prompt_len:]
            for i, row in zip(idx, new, strict=True):
                out[i] = final_text(tok.decode(row, skip_special_tokens=True))
            if on_batch is not None:
                on_batch(len(idx))
        return out

    def unload(self) -> dict:
        """Free the model (and the GPU); returns GPU memory before/after."""
        from .models import unload

        model, self.model = self.model, None
        return unload(model)


def load_chat_model(
    model: str | None = None, adapter: str | Path | None = None, device: str | None = None, dtype=None
) -> ChatModel:
    """Load the base model (``model``, else the adapter's recorded base) and attach ``adapter`` when given."""
    from . import models

    adapter_dir: Path | None = None
    if adapter:
        p = Path(adapter).expanduser()
        if is_full_model_run(p):
            model, adapter = str(p), None  # a full fine-tune: it *is* the model
        else:
            adapter_dir = find_adapter(p)
            model = model or adapter_base_ref(adapter_dir)
    if not model:
        raise ChatError(
            "Give a model with --model (an embedded name, a model folder or a .gguf file).",
            zh="请用 --model 指定模型（内置模型名、模型文件夹或 .gguf 文件）。",
        )
    tok, base = models.load(model, device=device, dtype=dtype)
    kind = ""
    if adapter_dir is not None:
        from peft import PeftModel

        kind = adapter_type(adapter_dir)
        try:
            base = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
        except (ValueError, RuntimeError, KeyError, OSError) as exc:
            models.unload(base)
            raise ChatError(
                f"The adapter {adapter_dir} does not fit the model {model} ({type(exc).__name__}: {str(exc)[:200]}); "
                "pass the base model it was trained on with --model.",
                zh=f"适配器 {adapter_dir} 与模型 {model} 不匹配（{type(exc).__name__}: {str(exc)[:200]}）；"
                "请用 --model 指定训练它时使用的基础模型。",
            ) from exc
        base.eval()
    system = train_info(adapter_dir).get("system_prompt") if adapter_dir is not None else None
    return ChatModel(
        tokenizer=tok, model=base, base_ref=str(model), adapter_dir=adapter_dir, adapter_kind=kind, system_prompt=system
    )


# ---- multi-turn session ---------------------------------------------------------------------------------------------
class ChatSession:
    """Multi-turn history + system prompt + generation options over one :class:`ChatModel`."""

    def __init__(self, chat_model: ChatModel, system: str | None = None, options: GenOptions | None = None):
        self.chat_model = chat_model
        self.system = system
        self.options = options or GenOptions()
        self.history: list[Message] = []

    def messages(self, user_text: str) -> list[Message]:
        msgs: list[Message] = [{"role": "system", "content": self.system}] if self.system else []
        return [*msgs, *self.history, {"role": "user", "content": user_text}]

    def stream(
        self, user_text: str, *, use_adapter: bool = True, remember: bool = True, usage: dict | None = None
    ) -> Iterator[str]:
        """Yield the reply piece by piece; the turn joins the history once the reply is complete.

        ``usage`` gets what :meth:`ChatModel.stream` reports; its ``text`` (a loop cut to one copy) is what the
        history keeps, so the next turn does not feed the loop back to the model.
        """
        if not user_text.strip():
            raise ChatError("The message is empty; type a question.", zh="消息是空的；请输入一个问题。")
        usage = {} if usage is None else usage
        yield from self.chat_model.stream(self.messages(user_text), self.options, use_adapter=use_adapter, usage=usage)
        if remember:
            self.history += [
                {"role": "user", "content": user_text},
                {"role": "assistant", "content": usage["text"]},
            ]

    def ask(self, user_text: str, *, use_adapter: bool = True, remember: bool = True) -> str:
        usage: dict = {}
        for _ in self.stream(user_text, use_adapter=use_adapter, remember=remember, usage=usage):
            pass
        return usage["text"]

    def compare(self, user_text: str) -> tuple[str, str]:
        """``(base answer, tuned answer)`` to the same question on the same weights; the tuned turn is remembered."""
        if not self.chat_model.has_adapter:
            raise ChatError(
                "Compare needs a tuned checkpoint; pick one with --adapter.",
                zh="对比需要一个微调后的检查点；请用 --adapter 选择一个。",
            )
        base = self.ask(user_text, use_adapter=False, remember=False)
        tuned = self.ask(user_text)
        return base, tuned

    def clear(self) -> None:
        self.history = []


# ---- answers from the website (retrieval) ---------------------------------------------------------------------------
RAG_BUDGET_MAX = 1500
"""Most prompt tokens a grounded turn uses (sources + question): more sources rarely help and cost time on a CPU."""


def context_budget(chat_model: ChatModel, max_new_tokens: int) -> int:
    """Prompt tokens a grounded turn may use: the model's context minus the answer, at most :data:`RAG_BUDGET_MAX`."""
    config = getattr(chat_model.model, "config", None)
    ctx = getattr(config, "max_position_embeddings", None) or getattr(chat_model.tokenizer, "model_max_length", 0)
    ctx = int(ctx) if ctx and ctx < 1_000_000 else 4096
    return max(256, min(RAG_BUDGET_MAX, ctx - max_new_tokens - 64))


def grounded_stream(
    session: ChatSession,
    index,
    question: str,
    *,
    k: int = 5,
    use_adapter: bool = True,
    remember: bool = True,
    usage: dict | None = None,
    sources: list | None = None,
) -> Iterator[str]:
    """Like :meth:`ChatSession.stream`, but answered from the website: the ``k`` best chunks of ``index`` (an
    :class:`umtcds_core.index.Index`) go into the prompt as numbered sources (:mod:`umtcds_core.grounding`, the one
    builder), and ``sources`` (a list the caller passes) receives them, numbered as the answer's ``[n]`` markers.

    The history keeps the plain question and answer, not the sources, so a long conversation does not carry every
    earlier turn's pages."""
    from .grounding import build_grounded_messages

    if not question.strip():
        raise ChatError("The message is empty; type a question.", zh="消息是空的；请输入一个问题。")
    usage = {} if usage is None else usage
    cm = session.chat_model
    hits = index.search(question, k=k)
    budget = context_budget(cm, session.options.max_new_tokens)
    messages, shown = build_grounded_messages(question, hits, session.system, budget, tokenizer=cm.tokenizer)
    if sources is not None:
        sources[:] = shown
    messages = [messages[0], *session.history, messages[1]]
    parts: list[str] = []
    for piece in cm.stream(messages, session.options, use_adapter=use_adapter, usage=usage):
        parts.append(piece)
        yield piece
    if remember:
        session.history += [
            {"role": "user", "content": question},
            {"role": "assistant", "content": usage.get("text", "".join(parts).strip())},
        ]


# ---- CLI ----------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", help="base model: embedded name, model folder or .gguf (default: the adapter's base)"
    )
    parser.add_argument("--adapter", help="a run folder or one of its checkpoint-N folders (LoRA or P-tuning v2)")
    parser.add_argument("--prompt", help="answer this one question and exit (otherwise: an interactive loop)")
    parser.add_argument("--system", help="system prompt")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="longest answer in tokens (default 256)")
    parser.add_argument("--temperature", type=float, default=0.7, help="0 = greedy, deterministic (default 0.7)")
    parser.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling share (default 0.9)")
    parser.add_argument("--compare", action="store_true", help="print the base answer and the tuned answer")
    parser.add_argument("--device", help="cpu | cuda | mps (default: the best available)")
    parser.add_argument(
        "--merge-to", metavar="DIR", help="merge the LoRA adapter into the base, save an HF folder, exit"
    )
    parser.add_argument(
        "--rag",
        metavar="INDEX_DIR",
        help="answer from the website: retrieve from this index (`umtcds index`), cite sources as [n], list them",
    )
    parser.add_argument("--k", type=int, default=5, help="with --rag: how many chunks to retrieve (default 5)")


def run(args: argparse.Namespace) -> int:
    if args.merge_to:
        from .export import merge_adapter

        if not args.adapter:
            raise ChatError(
                "--merge-to needs --adapter (the LoRA run or checkpoint to merge).",
                zh="--merge-to 需要同时指定 --adapter（要合并的 LoRA 训练输出或检查点）。",
            )
        out = merge_adapter(args.adapter, args.merge_to, model=args.model, device=args.device)
        print(f"Merged model saved to {out}")
        return 0
    if not args.model and not args.adapter:
        raise ChatError(
            "Give --model (an embedded name, a model folder or a .gguf file) and optionally --adapter.",
            zh="请指定 --model（内置模型名、模型文件夹或 .gguf 文件），可选再加上 --adapter。",
        )
    index = None
    if args.rag:
        from .index import RETRIEVE, Index
        from .schema import check_value

        check_value(RETRIEVE, "k", args.k)
        index = Index.load(args.rag)  # before the model: a missing or stale index is said at once
    cm = load_chat_model(args.model, args.adapter, device=args.device)
    if args.compare and not cm.has_adapter:
        raise ChatError(
            "--compare needs --adapter (a tuned run or checkpoint).",
            zh="--compare 需要同时指定 --adapter（微调后的训练输出或检查点）。",
        )
    options = GenOptions(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)
    session = ChatSession(cm, system=args.system if args.system is not None else cm.system_prompt, options=options)
    label = cm.name
    print(f"[{label}{' + base' if args.compare else ''} · {cm.adapter_kind or 'base model'}]", file=sys.stderr)
    if index is not None:
        session = _Grounded(session, index, args.k)
    if args.prompt is not None:
        _answer(session, args.prompt, args.compare)
        return 0
    print("Type a question; /clear forgets the conversation, /quit (or Ctrl-D) exits.", file=sys.stderr)
    while True:
        try:
            text = input("> ").strip()
        except EOFError:
            print(file=sys.stderr)
            return 0
        if not text:
            continue
        if text in {"/quit", "/exit"}:
            return 0
        if text == "/clear":
            session.clear()
            print("(conversation cleared)", file=sys.stderr)
            continue
        _answer(session, text, args.compare)


def _answer(session: ChatSession, text: str, compare: bool) -> None:
    if compare:
        print("--- base ---", flush=True)
        _print_stream(session, text, use_adapter=False, remember=False)
        print("--- tuned ---", flush=True)
    _print_stream(session, text)


def _print_stream(session: ChatSession, text: str, **kwargs) -> None:
    usage: dict = {}
    for piece in session.stream(text, usage=usage, **kwargs):
        print(piece, end="", flush=True)
    print(flush=True)
    if usage.get("stop_reason") == "repetition":  # the loop already printed; say why it ended there
        print("(stopped early: the model began repeating itself)", file=sys.stderr, flush=True)


class _Grounded:
    """A :class:`ChatSession` seen by the CLI loop, answering from the website and listing the sources after each
    answer (number, title, full URL)."""

    def __init__(self, session: ChatSession, index, k: int):
        self.session, self.index, self.k = session, index, k

    def clear(self) -> None:
        self.session.clear()

    def stream(self, text: str, *, usage: dict | None = None, **kwargs) -> Iterator[str]:
        from .grounding import format_sources, is_chinese

        sources: list = []
        usage = {} if usage is None else usage  # its "text": the clean answer the sources are marked for
        yield from grounded_stream(self.session, self.index, text, k=self.k, usage=usage, sources=sources, **kwargs)
        yield "\n\n" + format_sources(sources, zh=is_chinese(text), answer=usage.get("text", ""))
