"""A batch that changes while it decodes: rows join between two steps and leave the step they end.

``generate`` decodes a fixed batch until its longest row ends, so a batch of replies waits for its slowest one and
every finished row still costs a row of each step. :class:`Decoding` holds a running batch's tensors instead — the
``DynamicCache``, the 2-D attention mask, the ids fed so far and each row's next token — and offers the three moves a
scheduler needs: :meth:`~Decoding.join` (read new prompts in with one left-padded forward), :meth:`~Decoding.step`
(one token for every row) and :meth:`~Decoding.keep` (drop ended rows). Each forward is the call ``generate`` makes:
position ids count each row's mask, the mask is left out while no row is padded, only the last position's logits.
Choosing tokens from the logits (greedy, sampling, processors) is the caller's. Prompts that begin alike (a system
prompt, a few-shot example) can have that part read once (``prefill(..., shared=n)``).

Two schedulers use it: ``serve``'s step engine (requests join a running batch) and local generation
(:meth:`umtcds_core.llm.LocalBackend.chat_batch`: a finished reply's slot goes to the next prompt at once).
Greedy tokens match ``generate``'s on the same rows up to floating-point noise from different padding
(``tests/umtcds_core/test_decode.py``).
"""

from __future__ import annotations

import inspect


def left_pad(t, n: int, dim_from_end: int, value=0):
    """``t`` with ``n`` positions of ``value`` in front along the dimension ``dim_from_end`` from the end (1 = last)."""
    import torch.nn.functional as F

    return t if n == 0 else F.pad(t, (0, 0) * (dim_from_end - 1) + (n, 0), value=value)


def eos_ids(model, tokenizer) -> set[int]:
    """Every id that ends a reply: the model's generation config's and the tokenizer's."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = {*(eos if isinstance(eos, list) else [eos] if eos is not None else [])}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


class Unsupported(Exception):
    """:class:`Decoding` cannot reproduce this ``generate`` call exactly; a plain ``generate`` should serve it."""


GEN_KEYS = frozenset({"max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "pad_token_id",
                      "logits_processor"})  # fmt: skip
"""The ``generate`` arguments a scheduler over :class:`Decoding` reproduces."""
PROCESSORS = frozenset({"TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper", "MinPLogitsWarper",
                        "TypicalLogitsWarper", "EpsilonLogitsWarper", "RepetitionPenaltyLogitsProcessor",
                        "NoBadWordsLogitsProcessor", "SuppressTokensLogitsProcessor",
                        "InfNanRemoveLogitsProcessor"})  # fmt: skip
"""Processors ``generate`` may build that depend on nothing but a row's ids and scores, so they give the same result
in a batch whose rows joined at different steps (length-based ones like ``min_new_tokens`` do not)."""


def generation_model(model):
    """The transformers model under a peft wrapper (its generation config and set-up helpers); ``model`` itself when
    it is no wrapper (the unwrapped model keeps a ``peft_config`` of its own, so that alone does not tell)."""
    return model.get_base_model() if hasattr(model, "get_base_model") and getattr(model, "peft_config", None) else model


def processors(model, gen_kwargs: dict):
    """``(processors, do_sample)``: the logits processors ``generate(**gen_kwargs)`` builds for ``model``.

    Why transformers' own set-up: ``generate`` merges the model's generation config (a default ``top_k`` of 50 when
    sampling, a repetition penalty a model may ship) with the call's arguments and a caller's ``logits_processor`` in
    a fixed order; asking it for that list (``_prepare_generation_config`` and ``_get_logits_processor``, pinned
    transformers) reproduces exactly the set a ``generate`` call would use instead of a copy that drifts. Raises
    :class:`Unsupported` for arguments or processors a batch whose rows joined at different steps cannot reproduce."""
    from transformers import LogitsProcessorList

    kw = dict(gen_kwargs)
    extra = set(kw) - GEN_KEYS
    if extra:
        raise Unsupported(f"generate arguments the step engine does not reproduce: {', '.join(sorted(extra))}")
    custom = LogitsProcessorList(kw.pop("logits_processor", None) or [])
    gm = generation_model(model)
    try:
        config, _ = gm._prepare_generation_config(None, **kw)
        procs = gm._get_logits_processor(generation_config=config, input_ids_seq_length=0, encoder_input_ids=None,
                                         prefix_allowed_tokens_fn=None, logits_processor=custom,
                                         device=str(gm.device), model_kwargs={})  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - a transformers without these helpers: plain generate serves
        raise Unsupported(f"transformers' generation set-up did not run ({type(exc).__name__}: {exc})") from exc
    mine = {id(p) for p in custom}
    odd = sorted({type(p).__name__ for p in procs if id(p) not in mine and type(p).__name__ not in PROCESSORS})
    if odd:
        raise Unsupported(f"the model's generation config asks for {', '.join(odd)}")
    return procs, bool(config.do_sample)


def choose(procs, do_sample: bool, ids, logits):
    """Each row's next token from its logits: the processors, then argmax (greedy) or one draw (sampling)."""
    import torch

    scores = procs(ids, logits)
    if do_sample:
        return torch.multinomial(torch.nn.functional.softmax(scores, dim=-1), num_samples=1).squeeze(1)
    return torch.argmax(scores, dim=-1)


def blocker(model) -> str | None:
    """Why :class:`Decoding` cannot decode ``model`` exactly as ``generate`` would; None when it can.

    Prompt-learning adapters (P-tuning v2, prefix) keep their own past keys per row, several adapters would need
    per-row switching, and sliding-window, linear-attention or shared-KV cache layers cannot be joined along the batch
    by left padding."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    adapters = getattr(model, "peft_config", None) or {}
    if len(adapters) > 1:
        return "the model carries several adapters"
    if any(getattr(c, "is_prompt_learning", False) for c in adapters.values()):
        return "a prompt-learning adapter (P-tuning v2 / prefix) keeps its own past keys"
    gm = generation_model(model)
    config = gm.config
    if getattr(config, "is_encoder_decoder", False):
        return "an encoder-decoder model"
    if not {"cache", "position_ids", "attention_mask"} <= set(inspect.signature(gm.forward).parameters):
        return "the model's forward takes no cache, position ids or attention mask"
    try:
        layers = DynamicCache(config=config).layers
    except Exception as exc:  # noqa: BLE001 - an unusual config: plain generate serves it
        return f"no dynamic cache for this model ({type(exc).__name__})"
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return "sliding-window, linear-attention or shared cache layers"
    return None


class Decoding:
    """The running batch of one model: ``rows`` (the caller's objects, one per row) and their shared tensors.

    ``cache`` holds every token but each row's ``next`` one (chosen, not yet fed); ``mask`` and ``ids`` cover the
    cache's positions (left padding is 0 in ``mask`` and ``pad_id`` in ``ids``); ``padded`` says whether ``mask`` has
    a 0. ``model`` is the transformers model whose config builds the cache (under a peft wrapper: its base model);
    the forward itself runs on the module handed to :meth:`join`/:meth:`step` (the wrapper, with its adapter).
    """

    def __init__(self, model, pad_id: int | None):
        self.model, self.pad_id = model, pad_id if pad_id is not None else 0
        accepts = inspect.signature(model.forward).parameters
        self._keep = {"logits_to_keep": 1} if "logits_to_keep" in accepts else {}  # what generate passes
        self.rows: list = []
        self.cache = self.mask = self.ids = self.next = None
        self.padded = False
        self.most = 0  # most rows decoded together since the batch was last empty
        self._head = None  # (shared prompt tokens, their keys and values per layer for one row): see prefill

    def clear(self) -> None:
        self.rows, self.cache, self.mask, self.ids, self.next, self.padded = [], None, None, None, None, False

    def _forward(self, m, ids, mask, positions, cache, padded: bool):
        """One forward as ``generate`` makes it; the last position's logits in float32 (what its processors see)."""
        import torch

        out = m(input_ids=ids, attention_mask=mask if padded else None, position_ids=positions, cache=cache,
                use_cache=True, **self._keep)  # fmt: skip
        return out.logits[:, -1].to(dtype=torch.float32, copy=True)

    def prefill(self, m, prompts: list[list[int]], shared: int = 0):
        """``(ids, logits, state)``: the prompts read in, left padded, one forward; ``state`` goes to :meth:`join`.

        ``shared``: the prompts' first ``shared`` tokens are the same (a system prompt, a few-shot example): their
        keys and values are computed once per :class:`Decoding` and copied to every row, and only the rest of each
        prompt is read — right after the shared part, the shorter rests left-padded in between (the mask has a hole
        there; positions count real tokens, so each row sees exactly its own prompt)."""
        from transformers import DynamicCache

        shared = shared if 0 < shared < min(len(p) for p in prompts) else 0
        if shared:
            return self._prefill_shared(m, prompts, shared)
        ids, mask = self._left_padded(prompts)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as generate: pads at 0, each row from 0
        cache = DynamicCache(config=self.model.config)
        padded = bool((mask == 0).any())
        logits = self._forward(m, ids, mask, positions, cache, padded)
        return ids, logits, (ids, mask, cache, padded)

    def _left_padded(self, rows: list[list[int]]):
        """``(ids, mask)`` on the model's device: ``rows`` left-padded to the longest (``pad_id``, mask 0)."""
        import torch

        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
        return ids.to(self.model.device), mask.to(self.model.device)

    def _prefill_shared(self, m, prompts: list[list[int]], shared: int):
        import torch
        from transformers import DynamicCache

        head = prompts[0][:shared]
        if self._head is None or self._head[0] != head:  # the shared part's keys and values, for one row
            cache = DynamicCache(config=self.model.config)
            ids = torch.tensor([head], dtype=torch.long, device=self.model.device)
            self._forward(m, ids, None, torch.arange(shared, device=ids.device)[None], cache, False)
            self._head = (head, [(layer.keys, layer.values) for layer in cache.layers])
        n = len(prompts)
        cache = DynamicCache(config=self.model.config)
        for i, (k, v) in enumerate(self._head[1]):
            cache.update(k.expand(n, -1, -1, -1).contiguous(), v.expand(n, -1, -1, -1).contiguous(), i)
        ids, mask = self._left_padded([p[shared:] for p in prompts])
        positions = (shared + mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        full_mask = torch.cat([mask.new_ones((n, shared)), mask], dim=1)
        padded = bool((mask == 0).any())
        logits = self._forward(m, ids, full_mask, positions, cache, padded)
        full_ids = torch.cat([torch.tensor([head] * n, dtype=torch.long, device=ids.device), ids], dim=1)
        return full_ids, logits, (full_ids, full_mask, cache, padded)

    def join(self, rows: list, state, tokens) -> None:
        """Add prefilled ``rows`` (``state`` from :meth:`prefill`, their chosen first ``tokens``) to the batch: the
        shorter side's cache positions are left-padded, then both are one batch."""
        import torch

        ids, mask, cache, padded = state
        if self.rows:
            have, width = self.mask.shape[1], mask.shape[1]
            total = max(have, width)
            for old, fresh in zip(self.cache.layers, cache.layers, strict=True):
                old.keys = torch.cat([left_pad(old.keys, total - have, 2), left_pad(fresh.keys, total - width, 2)])
                old.values = torch.cat(
                    [left_pad(old.values, total - have, 2), left_pad(fresh.values, total - width, 2)]
                )
            self.mask = torch.cat([left_pad(self.mask, total - have, 1), left_pad(mask, total - width, 1)])
            self.ids = torch.cat(
                [left_pad(self.ids, total - have, 1, self.pad_id), left_pad(ids, total - width, 1, self.pad_id)]
            )
            self.next = torch.cat([self.next, tokens])
            self.padded = self.padded or padded or have != width
        else:
            self.cache, self.mask, self.ids, self.next, self.padded = cache, mask, ids, tokens, padded
        self.rows.extend(rows)
        self.most = max(self.most, len(self.rows))

    def step(self, m):
        """Feed each row's chosen token; returns ``(ids, logits)`` for choosing the next ones (set ``next``)."""
        import torch

        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=1)
        self.ids = torch.cat([self.ids, self.next[:, None]], dim=1)
        positions = self.mask.sum(dim=1, keepdim=True) - 1  # the count of each row's real tokens, as generate's +1
        return self.ids, self._forward(m, self.next[:, None], self.mask, positions, self.cache, self.padded)

    def keep(self, keep: list[int]) -> None:
        """Only the rows at ``keep`` go on (ended ones leave at once); cache columns no row needs any more are cut."""
        import torch

        if len(keep) == len(self.rows):
            return
        if not keep:
            self.clear()
            return
        pick = torch.tensor(keep, device=self.mask.device)
        for layer in self.cache.layers:
            layer.batch_select_indices(pick)
        self.mask, self.ids, self.next = self.mask[pick], self.ids[pick], self.next[pick]
        self.rows = [self.rows[i] for i in keep]
        first = int(self.mask.any(dim=0).to(torch.int8).argmax())  # leading columns every row has as padding
        if first:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
            self.mask, self.ids = self.mask[:, first:], self.ids[:, first:]
        self.padded = not bool(self.mask.all())
