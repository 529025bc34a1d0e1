"""Structural channel pruning on torch-pruning's dependency graph, safe for channel shuffles.

torch-pruning (DepGraph) groups every channel that must be removed together (a convolution's
outputs, the BatchNorm after it, the inputs of its consumers, both sides of a residual add or a
concatenation) and removes whole groups, so the model really gets smaller. Two things it does not
handle are fenced off here before it sees them:

* Channel-mixing reshapes (ShuffleNetV2's ``channel_shuffle``: view, transpose, view; also
  pixel shuffle and any permute) break its shape inference. While the graph is traced, such
  operations run through :class:`ChannelMixing`, an opaque node, and every group that reaches one
  is frozen: those channels stay, everything else is pruned. In ShuffleNetV2 that keeps the
  widths between blocks (the branch outputs) and prunes the inside of every branch, the stem and
  the last 1x1 convolution.
* Any module class is pruned as torch-pruning prunes it (subclasses of torch layers, such as timm's
  ``BatchNormAct2d`` or a ``Conv2d`` with built-in padding, and modules with parameters of their own);
  the saved form records the new shapes and attributes per module (``compressor.train.models``).
  A module whose forward no longer runs after pruning (it hard-codes a channel count) is named
  with the ``ignore_layers`` entry that keeps it whole; listed there, the groups that touch it are frozen.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn
from torch.overrides import TorchFunctionMode

from compressor.core.config import Strict
from compressor.errors import MissingExtraError, PruningError, did_you_mean
from compressor.metrics.classification import count_macs

Importance = Literal["l1", "l2", "bn_scale", "taylor", "random"]
Sparsity = Literal["group_norm", "bn_l1"]


class PruneOptions(Strict):
    """What to prune and how much; shared by the ``prune`` stage and the pruning benchmark."""

    importance: Importance = Field("l1", description="Channel importance: l1/l2 magnitude of the group, "
                                   "bn_scale (BatchNorm gammas), taylor (|w * dL/dw|, needs data), random.")
    allocation: Literal["global", "uniform"] = Field(
        "global", description="global: rank channels across all layers; uniform: the same ratio in every layer.")
    macs_reduction: float | None = Field(None, gt=0, lt=1, description="Fraction of MACs to remove (0.5 = 2x "
                                         "fewer); 0.5 when neither target is given.")
    channel_ratio: float | None = Field(None, gt=0, lt=1, description="Fraction of prunable channels to remove.")
    round_to: int | None = Field(8, ge=1, description="Keep pruned widths a multiple of this (SIMD/GPU friendly).")
    max_layer_ratio: float = Field(0.9, gt=0, lt=1, description="A layer that has lost this fraction of its channels "
                                   "is pruned no further (torch-pruning's max_pruning_ratio; one global step "
                                   "can overshoot it).")
    ignore_layers: list[str] = Field(default_factory=list, description="Module names left whole (with their submodules).")
    ignore_types: list[str] = Field(default_factory=list, description="Module class names left whole, e.g. SqueezeExcitation.")

    @model_validator(mode="before")
    @classmethod
    def _one_target(cls, data: Any) -> Any:
        if isinstance(data, dict):
            given = [k for k in ("macs_reduction", "channel_ratio") if data.get(k) is not None]
            if len(given) == 2:
                msg = "give one target, not both: macs_reduction (fraction of MACs to remove) or channel_ratio"
                raise ValueError(msg)
            if not given:
                data = {**data, "macs_reduction": 0.5}
        return data


def _tp() -> Any:
    try:
        import torch_pruning
    except ImportError as err:
        what = "the prune stage"
        raise MissingExtraError(what, "prune", "torch-pruning") from err
    return torch_pruning


# --- tracing: channel-mixing reshapes become opaque nodes -------------------------------------

class ChannelMixing(torch.autograd.Function):
    """Runs a reshape/permute as one opaque autograd node (graph tracing only, never trained)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        return fn(x, *args, **kwargs).clone()

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:
        msg = "ChannelMixing is a tracing placeholder and has no gradient"
        raise RuntimeError(msg)


_MIXING_FUNCS = {
    torch.Tensor.view, torch.Tensor.reshape, torch.reshape, torch.Tensor.transpose, torch.transpose,
    torch.Tensor.permute, torch.permute, torch.Tensor.flatten, torch.flatten, torch.Tensor.unflatten,
    torch.unflatten, torch.Tensor.swapaxes, torch.swapaxes, torch.Tensor.movedim, torch.movedim,
    torch.channel_shuffle, torch.pixel_shuffle, torch.pixel_unshuffle, torch.nn.functional.pixel_shuffle,
    torch.nn.functional.pixel_unshuffle,
}


def _keeps_channels(x: torch.Tensor, out: torch.Tensor, channels_last: bool = False) -> bool:
    """Shape-preserving, only adding or removing size-1 dimensions (a squeeze), keeping the batch and
    channel dimensions of an NCHW tensor (``flatten(2)``), or a flatten of everything after the batch
    dim (handled by torch-pruning)."""
    if tuple(out.shape) == tuple(x.shape) or [d for d in out.shape if d != 1] == [d for d in x.shape if d != 1]:
        return True
    if not channels_last and x.ndim >= 3 and out.ndim >= 3 and tuple(out.shape[:2]) == tuple(x.shape[:2]):
        return True
    return x.ndim > 2 and out.ndim == 2 and out.shape[0] == x.shape[0] and out.shape[1] == x[0].numel()


_EVEN_SPLITS = {torch.Tensor.chunk, torch.chunk, torch.Tensor.split, torch.split}


def _explicit_split(func: Any, x: torch.Tensor, arg: Any, dim: int) -> Any:
    """chunk/split with one size -> split_with_sizes, whose saved sizes torch-pruning reads correctly."""
    n = x.shape[dim]
    if func in (torch.Tensor.chunk, torch.chunk):
        size = -(-n // arg)
    elif isinstance(arg, int):
        size = arg
    else:
        return None
    sizes = [min(size, n - i) for i in range(0, n, size)]
    return torch.split(x, sizes, dim)


_ACTIVATION = "_compressor_activation"
_CHANNELS_LAST = "_compressor_channels_last"
_PERMUTES = {torch.Tensor.permute, torch.permute}
_TO_NHWC, _TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)


def _is_activation(value: Any) -> bool:
    """A tensor computed from the traced input (weights and what is computed from them alone are not)."""
    return isinstance(value, torch.Tensor) and getattr(value, _ACTIVATION, False)


def _mark(out: Any, channels_last: bool = False) -> Any:
    for t in out if isinstance(out, tuple | list) else (out,):
        if isinstance(t, torch.Tensor) and not isinstance(t, nn.Parameter):
            setattr(t, _ACTIVATION, True)
            setattr(t, _CHANNELS_LAST, channels_last)
    return out


def mark_input(example: torch.Tensor) -> torch.Tensor:
    """Tag the traced input: only reshapes of tensors computed from it can mix channels."""
    return _mark(example)


def _permute_dims(args: Any, kwargs: dict[str, Any]) -> tuple[int, ...]:
    dims = args[1:] if len(args) > 2 else (args[1] if len(args) > 1 else kwargs.get("dims", ()))
    return tuple(int(d) for d in dims)


class _TraceMode(TorchFunctionMode):
    """Runs channel-mixing reshapes of activations as opaque nodes.

    Not channel-mixing: a reshape of a weight (timm's ``ScaledStdConv2d`` standardises its weight through
    one), a squeeze, a reshape that keeps the batch and channel dimensions (``flatten(2)``), and the
    NCHW -> NHWC -> NCHW round trip of channels-last norms (timm's ``LayerNorm2d``, ``LayerNormAct2d``):
    between the two permutes the channels are the last dimension, where torch-pruning's LayerNorm and
    Linear pruners expect them, and any other reshape there is opaque.
    """

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        flat = [a for arg in args for a in (arg if isinstance(arg, tuple | list) else (arg,))]
        tagged = [a for a in (*flat, *kwargs.values()) if _is_activation(a)]
        if not tagged:
            return func(*args, **kwargs)
        channels_last = any(getattr(a, _CHANNELS_LAST, False) for a in tagged)
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor):
            return _mark(func(*args, **kwargs), channels_last)
        if func in _EVEN_SPLITS and len(args) >= 2 and _is_activation(x) and x.requires_grad:
            dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
            out = _explicit_split(func, x, args[1], dim)
            if out is not None:
                return _mark(out, channels_last)
        if func in _MIXING_FUNCS and _is_activation(x) and x.requires_grad:
            if func in _PERMUTES and x.ndim == 4:
                dims = _permute_dims(args, kwargs)
                if dims == _TO_NHWC and not channels_last:
                    return _mark(func(*args, **kwargs), True)
                if dims == _TO_NCHW and channels_last:
                    return _mark(func(*args, **kwargs), False)
            out = func(*args, **kwargs)
            if isinstance(out, torch.Tensor) and not _keeps_channels(x, out, channels_last):
                return _mark(ChannelMixing.apply(x, func, tuple(args[1:]), kwargs), channels_last)
            return _mark(out, channels_last)
        return _mark(func(*args, **kwargs), channels_last)


def _grad_fn_name(node: Any) -> str:
    fn = getattr(node, "grad_fn", None)
    return fn.name() if fn is not None and hasattr(fn, "name") else ""


# --- model inspection ---------------------------------------------------------------------------

def output_layers(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the last Conv2d/Linear executed: the classifier, whose outputs are the classes."""
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda mod, i, o, n=name: order.append(n))
             for name, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    return order[-1:]


def resolve_ignored(model: nn.Module, opts: PruneOptions, example: torch.Tensor) -> dict[str, str]:
    """Module name -> why it is left whole. Unknown names or types are errors with a suggestion."""
    modules = dict(model.named_modules())
    ignored = {name: "classifier" for name in output_layers(model, example)}
    for name in opts.ignore_layers:
        if name not in modules:
            msg = f"prune.ignore_layers: the model has no module '{name}'{did_you_mean(name, modules)}"
            raise PruningError(msg)
        ignored[name] = "ignore_layers"
    types = {type(m).__name__ for m in modules.values()}
    for type_name in opts.ignore_types:
        if type_name not in types:
            msg = (f"prune.ignore_types: the model has no module of type '{type_name}'"
                   f"{did_you_mean(type_name, types)}")
            raise PruningError(msg)
        ignored.update({n: "ignore_types" for n, m in modules.items() if type(m).__name__ == type_name and n})
    return ignored


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every Conv2d and Linear layer."""
    return {name: m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            for name, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}


# --- the pruner -----------------------------------------------------------------------------------

# Tensors torch-pruning's own layer pruners remove channels from; a subclass's other tensors are "extra".
_BASE_TENSORS = frozenset({"weight", "bias", "running_mean", "running_var", "num_batches_tracked"})


def _out_width(module: nn.Module) -> int | None:
    for attr in ("out_channels", "out_features", "num_features", "num_channels", "num_parameters"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    return None


def prune_extra_tensors(dg: Any, group: Any) -> None:
    """Remove a group's output channels from the extra tensors of torch layer subclasses.

    torch-pruning prunes a ``Conv2d`` subclass as a ``Conv2d``: weight and bias only. A subclass's own
    parameters and buffers with one dimension of the layer's output width (timm's ``ScaledStdConv2d``
    gain, a per-channel scale) lose the same channels here, before the group is pruned.
    """
    seen: set[int] = set()
    for dep, idxs in group:
        module = dep.target.module
        if (not isinstance(module, nn.Module) or id(module) in seen or type(module).__module__.startswith("torch.nn")
                or not dg.is_out_channel_pruning_fn(dep.handler)):
            continue
        seen.add(id(module))
        width = _out_width(module)
        if width is None:
            continue
        drop = {int(getattr(i, "idx", i)) for i in idxs}
        keep = torch.tensor([i for i in range(width) if i not in drop], dtype=torch.long)
        stores: tuple[dict[str, Any], ...] = (module._parameters, module._buffers)
        for store in stores:
            for key, tensor in list(store.items()):
                if tensor is None or key in _BASE_TENSORS or width not in tensor.shape:
                    continue
                dim = list(tensor.shape).index(width)
                kept = tensor.data.index_select(dim, keep.to(tensor.device)).clone()
                store[key] = nn.Parameter(kept, requires_grad=tensor.requires_grad) if isinstance(
                    tensor, nn.Parameter) else kept


def _importance(tp: Any, kind: Importance) -> Any:
    imp = tp.importance
    return {
        "l1": lambda: imp.GroupMagnitudeImportance(p=1),
        "l2": lambda: imp.GroupMagnitudeImportance(p=2),
        "bn_scale": lambda: imp.BNScaleImportance(),
        "taylor": lambda: imp.GroupTaylorImportance(),
        "random": lambda: imp.RandomImportance(),
    }[kind]()


class ChannelPruner:
    """One torch-pruning pruner over ``model`` (pruned in place), stepped towards a MACs or channel target.

    Args:
        model: the model to prune.
        example: an input batch for tracing and MAC counting (batch 1).
        opts: targets and allocation.
        steps: number of schedule steps the target is reached in.
        sparsity: build the regularizing pruner for sparsity training (group norm or BN L1).
        reg: regularization strength for ``sparsity``.
    """

    # A MACs target is approached on a grid of 1% of channels (see prune_step).
    MICRO_STEP = 0.01

    def __init__(self, model: nn.Module, example: torch.Tensor, opts: PruneOptions, steps: int = 1,
                 sparsity: Sparsity | None = None, reg: float = 1e-4):
        tp = _tp()
        self.tp, self.model, self.example, self.opts, self.steps = tp, model, example, opts, steps
        self.ignored = resolve_ignored(model, opts, example)
        modules = dict(model.named_modules())
        self.base_macs = count_macs(model, tuple(example.shape[1:]))
        self.base_widths = layer_widths(model)
        if opts.macs_reduction is not None:
            ratio = opts.max_layer_ratio
            micro = max(steps, round(ratio / self.MICRO_STEP))
        else:
            assert opts.channel_ratio is not None
            ratio, micro = opts.channel_ratio, steps
        kwargs: dict[str, Any] = dict(
            importance=_importance(tp, opts.importance), global_pruning=opts.allocation == "global",
            pruning_ratio=ratio, max_pruning_ratio=opts.max_layer_ratio, iterative_steps=micro,
            ignored_layers=[modules[n] for n in self.ignored], round_to=opts.round_to,
        )
        cls = tp.pruner.BasePruner
        if sparsity == "group_norm":
            cls, kwargs["reg"] = tp.pruner.GroupNormPruner, reg
        elif sparsity == "bn_l1":
            cls, kwargs["reg"] = tp.pruner.BNScalePruner, reg
        was_training = model.training
        try:
            with torch.enable_grad(), _TraceMode():
                self.pruner = cls(model, mark_input(example.clone()), **kwargs)
        except PruningError:
            raise
        except Exception as err:  # noqa: BLE001 - graph tracing fails in many ways; name the cause
            msg = (f"torch-pruning could not trace the model ({type(err).__name__}: {err}); leave the "
                   "offending block whole with ignore_layers or ignore_types")
            raise PruningError(msg) from err
        model.train(was_training)
        self.frozen = self._freeze_unsafe_groups()
        self.prunable = self._prunable_layers()

    def _freeze_unsafe_groups(self) -> dict[str, str]:
        """Ignore every group that crosses a channel-mixing op or touches an ignored layer's parameters."""
        dg = self.pruner.DG
        ignored_modules = [m for n in self.ignored for m in dict(self.model.named_modules())[n].modules()]
        ignored_params = {id(p) for m in ignored_modules for p in m.parameters(recurse=False)}
        # a layer the user left whole keeps its input channels too (the classifier's may go: its outputs
        # are the classes, its inputs are features like any other)
        whole = {id(m) for n, why in self.ignored.items() if why != "classifier"
                 for m in dict(self.model.named_modules())[n].modules()}
        names = {m: n for n, m in self.model.named_modules()}
        frozen: dict[str, str] = {}
        for group in list(dg.get_all_groups(ignored_layers=self.pruner.ignored_layers,
                                            root_module_types=self.pruner.root_module_types)):
            nodes = [n for dep, _ in group for n in (dep.source, dep.target)]
            if any("ChannelMixing" in _grad_fn_name(n) for n in nodes):
                reason = "coupled through a channel shuffle/reshape"
            elif any(isinstance(n.module, nn.Parameter) and id(n.module) in ignored_params for n in nodes) or any(
                    isinstance(n.module, nn.Module) and id(n.module) in whole for n in nodes):
                reason = "feeds an ignored layer"
            else:
                continue
            for dep, _ in group:
                module = dep.target.module
                if isinstance(module, nn.Module) and dg.is_out_channel_pruning_fn(dep.handler):
                    self.pruner.ignored_layers.append(module)
                    if module in names and isinstance(module, nn.Conv2d | nn.Linear):
                        frozen[names[module]] = reason
        if frozen and hasattr(self.pruner, "update_regularizer"):
            self.pruner.update_regularizer()
        return frozen

    def _prunable_layers(self) -> list[str]:
        names = {m: n for n, m in self.model.named_modules()}
        roots = [names.get(g[0].dep.target.module, "?") for g in self.pruner.DG.get_all_groups(
            ignored_layers=self.pruner.ignored_layers, root_module_types=self.pruner.root_module_types)]
        return roots

    def macs(self) -> int:
        try:
            return count_macs(self.model, tuple(self.example.shape[1:]))
        except Exception as err:  # noqa: BLE001 - counting runs the pruned model
            raise broken_model_error(self.model, self.example, err) from err

    def _step_to(self, k: int) -> None:
        """Prune to the ``k``-th ratio of the pruner's schedule (ratios are absolute, so steps may be skipped).

        A failure inside torch-pruning (its importance estimate or its pruning functions indexing past a
        layer's channels, as on channel slices its graph does not model) becomes a :class:`PruningError`
        naming the group's layer and the block that keeps it whole.
        """
        self.pruner.current_step = k - 1
        current: list[Any] = []
        estimate = self.pruner.estimate_importance

        def tracked(group: Any) -> Any:
            current[:] = [group]
            return estimate(group)

        self.pruner.estimate_importance = tracked
        try:
            with torch.enable_grad():
                for group in self.pruner.step(interactive=True):
                    current[:] = [group]
                    prune_extra_tensors(self.pruner.DG, group)
                    group.prune()
        except PruningError:
            raise
        except Exception as err:  # noqa: BLE001 - torch-pruning fails in many ways; name where
            raise self._pruner_error(current[0] if current else None, err) from err
        finally:
            del self.pruner.estimate_importance  # the bound method again

    def _pruner_error(self, group: Any, err: Exception) -> PruningError:
        detail = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        names = {m: n for n, m in self.model.named_modules()}
        layer = names.get(group[0].dep.target.module) if group is not None else None
        if not layer:
            msg = (f"torch-pruning failed while pruning ({detail}); leave the block it fails on whole with "
                   "prune.ignore_layers or prune.ignore_types")
            return PruningError(msg)
        block, module = owning_block(self.model, layer)
        msg = (f"torch-pruning failed on the channel group of layer '{layer}' ({detail}): its dependency graph "
               f"does not match what {type(module).__name__} '{block}' does with its channels. Leave it whole "
               f"with prune.ignore_layers: ['{block}'] (or prune.ignore_types: [{type(module).__name__}])")
        return PruningError(msg)

    def prune_step(self, step: int) -> int:
        """Prune up to schedule step ``step`` (1-based) and return the MACs after it.

        A MACs target is approached on a grid of 1% of channels: each jump goes most of the way to the
        ratio predicted by ``macs ~ base * (1 - ratio) ** a``, with ``a`` fitted to what pruning did
        so far, so a target takes a handful of importance evaluations rather than one per grid point.

        Raises:
            PruningError: nothing can be pruned, or the MACs target is out of reach.
        """
        if not self.prunable:
            msg = (f"nothing to prune: every prunable layer is ignored or frozen ({len(self.ignored)} ignored: "
                   f"{', '.join(list(self.ignored)[:5])}; {len(self.frozen)} frozen); achievable MACs reduction: 0%")
            raise PruningError(msg)
        if self.opts.channel_ratio is not None:
            self._step_to(step)
            return self.macs()
        assert self.opts.macs_reduction is not None
        target = self.base_macs * (1 - self.opts.macs_reduction * step / self.steps)
        grid, top = self.pruner.iterative_steps, self.opts.max_layer_ratio
        k, macs = self.pruner.current_step, self.macs()
        while macs > target and k < grid:
            frac, ratio = macs / self.base_macs, k / grid * top
            power = math.log(frac) / math.log(1 - ratio) if ratio > 0.005 and frac < 0.995 else 2.0
            power = min(max(power, 0.5), 4.0)
            wanted = (1 - (target / self.base_macs) ** (1 / power)) / top * grid
            k = min(grid, max(k + 1, k + math.floor((0.95 if k else 0.75) * (wanted - k))))
            self._step_to(k)
            macs = self.macs()
        if macs > target:
            done = 1 - macs / self.base_macs
            msg = (f"macs_reduction {self.opts.macs_reduction} cannot be met: removing up to max_layer_ratio "
                   f"{self.opts.max_layer_ratio} of every prunable layer (round_to {self.opts.round_to}, "
                   f"{len(self.ignored)} ignored and {len(self.frozen)} frozen layers) achieves "
                   f"{done:.1%} fewer MACs; lower macs_reduction, raise max_layer_ratio or ignore fewer layers")
            raise PruningError(msg)
        return macs

    def regularization_terms(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """The gradient torch-pruning's sparsity regularizer adds to each parameter, at current weights."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        saved = [p.grad for p in params]
        for p in params:
            p.grad = torch.zeros_like(p)
        self.pruner.regularize(self.model)
        terms = [(p, p.grad.detach().clone()) for p in params if p.grad is not None and bool(p.grad.any())]
        for p, g in zip(params, saved, strict=True):
            p.grad = g
        return terms


def failing_chain(model: nn.Module, example: torch.Tensor) -> list[tuple[str, nn.Module, Any]]:
    """The modules whose forwards were running when ``model`` raised on ``example``, outermost first, each
    with its first input (empty when the model runs)."""
    stack: list[tuple[str, nn.Module, Any]] = []
    modules = dict(model.named_modules())

    def enter(module: nn.Module, inputs: Any, name: str) -> None:
        stack.append((name, module, inputs[0] if inputs else None))

    def leave(_module: nn.Module, _inp: Any, _out: Any) -> None:
        stack.pop()

    hooks = []
    for name, module in modules.items():
        hooks.append(module.register_forward_pre_hook(lambda m, i, n=name: enter(m, i, n)))
        hooks.append(module.register_forward_hook(leave))
    try:
        with torch.no_grad():
            model.eval()(example)
    except Exception:  # noqa: BLE001 - whatever it raises, the hooks say where
        return list(stack)
    finally:
        for hook in hooks:
            hook.remove()
    return []


def _is_torch_layer(module: nn.Module) -> bool:
    return type(module).__module__.startswith("torch.")


def culprit_block(chain: list[tuple[str, nn.Module, Any]]) -> tuple[str, nn.Module]:
    """The module to leave whole for a failure at the end of ``chain``: a model's own block fails in its own
    forward (a split by fixed sizes); a torch layer fails on the input its caller made, so the block named
    is the caller that made it (past wrappers that pass their input straight through), e.g. the
    ``SelectiveKernel`` that split the channels for the ``Conv2d`` that failed."""
    i = len(chain) - 1
    if not _is_torch_layer(chain[i][1]):
        return chain[i][0], chain[i][1]
    while i > 0 and chain[i - 1][2] is chain[i][2]:
        i -= 1
    if i > 0 and chain[i - 1][0]:
        return chain[i - 1][0], chain[i - 1][1]
    return chain[-1][0], chain[-1][1]


def broken_model_error(model: nn.Module, example: torch.Tensor, err: Exception) -> PruningError:
    """The error for a pruned model that no longer runs, naming the innermost module that fails and the
    block to leave whole with ``ignore_layers`` (torch-pruning changed channels its forward depends on)."""
    chain = failing_chain(model, example)
    if not chain or chain[-1][0] == "":
        msg = (f"the pruned model no longer runs ({type(err).__name__}: {err}); a layer whose forward "
               "hard-codes channel counts must be left whole with ignore_layers")
    else:
        name, module = chain[-1][0], chain[-1][1]
        block, owner = culprit_block(chain)
        inside = "" if block == name else f" inside {type(owner).__name__} '{block}'"
        msg = (f"cannot prune layer '{name}' ({type(module).__name__}){inside}: torch-pruning changed channels "
               f"its forward depends on and it no longer runs ({type(err).__name__}: "
               f"{str(err).splitlines()[0]}). Leave it whole with ignore_layers: ['{block}'] (or "
               f"ignore_types: [{type(owner).__name__}])")
    return PruningError(msg)


def owning_block(model: nn.Module, name: str) -> tuple[str, nn.Module]:
    """The innermost module at or above ``name`` whose class is not one of torch's own layers: the block
    whose forward decides what happens to the channels (a torch ``Conv2d`` inside a model's
    ``SelectiveKernel`` names the ``SelectiveKernel``). ``name`` itself when there is none."""
    modules = dict(model.named_modules())
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        module = modules.get(candidate)
        if module is not None and not _is_torch_layer(module):
            return candidate, module
    return name, modules[name]


def check_runs(model: nn.Module, example: torch.Tensor, expected: torch.Size) -> None:
    """The pruned model must still run and give outputs of the original shape."""
    try:
        with torch.no_grad():
            out = model.eval()(example)
    except Exception as err:  # noqa: BLE001
        raise broken_model_error(model, example, err) from err
    if out.shape != expected:
        msg = f"the pruned model's output shape changed from {tuple(expected)} to {tuple(out.shape)}"
        raise PruningError(msg)


def prune_model(model: nn.Module, example: torch.Tensor, opts: PruneOptions) -> dict[str, Any]:
    """Prune ``model`` in place in one step (no data, no fine-tune); returns MACs and widths before/after."""
    with torch.no_grad():
        expected = model.eval()(example).shape
    pruner = ChannelPruner(model, example, opts)
    params_before = sum(p.numel() for p in model.parameters())
    macs = pruner.prune_step(1)
    check_runs(model, example, expected)
    return {
        "macs_before": pruner.base_macs, "macs_after": macs,
        "params_before": params_before, "params_after": sum(p.numel() for p in model.parameters()),
        "channels": channels_kept(pruner.base_widths, layer_widths(model)),
        "frozen": pruner.frozen, "ignored": pruner.ignored,
    }


def channels_kept(before: dict[str, int], after: dict[str, int]) -> dict[str, list[int]]:
    """Layer -> [channels before, channels kept], for layers that lost channels."""
    return {name: [before[name], after[name]] for name in before if after.get(name, before[name]) != before[name]}


