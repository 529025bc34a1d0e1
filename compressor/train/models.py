"""Model sources, checkpoints, and the saved form of a model that reloads without pickled classes."""

from __future__ import annotations

import importlib
import inspect
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.core.artifacts import Artifact
from compressor.core.config import ModelSource
from compressor.core.context import StageContext
from compressor.core.readers import read_checkpoint
from compressor.errors import CheckpointError, ModelSourceError, did_you_mean


def torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


# Constructor arguments some torchvision architectures need when built without pretrained weights.
_ARCH_KWARGS: dict[str, dict[str, Any]] = {
    "inception_v3": {"aux_logits": False, "init_weights": True},
    "googlenet": {"aux_logits": False, "init_weights": True},
}


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Adapt the first convolution to ``in_channels`` (e.g. 1 for greyscale data)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == in_channels:
                return
            if module.groups != 1:
                break
            new = nn.Conv2d(
                in_channels, module.out_channels, module.kernel_size,  # type: ignore[arg-type]
                module.stride, module.padding, module.dilation,  # type: ignore[arg-type]
                groups=1, bias=module.bias is not None, padding_mode=module.padding_mode,
            )
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, new)
            return
    msg = f"cannot adapt the model to {in_channels} input channels: no plain Conv2d found as its first layer"
    raise ModelSourceError(msg)


def build_model(source: ModelSource, num_classes: int, in_channels: int) -> nn.Module:
    """Build an untrained model from a torchvision name or an entry point."""
    if source.arch is not None:
        import torchvision

        names = torchvision_names()
        if source.arch not in names:
            msg = f'unknown torchvision architecture "{source.arch}"{did_you_mean(source.arch, names)}'
            raise ModelSourceError(msg)
        kwargs = {**_ARCH_KWARGS.get(source.arch, {}), **source.kwargs}
        try:
            model = torchvision.models.get_model(source.arch, weights=None, num_classes=num_classes, **kwargs)
        except TypeError as err:
            msg = f"torchvision {source.arch} rejected model.kwargs {source.kwargs}: {err}"
            raise ModelSourceError(msg) from err
    else:
        assert source.entry_point is not None
        module_name, _, attr = source.entry_point.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as err:  # noqa: BLE001 - any import-time failure of user code
            msg = (f"entry point {source.entry_point}: cannot import module '{module_name}' "
                   f"({type(err).__name__}: {err}); check the name and that it is on PYTHONPATH")
            raise ModelSourceError(msg) from err
        factory = getattr(module, attr, None)
        if not callable(factory):
            msg = f"entry point {source.entry_point}: module '{module_name}' has no callable '{attr}'"
            raise ModelSourceError(msg)
        kwargs = dict(source.kwargs)
        try:
            params = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            params = {}  # type: ignore[assignment]
        if "num_classes" in params and "num_classes" not in kwargs:
            kwargs["num_classes"] = num_classes
        if "in_channels" in params and "in_channels" not in kwargs:
            kwargs["in_channels"] = in_channels
        try:
            model = factory(**kwargs)
        except Exception as err:  # noqa: BLE001
            msg = f"entry point {source.entry_point} raised {type(err).__name__}: {err}"
            raise ModelSourceError(msg) from err
        if not isinstance(model, nn.Module):
            msg = f"entry point {source.entry_point} returned {type(model).__name__}, not a torch.nn.Module"
            raise ModelSourceError(msg)
    _replace_first_conv(model, in_channels)
    return model


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict safely (``weights_only=True``, every tensor finite); errors name the file and the fix."""
    return read_checkpoint(path)


def load_state(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load ``state`` strictly; a mismatch names the first differing key and, for heads, the class count."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        first = missing[0] if missing else unexpected[0]
        what = "missing from the checkpoint" if missing else "in the checkpoint but not in the model"
        msg = (f"checkpoint {origin} does not match the architecture: key '{first}' is {what} "
               f"({len(missing)} missing, {len(unexpected)} unexpected); is it from another architecture?")
        raise CheckpointError(msg)
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            last_linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
            if last_linear and key.startswith(last_linear[-1] + "."):
                msg = (f"checkpoint {origin} has {state[key].shape[0]} classes (key '{key}' shape "
                       f"{tuple(state[key].shape)}) but the model is built for {tensor.shape[0]}; "
                       "set model.num_classes or use data with the checkpoint's classes")
            else:
                msg = (f"checkpoint {origin} does not match the architecture: key '{key}' has shape "
                       f"{tuple(state[key].shape)} in the checkpoint and {tuple(tensor.shape)} in the model")
            raise CheckpointError(msg)
    model.load_state_dict(state, strict=True)


# --- the saved form of a model artifact --------------------------------------------------------
# A model artifact is a state dict plus JSON metadata: ``spec`` (the ModelSource without checkpoint),
# ``num_classes``, ``in_channels`` and, after structural pruning (or any change of shapes), ``structure``:
# module name -> what differs from the architecture rebuilt from ``spec``: the shapes of its own
# parameters and buffers and its plain attributes (in_channels, out_channels, groups, num_features,
# normalized_shape, stride, ...). Rebuilding gives each such module those shapes and attributes in
# place, so every module keeps its class (a Conv2d subclass stays that subclass) and no class is ever
# unpickled. This follows Torch-Pruning's own ``tp.state_dict`` / ``tp.load_state_dict``, which restore
# each module's ``__dict__`` from a pickle; here only JSON-able values are stored.

# Attributes never recorded: nn.Module bookkeeping that is not a shape.
_SKIP_ATTRS = frozenset({"training"})


def _plain(value: Any) -> bool:
    """A value JSON stores exactly: None, bool, int, float, str, or (nested) tuples/lists of them."""
    if value is None or isinstance(value, bool | int | float | str):
        return not (isinstance(value, float) and not math.isfinite(value))
    if isinstance(value, tuple | list):
        return all(_plain(v) for v in value)
    return False


def _as_json(value: Any) -> Any:
    return [_as_json(v) for v in value] if isinstance(value, tuple | list) else value


def _like(value: Any, reference: Any) -> Any:
    """``value`` read back from JSON, with tuples where the rebuilt module has tuples."""
    if not isinstance(value, list):
        return value
    refs = list(reference) if isinstance(reference, tuple | list) and len(reference) == len(value) else [None] * len(value)
    items = [_like(v, r) for v, r in zip(value, refs, strict=True)]
    return tuple(items) if isinstance(reference, tuple) else items


def module_state(module: nn.Module) -> dict[str, dict[str, Any]]:
    """Shapes of a module's own parameters and buffers and its plain attributes (JSON-ready)."""
    return {
        "params": {k: None if p is None else list(p.shape) for k, p in module._parameters.items()},
        "buffers": {k: None if b is None else list(b.shape) for k, b in module._buffers.items()},
        "attrs": {k: _as_json(v) for k, v in vars(module).items()
                  if k not in _SKIP_ATTRS and not k.startswith("__") and _plain(v)},
    }


_MISSING = object()


def structure_of(model: nn.Module, reference: nn.Module) -> dict[str, dict[str, Any]]:
    """What differs between ``model`` and ``reference`` (the same architecture rebuilt from its source).

    Returns:
        module name -> ``{"type": class name, "params": {name: shape}, "buffers": {name: shape},
        "attrs": {name: value}}`` with only the entries that differ.

    Raises:
        ModelSourceError: ``model`` has a module the rebuilt architecture lacks or of another class,
            or a non-persistent buffer whose shape changed (its values are not in the state dict).
    """
    ref = dict(reference.named_modules())
    changed: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        other = ref.get(name)
        if other is None or type(other) is not type(module):
            what = "has no such module" if other is None else f"has a {type(other).__name__} there"
            msg = (f"module '{name}' ({type(module).__name__}) cannot be saved: the architecture rebuilt from "
                   f"its source {what}; only shapes and attributes of existing modules can change")
            raise ModelSourceError(msg)
        mine, theirs = module_state(module), module_state(other)
        diff: dict[str, Any] = {}
        for section in ("params", "buffers", "attrs"):
            delta = {k: v for k, v in mine[section].items() if theirs[section].get(k, _MISSING) != v}
            if delta:
                diff[section] = delta
        for key in diff.get("buffers", {}):
            if key in module._non_persistent_buffers_set:
                msg = (f"module '{name}' ({type(module).__name__}): non-persistent buffer '{key}' changed shape "
                       "and cannot be saved (its values are not in the state dict); leave the module whole")
                raise ModelSourceError(msg)
        if diff:
            changed[name] = {"type": type(module).__name__, **diff}
    return changed


def apply_structure(model: nn.Module, structure: dict[str, dict[str, Any]]) -> None:
    """Give each recorded module its recorded parameter/buffer shapes and attributes, in place.

    Parameters and buffers become uninitialised tensors of the recorded shapes (dtype and
    ``requires_grad`` kept); loading the state dict fills them.
    """
    modules = dict(model.named_modules())
    for name, record in structure.items():
        module = modules.get(name)
        if module is None or type(module).__name__ != record.get("type", type(module).__name__):
            found = "no such module" if module is None else f"a {type(module).__name__}"
            msg = (f"saved structure names module '{name}' ({record.get('type')}) but the rebuilt architecture "
                   f"has {found}; was the model source changed since the artifact was made?")
            raise ModelSourceError(msg)
        for key, shape in record.get("params", {}).items():
            old = module._parameters.get(key)
            if shape is None:
                module._parameters[key] = None
                continue
            dtype = old.dtype if old is not None else torch.get_default_dtype()
            grad = old.requires_grad if old is not None else True
            module._parameters[key] = nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=grad)
        for key, shape in record.get("buffers", {}).items():
            old_buf = module._buffers.get(key)
            dtype = old_buf.dtype if old_buf is not None else torch.get_default_dtype()
            module._buffers[key] = None if shape is None else torch.zeros(shape, dtype=dtype)
        for key, value in record.get("attrs", {}).items():
            setattr(module, key, _like(value, getattr(module, key, None)))


def model_meta(source: ModelSource, num_classes: int, in_channels: int,
               structure: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "spec": source.model_dump(mode="json", exclude={"checkpoint"}),
        "num_classes": num_classes,
        "in_channels": in_channels,
        "structure": structure or {},
    }


def build_from_meta(meta: dict[str, Any]) -> nn.Module:
    """Rebuild the architecture a model artifact describes (weights not loaded)."""
    source = ModelSource.model_validate(meta["spec"])
    model = build_model(source, meta["num_classes"], meta["in_channels"])
    if meta.get("embedding"):  # structure names are those of the embedding net, so wrap first
        from compressor.train.embedding import embedding_net

        model = embedding_net(model, meta["embedding"])
    if meta.get("structure"):
        apply_structure(model, meta["structure"])
    return model


def write_weights(model: nn.Module, path: Path) -> None:
    from compressor.core.artifacts import atomic_write

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_model_artifact(meta: dict[str, Any], weights: Path) -> nn.Module:
    model = build_from_meta(meta)
    load_state(model, read_state_dict(weights), str(weights))
    model.eval()
    return model


def load_stage_model(ctx: StageContext, artifact: Artifact) -> nn.Module:
    """The PyTorch model of a ``model`` artifact, rebuilt from its metadata and weights."""
    return load_model_artifact(artifact.meta, artifact.path(ctx.cache_root, "weights"))


def save_stage_model(ctx: StageContext, model: nn.Module, meta: dict[str, Any]) -> Artifact:
    """Write ``model``'s weights into the stage folder; MACs and parameters join ``meta``."""
    from compressor.metrics.classification import count_macs, count_params

    write_weights(model, ctx.out_dir / "model.pt")
    shape = tuple(ctx.data.input_shape)
    stats = {"macs": count_macs(model, shape), "params": count_params(model), "input_shape": list(shape)}
    return ctx.new_artifact("model", {"weights": "model.pt"}, {**meta, **stats})
