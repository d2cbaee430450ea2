"""umtcds_core.speed on a tiny random GLM (CPU): each speed piece computes the same function as the plain path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from umtcds_core import speed  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(
    num_hidden_layers=2,
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=512,
    pad_token_id=0,
)


def tiny_model(seed: int = 0, lora: bool = True, layers: int | None = None, dropout: float = 0.0):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, GlmConfig

    transformers.set_seed(seed)
    shape = TINY if layers is None else dict(TINY, num_hidden_layers=layers)
    model = AutoModelForCausalLM.from_config(GlmConfig(**shape), dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    if lora:
        transformers.set_seed(seed)
        cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["q_proj", "k_proj", "v_proj"])
        model = get_peft_model(model, cfg)
        # non-zero B so the adapters take part in the function (and get gradients)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.02)
    model.train()
    return model


def samples(n: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        p, a = (int(x) for x in torch.randint(3, 12, (2,), generator=g))
        ids = torch.randint(5, TINY["vocab_size"], (p + a,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * p + ids[p:]})
    return out


def loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def assert_same(a, b, tol=1e-5):
    la, ga = a
    lb, gb = b
    assert torch.allclose(la, lb, atol=tol, rtol=tol), (la, lb)
    assert ga.keys() == gb.keys() and ga
    for k in ga:
        assert torch.allclose(ga[k], gb[k], atol=tol, rtol=1e-4), k


def test_chunked_loss_equals_model_loss_and_grads():
    feats = samples()
    padded = speed.make_collator(None, packing=True)(feats)  # one packed row: the loss sees every sample
    ref = loss_and_grads(tiny_model(), padded)
    model = tiny_model()
    assert speed.enable_fused_loss(model) == "chunked"  # no CUDA here: the PyTorch fallback
    out = model(**padded)
    assert out.logits is None  # the point: no full logits
    assert_same(ref, loss_and_grads(model, padded))


def test_chunked_cross_entropy_many_chunks():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(37, 8, generator=g, requires_grad=True)
    w = torch.randn(50, 8, generator=g, requires_grad=True)
    y = torch.randint(0, 50, (37,), generator=g)
    got = speed.chunked_linear_cross_entropy(h, w, y, chunk_tokens=5)
    want = torch.nn.functional.cross_entropy(h @ w.T, y, reduction="sum")
    assert torch.allclose(got, want, atol=1e-4)
    gh, gw = torch.autograd.grad(got, (h, w))
    wh, ww = torch.autograd.grad(want, (h, w))
    assert torch.allclose(gh, wh, atol=1e-4) and torch.allclose(gw, ww, atol=1e-4)


def test_packed_varlen_attention_matches_separate_samples():
    """Packed + varlen attention (CPU fallback) = packed SDPA = each sample alone; loss masking unchanged."""
    feats = samples(3)
    packed_sdpa = tiny_model()
    batch = speed.make_collator(None, packing=True, attn_implementation=speed.VARLEN_ATTN)(feats)
    assert "cu_seq_lens_q" in batch and batch["position_ids"][0, 0] == 0
    assert (batch["labels"] != -100).sum() == sum(sum(1 for y in f["labels"][1:] if y != -100) for f in feats)
    varlen = tiny_model()
    assert speed.enable_varlen_attention(varlen, "cpu", force=True) == speed.VARLEN_ATTN
    plain = {k: v for k, v in batch.items() if k in ("input_ids", "labels", "position_ids")}
    assert_same(loss_and_grads(packed_sdpa, plain), loss_and_grads(varlen, batch))
    assert_same(loss_and_grads(varlen, plain), loss_and_grads(varlen, batch))  # boundaries from position_ids
    varlen.eval()
    with torch.no_grad():
        logits = varlen(**{k: v for k, v in plain.items() if k != "labels"}).logits[0]
        start = 0
        for f in feats:
            n = len(f["input_ids"])
            alone = varlen(input_ids=torch.tensor([f["input_ids"]])).logits[0]
            assert torch.allclose(logits[start : start + n], alone, atol=1e-4)
            start += n


def test_checkpointing_skip_last_and_lean_kbit():
    model = tiny_model()
    assert speed.set_checkpointing(model, True, skip_last=1) == 1
    layers = speed.decoder_layers(speed.causal_lm_of(model))
    assert [layer.gradient_checkpointing for layer in layers] == [True, False]
    base = tiny_model(lora=False)
    speed.prepare_kbit_lean(base)
    assert not any(p.requires_grad for p in base.parameters())
    assert all(p.dtype == torch.float32 for p in base.parameters())  # nothing cast (fp32 model stays fp32)


def test_apply_kernels_is_a_noop_without_cuda():
    assert speed.apply_kernels(tiny_model(), "cpu") == []
    assert not speed.liger_usable("cpu")


def test_train_bench_tiny_smoke(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "train_bench.py"),
            "--tiny",
            "--methods",
            "lora",
            "--variants",
            "baseline,ours",
            "--rounds",
            "1",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--batch",
            "4",
            "--out-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "train_cpu.json").read_text())
    assert result["bench"] == "train" and result["method"] == "lora"
    assert result["baseline"]["tokens_per_s"] > 0 and result["ours"]["tokens_per_s"] > 0
    assert result["first_step_loss"]["abs_diff"] < 1e-3  # same batch, same weights: same loss (fp32 here)
    assert result["ours"]["padding_fraction"] == 0.0 and result["baseline"]["padding_fraction"] > 0


def test_train_bench_tiny_ptuning_peft_baseline_vs_explicit_prefix(tmp_path):
    """The P-tuning v2 bench path (issue 19): peft's PrefixTuning (cache, no checkpointing) vs ours (explicit
    prefix, checkpointed, packed) from the same weights and batches — same first loss — with the memory cap option
    and the estimate beside each variant."""
    args = ["--tiny", "--methods", "ptuning-v2", "--other-variants", "baseline,ours", "--steps", "1", "--warmup", "1"]
    args += ["--batch", "4", "--memory-cap-gib", "22", "--out-dir", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "train_bench.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "train_ptuning-v2_cpu.json").read_text())
    base, ours = result["variants"]["baseline"], result["variants"]["ours"]
    assert base["settings"]["prefix"] == "peft" and not base["settings"]["checkpointing"]
    assert ours["settings"]["checkpointing"] and ours["settings"]["applied"]["attention"] == "umtcds_prefix"
    assert ours["padding_fraction"] == 0.0 and base["padding_fraction"] > 0
    assert result["first_step_loss"]["abs_diff"] < 1e-4
    assert result["memory_cap"] == {"cap_gib": 22.0, "applied": False}  # no GPU here
    for name in ("baseline", "ours"):
        assert result["memory_estimate"][name]["estimate_peak_allocated_gib"] > 0
    assert "estimate" in proc.stderr


def test_packed_rebalance_sampler_balances_tokens_and_covers_every_sample():
    lengths = [300, 20, 250, 40, 400, 35, 120, 90, 60, 380, 25, 200, 150, 45, 310, 80]
    per_rank = [list(speed.packed_rebalance_sampler(lengths, 4, 2, r, grad_accum=2, seed=3)) for r in range(2)]
    assert [len(x) for x in per_rank] == [2, 2]  # grad_accum micro-batches per rank and step
    seen = sorted(i for mbs in per_rank for mb in mbs for i in mb)
    assert seen == list(range(len(lengths)))  # every sample exactly once
    for slot in range(2):
        tokens = [sum(lengths[i] for i in per_rank[r][slot]) for r in range(2)]
        assert abs(tokens[0] - tokens[1]) <= max(lengths)  # longest-first dealing: within one sample
    total = [sum(lengths[i] for mb in per_rank[r] for i in mb) for r in range(2)]
    assert abs(total[0] - total[1]) / sum(total) < 0.15


def test_compiled_layers_match_eager_in_training_and_eval():
    """The shipped compile options (reentrant checkpointing, module guards skipped) give eager's loss and gradients
    on packed rows, evaluation goes through its own compiled function (no dropout reuse), and undoing it works.
    On CPU through Inductor's C++ back end (on a GPU the same code runs Triton kernels)."""
    torch._dynamo.reset()
    models = []
    for _ in range(2):
        m = tiny_model()
        speed.enable_varlen_attention(m, "cpu", force=True)
        speed.set_checkpointing(m, True)
        models.append(m)
    eager, compiled = models
    assert speed.compile_layers(compiled, "cpu") == 0  # CPU: not compiled unless forced
    assert speed.compile_layers(compiled, "cpu", force=True, **speed.COMPILE_DEFAULTS) == TINY["num_hidden_layers"]
    collator = speed.make_collator(None, packing=True, attn_implementation=speed.VARLEN_ATTN)
    batch = collator(samples(4))
    assert_same(loss_and_grads(eager, batch), loss_and_grads(compiled, batch), tol=1e-4)
    batch2 = collator(samples(3, seed=7))  # another packed length: dynamic shapes, same compiled code
    assert_same(loss_and_grads(eager, batch2), loss_and_grads(compiled, batch2), tol=1e-4)
    for m in models:
        m.eval()
    with torch.no_grad():
        assert torch.allclose(eager(**batch).loss, compiled(**batch).loss, atol=1e-4)
    speed.uncompile_layers(compiled)
    assert all("forward" not in layer.__dict__ for layer in speed.decoder_layers(compiled))
    with torch.no_grad():
        assert torch.allclose(eager(**batch).loss, compiled(**batch).loss, atol=1e-5)


def test_grouped_compiled_layers_with_guard_skipping_match_eager():
    """Layers compiled in runs of two (one compiled call and one checkpoint per run; an odd layer count leaves a
    run of one) with guard evaluation skipped after warm-up give eager's losses and gradients over several steps of
    different packed lengths, and evaluation still runs every layer."""
    torch._dynamo.reset()
    models = []
    for _ in range(2):
        m = tiny_model(layers=TINY["num_hidden_layers"] + 1)
        speed.enable_varlen_attention(m, "cpu", force=True)
        speed.set_checkpointing(m, True)
        models.append(m)
    eager, compiled = models
    layers = speed.decoder_layers(compiled)
    assert len(layers) == TINY["num_hidden_layers"] + 1
    sys.path.insert(0, str(ROOT / "bench"))  # guard-eval skipping was measured, not shipped: the bench keeps it
    from train_bench import GuardSkipping

    opts = dict(speed.COMPILE_DEFAULTS, group=2, wrap_train=GuardSkipping)
    assert speed.compile_layers(compiled, "cpu", force=True, **opts) == len(layers)
    collator = speed.make_collator(None, packing=True, attn_implementation=speed.VARLEN_ATTN)
    for seed, n in ((1, 4), (7, 3), (9, 4)):
        batch = collator(samples(n, seed=seed))
        assert_same(loss_and_grads(eager, batch), loss_and_grads(compiled, batch), tol=1e-4)
    assert not any(layer._umtcds_passthrough for layer in layers)  # every pass-through flag was consumed
    for m in models:
        m.eval()
    with torch.no_grad():
        assert torch.allclose(eager(**batch).loss, compiled(**batch).loss, atol=1e-4)
    speed.uncompile_layers(compiled)


def test_adapter_autocast_matches_eager_autocast_and_leaves_fp32_models_alone():
    """adapter_autocast (a default): the compiled training layers of a bf16 model compute like eager under bf16
    autocast (the fp32 LoRA weights multiply in bf16); an fp32 model is unaffected (same as without the option)."""
    assert speed.COMPILE_DEFAULTS["adapter_autocast"] and speed.compile_options("qlora")["group"] == 1
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, GlmConfig

    torch._dynamo.reset()
    collator = speed.make_collator(None, packing=True, attn_implementation=speed.VARLEN_ATTN)
    batch = collator(samples(4))

    def bf16_model():
        transformers.set_seed(0)
        m = AutoModelForCausalLM.from_config(GlmConfig(**TINY), dtype=torch.bfloat16, attn_implementation="sdpa")
        m.config.use_cache = False
        transformers.set_seed(0)
        m = get_peft_model(m, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
        for n, p in m.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.02)
        assert {p.dtype for n, p in m.named_parameters() if "lora_" in n} == {torch.float32}
        speed.enable_varlen_attention(m, "cpu", force=True)
        speed.set_checkpointing(m, True)
        return m.train()

    eager, compiled = bf16_model(), bf16_model()
    speed.compile_layers(compiled, "cpu", force=True, **speed.COMPILE_DEFAULTS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = loss_and_grads(eager, batch)
    got = loss_and_grads(compiled, batch)
    assert torch.allclose(want[0].float(), got[0].float(), atol=2e-2)
    for k in want[1]:
        a, b = want[1][k].float(), got[1][k].float()
        assert (a - b).norm() <= 0.05 * a.norm() + 1e-6, k
    speed.uncompile_layers(compiled)

    fp32_eager, fp32_compiled = tiny_model(), tiny_model()
    for m in (fp32_eager, fp32_compiled):
        speed.enable_varlen_attention(m, "cpu", force=True)
        speed.set_checkpointing(m, True)
    speed.compile_layers(fp32_compiled, "cpu", force=True, **speed.COMPILE_DEFAULTS)
    assert_same(loss_and_grads(fp32_eager, batch), loss_and_grads(fp32_compiled, batch), tol=1e-4)
    speed.uncompile_layers(fp32_compiled)


def test_liger_chunking_keeps_loss_matmuls_large_within_the_logits_budget():
    """For GLM-4's 151,552-word vocabulary Liger's default makes 64-token chunks (each re-reads the LM head); the
    chosen ``chunk_mem_const`` gives chunks of a few hundred tokens whose logits stay within about the budget.
    A Liger without the argument gets none."""
    import math

    def liger_chunk(tokens, hidden, vocab, const):  # Liger's own sizing (ops/fused_linear_cross_entropy.py)
        inc = math.ceil(vocab / (const * hidden))
        return min(1 << (math.ceil(tokens / inc) - 1).bit_length(), tokens)

    def fn_with(tokens, chunk_mem_const=1):
        return None

    def fn_without(tokens):
        return None

    speed._LIGER_ARGS.clear()
    hidden, vocab = 4096, 151552
    for tokens in (1666, 3000, 16000):
        const = speed._liger_chunking(fn_with, tokens, hidden, vocab)["chunk_mem_const"]
        chunk = liger_chunk(tokens, hidden, vocab, const)
        assert chunk >= 8 * liger_chunk(tokens, hidden, vocab, 1) or chunk >= 512
        assert chunk * vocab * 2 <= 2 * speed.LIGER_LOGITS_BUDGET  # next-power-of-two rounding at most doubles
    assert speed._liger_chunking(fn_with, 0, hidden, vocab) == {}
    speed._LIGER_ARGS.clear()
    assert speed._liger_chunking(fn_without, 1666, hidden, vocab) == {}
    speed._LIGER_ARGS.clear()


def _segment_sdpa(q, k, v, bounds, scale):
    """Reference: causal SDPA per segment of packed (tokens, heads, dim) tensors, grouped KV heads expanded."""
    group = q.shape[1] // k.shape[1]
    outs = []
    for a, b in bounds:
        qq = q[a:b].transpose(0, 1)
        kk = k[a:b].repeat_interleave(group, dim=1).transpose(0, 1)
        vv = v[a:b].repeat_interleave(group, dim=1).transpose(0, 1)
        outs.append(torch.nn.functional.scaled_dot_product_attention(qq, kk, vv, is_causal=True, scale=scale))
    return torch.cat([o.transpose(0, 1) for o in outs])


def test_varlen_op_matches_per_segment_attention_and_runs_under_the_cpp_wrapper():
    """``umtcds::varlen_attn`` (off CUDA: its fp32 reference) gives per-segment causal attention and its gradients
    with grouped KV heads, passes torch's custom-op checks, and compiles with Inductor's C++ wrapper (the reason it
    exists: torch's own varlen op has a list argument the wrapper cannot pass)."""
    op = speed.varlen_op()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(30, h, 16, generator=g) for h in (4, 2, 2))
    cu = torch.tensor([0, 11, 30], dtype=torch.int32)
    grad = torch.randn(30, 4, 16, generator=g)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out, lse, _ = op(*leaves, cu, 19, 0.25)
    out.backward(grad)
    ref_leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    ref = _segment_sdpa(*ref_leaves, ((0, 11), (11, 30)), 0.25)
    ref.backward(grad)
    assert torch.allclose(out, ref, atol=1e-5)
    for a, b in zip(leaves, ref_leaves, strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-5)
    assert lse.shape == (4, 30)
    assert torch.allclose(lse[:, 0], (q[0] * k[0].repeat_interleave(2, 0)).sum(-1) * 0.25, atol=1e-5)  # 1 key
    torch.library.opcheck(op, ([t.clone().requires_grad_(True) for t in (q, k, v)], cu, 19, 0.25)[0] + [cu, 19, 0.25])

    def f(q, k, v, cu, n):
        return (op(torch.nn.functional.silu(q), k, v, cu, n, 0.25)[0] * 3).sum()

    torch._dynamo.reset()
    with torch._inductor.config.patch(cpp_wrapper=True):
        compiled = torch.compile(f, dynamic=True)
        c_leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        y = compiled(*c_leaves, cu, 19)
        y.backward()
    e_leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    y_ref = f(*e_leaves, cu, 19)
    y_ref.backward()
    assert torch.allclose(y, y_ref, atol=1e-4)
    for a, b in zip(c_leaves, e_leaves, strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-4)
    torch._dynamo.reset()


def _dropout_masks(model):
    """Forward hooks recording, per layer and projection, which LoRA input units were dropped."""
    seen: dict = {}
    handles = []
    for i, layer in enumerate(speed.decoder_layers(speed.causal_lm_of(model))):
        for name in ("q_proj", "k_proj", "v_proj"):
            lora_a = getattr(layer.self_attn, name).lora_A["default"]

            def hook(mod, inp, out, i=i, name=name):
                seen.setdefault(i, {})[name] = inp[0] == 0

            handles.append(lora_a.register_forward_hook(hook))
    return seen, handles


def test_shared_lora_dropout_draws_one_mask_per_attention():
    """share_lora_dropout: q, k and v of a layer see the same dropped units (one mask, as GLM-4's fused
    query_key_value), layers draw their own, evaluation drops nothing, and unsharing restores peft's modules."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, GlmConfig

    transformers.set_seed(0)
    base = AutoModelForCausalLM.from_config(GlmConfig(**dict(TINY, num_hidden_layers=3)), dtype=torch.float32)
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5, target_modules=["q_proj", "k_proj", "v_proj"])
    )
    assert speed.share_lora_dropout(model) == 3
    assert speed.share_lora_dropout(model) == 0  # already shared
    layer0 = speed.decoder_layers(speed.causal_lm_of(model))[0].self_attn
    assert layer0.q_proj.lora_dropout["default"] is layer0.v_proj.lora_dropout["default"]
    seen, handles = _dropout_masks(model)
    model.train()
    ids = torch.randint(3, TINY["vocab_size"], (1, 24))
    model(input_ids=ids, labels=ids).loss.backward()
    for masks in seen.values():
        assert torch.equal(masks["q_proj"], masks["k_proj"]) and torch.equal(masks["q_proj"], masks["v_proj"])
        assert 0.3 < masks["q_proj"].float().mean() < 0.7  # p = 0.5 (inputs are never exactly 0 otherwise)
    assert not torch.equal(seen[0]["q_proj"], seen[1]["q_proj"])
    assert layer0.q_proj.lora_dropout["default"]._mask is None  # nothing held between forwards
    drop = layer0.q_proj.lora_dropout["default"]
    x = torch.ones(2, 5)
    drop(x)  # a call sequence cut short: the mask is held for the next two users ...
    assert drop(torch.ones(3, 5)).shape == (3, 5)  # ... but another shape draws a fresh one
    assert drop._mask is not None
    seen.clear()
    model(input_ids=ids)  # the attention's pre-hook starts each call afresh: still one mask per layer
    assert all(torch.equal(m["q_proj"], m["v_proj"]) and torch.equal(m["q_proj"], m["k_proj"]) for m in seen.values())
    model.eval()
    seen.clear()
    with torch.no_grad():
        model(input_ids=ids)
    assert not any(m.any() for masks in seen.values() for m in masks.values())
    for h in handles:
        h.remove()
    speed.unshare_lora_dropout(model)
    assert type(layer0.q_proj.lora_dropout["default"]) is torch.nn.Dropout
    assert layer0.q_proj.lora_dropout["default"] is not layer0.k_proj.lora_dropout["default"]


def test_keep_last_leaves_the_last_run_unchecked_and_compiles_with_shared_dropout(monkeypatch):
    """keep_last (a default): the model's last run of layers is not checkpointed (its recompute would come first in
    backward anyway); the others are. Compiled with the shipped defaults and LoRA dropout on, a training step runs
    through the shared dropout, and the gradients equal eager's once dropout is off."""
    import torch.utils.checkpoint as ckpt

    calls = []
    real = ckpt.checkpoint

    def counting(fn, *args, **kwargs):
        calls.append(1)
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(ckpt, "checkpoint", counting)
    collator = speed.make_collator(None, packing=True, attn_implementation=speed.VARLEN_ATTN)
    batch = collator(samples(4))
    torch._dynamo.reset()
    eager, compiled = tiny_model(layers=3, dropout=0.3), tiny_model(layers=3, dropout=0.3)
    for m in (eager, compiled):
        speed.enable_varlen_attention(m, "cpu", force=True)
        speed.set_checkpointing(m, True)
    assert speed.COMPILE_DEFAULTS["group"] == 2 and speed.COMPILE_DEFAULTS["keep_last"]
    speed.compile_layers(compiled, "cpu", force=True, **speed.COMPILE_DEFAULTS)
    layer0 = speed.decoder_layers(speed.causal_lm_of(compiled))[0].self_attn
    assert type(layer0.q_proj.lora_dropout["default"]).__name__ == "SharedLoraDropout"
    calls.clear()
    compiled(**batch)  # checkpoint is entered in the forward
    assert len(calls) == 1  # runs [0, 1] and [2]: only the first is checkpointed, the last one is kept
    loss, grads = loss_and_grads(compiled, batch)
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads.values())
    for m in (eager, compiled):
        for mod in m.modules():
            if hasattr(mod, "p") and isinstance(mod.p, float):
                mod.p = 0.0
    assert_same(loss_and_grads(eager, batch), loss_and_grads(compiled, batch), tol=1e-4)
    speed.uncompile_layers(compiled)
    assert type(layer0.q_proj.lora_dropout["default"]) is torch.nn.Dropout


def test_a_memory_budget_keeps_the_last_layers_unchecked_with_the_same_losses():
    """Issue 19 goal 3: with room on the card, the plan leaves the last layers un-checkpointed as far as
    ``memory_budget_gib`` allows (in whole compiled runs); the default 20 GiB changes nothing for a 9B LoRA step that
    already needs ~20 GiB; the estimate grows per kept layer by what an H200 measured (0.37 GiB at 3,262 tokens);
    and a step with kept layers computes the fully checkpointed step's loss and gradients."""
    import dataclasses

    from umtcds_core import memory
    from umtcds_core.config import TrainConfig
    from umtcds_core.train import largest_step_tokens, training_arguments

    shape = memory.glm4_9b_shape()
    h200 = speed.Machine(device="cuda:0", gpu_name="NVIDIA H200", capability=(9, 0), memory_gib=139.8)
    plan = speed.SpeedPlan(device="cuda:0", checkpointing=True, compile=True, compile_options={"group": 2})
    cfg = TrainConfig(method="lora")
    kept = {b: speed.keep_layers(plan, cfg.replace(memory_budget_gib=b), shape, 3262, h200).skip_last
            for b in (20, 22, 30, 40, 0)}  # fmt: skip
    assert kept[20] == 0 and kept[40] == kept[0] == 40
    assert 0 < kept[22] < kept[30] < 40 and all(k % 2 == 0 for k in kept.values())
    assert (
        "memory budget 30 GiB"
        in speed.keep_layers(plan, cfg.replace(memory_budget_gib=30), shape, 3262, h200).reasons["skip_last"]
    )
    # measured (TRAIN_GPU_RUNS.md, skipN runs): 19.06-19.21 GiB with the last run kept, 19.95 with 4, 21.43 with 8
    peaks = {k: memory.estimate_memory(cfg, shape, 3262, gpus=[], verdict=False, kept=k, compiled=True)[
        "peak_allocated_gib"] for k in (0, 4, 8)}  # fmt: skip
    assert abs(peaks[4] - 19.95) < 0.2 and abs(peaks[8] - 21.43) < 0.2 and abs(peaks[0] - 19.21) < 0.3
    # a budget above the card is the card's; no GPU, several GPUs or no checkpointing: the plan is unchanged
    small = dataclasses.replace(h200, memory_gib=24.0)
    assert speed.keep_layers(plan, cfg.replace(memory_budget_gib=200), shape, 3262, small).skip_last == kept[22]
    for other, machine in ((dataclasses.replace(plan, device="cpu"), h200),
                           (dataclasses.replace(plan, checkpointing=False), h200),
                           (plan, dataclasses.replace(h200, count=2))):  # fmt: skip
        assert speed.keep_layers(other, cfg.replace(memory_budget_gib=0), shape, 3262, machine) is other
    # the Trainer must not switch checkpointing back on for every layer
    assert largest_step_tokens([{"input_ids": [1] * n} for n in (5, 9, 7)], 2, packed=True) == 16
    assert largest_step_tokens([{"input_ids": [1] * n} for n in (5, 9, 7)], 2, packed=False) == 18
    cpu_plan = speed.SpeedPlan(device="cpu", checkpointing=True)
    out = Path(__file__).parent  # not written to: only the arguments are built
    assert training_arguments(cfg, out, cpu_plan, 1, has_dev=False).activation_checkpointing
    kept_args = training_arguments(cfg, out, dataclasses.replace(cpu_plan, skip_last=1), 1, has_dev=False)
    assert not kept_args.activation_checkpointing
    # same function: the last layers kept vs every layer checkpointed
    rows = samples(4)
    n = min(len(r["input_ids"]) for r in rows)
    batch = {k: torch.tensor([r[k][:n] for r in rows]) for k in ("input_ids", "labels")}
    full, partly = tiny_model(layers=3), tiny_model(layers=3)
    speed.set_checkpointing(full, True)
    assert speed.set_checkpointing(partly, True, skip_last=2) == 1
    assert_same(loss_and_grads(full, batch), loss_and_grads(partly, batch))


def test_train_cli_bench_rate_counts_tokens_over_seconds_after_the_warmup_steps():
    """The CLI's rate in bench/train_cli_bench.py is the bench loop's measure: tokens over seconds of the timed steps
    (not a mean of per-step rates), from metrics.jsonl's cumulative ``tokens_seen`` and ``time``, counted in optimizer
    steps whatever the logging interval; the verdict leaves out a first round when there are three or more."""
    sys.path.insert(0, str(ROOT / "bench"))
    import train_cli_bench

    metrics = [{"kind": "start", "step": 0, "time": 100.0}]
    for step, (t, seen) in enumerate([(110.0, 1000), (111.0, 3000), (113.0, 5000), (114.0, 9000)], start=1):
        metrics.append({"kind": "train", "step": step, "time": t, "tokens_seen": seen, "loss": 1.0})
    metrics.append({"kind": "eval", "step": 4, "time": 115.0, "eval_loss": 1.0})
    want = {"tokens_per_s": 2000.0, "tokens": 8000, "seconds": 4.0, "steps": 3}
    assert train_cli_bench.cli_rate(metrics, skip=1) == want
    assert train_cli_bench.cli_rate(metrics, skip=0)["tokens_per_s"] == round(9000 / 14.0, 1)
    assert train_cli_bench.cli_rate(metrics, skip=4) == {}  # nothing left to time
    every_2 = [m for m in metrics if m.get("kind") != "train" or m["step"] % 2 == 0]  # logging_steps 2
    assert train_cli_bench.cli_rate(every_2, skip=2) == {
        "tokens_per_s": 2000.0,
        "tokens": 6000,
        "seconds": 3.0,
        "steps": 2,
    }
    assert train_cli_bench.cli_rate(every_2, skip=1) == {}  # no record at step 1: not a timed window

    first_cold = train_cli_bench.verdict([0.87, 0.942, 0.935])
    assert first_cold["rounds_used"] == "2..3" and first_cold["median"] == 0.9385 and first_cold["met"] is False
    assert train_cli_bench.verdict([0.99, 0.985])["met"] is True
    assert (
        train_cli_bench.verdict([0.99, 0.9])["met"] is None and "not resolved" in train_cli_bench.verdict([0.9])["note"]
    )


def test_decode_step_bench_times_both_loops_and_their_greedy_tokens_agree():
    """bench/decode_step_bench.py on two layers: both loops timed per token, and the step engine's greedy tokens are
    plain ``generate``'s (the bench's figures compare like with like)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import decode_step_bench

    res = decode_step_bench.main(
        ["--layers", "2", "--tokens", "6", "--prompt", "12", "--rounds", "1", "--threads", "1"]
    )
    assert res["same_greedy_tokens"] is True
    assert set(res["median_ms_per_token"]) == {"generate", "decoding"}
    assert all(v > 0 for v in res["median_ms_per_token"].values()) and res["decoding_vs_generate"] > 0


def test_loss_curve_verdict_takes_float32_as_the_half_precision_noise_floor():
    """bench/loss_curve_bench.py in bf16: the control (reversed rows) is computed bit for bit alike on a GPU, so
    the float32 plain path sets the noise floor, and at step 1 ours may be no farther from float32 than plain is."""
    sys.path.insert(0, str(ROOT / "bench"))
    import loss_curve_bench as lcb

    assert lcb.path_flags("ours+sdpa+eager") == ("ours", {"sdpa", "eager"})
    assert lcb.path_flags("plain+fp32") == ("plain", {"fp32"})
    with pytest.raises(SystemExit, match="unknown path"):
        lcb.path_flags("ours+fast")

    def entry(ours_first: float) -> dict:
        plain = [8.73, 8.53, 9.82, 10.65, 8.69, 8.14]
        return {
            "default_tolerance": 0.1,
            "settings": {"precision": "bf16"},
            "paths": {
                "plain": {"losses": plain},
                "control": {"losses": list(plain)},  # no noise at all
                "plain+fp32": {"losses": [8.89, 8.53, 9.80, 10.86, 9.06, 7.44]},
                "ours": {"losses": [ours_first, 8.47, 9.55, 10.49, 8.74, 7.76]},
            },
        }

    good = entry(8.84)
    line = lcb.summarise("ptuning-v2", good, 6)
    assert good["half_precision_floor"]["max_abs_diff"] == pytest.approx(0.7)
    assert good["tolerance"] == pytest.approx(2.1)  # 3x the float32 floor, not 3x the silent control
    assert good["first_step_vs_fp32"] == {"ours": pytest.approx(0.05), "plain": pytest.approx(0.16), "pass": True}
    assert "before_drift" not in good  # the float32 floor parts at step 1: no leading steps to hold ours to
    assert good["comparison"]["pass"] is True and line.startswith("PASS") and "step 1 vs float32" in line

    bad = entry(9.3)  # 0.41 from float32 before any update: a wrong forward, whatever the later noise
    assert lcb.summarise("ptuning-v2", bad, 6).startswith("FAIL")
    assert bad["first_step_vs_fp32"]["pass"] is False
