"""Padding-free packing: the collator, the check that a model keeps packed samples apart, and a sampler that gives
every data-parallel rank about the same number of tokens."""

from __future__ import annotations

import functools

from .attention import PREFIX_VARLEN_ATTN, VARLEN_ATTN
from .model import IGNORE_INDEX, is_kbit


def make_collator(tokenizer, packing: bool, attn_implementation: str = "sdpa", device: str = "cpu"):
    """Padding-free packing collator, or padding to the longest sample (labels padded with -100).

    With FlashAttention or :data:`VARLEN_ATTN` the packed batch also carries ``cu_seq_lens_*``/``max_length_*``, so
    the attention kernels need not derive the sample boundaries from ``position_ids`` (a GPU→CPU sync per layer).
    """
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    if packing:
        return DataCollatorWithFlattening(
            return_position_ids=True,
            separator_id=IGNORE_INDEX,
            return_flash_attn_kwargs=attn_implementation.startswith("flash_attention")
            or attn_implementation in (VARLEN_ATTN, PREFIX_VARLEN_ATTN),
        )
    return DataCollatorForSeq2Seq(
        tokenizer,
        padding="longest",
        label_pad_token_id=IGNORE_INDEX,
        pad_to_multiple_of=8 if str(device).startswith("cuda") else None,
    )


def packed_rebalance_sampler(
    lengths: list[int],
    batch_size: int,
    world: int,
    rank: int,
    grad_accum: int = 1,
    seed: int = 42,
    drop_last: bool = False,
):
    """A rank-aware batch sampler giving every rank about the same number of *tokens* per step (packed batches).

    With DDP every step waits for the slowest rank; random batches of 8 QA samples differ by ~13% in tokens, so the
    ranks idle. transformers' ``BatchRebalanceSampler`` fixes this for padded batches (its cost is
    ``samples × longest``); here the cost of a packed micro-batch is its token count, and each optimizer step's
    ``batch_size × grad_accum × world`` shuffled samples are dealt longest-first to the cheapest micro-batch. It
    subclasses transformers' sampler, so the Trainer treats it as rank-aware (no re-sharding) and the shuffle,
    epochs and tail handling are the library's.
    """
    return _sampler_class()(
        lengths=lengths,
        effective_batch_size=batch_size * grad_accum * world,
        dp_size=world,
        grad_accum=grad_accum,
        seed=seed,
        rank=rank,
        drop_last=drop_last,
    )


@functools.cache
def _sampler_class():
    from transformers.trainer_pt_utils import BatchRebalanceSampler

    class PackedRebalanceSampler(BatchRebalanceSampler):
        def _assign(self, indices, lengths):
            k = self.dp_size * self.grad_accum
            groups: list[list[int]] = [[] for _ in range(k)]
            cost = [0] * k
            for idx, n in sorted(zip(indices, lengths, strict=True), key=lambda x: x[1], reverse=True):
                g = min(range(k), key=lambda j: (cost[j], len(groups[j])))
                groups[g].append(idx)
                cost[g] += n
            order = sorted(range(k), key=lambda j: cost[j], reverse=True)
            rank_mbs = [[[] for _ in range(self.grad_accum)] for _ in range(self.dp_size)]
            for slot in range(self.grad_accum):
                for r in range(self.dp_size):
                    rank_mbs[r][slot] = groups[order[slot * self.dp_size + r]]
            return rank_mbs

    return PackedRebalanceSampler


def packing_works(model, device: str) -> tuple[bool, str]:
    """True when the model keeps packed samples apart given restarting ``position_ids``.

    Two short samples run separately, packed with restarting position_ids, and packed without them (what cross-sample
    attention looks like); packing works when the packed logits are far closer to the separate ones than the
    contaminated logits are, and when the second sample's packed logits do not change at all if the first sample's
    tokens do (same shapes, so kernel numerics cannot differ: any change is leakage). 4-/8-bit models get a looser
    bound on the first comparison, since their matmuls round differently for different batch shapes. Costs five
    forward passes of ~11 tokens.
    """
    import torch

    vocab = model.get_input_embeddings().weight.shape[0]
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(3, min(vocab, 1000), (1, 6), generator=gen).to(device)
    b = torch.randint(3, min(vocab, 1000), (1, 5), generator=gen).to(device)
    both = torch.cat([a, b], 1)
    pos = torch.tensor([list(range(6)) + list(range(5))], device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            la = model(input_ids=a, use_cache=False).logits.float()
            lb = model(input_ids=b, use_cache=False).logits.float()
            lp = model(input_ids=both, position_ids=pos, use_cache=False).logits.float()
            lc = model(input_ids=both, use_cache=False).logits.float()
            other = torch.cat([(a - 2) % (min(vocab, 1000) - 3) + 3, b], 1)  # another first sample, same shapes
            lo = model(input_ids=other, position_ids=pos, use_cache=False).logits.float()
    except Exception as exc:  # noqa: BLE001 - any failure means: do not pack
        return False, f"the packed forward pass failed ({type(exc).__name__}: {exc})"
    finally:
        model.train(was_training)
    err = max((lp[0, :6] - la[0]).abs().max().item(), (lp[0, 6:] - lb[0]).abs().max().item())
    contaminated = (lc[0, 6:] - lb[0]).abs().max().item()
    leak = (lo[0, 6:] - lp[0, 6:]).abs().max().item()
    if not (err <= (0.25 if is_kbit(model) else 0.05) * contaminated and leak <= 0.01 * contaminated):
        return False, f"this model attends across packed samples (logit difference {err:.3g} vs {contaminated:.3g})"
    return True, "position_ids restart per sample; the model masks attention per sample"
