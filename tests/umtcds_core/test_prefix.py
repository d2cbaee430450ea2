"""P-tuning v2's explicit prefix path (umtcds_core.prefix) against peft's own PrefixTuning, on tiny random models."""

from __future__ import annotations

import copy
import functools

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from umtcds_core import memory, methods, prefix, speed  # noqa: E402
from umtcds_core.config import TrainConfig  # noqa: E402

VOCAB = 320
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    initializer_range=0.1,
    pad_token_id=0,
)
CFG = TrainConfig(method="ptuning-v2", num_virtual_tokens=5)


def base_model(arch: str = "glm", seed: int = 0):
    from transformers import GlmConfig, GlmForCausalLM, LlamaConfig, LlamaForCausalLM

    transformers.set_seed(seed)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**COMMON))
    else:
        model = GlmForCausalLM(GlmConfig(**COMMON, head_dim=16, partial_rotary_factor=0.5, attention_bias=True))
    model.config.use_cache = False
    return model


def pair(arch: str = "glm"):
    """(peft's PrefixTuning, ours) with the same base weights and the same prefix values."""
    transformers.set_seed(1)
    peft_model, _ = methods.wrap_prefix_peft(base_model(arch), CFG)
    transformers.set_seed(1)
    ours, _ = methods.get("ptuning-v2").wrap(base_model(arch), CFG)
    return peft_model.train(), ours.train()


def weight(model):
    return model.prompt_encoder["default"].embedding.weight


def padded_batch(seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 4:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :2] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def features(batch):
    """The padded batch's samples as features for the packing collator."""
    out = []
    for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"], strict=True):
        n = int(mask.sum())
        out.append({"input_ids": ids[:n].tolist(), "labels": labels[:n].tolist()})
    return out


def loss_and_grad(model, batch):
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    out.loss.backward()
    return out, weight(model).grad.detach().clone()


@pytest.mark.parametrize("arch", ["llama", "glm"])
def test_explicit_prefix_equals_peft_prefix_tuning(arch):
    """Same trainable parameters, initial values, logits, loss and prefix gradient as peft's cache path; nothing
    but the prefix trains."""
    theirs, ours = pair(arch)
    assert prefix.is_explicit_prefix(ours) and not prefix.is_explicit_prefix(theirs)
    assert torch.equal(weight(theirs), weight(ours))  # peft's init (N(0, 1), no reparametrisation)
    trainable = [n for n, p in ours.named_parameters() if p.requires_grad]
    assert trainable == ["prompt_encoder.default.embedding.weight"]
    shape = memory.shape_from_hf_config(ours.get_base_model().config.to_dict())
    assert weight(ours).numel() == methods.get("ptuning-v2").trainable(CFG, shape, 0) == 5 * 2 * 2 * 2 * 16
    batch = padded_batch()
    (a, ga), (b, gb) = loss_and_grad(theirs, batch), loss_and_grad(ours, batch)
    keep = batch["attention_mask"].bool()
    assert torch.allclose(a.loss, b.loss, atol=1e-5)
    assert torch.allclose(a.logits[keep], b.logits[keep], atol=1e-4)
    assert gb.abs().sum() > 0 and torch.allclose(ga, gb, atol=1e-5, rtol=1e-4)
    assert [n for n, p in ours.named_parameters() if p.grad is not None] == trainable


def test_checkpointing_and_packing_give_the_same_loss_and_grads():
    """Checkpointed layers recompute with the prefix (peft's cache path would silently lose it), and a packed row
    gives every sample the whole prefix: the padded batch's loss and gradient either way."""
    _, ours = pair()
    batch = padded_batch()
    ref, gref = loss_and_grad(ours, batch)
    packed = speed.make_collator(None, packing=True)(features(batch))
    got, g = loss_and_grad(ours, packed)
    assert torch.allclose(ref.loss, got.loss, atol=1e-5) and torch.allclose(gref, g, atol=1e-5, rtol=1e-4)
    assert speed.packing_works(ours, "cpu")[0]
    assert speed.set_checkpointing(ours, True) == COMMON["num_hidden_layers"]
    for b in (batch, packed):
        got, g = loss_and_grad(ours, b)
        assert torch.allclose(ref.loss, got.loss, atol=1e-5) and torch.allclose(gref, g, atol=1e-5, rtol=1e-4)


def test_packed_prefix_varlen_layout_and_its_fallback_give_the_same_loss_and_grads():
    """The CUDA path for packed rows (speed.attention.prefix_varlen): the keys of every sample are laid out as
    [prefix; sample] with matching boundaries; its SDPA fallback (CPU, fp32), where the mask builder skips the
    packed mask and the attention builds the per-sample one, gives the padded batch's loss and prefix gradient."""
    from umtcds_core.speed.attention import PREFIX_VARLEN_ATTN, _prefix_keys_index

    idx, cu_k = _prefix_keys_index(torch.tensor([0, 3, 5], dtype=torch.int32), 2, 5 + 2 * 2)
    assert idx.tolist() == [0, 1, 2, 3, 4, 0, 1, 5, 6] and cu_k.tolist() == [0, 5, 9]
    _, ours = pair()
    batch = padded_batch()
    ref, gref = loss_and_grad(ours, batch)
    assert speed.enable_prefix_varlen(ours, force=True)
    assert speed.causal_lm_of(ours).config._attn_implementation == PREFIX_VARLEN_ATTN
    collator = speed.make_collator(None, packing=True, attn_implementation=PREFIX_VARLEN_ATTN)
    packed = collator(features(batch))
    assert "cu_seq_lens_q" in packed  # the kernel's boundaries come with the batch (no host sync per layer)
    speed.set_checkpointing(ours, True)
    for b in (batch, packed):
        got, g = loss_and_grad(ours, b)
        assert torch.allclose(ref.loss, got.loss, atol=1e-5) and torch.allclose(gref, g, atol=1e-5, rtol=1e-4)
    assert speed.packing_works(ours, "cpu")[0]
    prefix.disable_explicit_prefix(ours)  # back to peft's cache path and SDPA for generation
    assert speed.causal_lm_of(ours).config._attn_implementation == "sdpa"


def test_plan_and_apply_take_the_explicit_path():
    """The methods row honours checkpointing, packs, compiles one layer per call; apply reports the prefix
    attention and the fused loss gives the model's loss."""
    row = methods.get("ptuning-v2")
    assert row.checkpointing and row.packing and row.compile and row.compile_group == 1
    plan = speed.plan(TrainConfig(method="ptuning-v2"), speed.Machine())
    assert plan.checkpointing and plan.packing and plan.attention == "sdpa" and "prefix" in plan.reasons["attention"]
    _, ours = pair()
    batch = padded_batch()
    ref, gref = loss_and_grad(ours, batch)
    report = speed.apply(ours, plan)
    assert report.attention == prefix.PREFIX_ATTN and report.packing and report.loss == "chunked"
    packed = report.collator(None)(features(batch))
    got, g = loss_and_grad(ours, packed)
    assert torch.allclose(ref.loss, got.loss, atol=1e-5) and torch.allclose(gref, g, atol=1e-5, rtol=1e-4)


def test_compiled_layers_match_eager_without_recompiling_per_step(monkeypatch):
    """The shipped compile options (one shared function for all layers, module guards skipped, reentrant
    checkpointing, one layer per call) give eager's loss and prefix gradient — so each layer got its own prefix
    slice, not a traced constant — and another step reuses the dynamic graphs. Dynamo traces for real; its graphs
    run on the eager backend to keep the test fast (Inductor's CPU code was checked by hand: same gradients)."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    _, eager = pair()
    compiled = copy.deepcopy(eager)
    for m in (eager, compiled):
        speed.set_checkpointing(m, True)
    torch._dynamo.reset()
    counters.clear()
    opts = speed.compile_options("ptuning-v2")
    assert opts["group"] == 1 and opts["skip_module_guards"]
    assert speed.compile_layers(compiled, "cpu", force=True, **opts) == COMMON["num_hidden_layers"]
    try:
        batch = padded_batch()
        packed = speed.make_collator(None, packing=True)(features(batch))
        for b in (batch, packed):
            (a, ga), (c, gc) = loss_and_grad(eager, b), loss_and_grad(compiled, b)
            assert torch.allclose(a.loss, c.loss, atol=1e-5) and torch.allclose(ga, gc, atol=1e-5, rtol=1e-4)
        graphs = counters["stats"]["unique_graphs"]
        assert graphs >= 1
        (a, ga), (c, gc) = loss_and_grad(eager, padded_batch(seed=9)), loss_and_grad(compiled, padded_batch(seed=9))
        assert torch.allclose(a.loss, c.loss, atol=1e-5) and torch.allclose(ga, gc, atol=1e-5, rtol=1e-4)
        assert counters["stats"]["unique_graphs"] == graphs  # a new step: no recompile
    finally:
        speed.uncompile_layers(compiled)
        torch._dynamo.reset()


def test_short_training_run_loss_falls():
    """A few AdamW steps on the prefix alone lower the loss of a fixed batch (checkpointed, packed)."""
    _, ours = pair("llama")
    speed.apply(ours, speed.plan(TrainConfig(method="ptuning-v2"), speed.Machine()))
    batch = speed.make_collator(None, packing=True)(features(padded_batch()))
    opt = torch.optim.AdamW([weight(ours)], lr=5e-2)
    losses = []
    for _ in range(12):
        loss = ours(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses


def test_adapter_saved_in_peft_format_loads_for_chat_with_the_same_logits(tmp_path):
    """What ``umtcds train`` saves is peft's PrefixTuning adapter: chat's loader (peft) reads it back and its
    logits — through peft's cache path — equal ours."""
    from peft import PeftModel

    _, ours = pair()
    with torch.no_grad():
        weight(ours).mul_(0.5).add_(0.3)  # trained-looking values, not the init
    ours.eval()
    ours.save_pretrained(str(tmp_path / "run"))
    loaded = PeftModel.from_pretrained(base_model(), str(tmp_path / "run")).eval()
    assert loaded.peft_config["default"].peft_type.value == "PREFIX_TUNING"
    batch = padded_batch()
    keep = batch["attention_mask"].bool()
    with torch.no_grad():
        a = ours(**batch)
        b = loaded(**batch)
    assert torch.allclose(a.loss, b.loss, atol=1e-5)
    assert torch.allclose(a.logits[keep], b.logits[keep], atol=1e-4)


def test_memory_parts_follow_the_explicit_path():
    """Checkpointed, the prefix costs two layers' expanded keys/values (not all layers'); packing expands it to one
    row instead of one per sample; the widened mask is counted per token and layer."""
    shape = memory.glm4_9b_shape()
    row = methods.get("ptuning-v2")
    cfg = TrainConfig(method="ptuning-v2", per_device_batch_size=8, precision="bf16", packing=False)
    t, width = cfg.num_virtual_tokens, 2 * (shape["num_kv_heads"] + shape["num_heads"]) * shape["head_dim"]
    slices = shape["num_layers"] * t * 2 * shape["num_kv_heads"] * shape["head_dim"] * 2  # each layer's own copy
    assert row.step_extra(cfg, shape, 2) == 2 * 8 * t * width * 2 + slices
    off = cfg.replace(gradient_checkpointing=False)
    assert row.step_extra(off, shape, 2) == shape["num_layers"] * 8 * t * width * 2 + slices
    assert row.step_extra(cfg.replace(packing=True), shape, 2) == 2 * 1 * t * width * 2 + slices
    seq = cfg.max_input_length + cfg.max_output_length
    assert row.layer_extra(cfg, shape, 2) == 3 * (seq + t)
    on, no = (memory.estimate_memory(c, shape, gpus=[], verdict=False) for c in (cfg, off))
    assert on["peak_allocated_gib"] < no["peak_allocated_gib"] / 2


def test_umtcds_train_run_loads_in_chat_with_the_training_logits(tmp_path):
    """train → chat: ``umtcds train`` (explicit path: packed, checkpointed) saves peft's PrefixTuning adapter; chat
    loads it through peft, and peft's cache path gives the logits our training path gives with those values."""
    import json

    from transformers import AutoModelForCausalLM

    from tests.train_helpers import make_tiny_model, train_tiny_adapter
    from umtcds_core import chat

    glm = make_tiny_model(tmp_path / "tiny-glm", arch="glm")
    run = train_tiny_adapter(
        tmp_path, steps=2, model=str(glm), method="ptuning-v2", num_virtual_tokens=4, eval_steps=2, save_steps=2
    )
    info = json.loads((run / "train_info.json").read_text())
    assert info["gradient_checkpointing"] and info["attn_implementation"] == prefix.PREFIX_ATTN
    cm = chat.load_chat_model(None, run, device="cpu")
    assert cm.adapter_kind == "PREFIX_TUNING"
    saved = weight(cm.model).detach()
    transformers.set_seed(42)  # the config's seed: the values the run started from
    base = AutoModelForCausalLM.from_pretrained(str(glm))
    ours, _ = methods.get("ptuning-v2").wrap(base, CFG.replace(num_virtual_tokens=4))
    assert not torch.allclose(weight(ours), saved)  # the run trained (and saved) other values than its start
    with torch.no_grad():
        weight(ours).copy_(saved)
    ids = torch.tensor([[5, 17, 300, 42, 99, 7]])
    with torch.no_grad():
        a = cm.model(input_ids=ids).logits
        b = ours.eval()(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-4)
    assert cm.answer([{"role": "user", "content": "hi"}], chat.GenOptions(max_new_tokens=3, temperature=0.0))
    cm.unload()
