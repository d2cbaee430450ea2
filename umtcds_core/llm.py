"""One protocol for every LLM: ``chat(messages, **options) -> str``, plus ``chat_batch`` for many conversations.

Backends: ``LocalBackend`` (transformers, batched, via :mod:`umtcds_core.models`); remote backends (Zhipu, any
OpenAI-compatible server) live beside it and share the same protocol, so Q&A generation, judging and evaluation never
care which one they talk to.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

Message = dict[str, str]


@runtime_checkable
class ChatBackend(Protocol):
    name: str

    def chat(self, messages: list[Message], *, max_tokens: int = 512, temperature: float = 0.0) -> str: ...

    def chat_batch(
        self, conversations: list[list[Message]], *, max_tokens: int = 512, temperature: float = 0.0
    ) -> list[str]: ...


class LocalBackend:
    """A local transformers chat model with batched generation (left padding, the model's own chat template).

    The model is loaded on first use on the best device; :meth:`close` frees it (and the GPU).
    """

    name = "local"

    def __init__(self, model: str | None = None, batch_size: int = 8, device: str | None = None):
        self.model_ref = model
        self.batch_size = batch_size
        self.device = device
        self._tok = None
        self._model = None

    def _ensure(self):
        if self._model is None:
            from .models import load

            self._tok, self._model = load(self.model_ref, device=self.device)
        return self._tok, self._model

    @property
    def tokenizer(self):
        return self._ensure()[0]

    def chat(self, messages: list[Message], *, max_tokens: int = 512, temperature: float = 0.0) -> str:
        return self.chat_batch([messages], max_tokens=max_tokens, temperature=temperature)[0]

    def chat_batch(
        self, conversations: list[list[Message]], *, max_tokens: int = 512, temperature: float = 0.0
    ) -> list[str]:
        import torch

        tok, model = self._ensure()
        prompts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
        # Sort by length so each batch pads little; restore order at the end.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[str] = [""] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(
                model.device
            )
            gen_kwargs = {"max_new_tokens": max_tokens, "pad_token_id": tok.pad_token_id}
            if temperature > 0:
                gen_kwargs.update(do_sample=True, temperature=temperature, top_p=0.9)
            else:
                gen_kwargs.update(do_sample=False)
            with torch.inference_mode():
                gen = model.generate(**enc, **gen_kwargs)
            new = gen[:, enc["input_ids"].shape[1] :]
            for i, row in zip(idx, new, strict=True):
                out[i] = tok.decode(row, skip_special_tokens=True).strip()
        return out

    def close(self) -> None:
        from .models import unload

        model, self._model, self._tok = self._model, None, None
        if model is not None:
            unload(model)
