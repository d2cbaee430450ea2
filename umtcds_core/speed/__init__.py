"""Speed and memory of the training path: one plan, applied once — shared by ``umtcds train`` and the benchmark.

``plan(config, machine) -> SpeedPlan`` decides everything from the config and the machine (each decision with its
reason); ``apply(model, plan) -> SpeedReport`` performs the plan on the wrapped model and reports what was done
(a check may turn a decision down: packing that leaks across samples, a compile that fails its probe step).
``bench/train_bench.py`` measures variants of the plan (``dataclasses.replace``) against the Hugging Face default.

The pieces, by concern (why each exists is in its module; measured figures in ``bench/results/NOTES.md``):

* :mod:`.packing` — padding-free packing: one row of concatenated samples with ``position_ids`` restarting per
  sample, so no compute is spent on padding and samples never see each other; checked on the real model.
* :mod:`.attention` — per-sample attention for packed rows through PyTorch's FlashAttention varlen kernel (SDPA's
  packed path builds a dense T×T mask and computes the full square).
* :mod:`.loss` — the loss without ``tokens × vocab`` logits: Liger's fused kernel on CUDA, chunked PyTorch elsewhere.
* :mod:`.kernels` — Liger's RMSNorm/SwiGLU kernels on the model instance (eager layers on CUDA).
* :mod:`.compile` — ``torch.compile`` of the decoder layers (one GPU: eager LoRA on a 9B model is launch-bound).
* :mod:`.model` — finding the causal LM inside wrappers, activation checkpointing, lean k-bit preparation.

Every piece degrades to plain PyTorch when there is no GPU, Triton or liger-kernel, and says which path it took.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ..prefix import PREFIX_ATTN
from .attention import (
    PREFIX_VARLEN_ATTN,
    VARLEN_ATTN,
    VARLEN_OP,
    enable_prefix_varlen,
    enable_varlen_attention,
    flash_varlen,
    prefix_varlen_usable,
    varlen_attention_forward,
    varlen_op,
    varlen_op_usable,
    varlen_path,
    varlen_usable,
)
from .compile import (
    COMPILE_DEFAULTS,
    compile_layers,
    compile_options,
    compile_usable,
    share_lora_dropout,
    uncompile_layers,
    unshare_lora_dropout,
)
from .kernels import apply_kernels, liger_usable
from .loss import (
    _LIGER_ARGS,
    LIGER_LOGITS_BUDGET,
    _liger_chunking,
    causal_lm_loss,
    chunked_linear_cross_entropy,
    enable_fused_loss,
)
from .model import IGNORE_INDEX, causal_lm_of, decoder_layers, is_kbit, prepare_kbit_lean, set_checkpointing
from .packing import make_collator, packed_rebalance_sampler, packing_works

__all__ = [
    "COMPILE_DEFAULTS",
    "IGNORE_INDEX",
    "LIGER_LOGITS_BUDGET",
    "PREFIX_VARLEN_ATTN",
    "VARLEN_ATTN",
    "VARLEN_OP",
    "_LIGER_ARGS",
    "Machine",
    "SpeedPlan",
    "SpeedReport",
    "_liger_chunking",
    "apply",
    "apply_kernels",
    "causal_lm_loss",
    "causal_lm_of",
    "chunked_linear_cross_entropy",
    "compile_checked",
    "compile_layers",
    "compile_options",
    "compile_usable",
    "decoder_layers",
    "describe",
    "enable_fused_loss",
    "enable_prefix_varlen",
    "enable_varlen_attention",
    "flash_varlen",
    "is_kbit",
    "keep_layers",
    "liger_usable",
    "make_collator",
    "packed_rebalance_sampler",
    "packing_works",
    "plan",
    "prefix_varlen_usable",
    "prepare_kbit_lean",
    "set_checkpointing",
    "share_lora_dropout",
    "uncompile_layers",
    "unshare_lora_dropout",
    "varlen_attention_forward",
    "varlen_op",
    "varlen_op_usable",
    "varlen_path",
    "varlen_usable",
]


@dataclass(frozen=True)
class Machine:
    """What a plan needs to know about where the run trains."""

    device: str = "cpu"
    """Where the model lives: ``cuda:N`` (this process's GPU) or ``cpu``."""
    gpu_name: str | None = None
    count: int = 1
    """Processes (GPUs) of the run: DDP/FSDP world size."""
    capability: tuple[int, int] = (0, 0)
    """CUDA compute capability (0, 0 without a GPU)."""
    torch_version: str = ""
    memory_gib: float = 0.0
    """The GPU's total memory (0 without a GPU)."""

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    @classmethod
    def detect(cls, device: str = "cpu", count: int = 1) -> Machine:
        """The machine as torch sees it, for a run on ``device`` with ``count`` processes."""
        import torch

        if not str(device).startswith("cuda"):
            return cls(device=str(device), count=count, torch_version=torch.__version__)
        index = torch.device(device).index
        index = torch.cuda.current_device() if index is None else index
        return cls(
            device=f"cuda:{index}",
            gpu_name=torch.cuda.get_device_name(index),
            count=count,
            capability=tuple(torch.cuda.get_device_capability(index)),
            torch_version=torch.__version__,
            memory_gib=torch.cuda.get_device_properties(index).total_memory / 2**30,
        )


@dataclass(frozen=True)
class SpeedPlan:
    """The speed decisions of one run, made once from the config and the machine; ``reasons`` says why each."""

    device: str = "cpu"
    precision: str = "fp32"
    """"bf16" | "fp16" | "fp32": the compute precision (adapters stay fp32)."""
    attention: str = "sdpa"
    """"sdpa" | "flash_attention_2" (chosen at load) | :data:`VARLEN_ATTN` (switched to by :func:`apply`)."""
    varlen_op: bool = False
    """Packed rows go through our ``umtcds::varlen_attn`` op (checked against torch's) rather than torch's own."""
    packing: bool = False
    """Padding-free packing wanted (still checked on the model by :func:`apply`)."""
    checkpointing: bool = False
    skip_last: int = 0
    """Decoder layers at the end left un-checkpointed."""
    loss: str = "standard"
    """"liger" | "chunked" (no full logits) | "standard" (the model's own loss)."""
    kernels: bool = False
    """Liger's RMSNorm/SwiGLU kernels on eager layers (not on compiled ones: Inductor fuses those itself)."""
    compile: bool = False
    compile_options: dict = field(default_factory=dict)
    """Keywords of :func:`compile_layers` (layers per call, reentrant checkpointing, keep_last, shared_dropout…)."""
    kbit: str = "lean"
    """How a k-bit base is prepared: "lean" (:func:`prepare_kbit_lean`) or "peft" (fp32 upcast)."""
    tf32: bool = False
    """TF32 for the fp32 adapter matmuls (Ampere+)."""
    pinned: bool = False
    """Pinned batches copied without a host wait."""
    reasons: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    """Where the plan departs from what the config asked for (logged as notes)."""

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def load_attention(self) -> str:
        """The attention implementation to load the model with (varlen is switched to after loading)."""
        return "flash_attention_2" if self.attention == "flash_attention_2" else "sdpa"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class SpeedReport:
    """What :func:`apply` did (recorded in ``train_info.json``)."""

    device: str = "cpu"
    attention: str = "sdpa"
    attention_op: str | None = None
    packing: bool = False
    packing_note: str = ""
    checkpointing: bool = False
    kept_layers: int = 0
    """Decoder layers at the end not checkpointed (the plan's ``skip_last``)."""
    loss: str = "standard"
    kernels: list[str] = field(default_factory=list)
    compiled: int = 0
    notes: list[str] = field(default_factory=list)

    def collator(self, tokenizer):
        """The batch collator matching what was applied (packed or padded)."""
        return make_collator(tokenizer, self.packing, self.attention, self.device)

    def as_dict(self) -> dict:
        return {
            "attention": self.attention,
            "loss": self.loss,
            "kernels": self.kernels,
            "compiled_layers": self.compiled,
            "kept_layers": self.kept_layers,
            "attention_op": self.attention_op,
        }


def plan(config, machine: Machine, precision: str | None = None) -> SpeedPlan:
    """The speed plan of training ``config`` (a :class:`~umtcds_core.config.TrainConfig`) on ``machine``;
    ``precision`` as resolved for this machine (default: bf16 on CUDA, fp32 elsewhere)."""
    from .. import methods

    method = methods.get(config.method)
    cuda = machine.cuda
    why: dict[str, str] = {}
    notes: list[str] = []

    checkpointing = bool(config.gradient_checkpointing)
    why["checkpointing"] = "gradient_checkpointing in the config" if checkpointing else "off in the config"
    if checkpointing and not method.checkpointing:
        checkpointing = False
        why["checkpointing"] = f"gradient checkpointing is off for {method.label[1]}: {method.no_checkpointing}"
        notes.append(why["checkpointing"])

    packing = bool(config.packing) and method.packing
    if not config.packing:
        why["packing"] = "packing disabled in the config"
    elif not method.packing:
        why["packing"] = f"{method.no_packing}; batches are padded"
    else:
        why["packing"] = "packing on in the config (checked on the model)"

    attention = "sdpa"
    why["attention"] = "SDPA: the default"
    if method.adapter == "prefix":
        if packing and cuda and prefix_varlen_usable():
            attention = PREFIX_VARLEN_ATTN
            why["attention"] = (
                "P-tuning v2: packed samples attend to [prefix; themselves] through FlashAttention's varlen kernel"
            )
        else:  # the prefix attention (umtcds_core.prefix) widens the model's mask and runs SDPA itself
            why["attention"] = "P-tuning v2: SDPA over [prefix; keys] with a widened mask (umtcds_core.prefix)"
    elif cuda and importlib.util.find_spec("flash_attn") is not None:
        attention = "flash_attention_2"
        why["attention"] = "flash-attn is installed"
    elif packing and varlen_usable(machine.device):
        attention = VARLEN_ATTN
        why["attention"] = "packed rows attend per sample through FlashAttention's varlen kernel"
    varlen = attention == VARLEN_ATTN and varlen_op_usable()
    why["varlen_op"] = (
        "our op gives torch's varlen output on this GPU" if varlen else "torch.nn.attention.varlen (or no varlen)"
    )

    if method.sharded and machine.count > 1:
        loss = "standard"
        why["loss"] = "FSDP shards the LM head: the model's own loss"
    elif liger_usable(machine.device):
        loss = "liger"
        why["loss"] = "Liger's fused linear+cross-entropy (CUDA, liger-kernel)"
    else:
        loss = "chunked"
        why["loss"] = "chunked PyTorch linear+cross-entropy (no CUDA Triton/liger-kernel)"

    compile_mode = getattr(config, "compile", "auto")
    wanted = compile_mode == "on" or (compile_mode == "auto" and method.compile and machine.count == 1 and cuda)
    compiled = wanted and compile_usable(machine.device)
    if compiled:
        why["compile"] = f"compile: {compile_mode}; Inductor + Triton available"
    elif compile_mode == "on":
        why["compile"] = "compile: on needs a CUDA GPU with Triton; running eager"
        notes.append(why["compile"])
    else:
        why["compile"] = f"compile: {compile_mode}; eager on this machine/method"

    kernels = liger_usable(machine.device)
    why["kernels"] = "Liger RMSNorm/SwiGLU on eager layers" if kernels else "no CUDA liger-kernel"
    why["kbit"] = "frozen 16-bit weights stay 16-bit"
    tf32 = cuda and machine.capability[0] >= 8
    why["tf32"] = "Ampere+: TF32 adapter matmuls" if tf32 else "needs an Ampere+ GPU"
    why["pinned"] = "CUDA: pinned, non-blocking batch copies" if cuda else "CPU"
    precision = precision or ("bf16" if cuda else "fp32")
    why["precision"] = f"precision {getattr(config, 'precision', 'auto')} on {machine.gpu_name or machine.device}"
    return SpeedPlan(
        device=machine.device,
        precision=precision,
        attention=attention,
        varlen_op=varlen,
        packing=packing,
        checkpointing=checkpointing,
        loss=loss,
        kernels=kernels,
        compile=compiled,
        compile_options=compile_options(config.method),
        kbit="lean",
        tf32=tf32,
        pinned=cuda,
        reasons=why,
        notes=tuple(notes),
    )


def keep_layers(plan: SpeedPlan, config, shape: dict, tokens: int, machine: Machine) -> SpeedPlan:
    """``plan`` with ``skip_last`` set: the decoder layers at the end that need no gradient checkpointing because
    the largest step (``tokens`` positions) still fits ``config.memory_budget_gib`` (0: the card) with their
    activations kept (:func:`umtcds_core.memory.budget_use`). One CUDA GPU, checkpointing on; else unchanged.

    Why: every checkpointed layer runs its forward twice; a card with room to spare can keep the activations of some
    layers instead. The default budget (20 GiB) keeps a 9B LoRA run on a 24 GB card, so it changes nothing there;
    a larger budget turns memory into speed (bench/results/TRAIN_GPU_RUNS.md)."""
    import dataclasses

    from .. import memory

    if not (plan.cuda and plan.checkpointing) or machine.count > 1:
        return plan
    group = int(plan.compile_options.get("group", 1)) if plan.compile else 1
    use = memory.budget_use(config, shape, tokens, machine.memory_gib, compiled=plan.compile, group=group)
    if not use["budget_gib"]:
        return plan
    head = f"memory budget {use['budget_gib']:.0f} GiB"
    tail = f"(estimate {use['total_gib']:.1f} GiB at {tokens} tokens/step)"
    why = (
        f"{head}: the last {use['kept']} of {use['layers']} layers keep their activations {tail}"
        if use["kept"]
        else f"{head}: every layer checkpointed {tail}"
    )
    return dataclasses.replace(plan, skip_last=use["kept"], reasons={**plan.reasons, "skip_last": why})


def apply(model, plan: SpeedPlan) -> SpeedReport:
    """Perform ``plan`` on the (method-wrapped) ``model``: attention, packing check, checkpointing, loss, compile or
    kernels, in that order; returns what was done."""
    device = plan.device
    report = SpeedReport(
        device=device, notes=list(plan.notes), checkpointing=plan.checkpointing, kept_layers=plan.skip_last
    )
    lm = causal_lm_of(model) or model
    report.attention = plan.load_attention
    if getattr(lm.config, "_attn_implementation", None) == PREFIX_ATTN:  # P-tuning v2's (set by its wrap)
        report.attention = PREFIX_ATTN
        if plan.attention == PREFIX_VARLEN_ATTN and enable_prefix_varlen(model, force=not plan.cuda):
            report.attention = PREFIX_VARLEN_ATTN
    if plan.attention == VARLEN_ATTN:
        report.attention = enable_varlen_attention(model, device, force=not plan.cuda)
    if plan.packing:
        report.packing, report.packing_note = packing_works(model, device)
        fallback = {VARLEN_ATTN: "sdpa", PREFIX_VARLEN_ATTN: PREFIX_ATTN}.get(report.attention)
        if not report.packing and fallback:
            lm.set_attn_implementation(fallback)
            report.attention = fallback
            report.packing, report.packing_note = packing_works(model, device)
        if not report.packing:
            report.packing_note += "; batches are padded instead"
    else:
        report.packing_note = plan.reasons.get("packing", "packing off")
    if report.attention == VARLEN_ATTN:
        report.attention_op = varlen_path()
    elif report.attention == PREFIX_VARLEN_ATTN:
        report.attention_op = "torch.nn.attention.varlen ([prefix; sample] keys)"
    if plan.checkpointing or plan.skip_last:
        set_checkpointing(model, plan.checkpointing, skip_last=plan.skip_last)
    if plan.loss != "standard":
        report.loss = enable_fused_loss(model, device, use_liger=plan.loss == "liger") or "standard"
    if plan.compile:
        # Inductor fuses RMSNorm/SwiGLU itself (Liger's kernels do not trace), so they are not swapped in
        report.compiled = compile_checked(model, plan, report)
        if plan.skip_last:  # the probe checkpointed every layer
            if report.compiled:
                set_checkpointing(model, plan.checkpointing, skip_last=plan.skip_last)
            else:  # the kept layers were sized for compiled ones; eager layers keep about twice as much
                set_checkpointing(model, plan.checkpointing)
                report.kept_layers = 0
                report.notes.append("every layer checkpointed: the memory budget's kept layers assumed compiled ones")
    if plan.kernels and not report.compiled:
        report.kernels = apply_kernels(model, device)
    return report


def compile_checked(model, plan: SpeedPlan, report: SpeedReport) -> int:
    """:func:`compile_layers`, proven by one small training step before the real run; 0 if it failed.

    The compile happens at the first call, so a failure (a missing compiler, an op Inductor cannot lower) would
    otherwise surface in the middle of the Trainer; here it is caught, the layers go back to eager mode, and the
    reason is noted in ``report``. The probe's graphs (dynamic shapes) are the ones training reuses, so the check
    costs no extra compile; its gradients are discarded.
    """
    import torch

    n = compile_layers(model, plan.device, force=True, **plan.compile_options)
    if not n:
        return 0
    if plan.checkpointing:
        set_checkpointing(model, True)  # the probe must take the training path (the Trainer re-applies it)
    vocab = model.get_input_embeddings().weight.shape[0]
    gen = torch.Generator().manual_seed(0)
    feats = []
    for length in (7, 5):
        ids = torch.randint(3, min(vocab, 1000), (length,), generator=gen).tolist()
        feats.append({"input_ids": ids, "labels": [-100] * 2 + ids[2:]})
    collator = make_collator(None, True, report.attention, plan.device) if report.packing else None
    t0 = time.perf_counter()
    was_training = model.training
    model.train()
    try:
        if collator is not None:
            batch = collator(feats)
        else:
            batch = {
                "input_ids": torch.tensor([feats[0]["input_ids"]]),
                "labels": torch.tensor([feats[0]["labels"]]),
            }
        batch = {k: v.to(plan.device) if hasattr(v, "to") else v for k, v in batch.items()}
        model(**batch).loss.backward()
    except Exception as exc:  # noqa: BLE001 - any compile/runtime failure means: train eager
        uncompile_layers(model)
        report.notes.append(f"torch.compile failed ({type(exc).__name__}: {str(exc)[:200]}); training runs eager")
        return 0
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    report.notes.append(f"compiled {n} decoder layers with torch.compile in {time.perf_counter() - t0:.0f} s")
    return n


def describe(parts: dict[str, Any]) -> str:
    """One log line of the speed set-up (``{"packing": True, "loss": "liger", ...}``)."""
    return ", ".join(f"{k}={v}" for k, v in parts.items())
