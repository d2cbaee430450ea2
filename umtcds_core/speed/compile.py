"""``torch.compile`` of the repeated decoder layer (regional compilation), and one LoRA dropout mask per attention.

Eager LoRA on a 9B model is launch-bound (dozens of small elementwise kernels per layer: LoRA casts/scales/adds,
RoPE, norms); compiled, Inductor fuses each layer's elementwise work into a few kernels. Figures:
``bench/results/NOTES.md``.
"""

from __future__ import annotations

import functools
import importlib.util
import types

from .model import causal_lm_of, decoder_layers, is_kbit


@functools.cache
def _triton_importable() -> bool:
    import torch

    return importlib.util.find_spec("triton") is not None and hasattr(torch, "compile")


def compile_usable(device: str | None = None) -> bool:
    """True on CUDA when torch.compile's GPU back end (Inductor + Triton) is importable.

    Compiling pays on a GPU, where eager LoRA training of a 9B model is bound by Python and kernel launches (dozens
    of small elementwise kernels per layer: LoRA casts/scales/adds, RoPE, norms); on CPU the compile costs more
    than it saves for the small models people train there.
    """
    import torch

    if device is not None and not str(device).startswith("cuda"):
        return False
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 7:
        return False
    return _triton_importable()


# what ``umtcds train`` uses (measured against the alternatives: bench/results/NOTES.md)
COMPILE_DEFAULTS = {
    "reentrant": True,
    "skip_module_guards": True,
    "group": 2,
    "adapter_autocast": True,
    "keep_last": True,
    "shared_dropout": True,
}


def compile_options(method: str = "lora") -> dict:
    """:data:`COMPILE_DEFAULTS` for a training method, with its layers per compiled call from the methods table."""
    from .. import methods

    return dict(COMPILE_DEFAULTS, group=methods.get(method).compile_group)


def uncompile_layers(model) -> None:
    """Undo :func:`compile_layers`: the layers' class forward (eager) again, compiled code dropped."""
    import torch

    for layer in decoder_layers(causal_lm_of(model) or model):
        layer.__dict__.pop("forward", None)
        layer.__dict__.pop("_umtcds_passthrough", None)
    unshare_lora_dropout(model)
    torch._dynamo.reset()


def compile_layers(
    model,
    device: str | None = None,
    force: bool = False,
    reentrant: bool = False,
    skip_module_guards: bool = False,
    group: int = 1,
    adapter_autocast: bool = False,
    keep_last: bool = False,
    shared_dropout: bool = False,
    wrap_train=None,
) -> int:
    """``torch.compile`` each decoder layer (regional compilation); returns how many layers were compiled.

    All layers share one compiled function (same code, the layers passed as an argument), so the compile is paid
    once (minutes for a 9B model), with dynamic shapes so packed rows of any length reuse it. Activation
    checkpointing stays PyTorch's eager ``checkpoint`` *around* the compiled layer (tracing the checkpoint inside
    the graph trips Inductor's partitioner on these layers), so the recompute in backward runs the compiled code
    too. Inductor fuses each layer's elementwise work (LoRA dropout/scale/add and dtype casts,
    RoPE, RMSNorm, SwiGLU, residual adds) into a few kernels, which removes the launch-bound gaps of eager mode.
    On CPU (or without Triton) nothing changes unless ``force`` (tests: the same code through Inductor's C++
    back end).

    ``reentrant``: the checkpointed forward runs without autograd (a cheaper inference graph) and the layer is re-run
    with autograd in backward, instead of recording and discarding the forward's saved tensors (else: the layer's
    own non-reentrant checkpointing). ``skip_module_guards``: the training function does not re-check every module
    attribute and parameter on each call (all decoder layers have the same structure, and training never changes
    it). ``group``: in training, each run of ``group`` consecutive layers is one compiled call and one checkpoint
    (the first layer of the run computes them all, the others pass its output through): fewer Python/Dynamo calls
    per step, the same arithmetic; the recompute then holds a group's activations at once.
    ``adapter_autocast``: training layers of a 16-bit model run under autocast to that dtype, so the fp32 adapters
    (peft keeps LoRA weights in fp32) compute in 16-bit with fp32 accumulation, as mixed-precision training does,
    instead of TF32 matmuls on fp32 copies of every adapter input; evaluation is unchanged.
    ``keep_last``: the last run of layers is not checkpointed. Backward would recompute it first, holding the same
    activations the forward now keeps, so the peak does not grow and one run's recompute per step is saved.
    ``shared_dropout``: :func:`share_lora_dropout`. ``wrap_train``: a callable wrapping the compiled training
    function (the benchmark measures alternatives to the shipped options this way).
    """
    if not (force or compile_usable(device)):
        return 0
    import torch

    if reentrant and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()  # reentrant checkpointing needs an input that requires grad

    layers = decoder_layers(causal_lm_of(model) or model)
    if shared_dropout:
        share_lora_dropout(model)
    # one graph for training, one for evaluation (no grad), a few for shape changes: stay well below the limit
    name = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 32))
    options = {}
    if skip_module_guards and hasattr(torch.compiler, "skip_guard_on_all_nn_modules_unsafe"):
        options["guard_filter_fn"] = torch.compiler.skip_guard_on_all_nn_modules_unsafe
    # training and evaluation/generation get separate compiled functions (separate code objects, separate caches),
    # so skipping module guards for training can never reuse a training graph (dropout on) in eval mode
    # k-bit layers keep their own compute-dtype handling (bitsandbytes casts per layer)
    kbit = is_kbit(model)
    train_fn = torch.compile(
        _layers_train_autocast if adapter_autocast and not kbit else _layers_train,
        dynamic=True,
        options=options or None,
    )
    if wrap_train is not None:
        train_fn = wrap_train(train_fn)
    eval_fn = torch.compile(_layer_eval, dynamic=True)
    group = max(1, int(group))
    # transformers wraps the class's forward in its checkpointing shim; compile what it wraps
    inner = getattr(type(layers[0]).forward, "__wrapped__", type(layers[0]).forward) if layers else None
    for i, layer in enumerate(layers):
        run = tuple(layers[i : i + group]) if i % group == 0 else None
        last = keep_last and run is not None and layers[-1] in run
        layer.forward = types.MethodType(_checkpointed(inner, train_fn, eval_fn, reentrant, run, last), layer)
        layer._umtcds_passthrough = False
    return len(layers)


_QKV = ("q_proj", "k_proj", "v_proj")


@functools.cache
def _shared_dropout_class():
    import torch

    class SharedLoraDropout(torch.nn.Module):
        """One dropout mask for the LoRA inputs of a layer's q/k/v projections (see :func:`share_lora_dropout`).

        The attention calls q, k and v in turn on the same hidden states: the first call draws the mask, the next
        ``users - 1`` calls of the same shape reuse it, and the last one drops it. Anything else (another shape, a
        call sequence cut short) draws a fresh mask, so the result is always a valid dropout.
        """

        def __init__(self, p: float, users: int):
            super().__init__()
            self.p, self.users = float(p), int(users)
            self._mask = None
            self._left = 0
            self._hook = None

        def reset(self, *_args) -> None:
            """Forget a held mask (a forward pre-hook of the attention)."""
            self._mask = None
            self._left = 0

        def forward(self, x):
            if not self.training or self.p == 0.0:
                return x
            mask = self._mask
            if mask is None or mask.shape != x.shape or mask.device != x.device:  # None once its users are done
                mask = torch.rand_like(x, dtype=torch.float32) >= self.p
                self._left = self.users
            self._left -= 1
            self._mask = mask if self._left > 0 else None
            return x * mask.to(x.dtype) * (1.0 / (1.0 - self.p))

        def extra_repr(self) -> str:
            return f"p={self.p}, shared by {self.users} projections"

    return SharedLoraDropout


def share_lora_dropout(model) -> int:
    """Give each attention's q/k/v LoRA adapters one dropout mask per forward instead of three; returns the
    attentions changed.

    GLM-4's own checkpoint has one fused ``query_key_value`` projection, so LoRA there drops the same input units
    for q, k and v; transformers' GLM splits it in three and peft then draws three masks of ``tokens × hidden``
    random numbers per layer and pass — random-number generation that is most of what LoRA dropout costs in the
    compiled step (bench/results/NOTES.md). It applies where the layers are compiled (``umtcds train`` on one GPU). Only plain single-adapter LoRA with the same
    dropout on all three is changed. transformers' decoder attentions call q, k and v in turn on one input; a call of
    another shape draws a fresh mask, and the attention's forward pre-hook starts every call afresh.
    """
    import torch

    cls = _shared_dropout_class()
    changed = 0
    for module in (causal_lm_of(model) or model).modules():
        projs = [getattr(module, n, None) for n in _QKV]
        dicts = [getattr(p, "lora_dropout", None) for p in projs]
        if not all(isinstance(d, torch.nn.ModuleDict) and len(d) == 1 for d in dicts):
            continue
        keys = {next(iter(d)) for d in dicts}
        if len(keys) != 1 or any(getattr(p, "lora_variant", {}) for p in projs):
            continue
        key = keys.pop()
        drops = [d[key] for d in dicts]
        if all(isinstance(d, cls) for d in drops) or not all(type(d) is torch.nn.Dropout for d in drops):
            continue
        if len({d.p for d in drops}) != 1 or drops[0].p == 0.0:
            continue
        shared = cls(drops[0].p, len(drops))
        shared.train(drops[0].training)
        for d in dicts:
            d[key] = shared
        # each attention call starts a new mask, whatever an interrupted call (an exception mid-layer) left behind
        shared._hook = module.register_forward_pre_hook(shared.reset)
        changed += 1
    return changed


def unshare_lora_dropout(model) -> None:
    """Undo :func:`share_lora_dropout`: each projection its own ``nn.Dropout`` again."""
    import torch

    for module in (causal_lm_of(model) or model).modules():
        for d in (getattr(getattr(module, n, None), "lora_dropout", None) for n in _QKV):
            if isinstance(d, torch.nn.ModuleDict):
                for key, drop in list(d.items()):
                    if isinstance(drop, _shared_dropout_class()):
                        if drop._hook is not None:
                            drop._hook.remove()
                            drop._hook = None
                        d[key] = torch.nn.Dropout(drop.p)
                        d[key].train(drop.training)


def _layers_train(inner, layers, hidden, *args, **kwargs):
    for layer in layers:
        hidden = inner(layer, hidden, *args, **kwargs)
    return hidden


def _layers_train_autocast(inner, layers, hidden, *args, **kwargs):
    import torch

    if hidden.dtype not in (torch.bfloat16, torch.float16):
        return _layers_train(inner, layers, hidden, *args, **kwargs)
    with torch.autocast(hidden.device.type, dtype=hidden.dtype):
        return _layers_train(inner, layers, hidden, *args, **kwargs)


def _layer_eval(inner, layer, *args, **kwargs):
    return inner(layer, *args, **kwargs)


def _checkpointed(inner, train_fn, eval_fn, reentrant: bool = False, run: tuple | None = None, last: bool = False):
    """A layer forward running the compiled layer, inside the layer's own checkpointing when that is on.

    ``run``: the layers this one computes in training (itself and the rest of its group); None for a layer that
    another one computed, which passes its input through. ``last``: the model's last run, never checkpointed
    (``keep_last`` of :func:`compile_layers`).
    """

    def forward(self, *args, **kwargs):
        import torch

        if not self.training:
            return eval_fn(inner, self, *args, **kwargs)
        if self._umtcds_passthrough:  # the group's first layer already ran this one
            self._umtcds_passthrough = False
            return args[0] if args else kwargs["hidden_states"]
        layers = run or (self,)
        if args:
            hidden, args = args[0], args[1:]
        else:
            hidden = kwargs.pop("hidden_states")
        if getattr(self, "gradient_checkpointing", False) and torch.is_grad_enabled() and not last:
            for key in ("past_key_values", "past_key_value", "cache", "layer_past"):
                if kwargs.get(key) is not None:
                    kwargs[key] = None  # as transformers' shim: a cache is not replayed under checkpointing
            call = functools.partial(train_fn, inner, layers, **kwargs)
            if reentrant:
                from torch.utils.checkpoint import checkpoint

                out = checkpoint(call, hidden, *args, use_reentrant=True)
            else:
                out = self._gradient_checkpointing_func(call, hidden, *args)
        else:
            out = train_fn(inner, layers, hidden, *args, **kwargs)
        for other in layers[1:]:  # set only once the group's output exists
            other._umtcds_passthrough = True
        return out

    return forward
